# e2e-mode: fast
# e2e-timeout: 300
# Issue #15: `-o tls,nconnect=4` on the real kernel: the NFS client opens four
# connections and the tunnel serves every one over TLS of its own (efs-proxy serves one
# and drops the rest); 128 MiB both ways bit-identical; after kill -9 of the tunnel
# mid-write the watchdog's restart gets all four back and nothing is lost.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/efs
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun
check "mount -t efs -o tls,nconnect=4" mount -t efs -o tls,nconnect=4 $FS:/ /mnt/efs
port=$(port_of /mnt/efs)
check "mountinfo has nconnect=4" sh -c "grep ' /mnt/efs ' /proc/self/mountinfo | grep -q nconnect=4"
dd if=/dev/urandom of=/tmp/src bs=1M count=128 status=none
cp /tmp/src /mnt/efs/big && sync
conns() { ss -tn state established "( dport = :$port )" | grep -c "127.0.0.1:$port"; }
info "kernel connections to the tunnel: $(conns)"
check "the kernel holds 4 connections to the tunnel" test "$(conns)" = 4
tls_out() { ss -tnp state established '( dport = :2049 )' | grep -c efs-tunnel; }
check "and the tunnel 4 TLS connections to the mount target" test "$(tls_out)" = 4
check "efs-utils status counts 4 open connections" sh -c "efs-utils status --json | grep -q '\"connections_open\": *4'"
check "128 MiB written bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/big)"
drop_caches
check "and read back bit-identical over the 4 connections" test "$(sha /tmp/src)" = "$(sha /mnt/efs/big)"

tunnel=$(tunnel_pid "$port")
(dd if=/tmp/src of=/mnt/efs/big2 bs=1M conv=fsync status=none; echo $? >/tmp/dd.rc) &
writer=$!
sleep 1
kill -9 "$tunnel"
restarted() { local p; p=$(tunnel_pid "$port"); [ -n "$p" ] && [ "$p" != "$tunnel" ]; }
check "the watchdog restarted the tunnel" wait_for 30 restarted
wait_for 120 test -f /tmp/dd.rc
wait $writer 2>/dev/null # not a bare wait: the watchdog is a job too
check "the write during the restart finished" test "$(cat /tmp/dd.rc 2>/dev/null)" = 0
check "and is bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/big2)"
check "the kernel reconnected all 4 connections" wait_for 30 sh -c "[ \$(ss -tn state established '( dport = :$port )' | grep -c 127.0.0.1:$port) = 4 ]"
check "umount" umount /mnt/efs
finish
