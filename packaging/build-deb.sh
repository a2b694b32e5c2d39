#!/usr/bin/env bash
# Builds the Debian package from `make install` with dpkg-deb, and prints its path. Its
# binaries are built for glibc 2.17 and later (GLIBC=2.17, docs/portability.md), so the
# one package installs on Debian 11-13 and Ubuntu 20.04-24.04; GLIBC= builds for this host.
# dpkg-deb rather than cargo-deb: `make install` stays the one install layout, nothing is
# fetched from crates.io, and the maintainer scripts are plain shell (packaging/debian/).
set -euo pipefail
exec 3>&1 1>&2
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
make --no-print-directory install DESTDIR="$root" GLIBC="${GLIBC-2.17}"
mkdir -p "$root/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" packaging/debian/control >"$root/DEBIAN/control"
cp packaging/debian/conffiles "$root/DEBIAN/"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
mkdir -p target/debian
deb="target/debian/efs-utils_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb"
echo "$PWD/$deb" >&3
