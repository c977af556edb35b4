#!/usr/bin/env bash
# CPU decode and prefill throughput of `sagellm generate` (median of N runs), both backends.
# Usage: bench/cpu_decode.sh [MODEL_DIR] [RUNS] [MAX_TOKENS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SAGELLM_SHARED_DIR:-$root/../shared}
model=${1:-$shared/models/stories260K}
runs=${2:-5}
max_tokens=${3:-256}
bin=${SAGELLM_BIN:-$root/build/release/sagellm}
for backend in flash sage_attn; do
  decode=() prefill=()
  for _ in $(seq "$runs"); do
    out=$("$bin" generate --model "$model" --attention-backend "$backend" --prompt "Once upon a time" \
      --max-tokens "$max_tokens" --temperature 0 --ignore-eos --json)
    decode+=("$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["decode_tokens_per_s"])' "$out")")
  done
  median=$(printf '%s\n' "${decode[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
  printf '%-10s decode tokens/s: median %.1f over %d runs of %d tokens (all: %s)\n' "$backend" \
    "$median" "$runs" "$max_tokens" "${decode[*]}"
done
