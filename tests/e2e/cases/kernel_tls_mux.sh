# e2e-mode: fast
# e2e-timeout: 900
# Partition multiplexing (#15) through the real kernel NFS client, with kernel TLS on:
# the fake EFS (tests/fake-efs, `--partition-id`) answers the tunnel's
# bind_client_to_partition READY in front of knfsd, which does not speak program 400123,
# so the tunnel's connections really are bound. `kernel_tls = "on"`,
# `partition_multiplexing` left at its default (auto), `mount -t efs -o tls`:
# 1. EFS's scale-up figures (5 connections, 300 MiB/s for 1 s: never reached here): one
#    bound connection, 256 MiB each way bit-identical, and that connection on kernel TLS;
# 2. a scale-up threshold of 1 byte/ms: a large sequential write makes the tunnel bind
#    more connections to the same partition, the data stays bit-identical, and every
#    upstream connection is on kernel TLS;
# 3. kill -9 of the tunnel mid-write while bound: the watchdog's new tunnel binds again
#    and the write completes bit-identical;
# 4. unmount leaves no tunnel and no state file.
. /opt/efs/lib.sh
P1=$(printf 'a1%.0s' $(seq 64))
P2=$(printf 'b2%.0s' $(seq 64))
LOG=/var/log/fake-efs.log
efs_side_up
start_fake_efs --partition-id "$P1"
sed -i 's|^#\?kernel_tls = .*|kernel_tls = "on"|' /etc/amazon/efs/efs-utils.toml
mkdir -p /mnt/efs
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun

# Binds the fake EFS answered on partition $1.
binds() { grep -c "^bound partition=$1 " "$LOG"; }
# The first tunnel's multiplexing status, as JSON on one line.
mux_status() { efs-utils status --json | tr -d ' \n' | grep -o '"multiplexing":{[^}]*}' | head -1; }
bound_connections() { mux_status | sed -n 's/.*"bound_connections":\([0-9]*\).*/\1/p'; }
# The tunnel's established connections to the mount target, and how many of them are
# the kernel's TLS sockets (ss: tcp-ulp-tls). (The fake EFS's own connections to knfsd
# go to 127.0.0.3.)
upstream() { ss -tnH state established '( dst 127.0.0.2:2049 )' | wc -l; }
upstream_ktls() { ss -tniH state established '( dst 127.0.0.2:2049 )' | grep -c tcp-ulp-tls; }
all_upstream_ktls() {
    local n k
    n=$(upstream)
    k=$(upstream_ktls)
    echo "$n upstream connection(s), $k on kernel TLS"
    [ "$n" -ge 1 ] && [ "$k" = "$n" ]
}
cmdline() { tr '\0' ' ' </proc/"$(pgrep -x efs-tunnel | head -1)"/cmdline; }

# --- 1. one bound connection, EFS's figures ---------------------------------------
check "mount -t efs -o tls exits 0 (kernel_tls = on, partition_multiplexing = auto)" \
    mount -t efs -o tls $FS:/ /mnt/efs
check "the tunnel runs with --kernel-tls on and --partition-multiplexing auto" sh -c \
    "echo \"\$1\" | grep -q -- '--kernel-tls on' && echo \"\$1\" | grep -q -- '--partition-multiplexing auto'" _ "$(cmdline)"
check "the mount works" works /mnt/efs .
check "the fake EFS answered a bind READY on partition 1" wait_for 10 sh -c "[ \$(grep -c '^bound partition=$P1 ' $LOG) -ge 1 ]"
info "fake EFS: $(grep '^bound' $LOG | cut -c1-40 | tr '\n' ' ')"
mux=$(mux_status)
info "status: $mux"
check "status: the server supports multiplexing, on partition 1" sh -c \
    "echo '$mux' | grep -q '\"server_supports\":true' && echo '$mux' | grep -q '\"partition_id\":\"$P1\"'"
check "status: at least one bound connection" test "$(bound_connections)" -ge 1
check "efs-utils status says so" sh -c "efs-utils status | grep -q 'partition multiplexing: [1-9][0-9]* bound connection(s), partition $P1'"
dd if=/dev/urandom of=/tmp/src bs=1M count=256 status=none
cp /tmp/src /mnt/efs/big
sync /mnt/efs/big
check "256 MiB written through the bound connection are bit-identical in the export" \
    test "$(sha /tmp/src)" = "$(sha /srv/efs/big)"
drop_caches
check "and bit-identical read back through it" test "$(sha /tmp/src)" = "$(sha /mnt/efs/big)"
info "upstream: $(upstream) connection(s), $(upstream_ktls) on kernel TLS; kernel_tls: $(ktls_status)"
check "EFS's figures are never reached here: still one bound connection, one bind" \
    test "$(bound_connections)" = 1 -a "$(binds "$P1")" = 1 -a "$(upstream)" = 1
check "the bound upstream connection is kernel TLS (ss: tcp-ulp-tls)" \
    all_upstream_ktls
rm -f /tmp/src /srv/efs/big
check "umount works" umount /mnt/efs
check "the watchdog stopped the tunnel after the umount" wait_for 30 sh -c "! pgrep -x efs-tunnel"

# --- 2. scale-up at guest speed: 1 byte/ms for 200 ms ------------------------------
mv "$LOG" /var/log/fake-efs.1.log
start_fake_efs --partition-id "$P2" --max-connections 4 --scale-up-bytes-per-ms 1 \
    --scale-up-breached-ms 200 --scale-up-lookback-ms 200
check "the fake EFS restarted with partition 2 and a 1 byte/ms threshold" \
    grep -q "partition $P2 scale-up .*scale_up_bytes_per_ms_threshold: 1," "$LOG"
check "mount again" mount -t efs -o tls $FS:/ /mnt/efs
dd if=/dev/urandom of=/tmp/src2 bs=1M count=256 status=none
check "a 256 MiB sequential write completes" timeout -k 5 300 dd if=/tmp/src2 of=/mnt/efs/big2 bs=1M conv=fsync status=none
n2=$(binds "$P2")
nb=$(bound_connections)
info "binds on partition 2: $n2; bound connections: $nb; upstream: $(upstream), $(upstream_ktls) on kernel TLS; $(mux_status)"
check "the fake EFS answered at least 2 binds on partition 2" test "$n2" -ge 2
check "status: more than one bound connection" test "${nb:-0}" -gt 1
check "the tunnel has that many connections to the mount target" test "$(upstream)" = "${nb:-0}"
check "the scaled-up write is bit-identical in the export" test "$(sha /tmp/src2)" = "$(sha /srv/efs/big2)"
drop_caches
check "and bit-identical read back over the bound connections" test "$(sha /tmp/src2)" = "$(sha /mnt/efs/big2)"
check "every upstream connection of the tunnel is kernel TLS" \
    all_upstream_ktls

rm -f /tmp/src2 /srv/efs/big2

# --- 3. kill -9 of the tunnel mid-write while bound --------------------------------
port=$(port_of /mnt/efs)
before=$(binds "$P2")
dd if=/dev/urandom of=/tmp/src3 bs=1M count=128 status=none
info "before the kill: $(upstream) upstream connection(s); $(mux_status)"
kill_tunnel_mid_write "$port" /tmp/src3 /mnt/efs/big3 /srv/efs/big3
info "killed tunnel $KILLED_TUNNEL mid-write"
check "the watchdog restarted the tunnel on port $port" tunnel_restarted "$port"
check "the write through the killed bound tunnel finished" test "$WRITE_RC" = 0
check "128 MiB arrived bit-identical" test "$(sha /tmp/src3)" = "$(sha /srv/efs/big3)"
check "the mount works through the restarted tunnel" works /mnt/efs .
check "the restarted tunnel bound again" wait_for 10 sh -c "[ \$(grep -c '^bound partition=$P2 ' $LOG) -gt $before ]"
check "status of the restarted tunnel: bound on partition 2" sh -c \
    "s=\$(efs-utils status --json | tr -d ' \n'); echo \"\$s\" | grep -q '\"partition_id\":\"$P2\"' && ! echo \"\$s\" | grep -q '\"bound_connections\":0'"
check "and its bound connections are kernel TLS again" wait_for 10 all_upstream_ktls

# --- 4. unmount --------------------------------------------------------------------
check "umount works" umount /mnt/efs
wait_for 30 no_nfs_client
check "no tunnel left after the umount" wait_for 30 sh -c "! pgrep -x efs-tunnel"
check "no state file left" wait_for 10 sh -c '[ -z "$(ls /var/run/efs 2>/dev/null | grep "^fs-" | grep -v "+$")" ]'
info "fake EFS binds: $(grep -c '^bound' /var/log/fake-efs.1.log) + $(grep -c '^bound' $LOG)"
finish
