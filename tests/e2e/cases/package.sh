# e2e-mode: systemd
# e2e-timeout: 240
# Issue 6: the Debian package installs with dpkg -i, a TLS mount works from the installed
# files, and dpkg -r leaves no unit and no binary, and the mount's data untouched.
. /opt/efs/lib.sh
make_certs
start_knfsd
start_tls_terminator

check "dpkg -i installs the package" dpkg -i /opt/efs/efs-utils.deb
configure_for_tests
for f in /sbin/mount.efs /usr/bin/efs-tunnel /usr/bin/efs-renew-cert /usr/bin/amazon-efs-mount-watchdog /usr/bin/efs-utils \
    /lib/systemd/system/amazon-efs-mount-watchdog.service /etc/amazon/efs/efs-utils.toml; do
    check "installed: $f" test -e $f
done
check "man finds mount.efs(8)" sh -c "man -w mount.efs >/dev/null 2>&1 || test -e /usr/share/man/man8/mount.efs.8"
mkdir -p /mnt/efs
check "mount -t efs -o tls from the installed files" mount -t efs -o tls $FS:/ /mnt/efs
echo "kept" >/mnt/efs/kept
sync
check "the watchdog unit runs" wait_for 15 systemctl is-active --quiet amazon-efs-mount-watchdog
check "efs-utils status says healthy" sh -c "efs-utils status | grep -q 'on /mnt/efs: healthy'"

check "dpkg -r removes the package" dpkg -r efs-utils
for f in /sbin/mount.efs /usr/bin/efs-tunnel /usr/bin/efs-renew-cert /usr/bin/amazon-efs-mount-watchdog /usr/bin/efs-utils \
    /lib/systemd/system/amazon-efs-mount-watchdog.service; do
    check "removed: $f" test ! -e $f
done
check "no watchdog unit is left" sh -c "! systemctl cat amazon-efs-mount-watchdog >/dev/null 2>&1"
check "the config file stays (a conffile, until purge)" test -e /etc/amazon/efs/efs-utils.toml
check "the mount's data is untouched on the server" grep -q kept /srv/efs/kept
check "and still readable through the mount" grep -q kept /mnt/efs/kept
umount /mnt/efs
check "dpkg --purge removes the configuration and logs" sh -c "dpkg --purge efs-utils && test ! -e /etc/amazon/efs/efs-utils.toml && test ! -e /var/log/amazon/efs"
finish
