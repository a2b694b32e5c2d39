# e2e-mode: fast
# e2e-timeout: 240
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

# The fallback turned off: the incumbent's text is not needed, the name is the tunnel's
# to resolve, and a name that does not exist fails the mount.
sed -i 's|^#\?fall_back_to_mount_target_ip_address_enabled = .*|fall_back_to_mount_target_ip_address_enabled = false|' /etc/amazon/efs/efs-utils.toml
out=$(timeout 120 mount -t efs -o tls $FS:/ /mnt/fb 2>&1)
rc=$?
check "with the fallback off the mount fails (exit $rc: $out)" test "$rc" = 32
check "naming the name that did not resolve" sh -c "echo \"\$1\" | grep -q 'DNS lookup failed'" _ "$out"
check "and the API was not asked again" test "$(grep -c 'api DescribeMountTargets' /var/log/fake-efs.log)" = 1
check "nothing left" sh -c '! pgrep -x efs-tunnel && [ -z "$(state_files)" ] && ! mountpoint -q /mnt/fb'
finish
