#!/usr/bin/env bash
# Builds sagellm and runs the main job on ../shared/models/stories260K: a greedy generation with
# each attention backend, then the KL divergence of sage_attn against flash on the sample text.
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
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== sagellm perplexity (flash, saving the base logits)"
"$bin" perplexity --model "$model" --file "$shared/data/tinystories/sample.txt" --ctx 512 \
  --kl-divergence-base "$tmp/flash.safetensors"
echo "== sagellm perplexity --attention-backend sage_attn --kl-divergence"
"$bin" perplexity --model "$model" --file "$shared/data/tinystories/sample.txt" --ctx 512 \
  --attention-backend sage_attn --kl-divergence "$tmp/flash.safetensors"
