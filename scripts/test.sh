#!/usr/bin/env bash
# Builds and runs the CPU test suite (ctest label `cpu`), then the same suite built with
# AddressSanitizer + UndefinedBehaviorSanitizer (the Python differential tests run once, against
# the optimized build).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
"$root/scripts/install-deps.sh"

cmake --preset release >/dev/null
cmake --build --preset release
ctest --preset release

if [[ "${SAGELLM_SKIP_SANITIZERS:-0}" != "1" ]]; then
  cmake --preset asan >/dev/null
  cmake --build --preset asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --preset asan
fi
