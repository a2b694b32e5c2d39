# e2e-mode: fast
# e2e-timeout: 420
# Issue #12 on the real kernel: EFS with a policy that requires IAM and an access point
# (a fake of EFS's authorization in front of knfsd checks the client certificate's
# extensions and recomputes its SigV4 signature). `-o tls,iam,accesspoint=` mounts and
# carries data; the wrong access point, a wrong secret key and no access point are
# refused fast with one clear line and leave nothing behind; the tunnel killed with -9
# comes back with its certificate and the write goes on.
. /opt/efs/lib.sh
AP=fsap-0123456789abcdef0
efs_side_up
start_fake_efs --require-iam --access-point $AP
aws_profiles
mkdir -p /mnt/iam /mnt/other
echo "behind the access point" >/srv/efs/hello
amazon-efs-mount-watchdog 2>/dev/null &
wait_for 10 pgrep -x amazon-efs-moun

# --- refusals first, while nothing is mounted: each leaves nothing behind -----------
nothing_left() {
    [ -z "$(state_files)" ] && ! pgrep -x efs-tunnel >/dev/null && ! mountpoint -q "$1"
}
refused() { # refused WHAT EXPECTED-TEXT OPTIONS
    local what=$1 want=$2 opts=$3 out rc start=$(date +%s%N)
    out=$(mount -t efs -o "$opts" $FS:/ /mnt/other 2>&1)
    rc=$?
    local ms=$(( ($(date +%s%N) - start) / 1000000 ))
    info "$what: exit $rc in $ms ms: $out"
    check "$what: refused (exit 32)" test "$rc" = 32
    check "$what: the message says why ($want)" sh -c "echo \"\$1\" | grep -qi -- \"\$2\"" _ "$out" "$want"
    check "$what: one line" test "$(echo "$out" | wc -l)" = 1
    check "$what: within 15 s" test "$ms" -lt 15000
    check "$what: nothing left behind (state, tunnel, mount)" nothing_left /mnt/other
}
refused "a wrong secret key" "certificate" "tls,iam,accesspoint=$AP,awsprofile=wrong"
refused "another access point" "certificate" "tls,iam,accesspoint=fsap-00000000000000000"
refused "no access point" "certificate" "tls,iam"
refused "an unknown profile" "nosuchprofile" "tls,iam,accesspoint=$AP,awsprofile=nosuchprofile"
check "the fake EFS denied the wrong secret by its signature" grep -q "denied SignatureMismatch" /var/log/fake-efs.log

# --- the mount ------------------------------------------------------------------------
check "mount -t efs -o tls,iam,accesspoint=$AP" mount -t efs -o tls,iam,accesspoint=$AP $FS:/ /mnt/iam
check "the fake EFS let in our access key with the access point" \
    grep -q "allowed AKID=$E2E_AKID ap=$AP" /var/log/fake-efs.log
check "the file system's data is there" grep -q "behind the access point" /mnt/iam/hello
st=/var/run/efs/$(state_files | head -1)
cert=$(sed -n 's/.*"certificate": "\(.*\)".*/\1/p' "$st" | head -1)
info "state $st, certificate $cert"
check "the certificate is root's, mode 600, in a 700 directory" \
    sh -c "[ \"\$(stat -c %a:%U '$cert')\" = 600:root ] && [ \"\$(stat -c %a '$(dirname "$cert")')\" = 700 ]"
check "the host key is mode 400" test "$(stat -c %a /etc/amazon/efs/privateKey.pem)" = 400
check "the state file records the credential source" grep -q '"iam_source": "credentials:default"' "$st"
check "no secret in the state directory or the logs" \
    sh -c "! grep -rq '$E2E_SECRET' /var/run/efs /var/log/amazon/efs"
check "efs-utils status shows the access point" sh -c "efs-utils status | grep -q '$AP'"

# --- the tunnel dies mid-write: it comes back with the certificate -------------------
port=$(port_of /mnt/iam)
dd if=/dev/urandom of=/tmp/src bs=1M count=64 status=none
kill_tunnel_mid_write "$port" /tmp/src /mnt/iam/big /srv/efs/big
check "the watchdog restarted the tunnel on port $port" tunnel_restarted "$port"
check "the write finished" test "$WRITE_RC" = 0
check "64 MiB arrived bit-identical" test "$(sha /tmp/src)" = "$(sha /srv/efs/big)"
# Whatever was left to write, a read of what the page cache no longer holds goes to the
# server through the restarted tunnel.
echo 3 >/proc/sys/vm/drop_caches
cat /mnt/iam/hello >/dev/null
let_in_twice() { test "$(grep -c "allowed AKID=$E2E_AKID ap=$AP" /var/log/fake-efs.log)" -ge 2; }
wait_for 15 let_in_twice
check "the restarted tunnel was let in with the certificate" let_in_twice

[ "$FAILS" = 0 ] || sed 's/^/INFO fake EFS: /' /var/log/fake-efs.log
# --- as an operator would, next: the same command twice, a second mount, unmounted in
# the other order ---------------------------------------------------------------------
out=$(mount -t efs -o tls,iam,accesspoint=$AP $FS:/ /mnt/iam 2>&1)
check "the same mount command again exits 0 ($out)" test $? = 0
check "and stacks no second mount" test "$(mountinfo_of /mnt/iam | wc -l)" = 1
mkdir -p /mnt/iam2
check "a second mount with the same access point" mount -t efs -o tls,iam,accesspoint=$AP $FS:/ /mnt/iam2
check "umount the first mount first" umount /mnt/iam
sleep 8 # past the 3 s grace period and a poll
check "the second keeps working past the grace period" \
    timeout 30 sh -c "echo second >/mnt/iam2/after-first && sync && grep -q second /srv/efs/after-first"
check "umount the second" umount /mnt/iam2
check "after the grace period every certificate and its directory are gone" \
    wait_for 30 sh -c "[ ! -e '$cert' ] && [ ! -e '$(dirname "$cert")' ] && [ -z \"\$(state_files)\" ] && [ -z \"\$(ls /var/run/efs | grep '+\$')\" ]"
finish
