# e2e-mode: fast
# e2e-timeout: 300
# Issue #13: the EFS CSI driver's node plugin, as it runs efs-utils: no systemd;
# /etc/amazon/efs a symlink into the host's /var/amazon/efs; efs-utils.conf (INI)
# rendered from the driver's own template (v1.30.2-based, region set, source k8s) with
# the CA as efs-utils.crt, and no TOML; the watchdog run by a supervisor loop with no
# backoff. A plugin restart kills the supervisor, the watchdog and every tunnel at once
# during a large write; the next supervisor must bring it all back with nothing lost.
. /opt/efs/lib.sh
make_certs
start_knfsd
start_tls_terminator
install_efs_utils
rm -f /etc/amazon/efs/efs-utils.toml
mkdir -p /var/amazon
mv /etc/amazon/efs /var/amazon/efs
ln -s /var/amazon/efs /etc/amazon/efs
cp /etc/e2e-tls/ca.pem /var/amazon/efs/efs-utils.crt
# efsUtilsConfigTemplate of pkg/driver/efs_watch_dog.go, rendered with Region=us-east-1,
# PortRangeUpperBound=21049, CsiDriverVersion=v2.1.8, EfsClientSource=k8s.
cat >/var/amazon/efs/efs-utils.conf <<'EOT'

#
# Copyright 2017-2018 Amazon.com, Inc. and its affiliates. All Rights Reserved.
#
# Licensed under the MIT License. See the LICENSE accompanying this file
# for the specific language governing permissions and limitations under
# the License.
#

[DEFAULT]
logging_level = INFO
logging_max_bytes = 1048576
logging_file_count = 10
# mode for /var/run/efs and subdirectories in octal
state_file_dir_mode = 750

[mount]
dns_name_format = {az}.{fs_id}.efs.{region}.{dns_name_suffix}
dns_name_suffix = amazonaws.com
#The region of the file system when mounting from on-premises or cross region.
region = us-east-1
stunnel_debug_enabled = false
#Uncomment the below option to save all stunnel logs for a file system to the same file
#stunnel_logs_file = /var/log/amazon/efs/{fs_id}.stunnel.log
stunnel_cafile = /etc/amazon/efs/efs-utils.crt
csi_driver_version=v2.1.8

# Validate the certificate hostname on mount. This option is not supported by certain stunnel versions.
stunnel_check_cert_hostname = true

# Use OCSP to check certificate validity. This option is not supported by certain stunnel versions.
stunnel_check_cert_validity = false

# Enable FIPS mode. stunnel complains if FIPS is available and enabled system-wide, but not set here.
#fips_mode_enabled = false

# Define the port range that the TLS tunnel will choose from
port_range_lower_bound = 20049
port_range_upper_bound = 21049

# Optimize read_ahead_kb for Linux 5.4+
optimize_readahead = true

# By default, we enable the feature to fallback to mount with mount target ip address when dns name cannot be resolved
fall_back_to_mount_target_ip_address_enabled = true

# By default, we use IMDSv2 to get the instance metadata, set this to true if you want to disable IMDSv2 usage
disable_fetch_ec2_metadata_token = false


[mount.cn-north-1]
dns_name_suffix = amazonaws.com.cn

[mount.cn-northwest-1]
dns_name_suffix = amazonaws.com.cn

[mount.us-iso-west-1]
dns_name_suffix = c2s.ic.gov
stunnel_cafile = /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem

[mount-watchdog]
enabled = true
poll_interval_sec = 1
unmount_count_for_consistency = 5
unmount_grace_period_sec = 30

# Set client auth/access point certificate renewal rate. Minimum value is 1 minute.
tls_cert_renewal_interval_min = 60

# Periodically check the health of stunnel to make sure the connection is fully established
stunnel_health_check_enabled = true
stunnel_health_check_interval_min = 5
stunnel_health_check_command_timeout_sec = 30

enable_version_check = false

[client-info] 
source=k8s

[cloudwatch-log]
# enabled = true
log_group_name = /aws/efs/utils

# Possible values are : 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, and 3653
# Comment this config to prevent log deletion
retention_in_days = 14
EOT
info "config check: $(efs-utils config check 2>&1 | grep -E 'stunnel_cafile|region |unmount_grace' | tr -s ' ' | tr '\n' ';')"

# The driver's execWatchdog: run it again whenever it exits, no backoff.
supervise() { (while :; do amazon-efs-mount-watchdog >/dev/null 2>&1; done) & echo $! >/tmp/supervisor.pid; }
supervise
wait_for 10 pgrep -x amazon-efs-moun

mkdir -p /mnt/pod1
out=$(mount -t efs -o tls,mounttargetip=127.0.0.2 $FS:/ /mnt/pod1 2>&1)
rc=$?
info "mount: exit $rc: $out"
check "mount -t efs -o tls,mounttargetip=... with the CSI driver's INI config and no TOML" test $rc = 0
check "nothing about systemd or the init system on the mount's output" sh -c "! echo '$out' | grep -qiE 'systemd|init system|Could not start'"
port=$(port_of /mnt/pod1)
check "the tunnel trusts the CA the driver installed (efs-utils.crt) and verifies the name" \
    sh -c "efs-utils status | grep -q 'certificate CN=\*.efs.us-east-1.amazonaws.com'"

# --- plugin restart during a large write ------------------------------------------------
dd if=/dev/urandom of=/tmp/src bs=1M count=256 status=none
rm -f /tmp/dd.rc
(dd if=/tmp/src of=/mnt/pod1/big bs=1M conv=fsync status=none; echo $? >/tmp/dd.rc) &
writer=$!
wait_for 60 sh -c '[ $(stat -c %s /srv/efs/big 2>/dev/null || echo 0) -ge 67108864 ]'
sup=$(cat /tmp/supervisor.pid)
kill -9 "$sup" $(pgrep -x amazon-efs-moun) $(pgrep -x efs-tunnel)
t_kill=$(date +%s%N)
info "killed the supervisor, the watchdog and every tunnel at once"
wait_for 5 sh -c '! pgrep -x efs-tunnel && ! pgrep -x amazon-efs-moun'
sleep 1
t_start=$(date +%s%N)
supervise
wait_for 10 sh -c "ss -ltn | grep -q '127.0.0.1:$port '"
serving_ms=$(( ($(date +%s%N) - t_start) / 1000000 ))
info "a tunnel served port $port again ${serving_ms} ms after the new watchdog was started"
check "the next watchdog has the tunnel serving its port within 2 s of its start" test "$serving_ms" -lt 2000
stall=$(stall_ms /srv/efs/big "$t_kill" /tmp/dd.rc 150)
wait $writer 2>/dev/null
check "the write finishes after the plugin restart" test "$(cat /tmp/dd.rc 2>/dev/null)" = 0
check "the 256 MiB file is bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/big)"
info "stall of the write across the plugin restart: ${stall} ms (1 s of it the plugin was down by design)"
check "one watchdog runs (the loop did not start a second)" test "$(pgrep -x amazon-efs-moun | wc -l)" = 1

umount /mnt/pod1
check "after umount and the 30 s grace period of the driver's config, the tunnel is gone" wait_for 45 sh -c '! pgrep -x efs-tunnel'
check "and its state" wait_for 5 sh -c '[ -z "$(state_files)" ]'
kill -9 "$(cat /tmp/supervisor.pid)" $(pgrep -x amazon-efs-moun) 2>/dev/null
finish
