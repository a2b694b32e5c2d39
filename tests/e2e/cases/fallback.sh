# e2e-mode: fast
# e2e-timeout: 360
# Issue #12: the mount-target-IP fallback on the real kernel. The file system's DNS name
# does not resolve (its first label has 64 octets: glibc refuses it without asking a
# server), so mount.efs asks the EFS API for the mount target in this client's AZ (a
# fake of the API in tests/fake-efs that recomputes each SigV4 signature; the AZ ID from
# a fake IMDSv2; the key from root's default profile) and mounts its IP address, the
# certificate still checked against the file system's name. A tunnel killed with -9 is
# restarted on that address and the write goes on.
. /opt/efs/lib.sh
efs_side_up
aws_profiles
start_fake_efs --aws-api 127.0.0.10:80 --mount-target-ip 127.0.0.2 --mount-target-az-id use1-az4
start_fake_imds use1-az4 us-east-1
long=$(printf 'a%.0s' $(seq 1 64))
sed -i -e "s|^#dns_name_format = .*|dns_name_format = \"$long.{fs_id}.efs.{region}.{dns_name_suffix}\"|" \
    -e 's|^#efs_endpoint_url = .*|efs_endpoint_url = "http://127.0.0.10/"|' \
    -e 's|^#instance_metadata_url = .*|instance_metadata_url = "http://127.0.0.9"|' \
    /etc/amazon/efs/efs-utils.toml
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun
mkdir -p /mnt/fb
echo "found by its mount target" >/srv/efs/fallback

check "the DNS name does not resolve" sh -c "! getent ahosts $long.$DNS"
check "mount -t efs -o tls falls back to the mount target's address" mount -t efs -o tls $FS:/ /mnt/fb
check "the fake EFS API got one signed DescribeMountTargets" \
    sh -c "test \"\$(grep -c 'api DescribeMountTargets ok' /var/log/fake-efs.log)\" = 1 && ! grep -q 'denied:' /var/log/fake-efs.log"
check "mount.log names the address" grep -q "Found fall back mount target ip address 127.0.0.2 for file system $FS" /var/log/amazon/efs/mount.log
st=/var/run/efs/$(state_files | head -1)
check "the tunnel dials the address" grep -q '"connect": "127.0.0.2:2049"' "$st"
check "and checks the certificate against the file system's name" grep -q "\"check_host\": \"$DNS\"" "$st"
check "the data is there" grep -q "found by its mount target" /mnt/fb/fallback

old=$(pgrep -x efs-tunnel)
dd if=/dev/urandom of=/tmp/fb.src bs=1M count=32 status=none
sum=$(sha256sum </tmp/fb.src)
( dd if=/tmp/fb.src of=/mnt/fb/big bs=1M conv=fsync status=none; echo $? >/tmp/fb.rc ) &
sleep 1
kill -9 $old
wait_for 20 sh -c 'p=$(pgrep -x efs-tunnel) && [ "$p" != '"$old"' ]'
wait_for 120 test -s /tmp/fb.rc
check "killed with -9 mid-write, the tunnel is back on the same address" \
    sh -c "p=\$(pgrep -x efs-tunnel) && [ \"\$p\" != $old ] && tr '\\0' ' ' </proc/\$p/cmdline | grep -q 127.0.0.2:2049"
check "and the write completed (exit $(cat /tmp/fb.rc 2>/dev/null))" test "$(cat /tmp/fb.rc 2>/dev/null)" = 0
check "bit-identical" test "$(sha256sum </srv/efs/big)" = "$sum"
check "umount" umount /mnt/fb
wait_for 15 sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ]'
check "tunnel and state gone" sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ]'

# As an operator would: the same command twice, a second mount of a subdirectory that
# rides on the first one's connection, the watchdog restarted during a write, and the
# first-made mount unmounted first.
mkdir -p /srv/efs/sub /mnt/fb2
echo "in the subdirectory" >/srv/efs/sub/file
check "mount again" mount -t efs -o tls $FS:/ /mnt/fb
out=$(mount -t efs -o tls $FS:/ /mnt/fb 2>&1)
rc=$?
check "the same command again: exit 0, already mounted (exit $rc: $out)" \
    sh -c "[ $rc = 0 ] && echo \"\$1\" | grep -q 'already mounted'" _ "$out"
check "and no second mount is stacked" test "$(mountinfo_of /mnt/fb | wc -l)" = 1
check "a second mount, of a subdirectory" mount -t efs -o tls $FS:/sub /mnt/fb2
check "it reads its file" grep -q "in the subdirectory" /mnt/fb2/file
check "each lookup asked the API once more, signed" \
    sh -c "test \"\$(grep -c 'api DescribeMountTargets ok' /var/log/fake-efs.log)\" = 3 && ! grep -q 'denied:' /var/log/fake-efs.log"
( dd if=/tmp/fb.src of=/mnt/fb2/big2 bs=1M conv=fsync status=none; echo $? >/tmp/fb2.rc ) &
sleep 1
pkill -x amazon-efs-moun
sleep 0.5
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 120 test -s /tmp/fb2.rc
check "the watchdog restarted during a write: it completed (exit $(cat /tmp/fb2.rc 2>/dev/null))" test "$(cat /tmp/fb2.rc 2>/dev/null)" = 0
check "bit-identical" test "$(sha256sum </srv/efs/sub/big2)" = "$sum"
check "umount the first-made mount first" umount /mnt/fb
sleep 5 # past the 3 s grace period
check "the second still works" timeout -k 5 30 sh -c 'echo after >/mnt/fb2/after && sync /mnt/fb2/after'
check "and its write reached the export" grep -q after /srv/efs/sub/after
check "umount the second" umount /mnt/fb2
wait_for 15 sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ]'
check "every tunnel and state file gone" sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ]'

# Input nobody expects: an endpoint that is not a URL is named, exit 1, nothing left.
sed -i 's|^efs_endpoint_url = .*|efs_endpoint_url = "ftp://127.0.0.10/"|' /etc/amazon/efs/efs-utils.toml
out=$(mount -t efs -o tls $FS:/ /mnt/fb 2>&1)
rc=$?
check "an efs_endpoint_url that is not http(s): exit $rc, one line naming it ($out)" \
    sh -c "[ $rc = 1 ] && [ \$(echo \"\$1\" | wc -l) = 1 ] && echo \"\$1\" | grep -q 'ftp://127.0.0.10/'" _ "$out"
check "nothing left" sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ] && ! mountpoint -q /mnt/fb'
sed -i 's|^efs_endpoint_url = .*|efs_endpoint_url = "http://127.0.0.10/"|' /etc/amazon/efs/efs-utils.toml

# The fallback turned off: the incumbent's text is not needed, the name is the tunnel's
# to resolve, and a name that does not exist fails the mount.
sed -i 's|^#\?fall_back_to_mount_target_ip_address_enabled = .*|fall_back_to_mount_target_ip_address_enabled = false|' /etc/amazon/efs/efs-utils.toml
out=$(timeout 120 mount -t efs -o tls $FS:/ /mnt/fb 2>&1)
rc=$?
check "with the fallback off the mount fails (exit $rc: $out)" test "$rc" = 32
check "naming the name that did not resolve" sh -c "echo \"\$1\" | grep -q 'DNS lookup failed'" _ "$out"
check "and the API was not asked again" test "$(grep -c 'api DescribeMountTargets' /var/log/fake-efs.log)" = 3
check "nothing left" sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ] && ! mountpoint -q /mnt/fb'
finish
