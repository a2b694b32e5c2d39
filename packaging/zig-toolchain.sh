#!/usr/bin/env bash
# Makes sure `cargo zigbuild` works: the release binaries of the packages are linked
# against glibc 2.17 (Amazon Linux 2, RHEL 8, Ubuntu 22.04 and every later system run
# them) with cargo-zigbuild, zig being the cross linker. Both come from PyPI (`ziglang`,
# `cargo-zigbuild`), installed with pip if missing (and pip with apt-get if that is
# missing). docs/portability.md says why and how.
set -euo pipefail
if command -v cargo-zigbuild >/dev/null 2>&1 && python3 -m ziglang version >/dev/null 2>&1; then
    exit 0
fi
echo "installing cargo-zigbuild and ziglang from PyPI (for the glibc 2.17 build)" >&2
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
fi
python3 -m pip install -q --break-system-packages ziglang cargo-zigbuild 2>/dev/null ||
    python3 -m pip install -q ziglang cargo-zigbuild
hash -r
command -v cargo-zigbuild >/dev/null || { echo "cargo-zigbuild is not on PATH after pip install (add pip's bin directory to PATH)" >&2; exit 1; }
