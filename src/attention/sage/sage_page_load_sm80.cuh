// Loading of one 8-bit KV page (sage_params.h's block layout) into shared memory with cp.async,
// shared by the sage_attn prefill and split-KV kernels. Shared-memory layout of a stage: K codes
// [64 keys][Dp] (swz<Dp>), V codes [Dp][64 positions] (swz<64>; or fp16 V [Dp][64 keys], swz<128>,
// for a page quantized on the fly in fp16 mode), then the page's means, V scales and K scale as
// stored.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/sage/sage_mma.cuh"
#include "attention/sage/sage_params.h"

namespace sagellm::sage_cuda::sm80 {

// One page of one KV head into a stage: K codes, V (FP8 codes, or fp16 values of a page quantized
// on the fly in fp16 mode), then mean, V scales and K scale.
template <class T>
__device__ __forceinline__ void load_page(const SageParams& p, int32_t entry, int kv_head,
                                          uint32_t stage, int tid) {
  const uint8_t* blk;
  const uint8_t* v16 = nullptr;
  if (entry >= 0) {
    blk = p.pages8 + static_cast<int64_t>(entry) * p.page8_stride +
          static_cast<int64_t>(kv_head) * p.head8_stride;
  } else {
    const int64_t slot = -static_cast<int64_t>(entry) - 1;
    blk = p.scratch8 + slot * p.scratch_page_stride +
          static_cast<int64_t>(kv_head) * p.scratch_head_stride;
    if constexpr (T::kPvFp16) {
      v16 = reinterpret_cast<const uint8_t*>(p.scratch_v16 + slot * p.scratch_v16_page_stride +
                                             static_cast<int64_t>(kv_head) *
                                                 p.scratch_v16_head_stride);
    }
  }
  constexpr int kKC = T::kDp / 16;
  for (int c = tid; c < kSagePageSize * kKC; c += T::kThreads) {
    const int r = c / kKC, ch = c % kKC;
    cp_async_16(stage + swz<T::kDp>(r, ch), blk + r * T::kDp + ch * 16, true);
  }
  const uint32_t sv = stage + T::kKBytes;
  if (v16 == nullptr) {
    const uint8_t* vsrc = blk + sage_v_codes_offset(T::kDp);
    for (int c = tid; c < T::kDp * 4; c += T::kThreads) {
      const int r = c / 4, ch = c % 4;
      cp_async_16(sv + swz<64>(r, ch), vsrc + r * 64 + ch * 16, true);
    }
  } else {
    for (int c = tid; c < T::kDp * 8; c += T::kThreads) {
      const int r = c / 8, ch = c % 8;
      cp_async_16(sv + swz<128>(r, ch), v16 + r * 128 + ch * 16, true);
    }
  }
  const uint8_t* msrc = blk + sage_k_mean_offset(T::kDp);
  for (int c = tid; c < T::kMetaBytes / 16; c += T::kThreads) {
    cp_async_16(stage + T::kKBytes + T::kVBytes + c * 16, msrc + c * 16, true);
  }
}

// The page's fp32 means, bf16 V scales and fp32 K scale in a loaded stage.
struct StageMeta {
  const float* mean;
  const __nv_bfloat16* vscale;
  float kscale;
};

template <class T>
__device__ __forceinline__ StageMeta stage_meta(const unsigned char* stage_ptr) {
  StageMeta m;
  m.mean = reinterpret_cast<const float*>(stage_ptr + T::kKBytes + T::kVBytes);
  m.vscale = reinterpret_cast<const __nv_bfloat16*>(m.mean + T::kDp);
  m.kscale = *reinterpret_cast<const float*>(m.vscale + T::kDp);
  return m;
}

}  // namespace sagellm::sage_cuda::sm80
