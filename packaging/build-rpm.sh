#!/usr/bin/env bash
# Builds the RPM from `make install` with rpmbuild (packaging/rpm/efs-utils.spec), and
# prints its path. As for the Debian package, `make install` is the one install layout;
# the RPM puts mount.efs in /usr/sbin (= /sbin on every merged-/usr RPM distribution)
# and the unit in /usr/lib/systemd/system.
set -euo pipefail
exec 3>&1 1>&2
cd "$(dirname "$0")/.."
command -v rpmbuild >/dev/null || { echo "rpmbuild is missing: apt-get install rpm (Debian) or dnf install rpm-build"; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"
make --no-print-directory install DESTDIR="$root" GLIBC="${GLIBC-2.17}" PREFIX=/usr SBINDIR=/usr/sbin UNITDIR=/usr/lib/systemd/system
# Compressed as rpmbuild's brp-compress would (which recompresses them where it runs).
gzip -9n "$root"/usr/share/man/man*/*
mkdir -p target/rpm
rpmbuild -bb --quiet \
    --define "_topdir $work/rpmbuild" \
    --define "_rpmdir $PWD/target/rpm" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "_sbindir /usr/sbin" \
    --define "pkg_version $version" \
    --define "stage $root" \
    packaging/rpm/efs-utils.spec
rpm=$(ls -t target/rpm/efs-utils-"$version"-1*.rpm | head -1)
echo "$PWD/$rpm" >&3
