# e2e-mode: fast
# e2e-timeout: 240
# Case 1: `mount -t efs -o tls fs-12345678:/ /mnt/efs` through our tunnel, with a real
# kernel NFS client and server; data bit-identical both ways; logged.
. /opt/efs/lib.sh
efs_side_up
# Partition multiplexing is on by default (auto), so this mount also shows a server
# without it (knfsd) served exactly as with it off.

mkdir -p /mnt/efs
check "mount -t efs -o tls exits 0" mount -t efs -o tls $FS:/ /mnt/efs
line=$(mountinfo_of /mnt/efs)
info "mountinfo: $line"
port=$(port_of /mnt/efs)
check "mounted from 127.0.0.1:/" sh -c "echo '$line' | grep -q ' 127.0.0.1:/ '"
check "port=$port is in 20049-21049" test "${port:-0}" -ge 20049 -a "${port:-0}" -lt 21049
check "NFS version 4.1" sh -c "echo '$line' | grep -q 'vers=4.1'"
check "hard mount" sh -c "echo '$line' | grep -q ',hard,'"
# The kernel's NFS sockets have no owning process; every connection to a port 2049 must
# be a process's (the tunnel's, or the test's TLS terminator's): none goes around the tunnel.
check "the kernel client connects only to the tunnel" sh -c \
    "ss -tn state established '( dport = :$port )' | grep -q 127.0.0.1:$port && \
     ! ss -tnp state established '( dport = :2049 )' | tail -n +2 | grep -v users:"
check "the tunnel is a real efs-tunnel process" pgrep -x efs-tunnel

dev=$(mountinfo_of /mnt/efs | cut -d' ' -f3)
check "read-ahead is 15 x rsize (optimize_readahead)" test "$(cat /sys/class/bdi/$dev/read_ahead_kb)" = 15360
dd if=/dev/urandom of=/tmp/src bs=1M count=64 status=none
cp /tmp/src /mnt/efs/file64
sync
check "64 MiB written through the mount is bit-identical in the export" test "$(sha /tmp/src)" = "$(sha /srv/efs/file64)"
drop_caches
check "and bit-identical read back through the mount" test "$(sha /tmp/src)" = "$(sha /mnt/efs/file64)"
echo "written on the server" >/srv/efs/from-server
check "a file written on the server is readable through the mount" grep -q "written on the server" /mnt/efs/from-server
check "mount.log says Successfully mounted" grep -q "Successfully mounted $DNS at /mnt/efs" /var/log/amazon/efs/mount.log
# knfsd (behind the TLS terminator) answers the partition bind call PROG_UNAVAIL, and the
# tunnel stays on one plain connection: the writes above.
check "the tunnel runs with --partition-multiplexing auto (the default)" sh -c \
    "tr '\\0' ' ' </proc/\$(pgrep -x efs-tunnel | head -1)/cmdline | grep -q -- '--partition-multiplexing auto'"
check "knfsd's PROG_UNAVAIL to the partition bind left one plain connection" grep -q \
    "does not multiplex (the server answered PROG_UNAVAIL)" /var/log/amazon/efs/efs-tunnel.log
check "umount works" umount /mnt/efs
finish
