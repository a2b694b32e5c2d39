#!/usr/bin/env bash
# The release binaries run on glibc 2.17 and later (Amazon Linux 2, RHEL 8, Ubuntu 22.04
# and 24.04, Debian 11-13): built as the packages build them (`make build GLIBC=2.17`,
# cargo-zigbuild), no binary may need a GLIBC_ symbol version above 2.17, and each runs
# here. docs/portability.md says why; this is the check a distribution's loader makes.
set -uo pipefail
cd "$(dirname "$0")/.."
want=2.17
command -v readelf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null; }
make --no-print-directory build GLIBC=$want >&2 || { echo "FAIL glibc: the glibc $want build failed"; exit 1; }
out=target/$(rustc -vV | sed -n 's/^host: //p')/release
FAILS=0
for b in mount-efs efs-tunnel efs-renew-cert amazon-efs-mount-watchdog efs-utils; do
    highest=$(readelf --dyn-syms --wide "$out/$b" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    if [ -n "$highest" ] && [ "$(printf '%s\n%s\n' "$highest" "$want" | sort -V | tail -1)" = "$want" ]; then
        echo "PASS glibc: $b needs at most GLIBC_$highest (<= $want)"
    else
        echo "FAIL glibc: $b needs GLIBC_${highest:-?}, above $want:"
        readelf --dyn-syms --wide "$out/$b" | grep -E "GLIBC_$highest( |$)" | awk '{print "    " $8}' | head -5
        FAILS=$((FAILS + 1))
    fi
    if "$out/$b" --help >/dev/null 2>&1 || "$out/$b" -h >/dev/null 2>&1 || [ "$b" = mount-efs ]; then
        echo "PASS glibc: $b runs here"
    else
        echo "FAIL glibc: $b does not run here"
        FAILS=$((FAILS + 1))
    fi
done
"$out/mount-efs" --version >/dev/null 2>&1 && echo "PASS glibc: mount-efs runs here" || { echo "FAIL glibc: mount-efs --version"; FAILS=$((FAILS + 1)); }
[ "$FAILS" = 0 ]
