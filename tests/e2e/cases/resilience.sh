# e2e-mode: fast
# e2e-timeout: 420
# Issue #14 on the real kernel: only the kernel's NFS client gets through the tunnel; a
# mount target that goes silent mid-write is detected and the hard mount recovers with
# nothing lost; the terminator killed and restarted 10 s later, and knfsd restarted,
# during writes; 30 TLS mounts made in parallel.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/efs
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun
check "mount -t efs -o tls" mount -t efs -o tls $FS:/ /mnt/efs
port=$(port_of /mnt/efs)
tunnel=$(tunnel_pid "$port")

# --- only root's sockets (the kernel's NFS client) ----------------------------------
caps=$(grep -E '^(CapEff|NoNewPrivs)' /proc/$tunnel/status | tr -s '\t ' ' ' | tr '\n' ' ')
info "tunnel $tunnel: $caps"
check "the tunnel holds no capability and cannot gain one" \
    sh -c "grep -q '^CapEff:[[:space:]]*0000000000000000' /proc/$tunnel/status && grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$tunnel/status"
# An RPC NULL call (NFS program 100003 v4) as nobody, straight to the tunnel's port.
null_call='\x80\x00\x00\x28\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01\x86\xa3\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
# nobody_call: one NULL call as nobody; prints the bytes that came back. Its exit is
# cat's under `timeout 5`: 0 at EOF, 1 on a reset (the tunnel closed with the call
# unread), 124 if the connection stayed open.
nobody_call() {
    setpriv --reuid=65534 --regid=65534 --clear-groups bash -c \
        "set -o pipefail; exec 3<>/dev/tcp/127.0.0.1/$port || exit 99; printf '$null_call' >&3 2>/dev/null; timeout 5 cat <&3 2>/dev/null | wc -c"
}
# What reaches the NFS server: /proc/net/rpc/nfsd's "rpc CALLS ..." and "net ALL UDP TCP
# TCPCONN" (TCP connections it accepted); and the kernel NFS client's own calls,
# /proc/net/rpc/nfs's "rpc CALLS ...".
nfsd_calls() { awk '$1 == "rpc" {print $2}' /proc/net/rpc/nfsd; }
nfsd_conns() { awk '$1 == "net" {print $5}' /proc/net/rpc/nfsd; }
client_calls() { awk '$1 == "rpc" {print $2}' /proc/net/rpc/nfs; }
# "CALLS CONNS CLIENT_CALLS", read at a moment the kernel client sent nothing (its
# count the same before and after the server's).
counts() {
    local c now
    while :; do
        c=$(client_calls)
        now="$(nfsd_calls) $(nfsd_conns) $(client_calls)"
        [ "${now##* }" = "$c" ] && echo "$now" && return
        sleep 0.2
    done
}
# No write runs during these attempts (the case's I/O starts after them), but an idle
# NFSv4.1 mount still renews its lease now and then (a SEQUENCE call), so the server's
# count may move on its own. Each of the kernel client's calls is counted once on each
# side, so the server's increase minus the client's is what anyone else sent; and a call
# from nobody could only arrive over a new connection through the terminator, which
# knfsd would count as accepted. The second after the attempts lets calls in flight land.
read -r calls0 conns0 client0 <<<"$(counts)"
refusals0=$(grep -c "refused a local connection.*uid 65534" /var/log/amazon/efs/efs-tunnel.log)
for attempt in 1 2 3; do
    t0=$(date +%s%N)
    got=$(nobody_call)
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    info "as nobody, NULL call $attempt got ${got:-nothing} byte(s), exit $rc, after $ms ms"
    check "as nobody, attempt $attempt: an NFS call to the tunnel's port gets no byte back" test "$got" = 0
    check "as nobody, attempt $attempt: the tunnel closes the connection (EOF or reset, not the 5 s timeout)" \
        test "$rc" != 124 -a "$rc" != 99
done
sleep 1
read -r calls1 conns1 client1 <<<"$(counts)"
info "server: $calls0 -> $calls1 RPC calls, $conns0 -> $conns1 TCP connections; the kernel client sent $((client1 - client0)) call(s) meanwhile"
check "nothing of the three attempts reached the NFS server: no call beyond the kernel client's own" \
    test $((calls1 - calls0)) -le $((client1 - client0))
check "and no new connection to it" test "$conns1" = "$conns0"
got=$(bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf '$null_call' >&3 && timeout 3 head -c 28 <&3 | wc -c" 2>&1)
info "as root (user space), the NULL call got ${got} byte(s)"
refusals=$(($(grep -c "refused a local connection.*uid 65534" /var/log/amazon/efs/efs-tunnel.log) - refusals0))
info "refusals of uid 65534 logged: $refusals; $(grep "refused a local connection" /var/log/amazon/efs/efs-tunnel.log | tail -1 | cut -c1-200)"
check "three refusals of one uid are logged once, naming the uid" test "$refusals" = 1
check "and all three counted in efs-utils status" sh -c "efs-utils status | grep -q 'refused     3 local connection'"
check "the mount keeps working" sh -c 'echo ok >/mnt/efs/after-refusal && sync && grep -qx ok /srv/efs/after-refusal'

# survives NAME DISRUPTION...: a 128 MiB write to /mnt/efs/NAME, the disruption run once
# 16 MiB have arrived; the write must finish and the file be bit-identical.
dd if=/dev/urandom of=/tmp/src bs=1M count=128 status=none
survives() {
    local name=$1
    shift
    rm -f /tmp/dd.rc
    (dd if=/tmp/src of=/mnt/efs/$name bs=1M conv=fsync status=none; echo $? >/tmp/dd.rc) &
    local writer=$!
    wait_for 60 sh -c "[ \$(stat -c %s /srv/efs/$name 2>/dev/null || echo 0) -ge 16777216 ]"
    "$@"
    wait_for 150 test -f /tmp/dd.rc
    wait $writer 2>/dev/null # not a bare wait: the watchdog is a job too
    check "$name: the write finishes" test "$(cat /tmp/dd.rc 2>/dev/null)" = 0
    check "$name: the file is bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/$name)"
}

# A mount target that goes silent: every packet to and from the terminator
# (127.0.0.2:2049) is dropped on the loopback for 60 s.
blackhole_for_60s() {
    if ! { tc qdisc add dev lo root handle 1: prio &&
        tc qdisc add dev lo parent 1:3 handle 30: netem loss 100% &&
        tc filter add dev lo parent 1:0 protocol ip prio 1 u32 match ip dst 127.0.0.2/32 match ip dport 2049 0xffff flowid 1:3 &&
        tc filter add dev lo parent 1:0 protocol ip prio 2 u32 match ip src 127.0.0.2/32 match ip sport 2049 0xffff flowid 1:3; }; then
        fail "tc could not drop the mount target's packets (sch_prio, sch_netem, cls_u32?)"
        tc qdisc del dev lo root 2>/dev/null
        return
    fi
    # From when every packet is dropped (taken after the filters are in, in ms) to the
    # tunnel's own log line saying it gave the connection up: its timestamp is when the
    # tunnel decided, with no polling delay, but in whole seconds (the second it was
    # written in, so it can read up to 1 s early, never late). The design is 30 s of
    # silence (tunnel_dead_upstream_timeout_sec, also TCP_USER_TIMEOUT).
    local t_drop_ms lines_before line detected_ms seen_ms
    lines_before=$(wc -l </var/log/amazon/efs/efs-tunnel.log)
    t_drop_ms=$(($(date +%s%N) / 1000000))
    info "$(date +%T) dropping every packet to and from the mount target"
    wait_for 45 sh -c "tail -n +$((lines_before + 1)) /var/log/amazon/efs/efs-tunnel.log | grep -q 'stopped answering'"
    seen_ms=$(($(date +%s%N) / 1000000 - t_drop_ms))
    line=$(tail -n +$((lines_before + 1)) /var/log/amazon/efs/efs-tunnel.log | grep 'stopped answering' | head -1)
    if [ -n "$line" ]; then
        # "YYYY-MM-DD HH:MM:SS UTC - LEVEL - message"
        detected_ms=$(($(date -u -d "$(echo "$line" | cut -c1-23)" +%s) * 1000 - t_drop_ms))
    else
        detected_ms=$seen_ms
    fi
    info "the tunnel closed the dead connection $detected_ms ms after the drop by its log (seen here after $seen_ms ms): $(echo "$line" | cut -c1-200)"
    check "a silent mount target is detected within 30 s (by the tunnel's log)" \
        test -n "$line" -a "$detected_ms" -le 30000
    local waited=$((seen_ms / 1000))
    sleep $((waited < 60 ? 60 - waited : 0))
    tc qdisc del dev lo root
    info "$(date +%T) the path is back"
}

terminator_down_10s() {
    kill -9 "$(cat /run/stunnel-server.pid)"
    sleep 10
    start_tls_terminator
}

knfsd_restart() {
    rpc.nfsd 0
    sleep 3
    rpc.nfsd 8
}

survives through-blackhole blackhole_for_60s
survives terminator-restart terminator_down_10s
survives knfsd-restart knfsd_restart
umount /mnt/efs

# --- 30 TLS mounts in parallel -----------------------------------------------------------
for i in $(seq 30); do mkdir -p /mnt/p$i /srv/efs/p$i; done
t0=$(date +%s)
for i in $(seq 30); do (mount -t efs -o tls $FS:/p$i /mnt/p$i; echo $? >/tmp/p$i.rc) & done
wait_for 120 sh -c 'ls /tmp/p*.rc 2>/dev/null | wc -l | grep -qx 30'
info "30 parallel mounts took $(($(date +%s) - t0)) s; exits: $(cat /tmp/p*.rc | sort | uniq -c | tr '\n' ' ')"
check "30 parallel TLS mounts all succeed" sh -c '[ "$(cat /tmp/p*.rc | sort -u)" = 0 ]'
ok=0
for i in $(seq 30); do echo "m$i" >/mnt/p$i/f 2>/dev/null && ok=$((ok + 1)); done
sync
check "all 30 work, each in its own directory" sh -c 'for i in $(seq 30); do grep -qx "m$i" /srv/efs/p$i/f || exit 1; done'
info "tunnels running for 30 mounts of one file system: $(pgrep -x efs-tunnel | wc -l)"
check "they share one tunnel, as the kernel shares one connection" test "$(pgrep -x efs-tunnel | wc -l)" = 1
for i in $(seq 30); do umount /mnt/p$i; done
check "after unmounting all 30 every tunnel is gone" wait_for 20 sh -c '! pgrep -x efs-tunnel'
check "and every state file" wait_for 5 sh -c '[ -z "$(state_files)" ]'
finish
