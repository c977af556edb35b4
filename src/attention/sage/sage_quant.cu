// Quantization kernels of sage_attn: pages into the 8-bit block layout (kv_cache/page_quant.h's
// specification, sage_params.h's layout) and Q into INT8 blocks (sage_numerics.h step 1). Both are
// bitwise equal to the CPU twin: sums run in the CPU's order (one thread per channel adds the
// tokens in order), maxima are order-free, and every division is IEEE.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention/sage/sage_cuda.h"
#include "attention/sage/sage_launch_sm80.cuh"
#include "attention/sage/sage_params.h"
#include "core/cuda_check.h"

namespace sagellm::sage_cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kQuantThreads = 128;  // one thread per channel of the largest head dim

// Round half away from zero, clamp to +-127 (core/int8_quant.h).
__device__ __forceinline__ int8_t quantize_int8(float x, float scale) {
  if (!(scale > 0.0f)) return 0;
  const float r = roundf(x / scale);
  if (!(r == r)) return 0;
  return static_cast<int8_t>(fminf(fmaxf(r, -127.0f), 127.0f));
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32;
  __syncthreads();  // scratch may still be read from a previous call
  if ((threadIdx.x & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) m = fmaxf(m, scratch[w]);
  return m;
}

// One CTA per (job, KV head).
__global__ void __launch_bounds__(kQuantThreads) quantize_pages_kernel(const SageQuantParams p) {
  const int job_index = blockIdx.x;
  if (p.live_jobs != nullptr && job_index >= *p.live_jobs) return;
  const SageQuantJob job = p.jobs[job_index];
  const int n = job.n_old + job.n_new;
  if (n <= 0) return;
  const int h = blockIdx.y;
  const int dp = p.head_dim_padded, hd = p.head_dim;
  __shared__ bf16 ks[kSagePageSize][kSageMaxHeadDim];
  __shared__ bf16 vs[kSagePageSize][kSageMaxHeadDim];
  __shared__ float red[kQuantThreads / 32];

  const bf16* k_src = static_cast<const bf16*>(p.k_src);
  const bf16* v_src = static_cast<const bf16*>(p.v_src);
  const bf16* k_new = static_cast<const bf16*>(p.k_new);
  const bf16* v_new = static_cast<const bf16*>(p.v_new);
  // Staging: with 16-byte rows (the usual case) each thread issues all its loads before any
  // store, so the page arrives in one round trip instead of one per element.
  const bool vec = hd % 8 == 0 && p.src_page_stride % 8 == 0 && p.src_head_stride % 8 == 0 &&
                   p.k_new_row_stride % 8 == 0 && p.v_new_row_stride % 8 == 0 &&
                   ((reinterpret_cast<uintptr_t>(k_src) | reinterpret_cast<uintptr_t>(v_src) |
                     reinterpret_cast<uintptr_t>(k_new) | reinterpret_cast<uintptr_t>(v_new)) &
                    15) == 0;
  auto offsets = [&](int j, int d, int64_t& k_off, int64_t& v_off) {
    if (j < job.n_old) {
      k_off = static_cast<int64_t>(job.src_page) * p.src_page_stride +
              static_cast<int64_t>(h) * p.src_head_stride + static_cast<int64_t>(j) * hd + d;
      v_off = k_off;
    } else {
      const int64_t row = job.first_new_row + (j - job.n_old);
      k_off = row * p.k_new_row_stride + static_cast<int64_t>(h) * hd + d;
      v_off = row * p.v_new_row_stride + static_cast<int64_t>(h) * hd + d;
    }
  };
  if (vec) {
    constexpr int kBatch = kSagePageSize * kSageMaxHeadDim / 8 / kQuantThreads;
    const int chunks = hd / 8;
    for (int e0 = threadIdx.x; e0 < n * chunks; e0 += kBatch * kQuantThreads) {
      uint4 kr[kBatch], vr[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int e = e0 + b * kQuantThreads;
        if (e >= n * chunks) break;
        const int j = e / chunks, d = (e % chunks) * 8;
        int64_t k_off, v_off;
        offsets(j, d, k_off, v_off);
        const bool old = j < job.n_old;
        kr[b] = *reinterpret_cast<const uint4*>((old ? k_src : k_new) + k_off);
        vr[b] = *reinterpret_cast<const uint4*>((old ? v_src : v_new) + v_off);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int e = e0 + b * kQuantThreads;
        if (e >= n * chunks) break;
        const int j = e / chunks, d = (e % chunks) * 8;
        *reinterpret_cast<uint4*>(&ks[j][d]) = kr[b];
        *reinterpret_cast<uint4*>(&vs[j][d]) = vr[b];
      }
    }
  } else {
    for (int e = threadIdx.x; e < n * hd; e += blockDim.x) {
      const int j = e / hd, d = e % hd;
      int64_t k_off, v_off;
      offsets(j, d, k_off, v_off);
      const bool old = j < job.n_old;
      ks[j][d] = (old ? k_src : k_new)[k_off];
      vs[j][d] = (old ? v_src : v_new)[v_off];
    }
  }
  __syncthreads();

  uint8_t* dst = p.dst8 + static_cast<int64_t>(job.dst) * p.dst_page_stride +
                 static_cast<int64_t>(h) * p.dst_head_stride;
  int8_t* k_codes = reinterpret_cast<int8_t*>(dst + sage_k_codes_offset(dp));
  uint8_t* v_codes = dst + sage_v_codes_offset(dp);
  float* k_mean = reinterpret_cast<float*>(dst + sage_k_mean_offset(dp));
  bf16* v_scale = reinterpret_cast<bf16*>(dst + sage_v_scale_offset(dp));
  float* k_scale = reinterpret_cast<float*>(dst + sage_k_scale_offset(dp));

  // K: mean per channel, summed in token order as the CPU does.
  const int d = threadIdx.x;
  float mean = 0.0f;
  if (d < hd) {
    for (int j = 0; j < n; ++j) mean += __bfloat162float(ks[j][d]);
    mean /= static_cast<float>(n);
  }
  float local = 0.0f;
  if (d < hd) {
    for (int j = 0; j < n; ++j) local = fmaxf(local, fabsf(__bfloat162float(ks[j][d]) - mean));
  }
  const float kscale = block_max(local, red) / 127.0f;
  if (d < dp) {
    k_mean[d] = d < hd ? mean : 0.0f;
    for (int j = 0; j < kSagePageSize; ++j) {
      k_codes[static_cast<int64_t>(j) * dp + d] =
          j < n && d < hd ? quantize_int8(__bfloat162float(ks[j][d]) - mean, kscale) : int8_t{0};
    }
  }
  if (threadIdx.x == 0) {
    k_scale[0] = kscale;
    k_scale[1] = k_scale[2] = k_scale[3] = 0.0f;
  }

  if (p.dst_v16 != nullptr) {
    // fp16 P.V reads V of a page quantized on the fly unquantized, in fp16, [dim][key].
    __half* v16 = reinterpret_cast<__half*>(p.dst_v16) +
                  static_cast<int64_t>(job.dst) * p.dst_v16_page_stride +
                  static_cast<int64_t>(h) * p.dst_v16_head_stride;
    if (d < dp) {
      for (int j = 0; j < kSagePageSize; ++j) {
        v16[static_cast<int64_t>(d) * kSagePageSize + j] =
            j < n && d < hd ? __float2half_rn(__bfloat162float(vs[j][d])) : __float2half_rn(0.0f);
      }
    }
    return;
  }
  // V: one scale per channel; FP8 or INT8 codes, transposed, keys permuted (sage_params.h).
  if (d < dp) {
    float vmax = 0.0f;
    if (d < hd) {
      for (int j = 0; j < n; ++j) vmax = fmaxf(vmax, fabsf(__bfloat162float(vs[j][d])));
    }
    const bf16 vscale_bf16 = __float2bfloat16_rn(vmax / (p.v_int8 ? 127.0f : 448.0f));
    const float vscale = __bfloat162float(vscale_bf16);
    v_scale[d] = vscale_bf16;
    // Four positions per 4-byte store: the thread's row of codes is contiguous.
    for (int pos0 = 0; pos0 < kSagePageSize; pos0 += 4) {
      uint32_t word = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = sage_v_key_of_position(pos0 + i);
        uint32_t code = 0;
        if (j < n && p.v_int8) {
          code = static_cast<uint8_t>(quantize_int8(__bfloat162float(vs[j][d]), vscale));
        } else if (j < n && vscale > 0.0f) {
          code =
              __nv_cvt_float_to_fp8(__bfloat162float(vs[j][d]) / vscale, __NV_SATFINITE, __NV_E4M3);
        }
        word |= code << (8 * i);
      }
      *reinterpret_cast<uint32_t*>(v_codes + static_cast<int64_t>(d) * kSagePageSize + pos0) = word;
    }
  }
}

// One warp per (new token, query head): q' = q * q_factor, one scale per token (kSageQBlockRows
// = 1). Lane l holds channels 4l .. 4l + 3: one 8-byte load and one 4-byte store (head_dim a
// multiple of 8, rows 16-byte aligned: launch() checks both). A warp does kQRows tokens of one
// head, their loads issued before any reduction so that they are in flight together. (H200, 4 x
// 8K tokens x 32 heads: one CTA of two barriers per token took 1.19 ms, one warp per token with
// 2-byte loads 0.31 ms, this kernel 0.25 ms.)
constexpr int kQWarps = 8;
constexpr int kQRows = 4;

__global__ void __launch_bounds__(32 * kQWarps) quantize_q_kernel(const SageParams p) {
  static_assert(kSageQBlockRows == 1, "one Q scale per new token: one warp per row");
  static_assert(kSageMaxHeadDim == 4 * 32, "four channels a lane");
  const int seq = blockIdx.z, head = blockIdx.y;
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int token0 = (blockIdx.x * kQWarps + static_cast<int>(threadIdx.x) / 32) * kQRows;
  if (token0 >= q_len) return;  // the whole warp: token0 is the same for its lanes
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int dp = p.head_dim_padded, hd = p.head_dim;
  const int rows = min(kQRows, q_len - token0);
  float x[kQRows][4];
#pragma unroll
  for (int r = 0; r < kQRows; ++r) {
    const bf16* q = static_cast<const bf16*>(p.q) +
                    static_cast<int64_t>(q_begin + token0 + r) * p.q_row_stride +
                    static_cast<int64_t>(head) * p.q_head_stride;
    uint2 raw = make_uint2(0u, 0u);
    if (r < rows && 4 * lane < hd) raw = *reinterpret_cast<const uint2*>(q + 4 * lane);
    const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
    const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
    x[r][0] = __low2float(lo) * p.q_factor;
    x[r][1] = __high2float(lo) * p.q_factor;
    x[r][2] = __low2float(hi) * p.q_factor;
    x[r][3] = __high2float(hi) * p.q_factor;
  }
#pragma unroll
  for (int r = 0; r < kQRows; ++r) {
    if (r >= rows) break;
    float local = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) local = fmaxf(local, fabsf(x[r][i]));
    for (int o = 16; o > 0; o >>= 1) local = fmaxf(local, __shfl_xor_sync(0xffffffffu, local, o));
    const float scale = local / 127.0f;
    const int64_t out =
        (static_cast<int64_t>(q_begin + token0 + r) - p.cu_seqlens_q[0]) * p.num_heads + head;
    uint32_t word = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int8_t c = 4 * lane + i < hd ? quantize_int8(x[r][i], scale) : int8_t{0};
      word |= static_cast<uint32_t>(static_cast<uint8_t>(c)) << (8 * i);
    }
    if (4 * lane < dp) *reinterpret_cast<uint32_t*>(p.q8 + out * dp + 4 * lane) = word;
    if (lane == 0) p.q_scale[out] = scale;
  }
}

}  // namespace

void sage_quantize_pages_cuda(const SageQuantParams& p, CUstream_st* stream) {
  if (p.num_jobs <= 0) return;
  if (p.jobs == nullptr || p.dst8 == nullptr || p.num_kv_heads <= 0 ||
      sage_padded_head_dim(p.head_dim) != p.head_dim_padded ||
      p.dst_head_stride < sage_page_block_bytes(p.head_dim_padded) || p.dst_page_stride % 16 != 0 ||
      p.dst_head_stride % 16 != 0 || reinterpret_cast<uintptr_t>(p.dst8) % 16 != 0) {
    // The kernel stores the page's fp32 metadata and packed codes with 4-byte stores.
    detail::throw_error("sage_attn (CUDA): bad page quantization parameters");
  }
  const dim3 grid(p.num_jobs, p.num_kv_heads);
  quantize_pages_kernel<<<grid, kQuantThreads, 0, stream>>>(p);
  SAGELLM_CUDA_CHECK_LAUNCH();
}

namespace sm80 {

cudaError_t launch_quantize_q(const SageParams& p, int max_q_len, cudaStream_t stream) {
  const dim3 grid(sage_ceil_div(max_q_len, kQWarps * kQRows), p.num_heads, p.num_seqs);
  quantize_q_kernel<<<grid, 32 * kQWarps, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sm80

}  // namespace sagellm::sage_cuda
