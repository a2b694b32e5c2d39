# e2e-mode: systemd
# e2e-boots: 2
# e2e-timeout: 360
# Issue #12: an fstab line with `iam,accesspoint=` as AWS documents it mounts at boot,
# through systemd (no HOME in mount's environment: root's ~/.aws is found from the
# password database), against a fake of EFS that requires IAM and the access point.
. /opt/efs/lib.sh
CASE="iam_fstab (boot $(boot_number))"
AP=fsap-0123456789abcdef0

if [ "$(boot_number)" = 1 ]; then
    efs_side_up
    start_fake_efs --require-iam --access-point $AP
    efs_side_at_boot start_fake_efs --require-iam --access-point $AP
    aws_profiles
    mkdir -p /mnt/iam
    echo "at boot, behind the access point" >/srv/efs/hello
    # Renewal every minute, so that boot 2 sees one under the watchdog's systemd sandbox
    # (which must let it read root's ~/.aws).
    sed -i 's|^#tls_cert_renewal_interval_min = .*|tls_cert_renewal_interval_min = 1|' /etc/amazon/efs/efs-utils.toml
    echo "$FS:/ /mnt/iam efs _netdev,tls,iam,accesspoint=$AP 0 0" >>/etc/fstab
    systemctl daemon-reload
    check "mount -a" mount -a
    check "/mnt/iam is mounted" grep -q "behind the access point" /mnt/iam/hello
    : >/var/log/fake-efs.log # boot 2 checks its own verdicts
    finish
else
    check "at boot, systemd mounted /mnt/iam" systemctl is-active --quiet mnt-iam.mount
    check "/mnt/iam serves the file system" grep -q "at boot, behind the access point" /mnt/iam/hello
    check "the fake EFS let in our access key with the access point" \
        grep -q "allowed AKID=$E2E_AKID ap=$AP" /var/log/fake-efs.log
    echo "written at boot 2" >/mnt/iam/boot2
    sync
    check "a write reaches the export" grep -q "written at boot 2" /srv/efs/boot2
    check "the watchdog unit is active" wait_for 15 systemctl is-active --quiet amazon-efs-mount-watchdog
    st=/var/run/efs/$(state_files | head -1)
    check "within 90 s the watchdog (under systemd) renewed the certificate from root's profile" \
        wait_for 90 grep -q '"renewed"' "$st"
    grep -h 'renewal_error' "$st" | sed 's/^/INFO /'
    check "no renewal error" sh -c "! grep -q renewal_error '$st'"
    check "the data path carries on after the renewal" sh -c "echo after >/mnt/iam/after && sync && grep -q after /srv/efs/after"
    check "no failed units" sh -c "[ -z \"\$(systemctl --failed --no-legend)\" ]"
    systemctl --failed --no-legend | sed 's/^/INFO failed unit: /'
    [ "$FAILS" = 0 ] || journalctl -b -u e2e-efs -u mnt-iam.mount --no-pager | tail -15 | sed 's/^/INFO journal: /'
    finish
fi
