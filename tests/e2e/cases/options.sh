# e2e-mode: fast
# e2e-timeout: 300
# Case 3: subdirectory, tlsport=, user NFS options winning, 10 mounts in parallel.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /srv/efs/sub/dir /mnt/sub /mnt/pinned /mnt/opts
echo sub >/srv/efs/sub/dir/marker

check "tlsport= pins the tunnel's port" mount -t efs -o tls,tlsport=20999 $FS:/ /mnt/pinned
check "mountinfo shows port=20999" test "$(port_of /mnt/pinned)" = 20999
check "a subdirectory mounts" mount -t efs -o tls $FS:/sub/dir /mnt/sub
check "and shows the subdirectory's files" grep -q sub /mnt/sub/marker
# The kernel gives a second mount of the same server the first mount's NFS client: its
# mountinfo names the first tunnel's port. The watchdog must keep that tunnel for both.
info "second mount shares: $(mountinfo_of /mnt/sub | grep -o 'port=[0-9]*')"
check "a second mount of the server reuses the first tunnel (kernel client sharing)" test "$(port_of /mnt/sub)" = 20999
check "user options win" mount -t efs -o tls,rsize=65536,wsize=65536,timeo=300,nosharecache $FS:/ /mnt/opts
line=$(mountinfo_of /mnt/opts)
info "mountinfo: $line"
check "rsize/wsize/timeo as the user asked" sh -c "echo '$line' | grep -q 'rsize=65536,wsize=65536' && echo '$line' | grep -q 'timeo=300'"
umount /mnt/sub /mnt/pinned /mnt/opts

# A DNS alias of the file system's name as the device (here an /etc/hosts alias, which
# getaddrinfo reports with the EFS name as canonical name, as it would a CNAME).
sed -i 's/^127.0.0.2 .*/& myefs.example.internal/' /etc/hosts
mkdir -p /mnt/alias
check "an alias of the EFS name mounts" mount -t efs -o tls,nosharecache myefs.example.internal:/ /mnt/alias
check "through a tunnel" sh -c "mountinfo_of /mnt/alias >/dev/null; grep -q ' /mnt/alias .* 127.0.0.1:/ ' /proc/self/mountinfo"
umount /mnt/alias

for i in $(seq 10); do mkdir -p /mnt/par$i; done
for i in $(seq 10); do
    (mount -t efs -o tls,nosharecache $FS:/ /mnt/par$i >/tmp/par$i.log 2>&1; echo $? >/tmp/par$i.rc) &
done
wait
ok=0
for i in $(seq 10); do [ "$(cat /tmp/par$i.rc)" = 0 ] && mountpoint -q /mnt/par$i && ok=$((ok + 1)); done
check "10 parallel mounts all succeed ($ok/10)" test $ok = 10
ports=$(for i in $(seq 10); do port_of /mnt/par$i; done | sort -u | wc -l)
check "on 10 distinct tunnel ports" test "$ports" = 10
echo parallel >/mnt/par7/p7
check "and each works" grep -q parallel /mnt/par3/p7
for i in $(seq 10); do umount /mnt/par$i; done
finish
