# e2e-mode: systemd
# e2e-boots: 2
# e2e-timeout: 240
# Case 2: fstab lines as AWS documents them (with _netdev, nofail, x-systemd.automount):
# `mount -a` mounts them, and so does the next boot, through systemd, with the watchdog
# unit active.
. /opt/efs/lib.sh
CASE="fstab_boot (boot $(boot_number))"

if [ "$(boot_number)" = 1 ]; then
    efs_side_up
    efs_side_at_boot
    mkdir -p /mnt/a /mnt/b /mnt/c /srv/efs/sub
    echo "from the export" >/srv/efs/hello
    echo "from sub" >/srv/efs/sub/hello
    cat >>/etc/fstab <<EOT
fs-12345678:/ /mnt/a efs _netdev,tls 0 0
fs-12345678:/sub /mnt/b efs _netdev,tls,nofail 0 0
fs-12345678:/ /mnt/c efs _netdev,tls,x-systemd.automount 0 0
EOT
    systemctl daemon-reload
    check "mount -a" mount -a
    check "/mnt/a is mounted" mountpoint -q /mnt/a
    check "/mnt/b (nofail) is mounted" grep -q "from sub" /mnt/b/hello
    check "/mnt/c (automount) mounts on access" grep -q "from the export" /mnt/c/hello
    check "the watchdog unit is active" wait_for 15 systemctl is-active --quiet amazon-efs-mount-watchdog
    finish
else
    check "at boot, systemd mounted /mnt/a" systemctl is-active --quiet mnt-a.mount
    check "and /mnt/b" systemctl is-active --quiet mnt-b.mount
    check "the automount for /mnt/c is armed" systemctl is-active --quiet mnt-c.automount
    check "/mnt/a serves the file system" grep -q "from the export" /mnt/a/hello
    check "/mnt/c mounts on access" grep -q "from the export" /mnt/c/hello
    check "the mounts go through tunnels" grep -qE ' /mnt/a .* - nfs4 127[.]0[.]0[.]1:/ ' /proc/self/mountinfo
    check "the watchdog unit is active" wait_for 15 systemctl is-active --quiet amazon-efs-mount-watchdog
    check "no failed units" sh -c "[ -z \"\$(systemctl --failed --no-legend)\" ]"
    systemctl --failed --no-legend | sed 's/^/INFO failed unit: /'
    finish
fi
