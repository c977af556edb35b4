#!/usr/bin/env bash
# On a GPU machine: `sagellm bench-attention --device cuda` (the flash CUDA kernels) and the
# PyTorch SDPA peers (cuDNN and FlashAttention backends) on the same shapes with the same flags, in
# one run, both with accuracy against fp64. Writes ours_<case>.json / sdpa_<case>.json and their
# logs into OUT_DIR. Usage: bench/attention_vs_sdpa.sh [SAGELLM_BIN] [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/build/gpu/sagellm}
out=${2:-${OUT:-$root/gpu-results}}
mkdir -p "$out"
[[ -x $bin ]] || { echo "error: $bin is not an executable sagellm" >&2; exit 1; }
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null ||
  { echo "error: PyTorch with CUDA is needed for the peers" >&2; exit 1; }

status=0
# Same flags for both: the shape, mask, inputs and repeat counts mean the same in each.
compare() {
  local name=$1
  shift
  echo "== $name: $*"
  "$bin" bench-attention --device cuda "$@" --output "$out/ours_$name.json" \
    2>&1 | tee "$out/ours_$name.log" || status=1
  python3 "$root/bench/peers/sdpa_bench.py" "$@" --accuracy --json "$out/sdpa_$name.json" \
    2>&1 | tee "$out/sdpa_$name.log" || status=1
}

prefill=(--batch 4 --heads 32 --kv-heads 32 --head-dim 128 --repeats 10 --warmup 3)
compare prefill_full "${prefill[@]}" --seq-lens 4096,8192,16384
compare prefill_causal "${prefill[@]}" --seq-lens 4096,8192,16384 --causal
compare prefill_causal_koffset "${prefill[@]}" --seq-lens 8192 --causal --k-offset 5
compare decode_b16 --decode --batch 16 --heads 32 --kv-heads 8 --head-dim 128 --seq-lens 8192 \
  --repeats 50 --warmup 5
compare decode_b1 --decode --batch 1 --heads 32 --kv-heads 8 --head-dim 128 --seq-lens 32768 \
  --repeats 50 --warmup 5
exit $status
