# Sourced by every e2e case, inside the guest. Sets up "EFS" on the guest's loopback and
# installs our side as a package would; provides check helpers.
#
#   kernel NFS client ──▶ 127.0.0.1:PORT  efs-tunnel (ours)
#                          ──TLS──▶ 127.0.0.2:2049  stunnel server, cert *.efs.us-east-1.amazonaws.com (throwaway CA)
#                                   ──▶ 127.0.0.3:2049  knfsd, NFSv4.1 only, export /srv/efs as "/"
#   /etc/hosts: 127.0.0.2 fs-12345678.efs.us-east-1.amazonaws.com

set -u
FS=fs-12345678
DNS=fs-12345678.efs.us-east-1.amazonaws.com
CASE=$(basename "$0" .sh)
FAILS=0

pass() { echo "PASS $CASE: $*"; }
fail() { echo "FAIL $CASE: $*"; FAILS=$((FAILS + 1)); }
info() { echo "INFO $CASE: $*"; }
# check "what a user would check" command...: PASS or FAIL with the command's output.
check() {
    local what=$1
    shift
    local out
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what: $(echo "$out" | tail -3 | tr '\n' ' ')"; fi
}
finish() {
    [ "$FAILS" = 0 ]
}

# The stunnel client configuration amazon-efs-utils v3.2.0 writes (the reference, section
# 6.2), minus the client certificate: the incumbent's tunnel wherever one is measured
# against ours (bench/run.sh, bench/watchdog-idle.sh and bench/guest/kernel.sh; the host
# scripts source this file for it). incumbent_stunnel_conf ACCEPT CONNECT CAFILE CHECK_HOST
incumbent_stunnel_conf() {
    cat <<EOT
foreground = yes
pid =
socket = l:SO_REUSEADDR=yes
socket = a:SO_BINDTODEVICE=lo
[efs]
client = yes
accept = $1
connect = $2
sslVersion = TLSv1.2
renegotiation = no
TIMEOUTbusy = 20
TIMEOUTclose = 0
TIMEOUTidle = 70
delay = yes
verify = 2
CAfile = $3
checkHost = $4
EOT
}

# Our side, installed where the package installs it.
install_efs_utils() {
    # Merged /usr: /sbin and /lib are symlinks here; keep them while unpacking.
    tar -C /opt/efs/root -cf - . | tar -C / -xf - --keep-directory-symlink --no-same-owner
    configure_for_tests
}

# Test settings: trust the throwaway CA, a fixed region, a short unmount grace period.
configure_for_tests() {
    sed -i -e 's|^#stunnel_cafile = .*|stunnel_cafile = "/etc/amazon/efs/e2e-ca.pem"|' \
        -e 's|^#region = .*|region = "us-east-1"|' \
        -e 's|^#\?unmount_grace_period_sec = .*|unmount_grace_period_sec = 3|' \
        /etc/amazon/efs/efs-utils.toml
    systemctl daemon-reload 2>/dev/null || true
}

# A throwaway CA and a server certificate for *.efs.us-east-1.amazonaws.com that it
# signed, in DIR: ca.key, ca.pem, server.key, server.pem (the e2e guest and the benches).
throwaway_certs() {
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 \
        -subj "/CN=throwaway test CA" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/server.key" -out "$d/server.csr" \
        -subj "/CN=*.efs.us-east-1.amazonaws.com" 2>/dev/null
    printf 'subjectAltName=DNS:*.efs.us-east-1.amazonaws.com\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/ext.cnf" -out "$d/server.pem" 2>/dev/null
}

make_certs() {
    throwaway_certs /etc/e2e-tls
    mkdir -p /etc/amazon/efs
    cp /etc/e2e-tls/ca.pem /etc/amazon/efs/e2e-ca.pem
}

start_knfsd() {
    modprobe nfsd
    mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
    echo 1048576 >/proc/fs/nfsd/max_block_size
    mountpoint -q /run/rpc_pipefs || mount -t rpc_pipefs rpc_pipefs /run/rpc_pipefs
    mkdir -p /var/lib/nfs/nfsdcld
    # With nfsdcld up first, knfsd skips the 90 s grace period when it has no clients.
    nfsdcld
    sleep 0.5
    echo "/srv/efs 127.0.0.0/8(rw,sync,fsid=0,insecure,no_subtree_check,no_root_squash)" >/etc/exports
    exportfs -ra
    rpc.mountd -N 3
    rpc.nfsd 8
}

start_tls_terminator() {
    cat >/etc/e2e-tls/stunnel-server.conf <<EOT
pid = /run/stunnel-server.pid
foreground = no
output = /var/log/stunnel-server.log
[efs]
accept = 127.0.0.2:2049
connect = 127.0.0.3:2049
cert = /etc/e2e-tls/server.pem
key = /etc/e2e-tls/server.key
EOT
    stunnel4 /etc/e2e-tls/stunnel-server.conf
}

# A fake of EFS's IAM authorization in front of knfsd, instead of the stunnel server
# (tests/fake-efs): TLS on 127.0.0.2:2049 that admits a client only with a client
# certificate EFS would authorize. Known access keys: /etc/e2e-tls/efs-keys. Extra
# arguments (--access-point ID, --require-iam) are the file system's policy. Verdicts go
# to /var/log/fake-efs.log, one line each.
E2E_AKID=AKIAE2ETESTKEY000001
E2E_SECRET=e2eSecretKeyThatOnlyTheFakeEfsKnows0001
start_fake_efs() {
    [ -f /run/stunnel-server.pid ] && kill "$(cat /run/stunnel-server.pid)" 2>/dev/null
    pkill -x efs-fake-efs 2>/dev/null
    sleep 0.2
    (umask 077; echo "$E2E_AKID $E2E_SECRET" >/etc/e2e-tls/efs-keys)
    # Kept in the guest's own disk: at boot it starts before /opt/efs is there.
    [ -x /opt/efs/efs-fake-efs ] && install -m 0755 /opt/efs/efs-fake-efs /usr/local/sbin/efs-fake-efs
    setsid /usr/local/sbin/efs-fake-efs --listen 127.0.0.2:2049 --connect 127.0.0.3:2049 \
        --cert /etc/e2e-tls/server.pem --key /etc/e2e-tls/server.key \
        --keys /etc/e2e-tls/efs-keys "$@" >>/var/log/fake-efs.log 2>&1 </dev/null &
    wait_for 10 grep -q "listening on 127.0.0.2:2049" /var/log/fake-efs.log
}

# Root's AWS profiles: [default] with the key the fake EFS knows, [wrong] with a wrong
# secret for it.
aws_profiles() {
    mkdir -p /root/.aws
    (umask 077; cat >/root/.aws/credentials <<EOT
[default]
aws_access_key_id = $E2E_AKID
aws_secret_access_key = $E2E_SECRET

[wrong]
aws_access_key_id = $E2E_AKID
aws_secret_access_key = notTheSecretTheFakeEfsKnowsAtAll000000000
EOT
    )
}

# A fake of the EC2 instance metadata service (IMDSv2) on 127.0.0.9:80, in perl (the
# guest has no python): a session token, the identity document's region, the AZ ID.
# start_fake_imds AZ_ID REGION; the config's instance_metadata_url must point at it.
start_fake_imds() {
    local azid=$1 region=$2
    setsid perl -MIO::Socket::INET -e '
        my ($azid, $region) = @ARGV;
        my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.9:80", Listen => 16, ReuseAddr => 1) or die "listen: $!";
        $| = 1; print "listening\n";
        while (my $c = $s->accept) {
            my $req = <$c> // ""; my $line;
            while (defined($line = <$c>) && $line ne "\r\n") {}
            my ($m, $p) = split / /, $req;
            my %a = ("PUT /latest/api/token" => "e2e-imds-token",
                     "GET /latest/meta-data/placement/availability-zone-id" => $azid,
                     "GET /latest/dynamic/instance-identity/document" => "{\"region\": \"$region\"}");
            my $b = $a{"$m $p"};
            print $c defined $b ? "HTTP/1.1 200 OK\r\nContent-Length: " . length($b) . "\r\nConnection: close\r\n\r\n$b"
                                : "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            print "$m $p\n"; close $c;
        }' "$azid" "$region" >>/var/log/fake-imds.log 2>&1 </dev/null &
    wait_for 10 grep -q listening /var/log/fake-imds.log
}

efs_side_up() {
    make_certs
    start_knfsd
    start_tls_terminator
    install_efs_utils
}

# The mountinfo line of a mountpoint.
mountinfo_of() {
    awk -v mp="$1" '$5 == mp' /proc/self/mountinfo
}

# The port= option of a mounted NFS mountpoint.
port_of() {
    mountinfo_of "$1" | tr ',' '\n' | sed -n 's/^port=//p' | head -1
}

state_files() {
    ls /var/run/efs 2>/dev/null | grep '^fs-' | grep -v '+$' || true
}

# Writes through MOUNTPOINT (export subdirectory SUB) and checks the bytes arrive in the export. The write and its
# fsync get 30 s (then SIGTERM, and SIGKILL 5 s later: a hard mount's waits are
# killable), so a hung mount is a FAIL line, not the case's 600 s timeout. `sync FILE`
# flushes only this file: a plain `sync` would wait on every mount.
works() {
    local mp=$1 sub=$2 word="still here $RANDOM"
    timeout -k 5 30 sh -c 'echo "$1" >"$2/probe" && sync "$2/probe"' sh "$word" "$mp" &&
        grep -qx "$word" "/srv/efs/$sub/probe"
}
# mount_again MOUNTPOINT MOUNT-ARGS...: runs a mount command that has already mounted
# MOUNTPOINT once more and checks what a user expects: exit 0, still one mount there.
mount_again() {
    local mp=$1 out rc
    shift
    out=$(mount "$@" 2>&1); rc=$?
    info "same command twice: rc=$rc: $out"
    check "the same mount command twice: exit 0, one mount" \
        test "$rc" = 0 -a "$(grep -c " $mp " /proc/self/mountinfo)" = 1
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# wait_for SECONDS COMMAND...: until the command succeeds.
wait_for() {
    local limit=$1
    shift
    local end=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.1
    done
}

# stall_ms FILE SINCE_NS DONE_FILE [LIMIT_S]: waits until DONE_FILE exists (a writer's
# exit code) and prints the longest time in ms that FILE did not grow, from SINCE_NS (a
# `date +%s%N` taken at the disruption) on: how long the I/O stalled.
stall_ms() {
    local file=$1 since=$2 done=$3 limit=${4:-120}
    local last last_t=$since stall=0 now size gap
    last=$(stat -c %s "$file")
    while [ ! -f "$done" ]; do
        now=$(date +%s%N)
        size=$(stat -c %s "$file")
        if [ "$size" != "$last" ]; then
            gap=$(( (now - last_t) / 1000000 ))
            [ $gap -gt $stall ] && stall=$gap
            last=$size
            last_t=$now
        fi
        [ $(( (now - since) / 1000000000 )) -gt "$limit" ] && break
        sleep 0.02
    done
    echo "$stall"
}

# The tunnel process serving a port (its control socket is named after the port).
tunnel_pid() {
    pgrep -f "tunnel-$1.sock" | head -1
}

# kill_tunnel_mid_write PORT SRC DEST EXPORTED: copies SRC to DEST (a file in a mount
# whose tunnel serves PORT) with dd conv=fsync in the background, and kill -9s that
# tunnel once the write has reached EXPORTED (DEST's file in the export) while the
# writer still runs: a write can finish within a second here, and a tunnel killed after
# it would be restarted with no traffic to carry. Then waits up to 30 s for the
# watchdog's new tunnel and up to 120 s for the writer. Sets KILLED_TUNNEL (the pid
# killed) and WRITE_RC (dd's exit code, "none" if it never ended).
kill_tunnel_mid_write() {
    local port=$1 src=$2 dest=$3 exported=$4 writer
    rm -f /tmp/mid-write.rc
    KILLED_TUNNEL=$(tunnel_pid "$port")
    (dd if="$src" of="$dest" bs=1M conv=fsync status=none; echo $? >/tmp/mid-write.rc) &
    writer=$!
    wait_for 30 sh -c '[ "$(stat -c %s "$1" 2>/dev/null || echo 0)" -gt 0 ]' _ "$exported"
    [ -f /tmp/mid-write.rc ] && info "the write had already finished when the tunnel was killed"
    kill -9 "$KILLED_TUNNEL"
    wait_for 30 tunnel_restarted "$port"
    wait_for 120 test -f /tmp/mid-write.rc
    wait "$writer" 2>/dev/null # not a bare wait: the watchdog is a job too
    WRITE_RC=$(cat /tmp/mid-write.rc 2>/dev/null || echo none)
}
# tunnel_restarted PORT: a tunnel serves PORT, and not the one kill_tunnel_mid_write killed.
tunnel_restarted() { local p; p=$(tunnel_pid "$1"); [ -n "$p" ] && [ "$p" != "$KILLED_TUNNEL" ]; }

# Kernel TLS (issue #15): an established connection to port 2049 is the kernel's TLS
# socket (ss: tcp-ulp-tls); the first tunnel's kernel_tls status, as JSON on one line;
# the kernel NFS client holds no server any more (after a umount).
kernel_tls_socket() { ss -tni state established '( dport = :2049 )' | grep -q tcp-ulp-tls; }
ktls_status() { efs-utils status --json | tr -d ' \n' | grep -o '"kernel_tls":{[^}]*}' | head -1; }
no_nfs_client() { ! grep -q '^v4' /proc/fs/nfsfs/servers 2>/dev/null; }

# The boot number of a multi-boot case (1, 2, ...).
boot_number() {
    cat /e2e/run/boot 2>/dev/null || echo 1
}

# Makes the "EFS" side a unit that starts at boot before remote file systems, so fstab
# _netdev mounts find it (for cases that reboot).
# efs_side_at_boot [FRONT...]: FRONT is the command that starts EFS's TLS side
# (default start_tls_terminator; e.g. "start_fake_efs --require-iam").
efs_side_at_boot() {
    local front=${*:-start_tls_terminator}
    cp /opt/efs/lib.sh /usr/local/lib/e2e-lib.sh
    cat >/etc/systemd/system/e2e-efs.service <<EOT
[Unit]
Description=e2e stand-in for EFS (knfsd behind a TLS terminator)
DefaultDependencies=no
After=local-fs.target
Before=remote-fs-pre.target
Wants=remote-fs-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/bash -c '. /usr/local/lib/e2e-lib.sh; start_knfsd; $front'

[Install]
WantedBy=remote-fs.target
EOT
    systemctl daemon-reload
    systemctl enable --quiet e2e-efs.service
}
