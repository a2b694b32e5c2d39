# e2e-mode: systemd
# e2e-timeout: 300
# Issue #13: an in-place upgrade from amazon-efs-utils. A hard mount made as amazon-efs-utils
# makes it (the real stunnel on the port, its stunnel config, state file and OpenSSL
# workspace in its own formats, mount.nfs4 with its options) and its watchdog (a stand-in
# of that name, outside systemd), busy with writes; then `dpkg -i` of our package.
# The writes go on with no I/O error and are bit-identical, our tunnel serves the port,
# stunnel and the incumbent's watchdog are gone, its files are gone, the state is ours,
# and umount cleans everything up.
. /opt/efs/lib.sh
make_certs
start_knfsd
start_tls_terminator

# --- amazon-efs-utils' mount -------------------------------------------------------------
port=20123
name=$FS.mnt.efs.$port
conf=/var/run/efs/stunnel-config.$name
ws=/var/run/efs/$name+
mkdir -p -m 0750 /var/run/efs "$ws/database" "$ws/certs"
: >"$ws/database/index.txt"
echo "placeholder: the incumbent's per-mount certificate" >"$ws/certificate.pem"
incumbent_stunnel_conf 127.0.0.1:$port $DNS:2049 /etc/e2e-tls/ca.pem $DNS >"$conf"
setsid stunnel4 "$conf" >/var/log/incumbent-stunnel.log 2>&1 </dev/null &
stunnel_pid=$!
wait_for 10 sh -c "ss -ltn | grep -q '127.0.0.1:$port '"
now=$(date +%s)
cat >/var/run/efs/$name <<EOT
{"pid": $stunnel_pid, "cmd": ["/usr/bin/stunnel4", "$conf"], "files": ["$conf"], "mount_time": $((now - 60)).25, "mountpoint": "/mnt/efs", "service_type": "elasticfilesystem", "commonName": "e2e-guest", "region": "us-east-1", "certificateCreationTime": "$(date -u +%y%m%d%H%M%SZ)", "certificate": "$ws/certificate.pem", "privateKey": "/etc/amazon/efs/privateKey.pem", "fsId": "$FS", "mountStateDir": "$name+", "unmount_count": 0}
EOT
mkdir -p /mnt/efs
check "the incumbent's mount through stunnel" \
    mount -t nfs4 -o nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport,port=$port 127.0.0.1:/ /mnt/efs
# Its watchdog, run by hand (a stand-in: a process of that name that is not ours).
printf '#!/bin/sh\nwhile :; do sleep 1; done\n' >/usr/local/bin/amazon-efs-mount-watchdog
chmod 0755 /usr/local/bin/amazon-efs-mount-watchdog
setsid /usr/local/bin/amazon-efs-mount-watchdog </dev/null >/dev/null 2>&1 &
incumbent_wd=$!

# --- writes that span the upgrade -------------------------------------------------------
# A writer copies a 64 MiB file again and again (big.0, big.1, ...) until told to stop:
# it is busy before, during and after the install, whatever the install's speed.
dd if=/dev/urandom of=/tmp/src bs=1M count=64 status=none
rm -f /tmp/dd.rc /tmp/stop
(n=0; while [ ! -f /tmp/stop ]; do
    dd if=/tmp/src of=/mnt/efs/big.$n bs=1M conv=fsync status=none || { echo "$n" >/tmp/dd.rc; exit; }
    n=$((n + 1))
done; echo 0 >/tmp/dd.rc) &
writer=$!
copies() { ls /srv/efs | grep -c '^big\.'; }
wait_for 60 sh -c '[ $(ls /srv/efs | grep -c "^big\.") -ge 2 ]'
t_install=$(date +%s%N)
out=$(dpkg -i /opt/efs/efs-utils.deb 2>&1)
rc=$?
info "dpkg -i: exit $rc: $(echo "$out" | grep efs-utils: | tr '\n' ' ')"
check "dpkg -i installs our package over the incumbent's mount" test $rc = 0
check "the install stopped amazon-efs-utils' watchdog" wait_for 5 sh -c "! kill -0 $incumbent_wd"
check "the state file is ours (our schema) within 15 s" \
    wait_for 15 grep -q '"control_socket"' /var/run/efs/$name
check "stunnel is gone" wait_for 10 sh -c "! kill -0 $stunnel_pid"
info "taken over $(( ($(date +%s%N) - t_install) / 1000000 )) ms after dpkg -i began"
check "the writer is still writing when the takeover is done" test ! -f /tmp/dd.rc
at_switch=$(copies)
# stunnel bound its socket to lo (SO_BINDTODEVICE): ss shows 127.0.0.1%lo:PORT.
info "listening on $port: $(ss -ltnp | grep -E "127.0.0.1(%lo)?:$port " | tr -s ' ')"
check "our tunnel serves port $port, on stunnel's own socket" \
    sh -c "ss -ltnp | grep -E '127.0.0.1(%lo)?:$port ' | grep -q efs-tunnel"
# Two more whole copies, so that at least one was written entirely through our tunnel.
check "the writes carry on through our tunnel" wait_for 120 sh -c "[ \$(ls /srv/efs | grep -c '^big\.') -ge $((at_switch + 2)) ] || [ -f /tmp/dd.rc ]"
touch /tmp/stop
wait $writer 2>/dev/null
check "every write finished across the upgrade with no I/O error" test "$(cat /tmp/dd.rc 2>/dev/null)" = 0
n=$(copies)
bad=0
for f in /srv/efs/big.*; do [ "$(sha "$f")" = "$(sha /tmp/src)" ] || bad=$((bad + 1)); done
check "all $n copies of the 64 MiB file are bit-identical on the server" test "$bad" = 0
info "copies: $at_switch when the takeover was done, $n in all"
info "established on $port: $(ss -tnp state established "( sport = :$port )" | tail -n +2 | tr -s ' ')"
check "the kernel's connection now goes through our tunnel" \
    sh -c "efs-utils status | grep -Eq '[1-9][0-9]* connection\(s\) open'"
check "the incumbent's stunnel config is removed" test ! -e "$conf"
check "its OpenSSL workspace is removed" test ! -e "$ws"
check "the watchdog says it took the mount over" \
    grep -q "took over the mount of $FS at /mnt/efs (port $port) from amazon-efs-utils' stunnel" /var/log/amazon/efs/mount-watchdog.log
check "efs-utils status says the mount is healthy" sh -c "efs-utils status | grep -q 'on /mnt/efs: healthy'"
echo after >/mnt/efs/after && sync
check "a new write after the upgrade reaches the server" grep -q after /srv/efs/after
drop_caches
check "and a copy reads back whole through the mount" test "$(sha /tmp/src)" = "$(sha /mnt/efs/big.0)"

# --- umount -----------------------------------------------------------------------------
configure_for_tests
systemctl kill -s HUP amazon-efs-mount-watchdog.service
sleep 1
umount /mnt/efs
check "after umount the tunnel is stopped" wait_for 90 sh -c "! ss -ltn | grep -q '127.0.0.1:$port '"
check "and every file of the mount is gone" wait_for 5 sh -c "[ -z \"\$(ls /var/run/efs | grep $name)\" ]"
finish
