#!/usr/bin/env bash
# On a GPU machine: runs every GPU test executable and writes each one's log and JSON result, plus
# the GPU's description, into one folder. Usage: scripts/gpu-check.sh [BIN_DIR] [OUT_DIR]
# BIN_DIR defaults to .device/bin (made by scripts/gpu-bundle.sh), else build/gpu/tests.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-}
if [[ -z $bin ]]; then
  if [[ -d $root/.device/bin ]]; then bin=$root/.device/bin; else bin=$root/build/gpu/tests; fi
fi
out=${2:-${OUT:-$root/gpu-results}}
mkdir -p "$out"
if [[ -d $root/.device/shared ]]; then export SAGELLM_SHARED_DIR=$root/.device/shared; fi
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$out/nvidia-smi.txt"
status=0
for t in "$bin"/test_gpu_*; do
  [[ -x $t ]] || continue
  name=$(basename "$t")
  echo "== $name"
  "$t" --gtest_output="json:$out/$name.json" >"$out/$name.log" 2>&1
  rc=$?
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests? ran|FAILED  \]" "$out/$name.log" || true
  echo "$name exit $rc"
  [[ $rc -eq 0 ]] || status=1
done
exit $status
