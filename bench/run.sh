#!/usr/bin/env bash
# Our tunnel against stunnel as amazon-efs-utils configures it, on this machine, in one
# run, interleaved. Everything stays on loopback:
#
#   efs-bench ──▶ 127.0.0.1:20049 efs-tunnel (ours)        ─┐ TLS
#   efs-bench ──▶ 127.0.0.1:20050 stunnel client (theirs)  ─┤──▶ 127.0.0.1:22049 stunnel server ──▶ 127.0.0.1:23049 efs-bench backend
#
# Prints a table of figures and ours/stunnel ratios. Tunables (environment):
#   BENCH_MIB   MiB per bulk run and direction (default 1024)
#   BENCH_ROUNDS  interleaved rounds, the median is reported (default 5)
#   BENCH_HOLD  connections held open for the memory figure (default 1000)
#   BENCH_AGAINST  path of another efs-tunnel binary (say, a build of main) to measure in
#               stunnel's place: an A/B of two builds of ours, same run, same ratios
#   BENCH_OURS_ARGS, BENCH_AGAINST_ARGS  more arguments for our tunnel and for that one:
#               BENCH_AGAINST=target/release/efs-tunnel BENCH_OURS_ARGS="--partition-multiplexing auto"
#               is multiplexing's record pump against the plain byte pump (the backend
#               answers the partition bind)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v stunnel4 >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 openssl >/dev/null
fi
cargo build --release --locked -p efs-tunnel -p efs-bench
ulimit -n "$(ulimit -Hn)"  # 1000 held connections need a few thousand descriptors

work=$(mktemp -d /tmp/efs-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

name=fs-12345678.efs.us-east-1.amazonaws.com
. tests/e2e/lib.sh # throwaway_certs and incumbent_stunnel_conf, in one place each
throwaway_certs "$work"

# The mount target: a TLS terminator in front of the RPC backend. Session resumption is
# off, so that every connection of either tunnel pays a full handshake.
cat >"$work/server.conf" <<EOF
foreground = yes
pid =
debug = 3
[nfs]
accept = 127.0.0.1:22049
connect = 127.0.0.1:23049
cert = $work/server.pem
key = $work/server.key
sessionResume = no
socket = a:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
EOF

# stunnel as amazon-efs-utils v3.2.0 writes its config (section 6.2 of the reference),
# minus the client certificate (a plain TLS mount on both sides). Logs go to a
# file: this machine has no /dev/log, and syslog would cost stunnel 5 ms a line.
incumbent_stunnel_conf 127.0.0.1:20050 127.0.0.1:22049 "$work/ca.pem" "$name" >"$work/client.conf"

target/release/efs-bench backend --listen 127.0.0.1:23049 &
pids+=($!)
stunnel4 "$work/server.conf" 2>"$work/server.log" &
pids+=($!)
if [ -n "${BENCH_AGAINST:-}" ]; then
    "$BENCH_AGAINST" --listen 127.0.0.1:20050 --connect 127.0.0.1:22049 --check-host "$name" \
        --cafile "$work/ca.pem" --log-file "$work/against.log" ${BENCH_AGAINST_ARGS:-} &
    theirs_name=other
else
    stunnel4 "$work/client.conf" 2>"$work/client.log" &
    theirs_name=stunnel
fi
theirs=$!
pids+=($theirs)
target/release/efs-tunnel --listen 127.0.0.1:20049 --connect 127.0.0.1:22049 --check-host "$name" \
    --cafile "$work/ca.pem" --log-file "$work/ours.log" ${BENCH_OURS_ARGS:-} &
ours=$!
pids+=($ours)

for port in 23049 22049 20050 20049; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
done

echo "efs-bench: $(nproc) cores, $(uname -r); ours $(target/release/efs-tunnel --version | head -1); $(stunnel4 -version 2>&1 | head -1)"
target/release/efs-bench compare --ours 127.0.0.1:20049 --ours-pid "$ours" \
    --theirs 127.0.0.1:20050 --theirs-pid "$theirs" --theirs-name "$theirs_name" \
    --bulk-mib "${BENCH_MIB:-1024}" --rounds "${BENCH_ROUNDS:-5}" --hold "${BENCH_HOLD:-1000}"
