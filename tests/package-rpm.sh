#!/usr/bin/env bash
# The RPM (`make rpm`), checked as an operator checks a package before installing it:
# its files (rpm -qpl), which are configuration kept on upgrade, its dependencies and
# what it replaces (--requires, --obsoletes, --conflicts), its systemd scriptlets
# (--scripts), and that its binaries run. Builds with Debian's rpm, installing it if it
# is missing; skips (exit 0, saying so) only where neither rpmbuild nor apt-get exists.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v rpmbuild >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing: rpm"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm; } >/dev/null ||
            { echo "FAIL package-rpm: apt-get install rpm failed"; exit 1; }
    else
        echo "SKIP package-rpm: rpmbuild is missing and there is no apt-get to install it (dnf install rpm-build)"
        exit 0
    fi
fi

FAILS=0
pass() { echo "PASS package-rpm: $*"; }
fail() { echo "FAIL package-rpm: $*"; FAILS=$((FAILS + 1)); }
check() {
    local what=$1
    shift
    local out
    if out=$("$@" 2>&1); then pass "$what"; else fail "$what: $(echo "$out" | tail -3 | tr '\n' ' ')"; fi
}

rpm=$(make --no-print-directory -s rpm) || { echo "FAIL package-rpm: make rpm failed"; exit 1; }
echo "INFO package-rpm: $rpm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
q() { rpm -qp "$@" "$rpm" 2>/dev/null; }

q -l >"$work/files"
cat >"$work/want" <<'EOT'
/etc/amazon
/etc/amazon/efs
/etc/amazon/efs/efs-utils.crt
/etc/amazon/efs/efs-utils.toml
/usr/bin/amazon-efs-mount-watchdog
/usr/bin/efs-renew-cert
/usr/bin/efs-tunnel
/usr/bin/efs-utils
/usr/lib/efs-utils
/usr/lib/efs-utils/take-over-from-amazon-efs-utils
/usr/lib/systemd/system/amazon-efs-mount-watchdog.service
/usr/sbin/mount.efs
/usr/share/man/man5/efs-utils.toml.5.gz
/usr/share/man/man8/amazon-efs-mount-watchdog.8.gz
/usr/share/man/man8/efs-utils.8.gz
/usr/share/man/man8/mount.efs.8.gz
/var/log/amazon
/var/log/amazon/efs
EOT
# Man pages are compressed where rpmbuild compresses them (gz on Debian and Fedora).
check "rpm -qpl lists exactly the product's files" diff <(sed 's/[.]gz$//' "$work/want") <(sed 's/[.]\(gz\|xz\|bz2\|zst\)$//' "$work/files")

q --qf '[%{FILENAMES} %{FILEFLAGS:fflags} %{FILEMODES:perms}\n]' >"$work/flags"
check "efs-utils.toml is %config(noreplace): an edited one survives upgrades" \
    grep -qx '/etc/amazon/efs/efs-utils.toml cn -rw-r--r--' "$work/flags"
check "efs-utils.crt is not configuration (upgrades refresh the roots), read-only" \
    grep -qx '/etc/amazon/efs/efs-utils.crt  -r--r--r--' "$work/flags"
check "only efs-utils.toml is configuration" test "$(q -c)" = /etc/amazon/efs/efs-utils.toml
check "mount.efs is executable" grep -qx '/usr/sbin/mount.efs  -rwxr-xr-x' "$work/flags"
check "the log directory is private" grep -qx '/var/log/amazon/efs  drwxr-x---' "$work/flags"

q --requires >"$work/requires"
check "requires nfs-utils (mount.nfs4)" grep -qx 'nfs-utils' "$work/requires"
check "requires no stunnel, python or openssl" sh -c "! grep -Ei 'stunnel|python|openssl' '$work/requires'"
check "obsoletes amazon-efs-utils (every release so far)" grep -qx 'amazon-efs-utils < 4' <(q --obsoletes)
check "conflicts with amazon-efs-utils" grep -qx 'amazon-efs-utils' <(q --conflicts)

q --scripts >"$work/scripts"
# `rpm --scripts` prints "postinstall scriptlet (using /bin/sh):" and the body.
for s in postinstall preuninstall postuninstall posttrans; do
    awk -v s="$s scriptlet" '/^[a-z]+ scriptlet/ {on = index($0, s) == 1} on' "$work/scripts" >"$work/$s"
done
unit=amazon-efs-mount-watchdog.service
check "postinstall sets the unit up with systemctl" grep -Eq "systemctl.*$unit|systemd-update-helper install-system-units $unit" "$work/postinstall"
check "preuninstall stops and disables it on erase" grep -Eq "systemctl.*(disable|stop).*$unit|systemd-update-helper remove-system-units $unit" "$work/preuninstall"
check "postuninstall restarts it on upgrade" grep -Eq "try-restart.*$unit|systemd-update-helper mark-restart-system-units $unit" "$work/postuninstall"
check "posttrans takes amazon-efs-utils' mounts over" grep -q "/usr/lib/efs-utils/take-over-from-amazon-efs-utils" "$work/posttrans"

mkdir -p "$work/x"
rpm2archive - <"$rpm" | tar -xzf - -C "$work/x"
check "the packaged mount.efs runs" sh -c "'$work/x/usr/sbin/mount.efs' --version | grep -q '^mount.efs Version: '"
check "the packaged watchdog runs" "$work/x/usr/bin/amazon-efs-mount-watchdog" --version
check "the packaged config points at the packaged tunnel" grep -q '"/usr/bin/efs-tunnel"' "$work/x/etc/amazon/efs/efs-utils.toml"
check "the packaged config points at the packaged renewer" grep -q '^renew_cert = "/usr/bin/efs-renew-cert"' "$work/x/etc/amazon/efs/efs-utils.toml"
check "the packaged takeover script is valid sh" sh -n "$work/x/usr/lib/efs-utils/take-over-from-amazon-efs-utils"
check "the packaged renewer runs" "$work/x/usr/bin/efs-renew-cert" --version
check "the packaged CA bundle is the source tree's" cmp "$work/x/etc/amazon/efs/efs-utils.crt" config/efs-utils.crt

echo "package-rpm: $FAILS failed"
[ "$FAILS" = 0 ]
