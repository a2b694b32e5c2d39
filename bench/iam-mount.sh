#!/usr/bin/env bash
# What IAM adds to a mount (issue #12): `mount.efs -o tls,iam` against `-o tls`, same
# run, alternating, N mounts each; wall time and CPU of mount.efs (which returns once
# its tunnel has completed a TLS handshake with the mount target). Target: IAM adds at
# most 20 ms once the host key exists; the key is made once per host (timed apart).
# Exits 1 if the target is missed.
#
# Real parts on loopback: the real mount.efs and tunnel (mount.nfs4 is /bin/true: the
# host kernel has no NFS), credentials from a profile file, and tests/fake-efs as the
# mount target (a fake of EFS: plain TLS let in, a presented client certificate checked
# as EFS would, SigV4 signature included) in front of the bench's RPC backend.
# BENCH_MOUNTS (default 20) mounts per side.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
cargo build --release --locked -q -p efs-tunnel -p efs-mount-helper -p efs-bench -p efs-fake-efs
n=${BENCH_MOUNTS:-20}
w=$(mktemp -d /tmp/efs-iam-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "$w/run/tunnel-" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/run" "$w/log" "$w/mnt" "$w/.aws"

. tests/e2e/lib.sh # throwaway_certs
throwaway_certs "$w"
akid=AKIABENCHTESTKEY0001
secret=benchSecretKeyKnownOnlyToTheFakeEfs00001
echo "$akid $secret" >"$w/keys"
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$akid" "$secret" >"$w/.aws/credentials"
chmod 600 "$w/keys" "$w/.aws/credentials"
target/release/efs-bench backend --listen 127.0.0.78:23049 &
pids+=($!)
target/release/efs-fake-efs --listen 127.0.0.78:2049 --connect 127.0.0.78:23049 \
    --cert "$w/server.pem" --key "$w/server.key" --keys "$w/keys" >"$w/fake-efs.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$w/fake-efs.log" && break; sleep 0.1; done

cat >"$w/efs-utils.toml" <<EOT
[mount]
region = "us-east-1"
stunnel_cafile = "$w/ca.pem"
instance_metadata_url = "http://127.0.0.1:9"
ecs_credentials_url = "http://127.0.0.1:9"
[paths]
state_dir = "$w/run"
log_dir = "$w/log"
mount_nfs = "/bin/true"
systemd_run_dir = "$w/no-systemd"
mountinfo = "$w/mountinfo"
tunnel = "$PWD/target/release/efs-tunnel"
private_key = "$w/privateKey.pem"
EOT
: >"$w/mountinfo"
export EFS_UTILS_CONFIG="$w/efs-utils.toml" EFS_UTILS_INCUMBENT_CONFIG="$w/none.conf"
export HOME="$w" AWS_SHARED_CREDENTIALS_FILE="$w/.aws/credentials" AWS_CONFIG_FILE="$w/.aws/config"
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \
    AWS_CONTAINER_CREDENTIALS_FULL_URI AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE

# one_mount OPTS NAME: mounts, prints "WALL_MS CPU_MS", then stops that tunnel.
one_mount() {
    mkdir -p "$w/mnt/$2"
    local t0 t1 c
    t0=$(date +%s%N)
    c=$( { TIMEFORMAT='%U %S'; time target/release/mount-efs fs-12345678 "$w/mnt/$2" -o "$1,mounttargetip=127.0.0.78" >/dev/null 2>"$w/err"; } 2>&1 ) ||
        { echo "mount -o $1 failed: $(cat "$w/err")" >&2; exit 1; }
    t1=$(date +%s%N)
    local st; st=$(ls "$w/run" | grep "^fs-.*\.mnt\.$2\.\|mnt\.$2\." | grep -v '+$' | head -1)
    local pid; pid=$(sed -n 's/^ *"pid": \([0-9]*\).*/\1/p' "$w/run/$st")
    kill "$pid" 2>/dev/null || true
    rm -rf "$w/run/$st" "$w/run/$st+"
    awk -v ns=$((t1 - t0)) -v c="$c" 'BEGIN { split(c, a, " "); printf "%.1f %.1f\n", ns / 1e6, (a[1] + a[2]) * 1000 }'
}

k0=$(date +%s%N)
first=$(one_mount tls,iam first)
k1=$(date +%s%N)
[ -s "$w/privateKey.pem" ] || { echo "no host key was made"; exit 1; }
: >"$w/raw"
for i in $(seq "$n"); do
    echo "tls $(one_mount tls "p$i")" >>"$w/raw"
    echo "iam $(one_mount tls,iam "i$i")" >>"$w/raw"
done
grep -c "^allowed AKID=$akid" "$w/fake-efs.log" >"$w/allowed" || true
median() { sort -n | awk '{a[NR] = $1} END { print a[int((NR + 1) / 2)] }'; }
fig() { awk -v s="$1" -v c="$2" '$1 == s {print $c}' "$w/raw" | median; }
tw=$(fig tls 2); iw=$(fig iam 2); tc=$(fig tls 3); ic=$(fig iam 3)
added=$(awk -v a="$iw" -v b="$tw" 'BEGIN { printf "%.1f", a - b }')
echo "mount.efs, median of $n mounts each, alternating; mount target: the fake EFS on loopback"
printf '| %-22s | %9s | %9s | %9s | %s |\n' "" "-o tls" "-o tls,iam" "added" target
printf '| %-22s | %9s | %9s | %9s | %s |\n' "wall ms" "$tw" "$iw" "$added" "added <= 20"
printf '| %-22s | %9s | %9s | %9s | %s |\n' "CPU ms (mount.efs)" "$tc" "$ic" "$(awk -v a="$ic" -v b="$tc" 'BEGIN { printf "%.1f", a - b }')" "-"
echo "first iam mount, host key made (RSA-3072): $(awk -v ns=$((k1 - k0)) 'BEGIN { printf "%.0f", ns / 1e6 }') ms wall (once per host; then reused)"
echo "the fake EFS let $(cat "$w/allowed") IAM certificates in (expected $((n + 1)))"
[ "$(cat "$w/allowed")" = $((n + 1)) ] || { echo "MISSED: not every IAM mount was let in with its certificate"; exit 1; }
awk -v a="$added" 'BEGIN { exit !(a <= 20) }' || { echo "MISSED: IAM adds $added ms > 20 ms"; exit 1; }
echo "target met"
