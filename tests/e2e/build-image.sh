#!/usr/bin/env bash
# Builds the end-to-end guest image once and caches it: a Debian 12 root file system
# (systemd, knfsd, the NFS client tools, stunnel for the *server* side only, openssl) with
# the User-Mode Linux kernel's modules, as an ext4 image. It is rebuilt only when its
# recipe (this script and guest/) changes. Prints the image's directory.
set -euo pipefail
# Only the image's directory goes to stdout (run.sh captures it); everything else to stderr.
exec 3>&1 1>&2
here=$(cd "$(dirname "$0")" && pwd)
cache=${E2E_CACHE:-/var/cache/efs-e2e}

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v linux.uml >/dev/null || need+=(user-mode-linux)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
    apt-get update -qq 
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" 
fi

uml_version=$(ls /usr/lib/uml/modules | sort -V | tail -1)
recipe=$(cat "$0" "$here"/guest/* | sha256sum | cut -c1-16)
out="$cache/$recipe"
if [ -f "$out/rootfs.img" ]; then
    echo "$out" >&3
    exit 0
fi

echo "building the e2e guest image in $out (once per recipe change)" 
mkdir -p "$cache"
stage=$(mktemp -d "$cache/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT

base="$cache/rootfs-base-bookworm.tar"
if [ ! -f "$base" ]; then
    debootstrap --variant=minbase \
        --include=systemd-sysv,nfs-kernel-server,nfs-common,stunnel4,openssl,ca-certificates,iproute2,kmod,util-linux,procps,psmisc \
        bookworm "$stage/root" http://deb.debian.org/debian 
    tar -C "$stage/root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
else
    mkdir -p "$stage/root" && tar -C "$stage/root" -xf "$base"
fi
root="$stage/root"

# The UML kernel's modules (nfs, nfsv4, nfsd, sunrpc, ...).
mkdir -p "$root/lib/modules"
cp -a "/usr/lib/uml/modules/$uml_version" "$root/lib/modules/"
chroot "$root" depmod -a "$uml_version" 2>/dev/null || depmod -b "$root" "$uml_version"

# Boot quickly, log to the console, start nothing the tests do not start themselves.
install -m 0755 "$here/guest/e2e-init" "$root/usr/local/sbin/e2e-init"
install -m 0755 "$here/guest/e2e-mount-shares" "$root/usr/local/sbin/e2e-mount-shares"
install -m 0644 "$here/guest/e2e-run.service" "$root/etc/systemd/system/e2e-run.service"
ln -sf /etc/systemd/system/e2e-run.service "$root/etc/systemd/system/multi-user.target.wants/e2e-run.service"
echo efs-e2e >"$root/etc/hostname"
: >"$root/etc/machine-id"
printf '127.0.0.1 localhost\n127.0.0.2 fs-12345678.efs.us-east-1.amazonaws.com\n' >"$root/etc/hosts"
printf '# no entries; cases add their own\n' >"$root/etc/fstab"
for unit in getty@tty1 serial-getty@ttyS0 systemd-timesyncd apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer fstrim.timer nfs-server rpcbind rpcbind.socket stunnel4 \
    systemd-udevd systemd-udev-trigger; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit.service" 2>/dev/null || true
done
ln -sf /dev/null "$root/etc/systemd/system/rpcbind.socket"
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/e2e.conf"
mkdir -p "$root/etc/nfs.conf.d"
# knfsd on its own loopback address, NFSv4 only (it binds every address by default).
printf '[nfsd]\nhost=127.0.0.3\nport=2049\nvers3=n\ngrace-time=10\nlease-time=15\n' >"$root/etc/nfs.conf.d/e2e.conf"
mkdir -p "$root/srv/efs" "$root/opt/efs" "$root/e2e"

mkdir -p "$out.tmp"
mkfs.ext4 -q -F -L e2e-root -d "$root" "$out.tmp/rootfs.img" 2G
echo "$uml_version" >"$out.tmp/uml-version"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out" >&3
