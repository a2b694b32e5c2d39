#!/usr/bin/env bash
# The watchdog's cost while idle with 50 tunnels: resident memory and CPU share over a
# quiet minute. Targets: under 4 MB and under 0.1 % of a core.
#
# Real parts on loopback: 50 real mounts' tunnels started by the real mount.efs (its
# mount.nfs4 is /bin/true here: the host kernel has no NFS), a stunnel TLS terminator on
# 127.0.0.77:2049 with a throwaway CA, and the real watchdog watching a mount table file
# that lists all 50.   BENCH_IDLE_SECS (default 60) sets the measured interval.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v stunnel4 >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 openssl >/dev/null; }
cargo build --release --locked -p efs-tunnel -p efs-mount-helper -p efs-watchdog -p efs-bench
secs=${BENCH_IDLE_SECS:-60}
n=50
w=$(mktemp -d /tmp/efs-wd-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "$w/run/tunnel-" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/run" "$w/log" "$w/mnt"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$w/ca.key" -out "$w/ca.pem" \
    -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$w/s.key" -out "$w/s.csr" \
    -subj "/CN=*.efs.us-east-1.amazonaws.com" 2>/dev/null
printf 'subjectAltName=DNS:*.efs.us-east-1.amazonaws.com\nextendedKeyUsage=serverAuth\n' >"$w/ext"
openssl x509 -req -in "$w/s.csr" -CA "$w/ca.pem" -CAkey "$w/ca.key" -CAcreateserial -days 2 \
    -extfile "$w/ext" -out "$w/s.pem" 2>/dev/null
target/release/efs-bench backend --listen 127.0.0.77:23049 &
pids+=($!)
printf 'foreground = yes\npid =\ndebug = 3\n[nfs]\naccept = 127.0.0.77:2049\nconnect = 127.0.0.77:23049\ncert = %s\nkey = %s\n' \
    "$w/s.pem" "$w/s.key" >"$w/stunnel.conf"
stunnel4 "$w/stunnel.conf" 2>"$w/stunnel.log" &
pids+=($!)
sleep 0.5

cat >"$w/efs-utils.toml" <<EOT
[mount]
region = "us-east-1"
stunnel_cafile = "$w/ca.pem"
[paths]
state_dir = "$w/run"
log_dir = "$w/log"
mount_nfs = "/bin/true"
systemd_run_dir = "$w/no-systemd"
mountinfo = "$w/mountinfo"
tunnel = "$PWD/target/release/efs-tunnel"
EOT
export EFS_UTILS_CONFIG="$w/efs-utils.toml"
for i in $(seq $n); do
    mkdir -p "$w/mnt/m$i"
    target/release/mount-efs fs-12345678 "$w/mnt/m$i" -o tls,mounttargetip=127.0.0.77 2>/dev/null &
done
wait_mounts() { [ "$(ls "$w/run" | grep -c '^fs-')" -ge $n ]; }
for _ in $(seq 100); do wait_mounts && break; sleep 0.1; done
i=0
for f in "$w"/run/fs-*; do
    port=${f##*.}
    i=$((i + 1))
    echo "$((40 + i)) 22 0:$((60 + i)) / $w/mnt/m$i rw - nfs4 127.0.0.1:/ rw,vers=4.1,port=$port,addr=127.0.0.1"
done >"$w/mountinfo"

target/release/amazon-efs-mount-watchdog 2>/dev/null &
wd=$!
pids+=($wd)
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks $wd)
sleep "$secs"
t1=$(ticks $wd)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$wd/status")
tunnels=$(grep -c "adopted the tunnel" "$w/log/mount-watchdog.log" || true)
cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$secs" 'BEGIN { printf "%.3f", 100 * d / hz / s }')
echo "watchdog idle with $tunnels tunnels over ${secs} s: RSS $((rss / 1024)).$(( (rss % 1024) * 10 / 1024 )) MiB (target < 4), CPU ${cpu} % of a core (target < 0.1; ${hz} ticks/s resolution)"
