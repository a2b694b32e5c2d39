#!/usr/bin/env bash
# The real-kernel benchmark (issue #15): bench/guest/kernel.sh in the e2e User-Mode Linux
# guest, through the kernel's own NFS client and server: our tunnel against stunnel as
# amazon-efs-utils configures it, same run, interleaved rounds; prints the table and
# exits non-zero if a goal is missed. BENCH_MIB, BENCH_FILES, BENCH_ROUNDS as documented
# there; they reach the guest through its run folder.
set -euo pipefail
cd "$(dirname "$0")/.."
env_line="BENCH_MIB=${BENCH_MIB:-256} BENCH_FILES=${BENCH_FILES:-400} BENCH_ROUNDS=${BENCH_ROUNDS:-3}"
E2E_CASES_DIR=bench/guest E2E_RUN_ENV="$env_line" exec tests/e2e/run.sh kernel
