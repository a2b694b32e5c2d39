# e2e-mode: fast
# e2e-timeout: 240
# Case 6: a wrong certificate name, an unknown CA, a server that is down: the mount fails
# within 5 s with the reason in one line, non-zero, nothing mounted, nothing left.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/bad

refused() {
    local what=$1 want=$2
    shift 2
    local t0 t1 rc
    t0=$(date +%s%N)
    mount -t efs "$@" /mnt/bad >/tmp/err 2>&1
    rc=$?
    t1=$(date +%s%N)
    local ms=$(( (t1 - t0) / 1000000 ))
    info "$what: exit $rc in ${ms} ms: $(cat /tmp/err)"
    check "$what: non-zero exit" test $rc -ne 0
    check "$what: within 5 s" test $ms -lt 5000
    check "$what: one line naming the reason" sh -c "test \$(wc -l </tmp/err) = 1 && grep -q '$want' /tmp/err"
    check "$what: nothing mounted" sh -c "! mountpoint -q /mnt/bad"
    check "$what: no tunnel left" sh -c "! pgrep -x efs-tunnel"
    check "$what: no state left" test -z "$(state_files)"
}

refused "wrong certificate name" "not valid for name" -o tls,region=eu-west-1,mounttargetip=127.0.0.2 $FS:/
refused "unknown CA" "UnknownIssuer" -o tls,cafile=/etc/ssl/certs/ca-certificates.crt $FS:/
refused "server down" "Connection refused" -o tls,mounttargetip=127.0.0.4 $FS:/
finish
