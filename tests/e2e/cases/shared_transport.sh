# e2e-mode: fast
# e2e-timeout: 600
# Issue #10: mounts of one file system share one kernel NFS client (NFSv4.1 trunking), so
# their traffic goes through the first mount's tunnel whatever port= each asked for.
# Unmounting any of them, in any order, must leave the others working past the grace
# period; the tunnel the kernel uses is restarted if it dies; status names it; a mount
# that would ride on a connection with other TLS settings is refused.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /srv/efs/a /srv/efs/b /mnt/root /mnt/a /mnt/b /mnt/x
amazon-efs-mount-watchdog 2>/dev/null &
# A post-mortem aid: what every process waits on, every 5 s, in the run folder.
(while sleep 5; do { date +%T; ps -eo pid,stat,wchan:32,args | grep -v ' \[' | tail -n +2; } >>/e2e/run/monitor.log 2>&1; done) &
wait_for 10 pgrep -x amazon-efs-moun

# The NFS client's table: the hex port of the client a mountpoint's superblock uses.
kernel_port_of() {
    local dev
    dev=$(mountinfo_of "$1" | awk '{print $3}')
    awk -v d="$dev" '$4 == d {print $3}' /proc/fs/nfsfs/volumes | head -1 | xargs -I{} printf '%d' 0x{}
}
# The mountpoints a state file's also_serves lists, one a line (the file is pretty JSON).
also_serves_of() {
    tr -d ' \n' <"$1" | grep -o '"also_serves":\[[^]]*\]' | grep -o '"/[^"]*"' | tr -d '"'
}
# lists_riders STATE MOUNTPOINT...: the state's also_serves is exactly those, in any order.
lists_riders() {
    local state=$1
    shift
    [ "$(also_serves_of "$state" | sort | tr '\n' ' ')" = "$(printf '%s\n' "$@" | sort | tr '\n' ' ')" ]
}
# The lines `efs-utils status` prints for a mountpoint.
status_of() {
    efs-utils status | awk -v mp="$1" '$0 ~ " on " mp ":" {on = 1} on && /^$/ {exit} on'
}
mount_three() {
    mount -t efs -o tls $FS:/ /mnt/root &&
        mount -t efs -o tls,rsize=65536 $FS:/a /mnt/a &&
        mount -t efs -o tls,wsize=262144 $FS:/b /mnt/b
}
sub_of() { case $1 in root) echo .;; *) echo "$1";; esac; }

for order in "root a b" "a root b" "b a root"; do
    check "[$order] three mounts of one file system" mount_three
    used=$(kernel_port_of /mnt/root)
    info "[$order] port= root=$(port_of /mnt/root) a=$(port_of /mnt/a) b=$(port_of /mnt/b); the kernel uses $used for all: $(kernel_port_of /mnt/a) $(kernel_port_of /mnt/b)"
    check "[$order] the kernel sends all three through the first tunnel" \
        test "$(kernel_port_of /mnt/a)" = "$used" -a "$(kernel_port_of /mnt/b)" = "$used" -a "$used" = "$(port_of /mnt/root)"
    check "[$order] only that tunnel runs: the idle ones were stopped" \
        test "$(pgrep -x efs-tunnel | wc -l)" = 1 -a -n "$(tunnel_pid "$used")"
    check "[$order] the riders' state names the tunnel that serves them" \
        sh -c "grep -l '\"served_by\": $used' /var/run/efs/fs-* | wc -l | grep -qx 2"
    # mount_three mounts /mnt/root first: its tunnel serves the two riders.
    first=/var/run/efs/$FS.mnt.root.$used
    check "[$order] the first mount's state lists the riders in also_serves while they are mounted" \
        wait_for 10 lists_riders "$first" /mnt/a /mnt/b
    info "[$order] also_serves of $first: $(also_serves_of "$first" | tr '\n' ' ')"
    if [ "$order" = "root a b" ]; then
        check "status names the port the kernel uses for /mnt/b" \
            sh -c "efs-utils status | sed -n '/on \/mnt\/b:/,/^\$/p' | grep -q 'healthy' && efs-utils status | sed -n '/on \/mnt\/b:/,/^\$/p' | grep -q '127.0.0.1:$used, pid'"
        # A mount whose TLS settings differ must not ride on this connection.
        cp /etc/amazon/efs/e2e-ca.pem /etc/e2e-tls/other-ca.pem
        before=$(state_files | wc -l)
        out=$(mount -t efs -o tls,cafile=/etc/e2e-tls/other-ca.pem,rsize=131072 $FS:/ /mnt/x 2>&1)
        rc=$?
        info "refusal: rc=$rc: $out"
        check "a mount with another cafile is refused (exit 32) with the reason" \
            sh -c "[ $rc = 32 ] && echo '$out' | grep -q 'already mounted at /mnt/root with other TLS settings'"
        check "and nothing of it is left: not mounted" sh -c "! grep -q ' /mnt/x ' /proc/self/mountinfo"
        check "no state of it" test "$(state_files | wc -l)" = "$before"
        check "no tunnel of it" test "$(pgrep -x efs-tunnel | wc -l)" = 1
        info "after the refusal: $(grep ' /mnt/x ' /proc/self/mountinfo) / $(state_files | tr '\n' ' ') / tunnels $(pgrep -x efs-tunnel | tr '\n' ' ')"
    fi
    set -- $order
    for gone in "$@"; do
        umount /mnt/$gone
        sleep 5 # grace is 3 s
        shift
        for left in "$@"; do
            check "[$order] after umount /mnt/$gone and the grace period, /mnt/$left works" works /mnt/$left "$(sub_of $left)"
        done
        if [ "$order" = "root a b" ] && [ "$gone" = a ]; then
            # /mnt/b is the last mount; its traffic still goes through the tunnel the
            # first mount (/mnt/root, long gone) was given, restarted above.
            b=$(status_of /mnt/b)
            info "status of /mnt/b: $(echo "$b" | head -4 | tr '\n' '|')"
            check "after umount /mnt/root and /mnt/a, status shows /mnt/b healthy" \
                sh -c 'echo "$1" | head -1 | grep -q "on /mnt/b: healthy$"' sh "$b"
            check "through the port the kernel uses (127.0.0.1:$used), with the tunnel's pid" \
                sh -c 'echo "$1" | grep -q "^  tunnel      127.0.0.1:$2, pid [0-9]"' sh "$b" "$used"
            check "and says it is shared, not through its own port $(port_of /mnt/b)" \
                sh -c 'echo "$1" | grep -qx "  shared      the kernel sends this mount over the connection of the tunnel on port $2, not through its own port $3"' \
                sh "$b" "$used" "$(port_of /mnt/b)"
        fi
        if [ "$order" = "root a b" ] && [ "$gone" = root ]; then
            old=$(tunnel_pid "$used")
            info "$(date +%T) killing tunnel $old (port $used) during a 64 MiB write to /mnt/a"
            dd if=/dev/urandom of=/tmp/src bs=1M count=64 status=none
            (dd if=/tmp/src of=/mnt/a/big bs=1M conv=fsync status=none; echo $? >/tmp/dd.rc) &
            writer=$!
            sleep 0.5
            kill -9 "$old"
            wait_for 60 test -f /tmp/dd.rc || {
                info "$(date +%T) dd still blocked 60 s after the kill; tunnels: $(pgrep -x efs-tunnel | tr '\n' ' ')"
                ss -tn | sed 's/^/INFO ss: /'
                tail -15 /var/log/amazon/efs/mount-watchdog.log | sed 's/^/INFO watchdog: /'
                tail -15 /var/log/amazon/efs/efs-tunnel.log | sed 's/^/INFO tunnel: /'
                cat /proc/fs/nfsfs/servers /proc/fs/nfsfs/volumes | sed 's/^/INFO nfsfs: /'
                dmesg | tail -5 | sed 's/^/INFO dmesg: /'
                fail "kill -9 of the tunnel the kernel uses: dd did not finish"
                exit 1
            }
            wait $writer # not a bare wait: the watchdog and the monitor are jobs too
            check "kill -9 of the tunnel the kernel uses (its own mount gone): dd finishes" test "$(cat /tmp/dd.rc)" = 0
            check "the data is bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/a/big)"
            new=$(tunnel_pid "$used")
            check "a new tunnel serves that port" test -n "$new" -a "$new" != "$old"
            check "and /mnt/b carries on too" works /mnt/b b
        fi
    done
    check "[$order] after the last umount every tunnel is gone" wait_for 10 sh -c "! pgrep -x efs-tunnel"
    check "[$order] and every state file" wait_for 5 sh -c "[ -z \"\$(state_files)\" ]"
done
check "the watchdog never crashed" pgrep -x amazon-efs-moun
grep -E "rides|riding|kernel sends" /var/log/amazon/efs/mount-watchdog.log /var/log/amazon/efs/mount.log | head -3 | sed 's/^/INFO log: /'
finish
