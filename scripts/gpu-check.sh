#!/usr/bin/env bash
# On a GPU machine: runs every GPU test executable, then the kernel benchmarks and the PyTorch
# peers on the same shapes, and writes each one's log (and JSON results) plus the GPU's
# description into one folder. Usage: scripts/gpu-check.sh [BIN_DIR] [OUT_DIR]
# BIN_DIR defaults to .device/bin (made by scripts/gpu-bundle.sh), else build/gpu/tests.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -f $root/.device/bundle.tar.xz && ! -d $root/.device/bin ]]; then
  tar -C "$root/.device" -xJf "$root/.device/bundle.tar.xz"
fi
# cuBLAS is the one library linked dynamically: find it where the CUDA toolkit or PyTorch keep it.
if ! ldconfig -p 2>/dev/null | grep -q libcublasLt.so.13; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c "import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], 'lib'))" 2>/dev/null); do
    [[ -e $d/libcublasLt.so.13 ]] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  done
fi
# NCCL (tensor parallelism) is loaded at run time; PyTorch's wheel carries one where the system
# has none.
if [[ -z ${SAGELLM_NCCL_LIBRARY:-} ]] && ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2; then
  nccl=$(python3 -c "import nvidia.nccl, os; print(os.path.join(nvidia.nccl.__path__[0], 'lib', 'libnccl.so.2'))" 2>/dev/null)
  [[ -n $nccl && -e $nccl ]] && export SAGELLM_NCCL_LIBRARY=$nccl
fi
bin=${1:-}
if [[ -z $bin ]]; then
  if [[ -d $root/.device/bin ]]; then bin=$root/.device/bin; else bin=$root/build/gpu/tests; fi
fi
if [[ -d $bin/lib ]]; then export LD_LIBRARY_PATH=$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; fi
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
# On Hopper the prefill runs the sm_90a kernels; the portable sm_80 ones (every other GPU) are
# tested here too.
if [[ -x $bin/test_gpu_attention ]]; then
  echo "== test_gpu_attention with SAGELLM_PREFILL_KERNEL=sm80"
  SAGELLM_PREFILL_KERNEL=sm80 "$bin/test_gpu_attention" \
    --gtest_output="json:$out/test_gpu_attention_sm80.json" >"$out/test_gpu_attention_sm80.log" 2>&1
  rc=$?
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests? ran|FAILED  \]" "$out/test_gpu_attention_sm80.log" || true
  echo "test_gpu_attention (sm80 prefill) exit $rc"
  [[ $rc -eq 0 ]] || status=1
fi
# Benchmarks: ours, then the peers on the same shapes in the same run (SAGELLM_SKIP_BENCH=1 skips).
if [[ "${SAGELLM_SKIP_BENCH:-0}" != "1" && -x $bin/sagellm ]]; then
  # End to end: the engine on the GPU with dummy Llama-3.1-8B weights, and transformers on the
  # same shape.
  m8b=${SAGELLM_SHARED_DIR:-$root/../shared}/models/llama-3.1-8b-shape
  echo "== sagellm bench (dummy Llama-3.1-8B, batch 1, 1K context)"
  "$bin/sagellm" bench --model "$m8b" --load-format dummy --device cuda --batch-sizes 1 \
    --input-lens 1024 --output-len 128 --output "$out/bench_8b_b1_1k.json" 2>&1 |
    tee "$out/bench_8b_b1_1k.log"
  if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "== bench/peers/hf_decode_bench.py (transformers, same shape)"
    python3 "$root/bench/peers/hf_decode_bench.py" --config-dir "$m8b" --batch 1 \
      --input-len 1024 --output-len 32 --repeats 2 --json "$out/peer_hf_8b_b1_1k.json" 2>&1 |
      tee "$out/peer_hf_8b_b1_1k.log"
    # Attention kernels against PyTorch SDPA (cuDNN, FlashAttention) on the same shapes.
    bash "$root/bench/attention_vs_sdpa.sh" "$bin/sagellm" "$out" || status=1
  fi
fi
exit $status
