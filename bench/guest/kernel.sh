# e2e-mode: fast
# e2e-timeout: 1500
# e2e-show: all
# The real-kernel benchmark (issue #15; run by bench/kernel.sh, not a test): the kernel's
# NFS client through `mount -t efs -o tls` (our tunnel, once with kernel TLS,
# `kernel_tls = "on"`, and once with `kernel_tls = "off"`, TLS in user space) against the same mount
# through stunnel configured as amazon-efs-utils configures it, same guest, same run,
# rounds interleaved. The two mounts never exist at once: the kernel would put the second on
# the first one's connection (NFSv4.1 trunking).
#
#   NFS client ──▶ 127.0.0.1:PORT  efs-tunnel | stunnel client ──TLS──▶ 127.0.0.2:2049 stunnel server ──▶ knfsd
#
# Per workload: MiB/s (or ops/s), the tunnel's CPU seconds per GiB (utime+stime of its
# process: with kernel TLS the kernel's encryption and decryption run in the tunnel's
# system calls and are counted), and ours/stunnel. The guest has one CPU: client, tunnel, terminator and knfsd
# share it, so ratios carry over and absolute figures do not.
# BENCH_MIB (default 256) per sequential run, BENCH_FILES (default 400) small files,
# BENCH_ROUNDS (default 3): the median of the rounds is reported.
. /opt/efs/lib.sh
efs_side_up
. /e2e/run/run.env 2>/dev/null
MIB=${BENCH_MIB:-256}
FILES=${BENCH_FILES:-400}
ROUNDS=${BENCH_ROUNDS:-3}
mkdir -p /mnt/b
dd if=/dev/urandom of=/dev/shm/src bs=1M count="$MIB" status=none
head -c 4096 /dev/urandom >/dev/shm/small
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now_ns() { date +%s%N; }

incumbent_stunnel_conf 127.0.0.1:20999 "$DNS:2049" /etc/amazon/efs/e2e-ca.pem "$DNS" \
    >/etc/e2e-tls/stunnel-client.conf
NFSOPTS=nfsvers=4.1,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport

# mount_side ktls|user|stunnel: mounts /mnt/b through that tunnel; sets TPID.
mount_side() {
    wait_for 30 no_nfs_client
    if [ "$1" != stunnel ]; then
        # "on", not the default "auto": auto keeps TLS in user space where the kernel
        # has no hardware cipher, as in this guest (software AES only).
        mode=on; [ "$1" = user ] && mode=off
        sed -i "s|^#\?kernel_tls = .*|kernel_tls = \"$mode\"|" /etc/amazon/efs/efs-utils.toml
        mount -t efs -o tls $FS:/ /mnt/b || return 1
        TPID=$(tunnel_pid "$(port_of /mnt/b)")
        tr '\0' ' ' <"/proc/$TPID/cmdline" | grep -q -- "--kernel-tls $mode" || return 1
    else
        stunnel4 /etc/e2e-tls/stunnel-client.conf 2>/var/log/stunnel-client.log &
        TPID=$!
        wait_for 10 sh -c "ss -tln | grep -q 127.0.0.1:20999"
        mount.nfs4 127.0.0.1:/ /mnt/b -o "$NFSOPTS,port=20999" || return 1
    fi
}
umount_side() {
    umount /mnt/b
    [ "$1" = stunnel ] && { kill "$TPID"; wait "$TPID" 2>/dev/null; }
    wait_for 30 no_nfs_client
}

# run_workload NAME: prints "VALUE CPU_S_PER_GIB" for the mounted side.
run_workload() {
    local t0 c0 t1 c1 bytes ops=0
    sync; echo 3 >/proc/sys/vm/drop_caches
    c0=$(ticks "$TPID"); t0=$(now_ns)
    case $1 in
        write-direct) dd if=/dev/shm/src of=/mnt/b/big bs=1M oflag=direct status=none; bytes=$((MIB << 20)) ;;
        write-buffered) dd if=/dev/shm/src of=/mnt/b/big bs=1M conv=fsync status=none; bytes=$((MIB << 20)) ;;
        read-direct) dd if=/mnt/b/big of=/dev/null bs=1M iflag=direct status=none; bytes=$((MIB << 20)) ;;
        read-buffered) dd if=/mnt/b/big of=/dev/null bs=1M status=none; bytes=$((MIB << 20)) ;;
        small-files)
            mkdir -p /mnt/b/small
            for i in $(seq "$FILES"); do
                cp /dev/shm/small /mnt/b/small/f$i
                stat /mnt/b/small/f$i >/dev/null
                cat /mnt/b/small/f$i >/dev/null
                rm /mnt/b/small/f$i
            done
            ops=$((FILES * 4)); bytes=$((FILES * 8192)) ;;
    esac
    t1=$(now_ns); c1=$(ticks "$TPID")
    # Throughput; CPU seconds per GiB, or for small files CPU ms per 1000 operations.
    awk -v b="$bytes" -v ns=$((t1 - t0)) -v dc=$((c1 - c0)) -v hz="$hz" -v ops="$ops" 'BEGIN {
        s = ns / 1e9; v = (ops > 0) ? ops / s : b / 1048576 / s
        c = (ops > 0) ? (dc / hz) * 1e6 / ops : (dc / hz) / (b / 1073741824)
        printf "%.1f %.3f\n", v, c }'
}

# Would the default, auto, use kernel TLS on this kernel? The product decides (one mount
# with auto, its status), not a second reading of /proc/crypto here. The ktls side's
# goals are goals only where it would: elsewhere only an operator's kernel_tls = "on"
# picks it, and its figures are printed as what that choice costs.
sed -i "s|^#\?kernel_tls = .*|kernel_tls = \"auto\"|" /etc/amazon/efs/efs-utils.toml
mount -t efs -o tls $FS:/ /mnt/b
auto_status=$(ktls_status)
if kernel_tls_socket; then auto_uses_kernel=yes; else auto_uses_kernel=no; fi
umount /mnt/b
wait_for 30 no_nfs_client
info "auto on this kernel: kernel TLS $auto_uses_kernel ($auto_status)"

WORKLOADS="write-direct write-buffered read-direct read-buffered small-files"
for r in $(seq "$ROUNDS"); do
    # Interleaved, and the order rotates, so no side always goes first.
    case $((r % 3)) in
        1) sides="ktls user stunnel" ;; 2) sides="stunnel ktls user" ;; 0) sides="user stunnel ktls" ;;
    esac
    for side in $sides; do
        mount_side "$side" || { fail "round $r: mounting through $side"; continue; }
        for w in $WORKLOADS; do
            echo "$side $w $(run_workload "$w")" >>/tmp/bench.raw
        done
        check "round $r, $side: the data read back is what was written" \
            test "$(sha /dev/shm/src)" = "$(sha /mnt/b/big)"
        if [ "$side" = ktls ]; then
            check "round $r, ktls: the tunnel's upstream socket is kernel TLS" kernel_tls_socket
        fi
        rm -f /mnt/b/big
        umount_side "$side"
    done
done

median() { sort -n | awk '{a[NR] = $1} END { if (NR) print a[int((NR + 1) / 2)]; else print 0 }'; }
fig() { awk -v s="$1" -v w="$2" -v c="$3" '$1 == s && $2 == w {print $c}' /tmp/bench.raw | median; }
echo
echo "real kernel NFS client, $MIB MiB per sequential run, $FILES small files (create+write 4 KiB, stat, read, unlink), median of $ROUNDS interleaved rounds"
echo "tunnel CPU: seconds per GiB moved (small files: ms per 1000 operations), utime+stime at ${hz} ticks/s"
echo "ktls: ours with kernel TLS (kernel_tls = \"on\"); user: ours with kernel_tls = \"off\"; ratios against stunnel"
printf '| %-15s | %-5s | %8s | %8s | %8s | %5s | %5s | %8s | %8s | %8s | %5s | %5s |\n' \
    workload unit ktls user stunnel ratio ratio "ktls CPU" "user CPU" "stn CPU" ratio ratio
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", (b > 0) ? a / b : 0 }'; }
missed=0
for w in $WORKLOADS; do
    unit="MiB/s"; [ "$w" = small-files ] && unit="ops/s"
    k=$(fig ktls "$w" 3); u=$(fig user "$w" 3); t=$(fig stunnel "$w" 3)
    kc=$(fig ktls "$w" 4); uc=$(fig user "$w" 4); tc=$(fig stunnel "$w" 4)
    printf '| %-15s | %-5s | %8s | %8s | %8s | %5s | %5s | %8s | %8s | %8s | %5s | %5s |\n' "$w" "$unit" \
        "$k" "$u" "$t" "$(ratio "$k" "$t")" "$(ratio "$u" "$t")" "$kc" "$uc" "$tc" "$(ratio "$kc" "$tc")" "$(ratio "$uc" "$tc")"
    # Goals: at least stunnel's throughput, at most its CPU per GiB, on every workload,
    # for both of our sides.
    # for our default side (user where auto keeps TLS in user space, both where it
    # would use the kernel).
    sides=user; [ "$auto_uses_kernel" = yes ] && sides="ktls user"
    for side in $sides; do
        o=$(fig $side "$w" 3); oc=$(fig $side "$w" 4)
        awk -v a="$o" -v b="$t" 'BEGIN { exit !(a >= b) }' || { echo "MISSED: $w: $unit $side $o < stunnel $t"; missed=$((missed + 1)); }
        awk -v a="$oc" -v b="$tc" 'BEGIN { exit !(a <= b) }' || { echo "MISSED: $w: CPU $side $oc > stunnel $tc"; missed=$((missed + 1)); }
    done
done
sed 's/^/raw: /' /tmp/bench.raw
[ "$auto_uses_kernel" = yes ] ||
    echo "ktls: not a goal on this kernel: auto keeps TLS in user space here ($auto_status); the ktls columns are what kernel_tls = \"on\" costs"
check "every goal met (ours >= stunnel's throughput, <= its CPU per GiB)" test "$missed" = 0
finish
