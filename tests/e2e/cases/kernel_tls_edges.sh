# e2e-mode: fast
# e2e-timeout: 900
# Kernel TLS (#15) as a user would push it, with `kernel_tls = "on"` (the guest's AES is
# software): three mounts of one file system unmounted first-first, the same mount
# command twice, a SIGHUP in the middle of a write, a value nobody expects in the
# config and on the tunnel's command line, and every suite our policy allows against
# openssl s_server (TLS 1.2 and 1.3, AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305: each
# one's keys as the kernel takes them), a KeyUpdate that asks for ours back, and the
# server's own close_notify.
. /opt/efs/lib.sh
efs_side_up
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun
sed -i 's|^#\?kernel_tls = .*|kernel_tls = "on"|' /etc/amazon/efs/efs-utils.toml
mkdir -p /srv/efs/a /srv/efs/b /mnt/root /mnt/a /mnt/b

check "mount root" mount -t efs -o tls $FS:/ /mnt/root
check "mount a" mount -t efs -o tls $FS:/a /mnt/a
check "mount b" mount -t efs -o tls $FS:/b /mnt/b
check "the kernel's connection is on kernel TLS" kernel_tls_socket
mount_again /mnt/b -t efs -o tls $FS:/b /mnt/b
# The first mount, whose tunnel carries the others (one kernel connection per server),
# goes first.
check "umount root (first mounted, first gone)" umount /mnt/root
check "umount b" umount /mnt/b
sleep 6
check "a still works past the grace period" works /mnt/a a
check "and still over kernel TLS" kernel_tls_socket

# SIGHUP (a certificate reload) in the middle of a 64 MiB write: open connections keep
# their keys, nothing is cut.
dd if=/dev/urandom of=/tmp/src bs=1M count=64 status=none
(cp /tmp/src /mnt/a/big && sync /mnt/a/big; echo done >/tmp/cp.done) &
sleep 0.5
for p in $(pgrep -x efs-tunnel); do kill -HUP "$p"; done
wait_for 60 test -f /tmp/cp.done
check "a write across a SIGHUP is bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/a/big)"
check "the kernel TLS connection was not cut" sh -c "! grep -q 'closed the connection cleanly' /var/log/amazon/efs/efs-tunnel.log"

# Values nobody expects.
sed -i 's|^kernel_tls = .*|kernel_tls = "maybe"|' /etc/amazon/efs/efs-utils.toml
out=$(efs-utils config check 2>&1); rc=$?
info "config check with kernel_tls = maybe: rc=$rc: $(echo "$out" | grep -i kernel_tls)"
check "config check refuses kernel_tls = \"maybe\", naming the key and the words allowed" sh -c \
    "test $rc != 0 && echo '$out' | grep -q 'kernel_tls' && echo '$out' | grep -q 'auto, on, off'"
tunnels_before=$(pgrep -x efs-tunnel | wc -l)
out=$(mount -t efs -o tls $FS:/b /mnt/b 2>&1); rc=$?
info "mount with kernel_tls = maybe: rc=$rc: $out"
check "a mount with kernel_tls = \"maybe\" fails with one line and starts no tunnel" sh -c \
    "test $rc != 0 && test \$(echo '$out' | wc -l) = 1 && test \$(pgrep -x efs-tunnel | wc -l) = $tunnels_before && ! mountpoint -q /mnt/b"
sed -i 's|^kernel_tls = .*|kernel_tls = "on"|' /etc/amazon/efs/efs-utils.toml
out=$(efs-tunnel --listen 127.0.0.1:30049 --connect 127.0.0.4:4433 --check-host x.efs.us-east-1.amazonaws.com --kernel-tls yes 2>&1); rc=$?
info "efs-tunnel --kernel-tls yes: rc=$rc: $out"
named=no; [ "$rc" = 2 ] && printf '%s\n' "$out" | grep -q -- "--kernel-tls" && named=yes
check "efs-tunnel --kernel-tls yes: exit 2, naming the flag" test "$named" = yes
check "umount a" umount /mnt/a
check "no tunnel left after the last umount" wait_for 30 sh -c "! pgrep -x efs-tunnel"

# Every suite, against openssl s_server, through a tunnel run by hand.
# s_server's stdin (its commands and the lines it sends); opened read-write so that
# opening it does not wait for a reader, and it never reaches end of file.
mkfifo /tmp/s.in
exec 7<>/tmp/s.in
efs-tunnel --listen 127.0.0.1:30049 --connect 127.0.0.4:4433 --check-host fs-1.efs.us-east-1.amazonaws.com \
    --cafile /etc/e2e-tls/ca.pem --kernel-tls on --log-file /tmp/edge-tunnel.log &
tpid=$!
wait_for 10 sh -c "ss -tln | grep -q 127.0.0.1:30049"
n=0
try_suite() { # LABEL S_SERVER-FLAGS... -- EXPECTED-SS-WORDS
    local label=$1 args=() want
    shift
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    shift; want=$*
    n=$((n + 1))
    : >/tmp/s.out
    openssl s_server -accept 127.0.0.4:4433 -naccept 1 -cert /etc/e2e-tls/server.pem -key /etc/e2e-tls/server.key \
        -ign_eof "${args[@]}" </tmp/s.in >/tmp/s.out 2>&1 &
    local spid=$!
    wait_for 10 sh -c "ss -tln | grep -q 127.0.0.4:4433"
    exec 3<>/dev/tcp/127.0.0.1/30049
    echo "up $n" >&3
    wait_for 10 grep -qx "up $n" /tmp/s.out
    local ss_line
    ss_line=$(ss -tni state established '( dport = :4433 )' | grep -o 'tcp-ulp-tls.*' | head -1)
    info "$label: $ss_line"
    echo "down $n" >&7
    local line=""
    read -r -t 10 line <&3
    check "$label: a line each way, intact" sh -c "grep -qx 'up $n' /tmp/s.out && test '$line' = 'down $n'"
    check "$label: on kernel TLS, as ss shows ($want)" sh -c "echo '$ss_line' | grep -q '$want'"
    exec 3<&-
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
}
try_suite "TLS 1.2 AES-128-GCM" -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256 -- "version: 1.2 cipher: aes-gcm-128"
try_suite "TLS 1.2 AES-256-GCM" -tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384 -- "version: 1.2 cipher: aes-gcm-256"
# (Debian 12's ss names no cipher for ChaCha20-Poly1305: the version and the intact
# lines, with the server allowing that suite only, are what shows it.)
try_suite "TLS 1.2 ChaCha20-Poly1305" -tls1_2 -cipher ECDHE-ECDSA-CHACHA20-POLY1305 -- "version: 1.2 rxconf"
try_suite "TLS 1.3 AES-128-GCM" -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 -- "version: 1.3 cipher: aes-gcm-128"
try_suite "TLS 1.3 ChaCha20-Poly1305" -tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256 -- "version: 1.3 rxconf"

# A KeyUpdate that asks for ours (`K`), then the server's own close_notify (`q`).
for step in K q; do
    : >/tmp/s.out
    openssl s_server -accept 127.0.0.4:4433 -naccept 1 -tls1_3 -cert /etc/e2e-tls/server.pem -key /etc/e2e-tls/server.key \
        -ign_eof </tmp/s.in >/tmp/s.out 2>&1 &
    spid=$!
    wait_for 10 sh -c "ss -tln | grep -q 127.0.0.4:4433"
    exec 3<>/dev/tcp/127.0.0.1/30049
    echo "before $step" >&3
    wait_for 10 grep -qx "before $step" /tmp/s.out
    echo "$step" >&7
    if read -r -t 10 rest <&3; then got="data: $rest"; else got="eof rc=$?"; fi
    info "after $step: $got"
    check "after s_server's $step the client sees the end of the stream, no garbage" test "$got" = "eof rc=1"
    exec 3<&-
    kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
done
check "the requested KeyUpdate was logged as a clean close, the close_notify as nothing" sh -c \
    "test \$(grep -c 'updated its TLS keys' /tmp/edge-tunnel.log) = 1 && ! grep -qi 'error\\|refused' /tmp/edge-tunnel.log"
kill "$tpid"
exec 7>&-
finish
