#!/usr/bin/env bash
# End-to-end tests with a real kernel: boots a User-Mode Linux guest (a Linux kernel
# running as an ordinary process, with knfsd and the NFS client as modules) from a
# cached image, installs our release binaries in it, and runs case scripts there.
# Everything stays on the guest's loopback: the guest has no network device.
#
#   tests/e2e/run.sh [CASE ...]     (default: every case in tests/e2e/cases)
#
# E2E_CASES_DIR names another folder of cases (bench/guest: the real-kernel benchmark);
# E2E_RUN_ENV, shell assignments the cases read from /e2e/run/run.env.
#
# Prints each case's PASS/FAIL line as it comes and ends with "N passed, N failed".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)

cases_dir=$(cd "${E2E_CASES_DIR:-$here/cases}" && pwd)
cases=("$@")
if ((${#cases[@]} == 0)); then
    for f in "$cases_dir"/*.sh; do cases+=("$(basename "$f" .sh)"); done
fi

img_dir=$("$here/build-image.sh")

work=$(mktemp -d /tmp/efs-e2e.XXXXXX)
# E2E_KEEP=1 keeps the run folders (console logs, case output) for a post-mortem.
if [ -z "${E2E_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "keeping $work" >&2; fi
# What the guest installs: exactly what `make install` puts in a root (or, for the
# package case, the Debian package), and the cases.
stage="$work/opt"
mkdir -p "$stage/root"
# The binaries are the packages' (built for glibc 2.17, docs/portability.md), so the
# guest tests what ships; one build serves the tree, the deb and the fake below.
make -C "$top" --no-print-directory install DESTDIR="$stage/root" GLIBC=2.17 >&2
cp "$("$top/packaging/build-deb.sh")" "$stage/efs-utils.deb"
mkdir -p "$stage/cases"
cp "$cases_dir"/*.sh "$stage/cases/"
cp "$here/lib.sh" "$stage/"
# The fake of EFS's IAM authorization (tests/fake-efs): test-only, never installed.
triple=$(rustc -vV | sed -n 's/^host: //p')
(cd "$top" && cargo zigbuild --release --locked -q --target "$triple.2.17" -p efs-fake-efs >&2)
cp "$top/target/$triple/release/efs-fake-efs" "$stage/"

passed=0
failed=0
for case in "${cases[@]}"; do
    [ -f "$cases_dir/$case.sh" ] || { echo "FAIL $case: no such case" ; failed=$((failed + 1)); continue; }
    run="$work/run-$case"
    mkdir -p "$run"
    # Settings for the case (shell assignments), read in the guest from /e2e/run/run.env.
    printf '%s\n' "${E2E_RUN_ENV:-}" >"$run/run.env"
    mode=$(sed -n 's/^# e2e-mode: *//p' "$cases_dir/$case.sh" | head -1)
    timeout=$(sed -n 's/^# e2e-timeout: *//p' "$cases_dir/$case.sh" | head -1)
    printf '#!/bin/sh\nexec /bin/bash /opt/efs/cases/%s.sh\n' "$case" >"$run/cmd"
    chmod +x "$run/cmd"
    : >"$run/out.log"
    boots=$(sed -n 's/^# e2e-boots: *//p' "$cases_dir/$case.sh" | head -1)
    show='^(PASS|FAIL|INFO)'
    grep -q '^# e2e-show: all' "$cases_dir/$case.sh" && show=''

    init="init=/usr/local/sbin/e2e-init"
    [ "$mode" = systemd ] && init="systemd.unit=multi-user.target systemd.show_status=0"
    echo "== $case (${mode:-fast} boot x${boots:-1})"
    start=$(date +%s)
    # Every boot of a case uses the same copy-on-write disk, so a later boot sees what an
    # earlier one left (fstab, enabled units): a reboot.
    for boot in $(seq "${boots:-1}"); do
        echo "$boot" >"$run/boot"
        rm -f "$run/rc"
        offset=$(($(stat -c %s "$run/out.log") + 1))
        # The guest's processes are host processes: run it in its own session, under a
        # timeout, and kill the whole group if it overruns.
        TMPDIR=/dev/shm setsid timeout --kill-after=5 "${timeout:-300}" \
            linux.uml mem=1536M "ubd0=$run/root.cow,$img_dir/rootfs.img" root=/dev/ubda rw \
            con=null con0=null,fd:1 quiet $init "e2e_run=$run" "e2e_bin=$stage" \
            >>"$run/console.log" 2>&1 </dev/null &
        guest=$!
        tail -c "+$offset" -f --pid="$guest" "$run/out.log" 2>/dev/null | grep --line-buffered -E "$show" || true
        wait "$guest" || true
        [ "$(cat "$run/rc" 2>/dev/null)" = 0 ] || break
    done
    rc=$(cat "$run/rc" 2>/dev/null || echo "none")
    p=$(grep -c '^PASS' "$run/out.log" || true)
    f=$(grep -c '^FAIL' "$run/out.log" || true)
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        echo "FAIL $case: the guest ended without a verdict (rc=$rc); last console lines:"
        tail -20 "$run/console.log" | sed 's/^/    /'
        tail -20 "$run/out.log" | sed 's/^/    /'
        f=1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    echo "   $case: $p passed, $f failed in $(( $(date +%s) - start )) s"
done
echo "e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
