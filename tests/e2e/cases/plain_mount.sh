# e2e-mode: fast
# e2e-timeout: 180
# Case 8: without tls, mount.efs mounts the server directly: no tunnel, no state.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/p
check "mount -t efs without tls exits 0" mount -t efs -o mounttargetip=127.0.0.3 $FS:/ /mnt/p
line=$(mountinfo_of /mnt/p)
info "mountinfo: $line"
check "mounted from the server itself" sh -c "echo '$line' | grep -q ' 127.0.0.3:/ '"
check "no tunnel" sh -c "! pgrep -x efs-tunnel"
check "no state file" test -z "$(state_files)"
echo plain >/mnt/p/plain
check "data reaches the export" grep -q plain /srv/efs/plain
umount /mnt/p
finish
