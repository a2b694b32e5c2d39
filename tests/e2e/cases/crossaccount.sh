# e2e-mode: fast
# e2e-timeout: 180
# Issue #12: `-o tls,crossaccount` on the real kernel: the mount target is named by the
# client's AZ ID from instance metadata (a fake IMDSv2 here), as amazon-efs-utils names
# it, `<az-id>.<fs_id>.efs.<region>.<suffix>`; the certificate is still checked against
# the file system's name.
. /opt/efs/lib.sh
efs_side_up
start_fake_imds use1-az4 us-east-1
echo "127.0.0.2 use1-az4.$DNS" >>/etc/hosts
sed -i 's|^#instance_metadata_url = .*|instance_metadata_url = "http://127.0.0.9"|' /etc/amazon/efs/efs-utils.toml
mkdir -p /mnt/x
echo "across accounts" >/srv/efs/cross
check "mount -t efs -o tls,crossaccount" mount -t efs -o tls,crossaccount $FS:/ /mnt/x
check "it asked instance metadata for the AZ ID (with an IMDSv2 token)" \
    sh -c "grep -q 'PUT /latest/api/token' /var/log/fake-imds.log && grep -q 'GET /latest/meta-data/placement/availability-zone-id' /var/log/fake-imds.log"
st=/var/run/efs/$(state_files | head -1)
check "the tunnel dials the AZ ID's mount target name" grep -q "\"connect\": \"use1-az4.$DNS:2049\"" "$st"
check "and checks the certificate against the file system's name" grep -q "\"check_host\": \"$DNS\"" "$st"
check "the data is there" grep -q "across accounts" /mnt/x/cross
check "umount" umount /mnt/x
out=$(mount -t efs -o tls,crossaccount,mounttargetip=127.0.0.2 $FS:/ /mnt/x 2>&1)
rc=$?
check "with mounttargetip it is refused as the incumbent refuses it (exit $rc: $out)" \
    test "$rc" = 1 -a "$out" = "mounttargetip option is incompatible with crossaccount option."
finish
