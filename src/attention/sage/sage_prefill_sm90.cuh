// sage_attn prefill kernel, Hopper (sm_90a), fp8 and int8 P.V, head dim 128: INT8 Q K^T and FP8
// P V (or UINT8 P times INT8 V, int8 mode) as wgmma products, warp-specialized. Numerics:
// sage_numerics.h, step by step, as the sm_80 kernel (sage_attn_sm80.cuh), whose per-page
// arithmetic this kernel shares.
//
// One CTA = 128 new tokens of one query head: two consumer warpgroups of 64 rows (each thread
// reads its two rows' Q scales, as in the sm_80 kernel) and one producer warpgroup, whose registers
// go to the consumers (setmaxnreg). The key tile is one page (64 keys), so that the running max,
// the K scale, the K mean and the V scales change exactly at tile boundaries. The producer copies
// each page (K codes, transposed V codes, then mean and scales; one block table lookup per page)
// with cp.async into a ring of stages laid out as wgmma reads them (K rows of 128 bytes, 128-byte
// swizzle; V rows of 64 bytes, 64-byte swizzle) and hands them over through full/empty mbarriers.
// Per page and warpgroup:
//   S = Q8 K8^T (wgmma m64n64k32 s8, int32), dequantized with q_scale * k_scale plus q'.k_mean;
//   one running-max update, P = exp2(S - m), rounded to FP8 (x448) in registers;
//   partial = P V (wgmma m64n136k32 e4m3, a fresh fp32 accumulator), then
//   acc = acc * alpha + partial * v_scale (the two-level accumulation of the specification).
// The product's 8 extra columns multiply P by a row of ones kept under each stage's V tile: they
// give the page's row sums of the FP8 P values, which the softmax would otherwise convert back
// from FP8 and add up itself (the sums of at most 64 such values are exact in fp32). In int8
// mode (16 extra columns) the page's P is rounded against each row's own page max and the
// partial, exact in int32, is folded with v_scale * beta (sage_numerics.h step 5).
// The consumers take turns at the tensor cores (two named barriers): one issues S_n together with
// P_{n-1} V_{n-1} while the other dequantizes and exponentiates.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "attention/flash/flash_wgmma_sm90.cuh"
#include "attention/sage/sage_attn_sm80.cuh"
#include "attention/sage/sage_params.h"
#include "attention/sage/sage_wgmma_sm90.cuh"

namespace sagellm::sage_cuda::sm90 {

using flash_cuda::sm90::fence_proxy_async_smem;
using flash_cuda::sm90::mbarrier_arrive;
using flash_cuda::sm90::mbarrier_init;
using flash_cuda::sm90::mbarrier_wait;
using flash_cuda::sm90::named_arrive;
using flash_cuda::sm90::named_sync;
using flash_cuda::sm90::setmaxnreg_dec;
using flash_cuda::sm90::setmaxnreg_inc;
using flash_cuda::sm90::sw128_desc;
using flash_cuda::sm90::sw64_desc;
using flash_cuda::sm90::wgmma_commit;
using flash_cuda::sm90::wgmma_fence;
using flash_cuda::sm90::wgmma_keep;
using flash_cuda::sm90::wgmma_wait;
using sm80::bf16;
using sm80::cp_async_16;
using sm80::cp_async_commit;
using sm80::cp_async_wait;
using sm80::e4m3x2_to_f16x2;
using sm80::f16x2_to_float2;
using sm80::f32x2_to_e4m3x2;
using sm80::fast_exp2;
using sm80::quad_max;
using sm80::quad_sum;
using sm80::smem_addr;
using sm80::swz;

template <SagePv kPv_>
struct PrefillTraits {
  static_assert(kPv_ == SagePv::kFp8 || kPv_ == SagePv::kInt8, "8-bit P.V modes only");
  static constexpr SagePv kPv = kPv_;
  static constexpr bool kPvInt8 = kPv == SagePv::kInt8;
  static constexpr int kDp = 128;
  static constexpr bool kSplit = false;  // for sage_block
  static constexpr int kRows = kSagePrefillBlockM;
  static constexpr int kConsumerThreads = 256;
  static constexpr int kProducerThreads = 128;
  static constexpr int kThreads = kConsumerThreads + kProducerThreads;
  static constexpr int kStages = 6;  // pages are small: a deep ring hides the copies' latency
  // Registers per thread after the hand-over (128 * 40 + 256 * 232 <= 64K).
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static constexpr int kNT = kSagePageSize / 8;  // 8-key column tiles of S
  static constexpr int kDT = kDp / 8;            // 8-column tiles of O
  static constexpr int kKBytes = kSagePageSize * kDp;
  // V's channels, then the ones row and 7 zero rows (15 for the integer product, whose N grows in
  // steps of 16 past 128).
  static constexpr int kVRows = kDp + (kPvInt8 ? 16 : 8);
  static constexpr int kPT = kVRows / 8;  // 8-column tiles of the P.V product
  static constexpr int kVBytes = kSagePageSize * kVRows;
  static constexpr int kMetaBytes = 6 * kDp + 16;
  // K at 0 and V at kKBytes (on 1024- and 512-byte boundaries, as the swizzles need), then meta.
  static constexpr int kStageBytes = (kKBytes + kVBytes + kMetaBytes + 1023) / 1024 * 1024;
  static constexpr int kQ8Bytes = kRows * kDp;
  static constexpr int kQhBytes = kRows * kDp * 2;
  static constexpr int kSmemStages = kQ8Bytes + kQhBytes;
  static constexpr int kSmemBarriers = kSmemStages + kStages * kStageBytes;
  static constexpr int kSmemBytes = kSmemBarriers + 2 * kStages * 8 + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA");
};

// One page of one KV head (pool or on-the-fly scratch block) into a stage, by the producer
// warpgroup.
template <class T>
__device__ __forceinline__ void load_page(const SageParams& p, int32_t entry, int kv_head,
                                          uint32_t stage, int ptid) {
  const uint8_t* blk = entry >= 0 ? p.pages8 + static_cast<int64_t>(entry) * p.page8_stride +
                                        static_cast<int64_t>(kv_head) * p.head8_stride
                                  : p.scratch8 +
                                        (-static_cast<int64_t>(entry) - 1) * p.scratch_page_stride +
                                        static_cast<int64_t>(kv_head) * p.scratch_head_stride;
  constexpr int kKC = T::kDp / 16;  // 16-byte chunks per K row
#pragma unroll
  for (int c = ptid; c < kSagePageSize * kKC; c += T::kProducerThreads) {
    const int r = c / kKC, ch = c % kKC;
    cp_async_16(stage + swz<T::kDp>(r, ch), blk + r * T::kDp + ch * 16, true);
  }
  const uint8_t* vsrc = blk + sage_v_codes_offset(T::kDp);
#pragma unroll
  for (int c = ptid; c < T::kDp * 4; c += T::kProducerThreads) {
    const int r = c / 4, ch = c % 4;
    cp_async_16(stage + T::kKBytes + swz<64>(r, ch), vsrc + r * 64 + ch * 16, true);
  }
  const uint8_t* msrc = blk + sage_k_mean_offset(T::kDp);
  for (int c = ptid; c < T::kMetaBytes / 16; c += T::kProducerThreads) {
    cp_async_16(stage + T::kKBytes + T::kVBytes + c * 16, msrc + c * 16, true);
  }
}

// The warpgroup's 64 rows of Q codes (for wgmma) and of bf16 queries (for q'.k_mean).
template <class T>
__device__ __forceinline__ void load_q(const SageParams& p, const sm80::SageBlock& b, uint32_t sq8,
                                       uint32_t sqh, int wg, int wtid) {
  const int row0 = p.cu_seqlens_q[0];
  constexpr int kC8 = T::kDp / 16, kCh = T::kDp / 8;
  for (int c = wtid; c < 64 * kC8; c += 128) {
    const int r = wg * 64 + c / kC8, ch = c % kC8;
    int token, head;
    const bool valid = sm80::row_of<T>(b, r, token, head);
    const int8_t* src =
        valid ? p.q8 +
                    (static_cast<int64_t>(b.q_begin + token - row0) * p.num_heads + head) * T::kDp +
                    ch * 16
              : p.q8;
    cp_async_16(sq8 + swz<T::kDp>(r, ch), src, valid);
  }
  const bf16* q = static_cast<const bf16*>(p.q);
  for (int c = wtid; c < 64 * kCh; c += 128) {
    const int r = wg * 64 + c / kCh, ch = c % kCh;
    int token, head;
    const bool valid = sm80::row_of<T>(b, r, token, head) && ch * 8 < p.head_dim;
    const bf16* src = valid ? q + static_cast<int64_t>(b.q_begin + token) * p.q_row_stride +
                                  static_cast<int64_t>(head) * p.q_head_stride + ch * 8
                            : q;
    cp_async_16(sqh + swz<2 * T::kDp>(r, ch), src, valid);
  }
}

// Registers of one consumer thread (rows g and g + 8 of its warp's 16).
template <class T>
struct Consumer {
  using Part = std::conditional_t<T::kPvInt8, int, float>;
  int si[T::kNT][4];     // Q8 K8^T of the current page
  Part part[T::kPT][4];  // P V of the previous page; column tile kDT: its row sums
  float acc[T::kDT][4];
  uint32_t pa[2][4];  // FP8 (int8 mode: UINT8) P of the previous page: its two k32 steps
  float m[2], l[2], alpha[2];
  float beta[2];  // int8 mode: exp2(page max - running max) of the previous page

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < T::kNT; ++j) si[j][0] = si[j][1] = si[j][2] = si[j][3] = 0;
#pragma unroll
    for (int j = 0; j < T::kDT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < T::kPT; ++j) part[j][0] = part[j][1] = part[j][2] = part[j][3] = 0;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
    alpha[0] = alpha[1] = 1.0f;
    beta[0] = beta[1] = 1.0f;
  }

  // Scores of the page in `meta` (its mean and K scale) and the running max (sm80::page_scores, as
  // the sm_80 kernel), then P in FP8 (into pa); the row sums come with the product (fold).
  __device__ __forceinline__ void softmax(const SageParams& p, const unsigned char* meta,
                                          const unsigned char* qh_rows, float qs0, float qs1,
                                          int key0, int lim0, int lim1, bool masked, int lane) {
    const float* mean = reinterpret_cast<const float*>(meta);
    const float kscale = *reinterpret_cast<const float*>(meta + 6 * T::kDp);
    float s[T::kNT][4], m_new[2], ref[2], page_max[2];
    sm80::page_scores<T::kDp, T::kNT>(si, mean, qh_rows, p.q_factor, qs0 * kscale, qs1 * kscale,
                                      key0, lim0, lim1, masked, m, s, m_new, ref, page_max, lane);
    const float ref0 = ref[0], ref1 = ref[1];
    alpha[0] = fast_exp2(m[0] - ref0);
    alpha[1] = fast_exp2(m[1] - ref1);
    m[0] = m_new[0];
    m[1] = m_new[1];
    if constexpr (T::kPvInt8) {
      // P against the rows' own page max, as the sm_80 kernel (sage_attn_sm80.cuh).
      const float e0 = page_max[0] == -INFINITY ? 0.0f : page_max[0];
      const float e1 = page_max[1] == -INFINITY ? 0.0f : page_max[1];
      beta[0] = fast_exp2(page_max[0] - ref0);
      beta[1] = fast_exp2(page_max[1] - ref1);
#pragma unroll
      for (int kc = 0; kc < 2; ++kc) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int j0 = 4 * kc + 2 * half, j1 = j0 + 1;
          pa[kc][2 * half] = sm80::pack_u8x4(sm80::u8_code_float(fast_exp2(s[j0][0] - e0)),
                                             sm80::u8_code_float(fast_exp2(s[j0][1] - e0)),
                                             sm80::u8_code_float(fast_exp2(s[j1][0] - e0)),
                                             sm80::u8_code_float(fast_exp2(s[j1][1] - e0)));
          pa[kc][2 * half + 1] = sm80::pack_u8x4(sm80::u8_code_float(fast_exp2(s[j0][2] - e1)),
                                                 sm80::u8_code_float(fast_exp2(s[j0][3] - e1)),
                                                 sm80::u8_code_float(fast_exp2(s[j1][2] - e1)),
                                                 sm80::u8_code_float(fast_exp2(s[j1][3] - e1)));
        }
      }
    } else {
#pragma unroll
      for (int kc = 0; kc < 2; ++kc) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int j0 = 4 * kc + 2 * half, j1 = j0 + 1;
          const uint32_t r0lo = f32x2_to_e4m3x2(fast_exp2(s[j0][0] - ref0) * 448.0f,
                                                fast_exp2(s[j0][1] - ref0) * 448.0f);
          const uint32_t r0hi = f32x2_to_e4m3x2(fast_exp2(s[j1][0] - ref0) * 448.0f,
                                                fast_exp2(s[j1][1] - ref0) * 448.0f);
          const uint32_t r1lo = f32x2_to_e4m3x2(fast_exp2(s[j0][2] - ref1) * 448.0f,
                                                fast_exp2(s[j0][3] - ref1) * 448.0f);
          const uint32_t r1hi = f32x2_to_e4m3x2(fast_exp2(s[j1][2] - ref1) * 448.0f,
                                                fast_exp2(s[j1][3] - ref1) * 448.0f);
          pa[kc][2 * half] = r0lo | (r0hi << 16);
          pa[kc][2 * half + 1] = r1lo | (r1hi << 16);
        }
      }
    }
  }

  // acc = acc * alpha + partial * v_scale and l = l * alpha + (row sum), with the previous page's
  // alpha and V scales. The row sums sit in column 128 of the product, held by the quad's thread
  // t = 0 (the others hold the zero columns 129..135), so l stays a per-thread partial sum that
  // the quad adds up at the end. alpha is exactly 1 whenever the max did not move: the multiply
  // is then skipped, which changes no bit.
  __device__ __forceinline__ void fold(const unsigned char* meta, int lane) {
    const int t = lane & 3;
    const bf16* vscale = reinterpret_cast<const bf16*>(meta + 4 * T::kDp);
    if constexpr (T::kPvInt8) {
      // The exact int32 partial sums, scaled by v_scale * beta (sage_numerics.h step 5).
      l[0] = fmaf(l[0], alpha[0], static_cast<float>(part[T::kDT][0]) * beta[0]);
      l[1] = fmaf(l[1], alpha[1], static_cast<float>(part[T::kDT][2]) * beta[1]);
#pragma unroll
      for (int dt = 0; dt < T::kDT; ++dt) {
        const float2 f =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vscale + dt * 8 + 2 * t));
        acc[dt][0] = fmaf(static_cast<float>(part[dt][0]), f.x * beta[0], acc[dt][0] * alpha[0]);
        acc[dt][1] = fmaf(static_cast<float>(part[dt][1]), f.y * beta[0], acc[dt][1] * alpha[0]);
        acc[dt][2] = fmaf(static_cast<float>(part[dt][2]), f.x * beta[1], acc[dt][2] * alpha[1]);
        acc[dt][3] = fmaf(static_cast<float>(part[dt][3]), f.y * beta[1], acc[dt][3] * alpha[1]);
      }
      return;
    }
    l[0] = fmaf(l[0], alpha[0], part[T::kDT][0]);
    l[1] = fmaf(l[1], alpha[1], part[T::kDT][2]);
    if (__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
      for (int dt = 0; dt < T::kDT; ++dt) {
        const float2 f =
            __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vscale + dt * 8 + 2 * t));
        acc[dt][0] = fmaf(part[dt][0], f.x, acc[dt][0]);
        acc[dt][1] = fmaf(part[dt][1], f.y, acc[dt][1]);
        acc[dt][2] = fmaf(part[dt][2], f.x, acc[dt][2]);
        acc[dt][3] = fmaf(part[dt][3], f.y, acc[dt][3]);
      }
      return;
    }
#pragma unroll
    for (int dt = 0; dt < T::kDT; ++dt) {
      const float2 f =
          __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vscale + dt * 8 + 2 * t));
      acc[dt][0] = fmaf(part[dt][0], f.x, acc[dt][0] * alpha[0]);
      acc[dt][1] = fmaf(part[dt][1], f.y, acc[dt][1] * alpha[0]);
      acc[dt][2] = fmaf(part[dt][2], f.x, acc[dt][2] * alpha[1]);
      acc[dt][3] = fmaf(part[dt][3], f.y, acc[dt][3] * alpha[1]);
    }
  }
};

template <class T>
__device__ __forceinline__ void issue_qk(int (&si)[T::kNT][4], uint32_t q_wg, uint32_t sk) {
#pragma unroll
  for (int kk = 0; kk < T::kDp / 32; ++kk) {
    wgmma_s8_n64(si, sw128_desc(q_wg + kk * 32, 0), sw128_desc(sk + kk * 32, 0), kk > 0);
  }
}

template <class T, class Part>
__device__ __forceinline__ void issue_pv(Part (&part)[T::kPT][4], const uint32_t (&pa)[2][4],
                                         uint32_t sv) {
#pragma unroll
  for (int kc = 0; kc < 2; ++kc) {
    if constexpr (T::kPvInt8) {
      wgmma_u8s8_n144(part, pa[kc], sw64_desc(sv + kc * 32), kc > 0);
    } else {
      wgmma_e4m3_n136(part, pa[kc], sw64_desc(sv + kc * 32), kc > 0);
    }
  }
}

template <class T, class Part>
__device__ __forceinline__ void keep_part(Part (&part)[T::kPT][4]) {
  if constexpr (T::kPvInt8) {
    wgmma_keep_int<T::kPT>(part);
  } else {
    wgmma_keep<T::kPT>(part);
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) sage_prefill_kernel(const SageParams p) {
#if SAGELLM_HAS_WGMMA
  constexpr int kS = T::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  sm80::SageBlock b;
  if (!sm80::sage_block<T>(p, b)) return;
  unsigned char* smem = flash_cuda::sm90::aligned_smem(smem_raw);
  const int tid = threadIdx.x;
  const uint32_t sq8 = smem_addr(smem);
  const uint32_t sqh = sq8 + T::kQ8Bytes;
  const auto stage = [&](int st) { return sq8 + T::kSmemStages + st * T::kStageBytes; };
  const auto meta = [&](int st) {
    return smem + T::kSmemStages + st * T::kStageBytes + T::kKBytes + T::kVBytes;
  };
  const auto full = [&](int st) { return sq8 + T::kSmemBarriers + st * 8; };
  const auto empty = [&](int st) { return sq8 + T::kSmemBarriers + (kS + st) * 8; };
  if (tid == 0) {
    for (int i = 0; i < kS; ++i) {
      mbarrier_init(full(i), T::kProducerThreads);
      mbarrier_init(empty(i), T::kConsumerThreads);
    }
  }
  // Rows kDp .. kVRows - 1 under every stage's V tile: ones (FP8 or INT8), then zeros (the
  // producer copies only rows below kDp). A row of 64 equal bytes reads the same through any
  // swizzle.
  constexpr int kExtra = T::kVRows - T::kDp;
  for (int c = tid; c < kS * kExtra * 4; c += T::kThreads) {
    const int st = c / (kExtra * 4), r = T::kDp + (c / 4) % kExtra, ch = c % 4;
    // 0x38: 1.0 in e4m3.
    const uint32_t v = r == T::kDp ? (T::kPvInt8 ? 0x01010101u : 0x38383838u) : 0u;
    asm volatile(
        "st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(stage(st) + T::kKBytes + swz<64>(r, ch)),
        "r"(v)
        : "memory");
  }
  fence_proxy_async_smem();
  __syncthreads();
  const int n_pages = b.page_end - b.page_begin;
  const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;

  if (tid >= T::kConsumerThreads) {
    // Producer: page i into stage i % kS once the consumers have released page i - kS; page i - 1
    // is signalled after page i is issued, so two pages stay in flight.
    setmaxnreg_dec<T::kProducerRegs>();
    const int ptid = tid - T::kConsumerThreads;
    for (int i = 0; i < n_pages; ++i) {
      const int st = i % kS;
      if (i >= kS) mbarrier_wait(empty(st), (i / kS - 1) & 1);
      load_page<T>(p, block_row[b.page_begin + i], b.kv_head, stage(st), ptid);
      cp_async_commit();
      if (i >= 1) {
        cp_async_wait<1>();
        fence_proxy_async_smem();
        mbarrier_arrive(full((i - 1) % kS));
      }
    }
    if (n_pages >= 1) {
      cp_async_wait<0>();
      fence_proxy_async_smem();
      mbarrier_arrive(full((n_pages - 1) % kS));
    }
    return;
  }

  setmaxnreg_inc<T::kConsumerRegs>();
  const int wg = tid / 128, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  load_q<T>(p, b, sq8, sqh, wg, tid % 128);
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async_smem();
  named_sync(3 + wg, 128);
  const uint32_t q_wg = sq8 + wg * 64 * T::kDp;
  const unsigned char* qh_rows = smem + T::kQ8Bytes + warp * 16 * 2 * T::kDp;
  int tok0, head0, tok1, head1;
  const bool valid0 = sm80::row_of<T>(b, warp * 16 + g, tok0, head0);
  const bool valid1 = sm80::row_of<T>(b, warp * 16 + g + 8, tok1, head1);
  const int row0 = p.cu_seqlens_q[0];
  const float qs0 =
      valid0 ? p.q_scale[static_cast<int64_t>(b.q_begin + tok0 - row0) * p.num_heads + head0]
             : 0.0f;
  const float qs1 =
      valid1 ? p.q_scale[static_cast<int64_t>(b.q_begin + tok1 - row0) * p.num_heads + head1]
             : 0.0f;
  const int lim0 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok0) : b.kv_len - 1;
  const int lim1 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok1) : b.kv_len - 1;
  Consumer<T> c;
  c.init();
  const auto softmax = [&](int i) {
    const int page = b.page_begin + i;
    c.softmax(p, meta(i % kS), qh_rows, qs0, qs1, page * kSagePageSize, lim0, lim1,
              page >= b.first_masked_page, lane);
  };
  // Turns at the tensor cores, as in the flash Hopper kernel: warpgroup 0 first, each turn hands
  // over to the other, warpgroup 1's last hand-over is left out (its first one balances it).
  const int my_turn = 1 + wg, other_turn = 2 - wg;
  if (n_pages > 0) {
    if (wg == 1) named_arrive(1, T::kConsumerThreads);
    mbarrier_wait(full(0), 0);
    named_sync(my_turn, T::kConsumerThreads);
    wgmma_fence();
    issue_qk<T>(c.si, q_wg, stage(0));
    wgmma_commit();
    named_arrive(other_turn, T::kConsumerThreads);
    wgmma_wait<0>();
    wgmma_keep_int<T::kNT>(c.si);
    softmax(0);
    for (int i = 1; i < n_pages; ++i) {
      const int st = i % kS, prev = (i - 1) % kS;
      mbarrier_wait(full(st), (i / kS) & 1);
      named_sync(my_turn, T::kConsumerThreads);
      wgmma_fence();
      issue_qk<T>(c.si, q_wg, stage(st));
      issue_pv<T>(c.part, c.pa, stage(prev) + T::kKBytes);
      wgmma_commit();
      named_arrive(other_turn, T::kConsumerThreads);
      wgmma_wait<0>();
      wgmma_keep_int<T::kNT>(c.si);
      keep_part<T>(c.part);
      c.fold(meta(prev), lane);
      mbarrier_arrive(empty(prev));  // page i - 1 is no longer read
      softmax(i);
    }
    const int last = (n_pages - 1) % kS;
    named_sync(my_turn, T::kConsumerThreads);
    wgmma_fence();
    issue_pv<T>(c.part, c.pa, stage(last) + T::kKBytes);
    wgmma_commit();
    if (wg == 0) named_arrive(other_turn, T::kConsumerThreads);
    wgmma_wait<0>();
    keep_part<T>(c.part);
    c.fold(meta(last), lane);
  }

  sm80::store_rows<T::kDT>(p, b, c.acc, quad_sum(c.l[0]), quad_sum(c.l[1]), valid0, tok0, head0,
                           valid1, tok1, head1, t);
#else
  (void)p;
  __trap();  // sm_90a code only; the launcher never runs this elsewhere
#endif
}

}  // namespace sagellm::sage_cuda::sm90
