#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and integration tests, and the
# end-to-end cases with a real kernel NFS client and server.
# Works on a fresh Debian 12 machine with Rust stable: installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "tests/run-all.sh: cargo not found; install Rust stable (https://rustup.rs) and run again" >&2
    exit 1
fi

# Debian packages the tests use: a C compiler for ring, openssl for s_server peers.
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked

# The supervisor and the operator command link no async runtime and no TLS (#11): the
# watchdog has efs-renew-cert renew certificates, efs-utils talks to tunnels over plain
# sockets. `-e normal`: what ships, not what their tests use.
for pkg in efs-watchdog efs-utils; do
    deps=$(cargo tree -p "$pkg" -e normal --locked --prefix none --format '{p}')
    for crate in tokio rustls; do
        if grep -Eq "^$crate(-[a-z-]+)? v" <<<"$deps"; then
            echo "tests/run-all.sh: $pkg links $crate ($(grep -E "^$crate(-[a-z-]+)? v" <<<"$deps" | head -1)); it must not (#11)" >&2
            exit 1
        fi
    done
done

# The RPM: built from `make install GLIBC=2.17` (the release build the e2e step reuses) with
# Debian's rpm, then its file list, dependencies and scriptlets checked.
tests/package-rpm.sh

# The release binaries (the same build) need no glibc newer than 2.17.
tests/glibc.sh

# Every parser of outside input under libFuzzer, a bounded time each (docs/fuzzing.md).
FUZZ_SECONDS=${FUZZ_SECONDS:-10} tests/fuzz.sh

# Real-kernel end-to-end cases in a User-Mode Linux guest (builds its image once, cached
# under /var/cache/efs-e2e). Ends with "e2e: N passed, N failed".
tests/e2e/run.sh
