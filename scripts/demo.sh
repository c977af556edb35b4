#!/usr/bin/env bash
# Builds sagellm and runs the main job on ../shared/models/stories260K: a greedy generation with
# each attention backend, then `sagellm validate --quick`, which measures sage_attn against flash
# (logit divergence, perplexity, throughput, memory, drift, determinism, context accuracy) and
# writes validate-report/report.{json,md,html}.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SAGELLM_SHARED_DIR:-$root/../shared}
SAGELLM_SKIP_PYTHON=1 "$root/scripts/install-deps.sh"
cmake --preset release -S "$root" >/dev/null
cmake --build --preset release --target sagellm
bin=$root/build/release/sagellm
model=$shared/models/stories260K
device=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "(a GPU is present, but this build runs on the CPU)"
fi
for backend in flash sage_attn; do
  echo "== sagellm generate --attention-backend $backend"
  "$bin" generate --model "$model" --device "$device" --attention-backend "$backend" \
    --prompt "Once upon a time" --max-tokens 120 --temperature 0
done
echo "== sagellm validate --quick (sage_attn against flash; report in validate-report/)"
"$bin" validate --model "$model" --device "$device" --quick --out "$root/validate-report" \
  --corpus "$shared/data/tinystories/sample.txt" --haystack-dir "$shared/data/haystack"
