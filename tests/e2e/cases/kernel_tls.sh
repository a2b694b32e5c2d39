# e2e-mode: fast
# e2e-timeout: 900
# Kernel TLS (#15). The guest's kernel has tls.ko but only software AES (User-Mode
# Linux has no aesni_intel), so `kernel_tls = "auto"` (the default) keeps TLS in rustls
# and says why; `kernel_tls = "on"` hands the connection's records to the kernel after
# the rustls handshake. With it: 256 MiB each way bit-identical through the real NFS
# client, the kernel's TLS state on the socket as `ss` shows it, a kill -9 of the tunnel
# mid-write (the watchdog's new tunnel is on kernel TLS again, the data intact), and a
# TLS terminator (openssl s_server) that sends a KeyUpdate mid-stream: the connection is
# closed cleanly, once, with no byte corrupted, and the next one works.
. /opt/efs/lib.sh
efs_side_up
mkdir -p /mnt/efs
# The watchdog stops a tunnel after its umount and restarts a killed one.
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun
check "mount -t efs -o tls exits 0 (kernel_tls = auto, the default)" mount -t efs -o tls $FS:/ /mnt/efs
check "the tunnel runs with --kernel-tls auto" sh -c \
    "tr '\\0' ' ' </proc/\$(pgrep -x efs-tunnel | head -1)/cmdline | grep -q -- '--kernel-tls auto'"
check "auto: the mount works" works /mnt/efs .
ktls=$(ktls_status)
info "auto: $ktls"
check "auto with software AES only: user space, and the status says why" sh -c \
    "echo '$ktls' | grep -q '\"available\":false' && echo '$ktls' | grep -q 'nohardwareimplementation'"
check "auto: the upstream socket is not kernel TLS" sh -c "! ss -tni state established '( dport = :2049 )' | grep -q tcp-ulp-tls"
check "auto with no hardware cipher did not even load the tls module" sh -c "! grep -q '^tls ' /proc/modules"
check "umount works" umount /mnt/efs
wait_for 30 no_nfs_client
check "the watchdog stopped the auto tunnel after its umount" wait_for 30 sh -c "! pgrep -x efs-tunnel"
sed -i 's|^#\?kernel_tls = .*|kernel_tls = "on"|' /etc/amazon/efs/efs-utils.toml
check "mount with kernel_tls = on exits 0" mount -t efs -o tls $FS:/ /mnt/efs
check "the tunnel runs with --kernel-tls on" sh -c \
    "tr '\\0' ' ' </proc/\$(pgrep -x efs-tunnel | head -1)/cmdline | grep -q -- '--kernel-tls on'"
dd if=/dev/urandom of=/tmp/src bs=1M count=256 status=none
cp /tmp/src /mnt/efs/big
sync /mnt/efs/big
check "256 MiB written through kernel TLS are bit-identical in the export" test "$(sha /tmp/src)" = "$(sha /srv/efs/big)"
drop_caches
check "and bit-identical read back through it" test "$(sha /tmp/src)" = "$(sha /mnt/efs/big)"
check "the kernel has the tls ULP" grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp
ulp=$(ss -tni state established '( dport = :2049 )' | grep -o 'tcp-ulp-tls.*' | head -1)
info "upstream socket: $ulp"
check "the tunnel's upstream socket is kernel TLS (ss: tcp-ulp-tls)" test -n "$ulp"
ktls=$(ktls_status)
info "status: $ktls"
check "status: kernel TLS available, one connection on it" sh -c \
    "echo '$ktls' | grep -q '\"available\":true' && echo '$ktls' | grep -q '\"connections_open\":1'"
check "the tunnel said once that kernel TLS is in use" test \
    "$(grep -c 'kernel TLS in use' /var/log/amazon/efs/efs-tunnel.log)" = 1
# A restart under kernel TLS: kill -9 the tunnel during a 128 MiB write.
dd if=/dev/urandom of=/tmp/src2 bs=1M count=128 status=none
(cp /tmp/src2 /mnt/efs/big2 && sync /mnt/efs/big2; echo done >/tmp/cp.done) &
sleep 1
pid=$(pgrep -x efs-tunnel | head -1)
info "killing tunnel $pid mid-write"
kill -9 "$pid"
wait_for 90 test -f /tmp/cp.done
check "the write through a killed kernel TLS tunnel completes bit-identical" test "$(sha /tmp/src2)" = "$(sha /srv/efs/big2)"
new=$(pgrep -x efs-tunnel | head -1)
check "a tunnel was killed, and a new one is back" test -n "$pid" -a -n "$new" -a "$new" != "$pid"
check "the mount works through the restarted tunnel" works /mnt/efs .
check "the restarted tunnel is on kernel TLS too" wait_for 10 kernel_tls_socket
check "umount works" umount /mnt/efs

# A KeyUpdate in the middle of a stream, from openssl s_server (its `k` command).
mkfifo /tmp/s_server.in
(sleep 600 >/tmp/s_server.in &)
openssl s_server -accept 127.0.0.4:4433 -tls1_3 -cert /etc/e2e-tls/server.pem -key /etc/e2e-tls/server.key \
    -ign_eof </tmp/s_server.in >/tmp/s_server.out 2>&1 &
exec 7>/tmp/s_server.in
wait_for 10 sh -c "ss -tln | grep -q 127.0.0.4:4433"
efs-tunnel --listen 127.0.0.1:30049 --connect 127.0.0.4:4433 --check-host fs-1.efs.us-east-1.amazonaws.com \
    --cafile /etc/e2e-tls/ca.pem --kernel-tls on --log-file /tmp/ktls-tunnel.log --log-level debug &
tpid=$!
wait_for 10 sh -c "ss -tln | grep -q 127.0.0.1:30049"
exec 3<>/dev/tcp/127.0.0.1/30049
echo "before the key update" >&3
wait_for 10 grep -q "before the key update" /tmp/s_server.out
check "a line sent through kernel TLS reaches the terminator intact" grep -qx "before the key update" /tmp/s_server.out
check "the terminator's socket peer is kernel TLS" sh -c "ss -tni state established '( dport = :4433 )' | grep -q tcp-ulp-tls"
echo "from the server" >&7
read -r -t 10 line <&3
check "a line from the terminator arrives intact" test "$line" = "from the server"
echo k >&7
# The connection is closed (EOF), not fed garbage.
if read -r -t 10 rest <&3; then got="data: $rest"; else got="eof rc=$?"; fi
info "after the KeyUpdate: $got"
check "after the KeyUpdate the client sees the end of the stream, no garbage" test "$got" = "eof rc=1"
exec 3<&-
check "the tunnel logged why, once" test "$(grep -c 'updated its TLS keys' /tmp/ktls-tunnel.log)" = 1
exec 3<>/dev/tcp/127.0.0.1/30049
echo "after the key update" >&3
check "the next connection works" wait_for 10 grep -qx "after the key update" /tmp/s_server.out
exec 3<&-
kill "$tpid"
exec 7>&-
pkill -f "s_server -accept 127.0.0.4" || true
sleep 4
check "no tunnel left after the last umount" sh -c "! pgrep -x efs-tunnel"
finish
