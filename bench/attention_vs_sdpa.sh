#!/usr/bin/env bash
# On a GPU machine: `sagellm bench-attention --device cuda` (the flash and sage_attn CUDA kernels) and the
# PyTorch SDPA peers (cuDNN and FlashAttention backends) on the same shapes with the same flags, in
# one run, both with accuracy against fp64. Writes ours_<case>.json / sdpa_<case>.json and their
# logs into OUT_DIR. When scripts/fetch-sage-peer.sh has put thu-ml SageAttention's Triton kernels
# into .device/peers/sageattention (or $SAGELLM_SAGEATTENTION_DIR), that 8-bit peer runs on the same
# shapes too, into sage_peer_<case>.json / .log.
# Usage: bench/attention_vs_sdpa.sh [SAGELLM_BIN] [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/build/gpu/sagellm}
out=${2:-${OUT:-$root/gpu-results}}
mkdir -p "$out"
[[ -x $bin ]] || { echo "error: $bin is not an executable sagellm" >&2; exit 1; }
python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null ||
  { echo "error: PyTorch with CUDA is needed for the peers" >&2; exit 1; }
sage_dir=${SAGELLM_SAGEATTENTION_DIR:-$root/.device/peers/sageattention}
if [[ ! -f $sage_dir/sageattention/__init__.py ]]; then
  echo "note: no SageAttention peer in $sage_dir (see scripts/fetch-sage-peer.sh); skipped" >&2
  sage_dir=""
fi

status=0
# Same flags for all: the shape, mask, inputs and repeat counts mean the same in each.
compare() {
  local name=$1
  shift
  echo "== $name: $*"
  "$bin" bench-attention --device cuda "$@" --output "$out/ours_$name.json" \
    2>&1 | tee "$out/ours_$name.log" || status=1
  local pv
  for pv in fp8 fp16; do
    "$bin" bench-attention --device cuda --backend sage_attn --sage-pv-dtype "$pv" "$@" \
      --output "$out/ours_sage_${pv}_$name.json" 2>&1 | tee "$out/ours_sage_${pv}_$name.log" ||
      status=1
  done
  python3 "$root/bench/peers/sdpa_bench.py" "$@" --accuracy --json "$out/sdpa_$name.json" \
    2>&1 | tee "$out/sdpa_$name.log" || status=1
  if [[ -n $sage_dir ]]; then
    python3 "$root/bench/peers/sageattn_bench.py" "$@" --accuracy --sageattention-dir "$sage_dir" \
      --json "$out/sage_peer_$name.json" 2>&1 | tee "$out/sage_peer_$name.log" || status=1
  fi
}

prefill=(--batch 4 --heads 32 --kv-heads 32 --head-dim 128 --repeats 10 --warmup 3)
compare prefill_full "${prefill[@]}" --seq-lens 4096,8192,16384
compare prefill_causal "${prefill[@]}" --seq-lens 4096,8192,16384 --causal
compare prefill_causal_koffset "${prefill[@]}" --seq-lens 8192 --causal --k-offset 5
compare decode_b16 --decode --batch 16 --heads 32 --kv-heads 8 --head-dim 128 --seq-lens 8192 \
  --repeats 50 --warmup 5
compare decode_b32_32k --decode --batch 32 --heads 32 --kv-heads 8 --head-dim 128 \
  --seq-lens 32768 --repeats 20 --warmup 3
compare decode_b1 --decode --batch 1 --heads 32 --kv-heads 8 --head-dim 128 --seq-lens 32768 \
  --repeats 50 --warmup 5
exit $status
