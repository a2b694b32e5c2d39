# e2e-mode: fast
# e2e-timeout: 240
# Issue 13, where EFS users really run it: `mount -a` run twice leaves one mount and one
# tunnel; without systemd (as in the EFS CSI driver's container) mount.efs prints nothing
# about the watchdog; the watchdog the driver starts in a loop runs once, the others exit
# 8 and touch nothing; the shipped CA bundle is Amazon Root CA 1-4.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/efs /mnt/b /mnt/c
echo "fs-12345678:/ /mnt/efs efs _netdev,tls 0 0" >>/etc/fstab

# --- no systemd, no watchdog yet -------------------------------------------------------
check "mount -a" mount -a
mountinfo_of /mnt/efs >/tmp/mountinfo.efs
check "/mnt/efs is mounted through a tunnel" grep -q ' 127.0.0.1:/ ' /tmp/mountinfo.efs
port=$(port_of /mnt/efs)
tpid=$(tunnel_pid "$port")
info "tunnel pid $tpid on port $port"
check "mount.log says once that no watchdog runs, and how to run one" \
    test "$(grep -c 'amazon-efs-mount-watchdog is not running, and without systemd' /var/log/amazon/efs/mount.log)" = 1
check "nothing says 'Could not start'" sh -c "! grep -q 'Could not start' /var/log/amazon/efs/mount.log"

# --- mount -a again, and the same mount by hand ----------------------------------------
check "mount -a again exits 0" mount -a
mount -t efs -o tls $FS:/ /mnt/efs >/tmp/again.out 2>&1
rc=$?
check "mount -t efs again exits 0" test "$rc" = 0
check "and says it is already mounted" grep -qx "/mnt/efs is already mounted, please run 'mount' command to verify" /tmp/again.out
check "one mount at /mnt/efs" test "$(mountinfo_of /mnt/efs | wc -l)" = 1
check "one tunnel" test "$(pgrep -xc efs-tunnel)" = 1
check "the same tunnel" test "$(tunnel_pid "$port")" = "$tpid"
check "one state file" test "$(state_files | wc -l)" = 1

# --- the watchdog as the CSI driver runs it --------------------------------------------
amazon-efs-mount-watchdog >/tmp/wd1.err 2>&1 &
wd1=$!
check "the first watchdog starts" wait_for 10 grep -q "watching " /var/log/amazon/efs/mount-watchdog.log
info "lslocks: $(lslocks -n -o COMMAND,PID,TYPE,MODE,PATH | grep amazon-efs)"
check "it holds a lock (lslocks shows it)" sh -c "lslocks -n -o PID,TYPE | grep -qE '^ *$wd1 +FLOCK'"
log_lines=$(wc -l </var/log/amazon/efs/mount-watchdog.log)
state_sum=$(cat /var/run/efs/fs-* | sha256sum)
start=$(date +%s%N)
amazon-efs-mount-watchdog >/tmp/wd2.out 2>/tmp/wd2.err
rc=$?
took=$((($(date +%s%N) - start) / 1000000))
info "a second watchdog exited $rc after $took ms: $(cat /tmp/wd2.err)"
check "a second watchdog exits 8" test "$rc" = 8
check "within a second" test "$took" -lt 1000
check "saying which one runs" grep -q "another amazon-efs-mount-watchdog (pid $wd1) already watches the tunnels of /var/run/efs" /tmp/wd2.err
loop_rc=0
for i in $(seq 50); do amazon-efs-mount-watchdog 2>/dev/null; [ $? = 8 ] || loop_rc=1; done
check "restarted 50 times in a loop, every one exits 8" test "$loop_rc" = 0
check "none of them logged" test "$(wc -l </var/log/amazon/efs/mount-watchdog.log)" = "$log_lines"
check "or touched the state" test "$(cat /var/run/efs/fs-* | sha256sum)" = "$state_sum"
check "or the tunnel" test "$(tunnel_pid "$port")" = "$tpid"
check "mount /mnt/b with a watchdog running" mount -t efs -o tls $FS:/ /mnt/b
check "says nothing more about a missing watchdog" \
    test "$(grep -c 'amazon-efs-mount-watchdog is not running' /var/log/amazon/efs/mount.log)" = 1
kill -9 "$tpid"
check "the first watchdog still restarts a killed tunnel" wait_for 10 sh -c "p=\$(pgrep -f tunnel-$port.sock | head -1); [ -n \"\$p\" ] && [ \"\$p\" != $tpid ]"
child=$(tunnel_pid "$port")
kill -9 "$wd1"
wait "$wd1" 2>/dev/null
check "its tunnels outlive it" kill -0 "$child"
amazon-efs-mount-watchdog >/tmp/wd3.err 2>&1 &
wd3=$!
check "a new watchdog takes over at once (no tunnel inherited the lock)" \
    wait_for 10 sh -c "lslocks -n -o PID,TYPE | grep -qE '^ *$wd3 +FLOCK'"
check "and adopts the tunnel" test "$(tunnel_pid "$port")" = "$child"

# --- the CA bundle ---------------------------------------------------------------------
ca=/etc/amazon/efs/efs-utils.crt
check "$ca is installed" test -f $ca
check "it holds Amazon Root CA 1-4" test "$(openssl crl2pkcs7 -nocrl -certfile $ca | openssl pkcs7 -print_certs -noout | grep -c '^subject=.*Amazon Root CA [1-4]$')" = 4
mount -t efs -o tls,cafile=$ca $FS:/ /mnt/c >/tmp/ca.out 2>&1
check "a mount with it refuses the test CA's certificate" grep -q UnknownIssuer /tmp/ca.out
check "and leaves no mount" test -z "$(mountinfo_of /mnt/c)"

kill "$wd3"
umount /mnt/b
umount /mnt/efs
finish
