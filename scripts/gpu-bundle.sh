#!/usr/bin/env bash
# Builds the GPU configuration (CUDA kernels for sm_90a and sm_80, statically linked but for the
# CUDA driver and cuBLAS) and gathers what a GPU machine needs into .device/ (git-ignored): the
# sagellm binary, the GPU test executables and the fixtures they read, the text corpora validate
# reads, and the python files of the SageAttention peer (scripts/fetch-sage-peer.sh) in
# .device/peers.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SAGELLM_SHARED_DIR:-$root/../shared}
cd "$root"
SAGELLM_SKIP_PYTHON=1 scripts/install-deps.sh
cmake --preset gpu >/dev/null
targets=(sagellm bench_flash_attention)
for d in tests/gpu_*/; do
  [[ -d $d ]] && targets+=("test_$(basename "$d")")
done
cmake --build --preset gpu --target "${targets[@]}"
# Fetched peer code stays: it does not change with the build.
if [[ -d .device ]]; then find .device -mindepth 1 -maxdepth 1 ! -name peers -exec rm -rf {} +; fi
mkdir -p .device/bin .device/shared/models .device/shared/golden
cp build/gpu/sagellm build/gpu/bench_flash_attention .device/bin/
for t in build/gpu/tests/test_gpu_*; do
  [[ -x $t ]] && cp "$t" .device/bin/
done
# Shared libraries the binaries need beyond the CUDA driver, cuBLAS and the C library (e.g. the
# HTTP server's cpp-httplib and its TLS/compression libraries) travel along in bin/lib.
mkdir -p .device/bin/lib
for f in .device/bin/*; do
  [[ -f $f ]] || continue
  ldd "$f" 2>/dev/null | awk '/=> \//{print $3}'
done | sort -u | grep -vE '/(libc|libm|libdl|librt|libpthread|libcuda|libcublas|libcublasLt|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" .device/bin/lib/; done
for m in ${SAGELLM_GPU_MODELS:-stories260K llama31-tiny-random llama-3.1-8b-shape passkey-4k}; do
  cp -r "$shared/models/$m" .device/shared/models/
  [[ -d $shared/golden/$m ]] && cp -r "$shared/golden/$m" .device/shared/golden/
done
# The text corpora (WikiText-2, TinyStories sample, haystack essays) validate reads.
cp -r "$shared/data" .device/shared/
# One compressed file keeps what travels to the GPU machine small; gpu-check.sh unpacks it.
strip --strip-all .device/bin/* 2>/dev/null || true
tar -C .device -cJf .device/bundle.tar.xz bin shared
rm -rf .device/bin .device/shared
if [[ ! -f .device/peers/sageattention/sageattention/__init__.py ]]; then
  scripts/fetch-sage-peer.sh .device/peers/sageattention ||
    echo "warning: SageAttention peer not fetched; bench/attention_vs_sdpa.sh will skip it" >&2
fi
du -sh .device/bundle.tar.xz .device/peers 2>/dev/null || true
