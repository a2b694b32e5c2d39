# e2e-mode: fast
# e2e-timeout: 240
# Case 6: a wrong certificate name, an unknown CA: the mount fails within 5 s; a server
# that stays down: after the retry window (retry_nfs_mount_command_timeout_sec x count);
# each with the reason in one line, non-zero, nothing mounted, nothing left. And a mount
# target that is down for the first 8 s of a mount: the mount waits and succeeds.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/bad

refused() {
    local what=$1 want=$2 limit=$3
    shift 3
    local t0 t1 rc
    t0=$(date +%s%N)
    mount -t efs "$@" /mnt/bad >/tmp/err 2>&1
    rc=$?
    t1=$(date +%s%N)
    local ms=$(( (t1 - t0) / 1000000 ))
    info "$what: exit $rc in ${ms} ms: $(cat /tmp/err)"
    check "$what: non-zero exit" test $rc -ne 0
    check "$what: within $((limit / 1000)) s" test $ms -lt "$limit"
    check "$what: one line naming the reason" sh -c "test \$(wc -l </tmp/err) = 1 && grep -q '$want' /tmp/err"
    check "$what: nothing mounted" sh -c "! mountpoint -q /mnt/bad"
    check "$what: no tunnel left" sh -c "! pgrep -x efs-tunnel"
    check "$what: no state left" test -z "$(state_files)"
}

refused "wrong certificate name" "not valid for name" 5000 -o tls,region=eu-west-1,mounttargetip=127.0.0.2 $FS:/
refused "unknown CA" "UnknownIssuer" 5000 -o tls,cafile=/etc/ssl/certs/ca-certificates.crt $FS:/
# The shipped retry window: 3 x 15 s.
refused "server down" "Connection refused.*attempts in 45 s" 55000 -o tls,mounttargetip=127.0.0.4 $FS:/

# The terminator ("EFS") down for the first 8 s of a mount.
kill "$(cat /run/stunnel-server.pid)"
wait_for 5 sh -c '! ss -ltn | grep -q "127.0.0.2:2049 "'
t0=$(date +%s)
(mount -t efs -o tls $FS:/ /mnt/bad >/tmp/late.out 2>&1; echo $? >/tmp/late.rc) &
sleep 8
stunnel4 /etc/e2e-tls/stunnel-server.conf
wait_for 60 test -f /tmp/late.rc
info "mount with the target down for its first 8 s: exit $(cat /tmp/late.rc) after $(($(date +%s) - t0)) s: $(cat /tmp/late.out)"
check "a mount target down for the first 8 s of a mount: the mount succeeds" test "$(cat /tmp/late.rc)" = 0
check "and works" sh -c 'echo late >/mnt/bad/late && sync && grep -qx late /srv/efs/late'
check "the wait is in efs-tunnel.log" grep -q "trying again for up to 45 s" /var/log/amazon/efs/efs-tunnel.log
umount /mnt/bad
finish
