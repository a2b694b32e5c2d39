# e2e-mode: systemd
# e2e-timeout: 180
# e2e-show: all
# The demo: a real kernel mounts "EFS" through our TLS tunnel, as an operator would.
. /opt/efs/lib.sh
efs_side_up >/dev/null 2>&1
mkdir -p /mnt/efs
say() { echo; echo "\$ $*"; }

say "mount -t efs -o tls fs-12345678:/ /mnt/efs"
mount -t efs -o tls fs-12345678:/ /mnt/efs
say "grep /mnt/efs /proc/mounts"
grep /mnt/efs /proc/mounts
say "echo 'hello through TLS' > /mnt/efs/hello; cat /mnt/efs/hello"
echo 'hello through TLS' >/mnt/efs/hello
cat /mnt/efs/hello
say "cat /srv/efs/hello      # the same file, on the NFS server's side"
cat /srv/efs/hello
say "efs-utils status"
systemctl is-active --quiet amazon-efs-mount-watchdog || sleep 2
efs-utils status
say "tail -n 3 /var/log/amazon/efs/mount.log"
tail -n 3 /var/log/amazon/efs/mount.log
say "umount /mnt/efs"
umount /mnt/efs && echo "unmounted"
echo
check "the demo mounted, wrote, read and unmounted through the tunnel" test "$(cat /srv/efs/hello)" = "hello through TLS"
finish
