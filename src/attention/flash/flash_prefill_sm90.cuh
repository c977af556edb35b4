// Prefill / extend kernel, Hopper (sm_90a): wgmma bf16 products with fp32 accumulation,
// warp-specialized.
//
// One CTA = 128 new tokens of one request and one query head: two consumer warpgroups of 64 rows
// and one producer warpgroup, whose registers go to the consumers (setmaxnreg). The producer
// fills a ring of three 128-byte-swizzled shared-memory stages with K/V tiles of 128 keys and
// hands them over through full/empty mbarriers; wgmma reads the stages directly: S = Q K^T with
// both operands in shared memory, O += P V with P in registers (the bf16-packed score fragments)
// and V read transposed from the same tile layout.
//
// The producer copies whole pages with the tensor memory accelerator (one thread, a few
// instructions per tile; page sizes dividing 128 or multiples of it), or else gathers rows with
// cp.async on all its threads. Measured on an H200 (B=4, H=32, N=8192, D=128, non-causal; bench
// flash_attention_bench --variants): tensor-memory copies 654 TFLOP/s, cp.async 452; with the
// copies skipped, the products and softmax alone run at about 650, so the cp.async gather, not the
// math, was the limit.
//
// The consumers take turns at the tensor cores (two named barriers): one issues S_n = Q K_n
// together with O += P_{n-1} V_{n-1} while the other computes its softmax, so the exponentials of
// one warpgroup hide behind the products of the other.
//
// Masking, the softmax arithmetic and the work split are the sm_80 kernel's (prefill_block,
// apply_mask, RowSoftmax), on 128-key tiles.
#pragma once

#include <cuda.h>  // CUtensorMap (a plain 128-byte struct; nothing links the driver library)
#include <cuda_bf16.h>

#include <cstdint>

#include "attention/flash/flash_params.h"
#include "attention/flash/flash_prefill_sm80.cuh"
#include "attention/flash/flash_tile_sm80.cuh"
#include "attention/flash/flash_wgmma_sm90.cuh"

namespace sagellm::flash_cuda::sm90 {

using sm80::bf16;
using sm80::cp_async_16;
using sm80::cp_async_commit;
using sm80::cp_async_wait;
using sm80::pack_bf16x2;
using sm80::smem_addr;

template <int kHeadDim_, bool kTma_>
struct PrefillTraits {
  static constexpr int kHeadDim = kHeadDim_;
  // The producer copies pages with the tensor memory accelerator, or gathers rows with cp.async.
  static constexpr bool kTma = kTma_;
  static constexpr int kBlockM = kFlashPrefillBlockM;  // 128: two consumer warpgroups of 64 rows
  static constexpr int kBlockN = 128;
  static constexpr int kConsumerThreads = 256;
  static constexpr int kThreads = kConsumerThreads + 128;
  static constexpr int kStages = 3;
  // Registers per thread after the hand-over (128 * 56 + 256 * 224 <= 64K).
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs = 224;
  static constexpr int kNT = kBlockN / 8;   // 8-key column tiles of S
  static constexpr int kDT = kHeadDim / 8;  // 8-column tiles of O
  static constexpr int kSmemQ = kBlockM * kHeadDim * 2;
  static constexpr int kSmemKV = kBlockN * kHeadDim * 2;
  static constexpr int kSmemBarriers = kSmemQ + 2 * kStages * kSmemKV;  // full[], then empty[]
  // +1024: the dynamic shared-memory base is rounded up to the swizzle atom.
  static constexpr int kSmemBytes = kSmemBarriers + 2 * kStages * 8 + 1024;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "native head dims are 64 and 128");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA");
};

// What the tensor-memory copies read: a 4-D map over each of the
// K and V page pools, (head_dim, page_size, num_kv_heads, pages), with boxes of 64 columns x
// box_rows slots (box_rows = min(page_size, 128), page sizes dividing 128 or multiples of it).
struct KvTensorMaps {
  CUtensorMap k;
  CUtensorMap v;
  int box_rows;
};

// Rows row0 .. row0 + kRows - 1 of a kTileRows-row swizzled tile of kHeadDim bf16 columns, by
// kThreads threads (tid in [0, kThreads)); row_src(r) is the global address of tile row r's first
// element, or nullptr for a padding row (zero-filled, as are columns past head_dim).
template <int kRows, int kTileRows, int kHeadDim, int kThreads, class RowSrc>
__device__ __forceinline__ void load_tile(uint32_t dst, int row0, int tid, int head_dim,
                                          const bf16* fallback, RowSrc row_src) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kRowsPerPass = kThreads / kChunks;
  static_assert(kRows % kRowsPerPass == 0, "tile copy shape");
  const int chunk = tid % kChunks;
  const bool col_ok = chunk * 8 < head_dim;
#pragma unroll
  for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
    const int r = row0 + tid / kChunks + pass * kRowsPerPass;
    const bf16* src = row_src(r);
    const bool valid = col_ok && src != nullptr;
    cp_async_16(dst + sw128_offset<kTileRows>(r, chunk), valid ? src + chunk * 8 : fallback, valid);
  }
}

// Keys key0 .. key0 + kBlockN - 1 of one KV head into the K and V stages, gathered through the
// request's block table; keys at or past kv_len are zero-filled (never read). A thread copies one
// 16-byte column chunk of every kRowsPerPass-th row: its rows' pages are found with one division
// per tile and looked up with independent loads before any copy is issued, so the lookups'
// latencies overlap instead of adding up row after row.
template <class T, int kThreads>
__device__ __forceinline__ void load_kv(uint32_t sk, uint32_t sv, const FlashParams& p,
                                        const int32_t* block_row, int kv_head, int kv_len, int key0,
                                        int tid) {
  constexpr int kChunks = T::kHeadDim / 8;
  constexpr int kRowsPerPass = kThreads / kChunks;
  constexpr int kPasses = T::kBlockN / kRowsPerPass;
  const int chunk = tid % kChunks;
  const int r0 = tid / kChunks;
  const int ps = p.page_size;
  int page_idx = (key0 + r0) / ps;
  int slot = key0 + r0 - page_idx * ps;
  const int step_pages = kRowsPerPass / ps;
  const int step_slots = kRowsPerPass - step_pages * ps;
  int32_t page[kPasses];
  int slots[kPasses];
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const bool in_range = key0 + r0 + pass * kRowsPerPass < kv_len;
    page[pass] = block_row[in_range ? page_idx : 0];
    slots[pass] = slot;
    slot += step_slots;
    page_idx += step_pages;
    if (slot >= ps) {
      slot -= ps;
      ++page_idx;
    }
  }
  const bf16* kbase = static_cast<const bf16*>(p.k_pages);
  const bf16* vbase = static_cast<const bf16*>(p.v_pages);
  const int64_t head_off = static_cast<int64_t>(kv_head) * p.kv_head_stride + chunk * 8;
  const bool col_ok = chunk * 8 < p.head_dim;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int r = r0 + pass * kRowsPerPass;
    const bool valid = col_ok && key0 + r < kv_len;
    const int64_t off = valid ? static_cast<int64_t>(page[pass]) * p.page_stride + head_off +
                                    static_cast<int64_t>(slots[pass]) * p.head_dim
                              : 0;
    const uint32_t dst = sw128_offset<T::kBlockN>(r, chunk);
    cp_async_16(sk + dst, kbase + off, valid);
    cp_async_16(sv + dst, vbase + off, valid);
  }
}

// S = Q K^T for the warpgroup's 64 rows (raw scores, fp32), Q and the stage's K tile given by
// their descriptors; issued, not waited for.
template <class T>
__device__ __forceinline__ void issue_qk(float (&s)[T::kNT][4], uint64_t q_desc, uint64_t k_desc) {
#pragma unroll
  for (int kk = 0; kk < T::kHeadDim / 16; ++kk) {
    const uint32_t col = (kk & 3) * 32;  // 16 columns = 32 bytes into the 128-byte row
    wgmma_ss<T::kBlockN, 0>(s, desc_plus(q_desc, (kk >> 2) * (T::kBlockM * 128) + col),
                            desc_plus(k_desc, (kk >> 2) * (T::kBlockN * 128) + col), kk > 0);
  }
}

// O += P V for the warpgroup's rows, P packed bf16 (pk[j][0]: row g, pk[j][1]: row g + 8).
template <class T>
__device__ __forceinline__ void issue_pv(float (&acc)[T::kDT][4], const uint32_t (&pk)[T::kNT][2],
                                         uint64_t v_desc) {
#pragma unroll
  for (int kk = 0; kk < T::kBlockN / 16; ++kk) {
    const uint32_t a[4] = {pk[2 * kk][0], pk[2 * kk][1], pk[2 * kk + 1][0], pk[2 * kk + 1][1]};
    wgmma_rs<T::kHeadDim, 1>(acc, a, desc_plus(v_desc, kk * 16 * 128));
  }
}

template <int kDT>
__device__ __forceinline__ void rescale(float (&acc)[kDT][4], const float (&alpha)[2]) {
#pragma unroll
  for (int j = 0; j < kDT; ++j) {
    acc[j][0] *= alpha[0];
    acc[j][1] *= alpha[0];
    acc[j][2] *= alpha[1];
    acc[j][3] *= alpha[1];
  }
}

// Normalizes the thread's rows and stores them as bf16: fragments -> the warpgroup's rows of the
// shared Q tile (only its own products read them, and they have retired) -> 16-byte global stores.
// Only the warpgroup synchronizes (named barrier 3 + wg), so the other may still be multiplying.
template <class T>
__device__ __forceinline__ void epilogue(const FlashParams& p, const sm80::PrefillBlock& b,
                                         const float (&acc)[T::kDT][4],
                                         const sm80::RowSoftmax<T::kNT>& softmax, uint32_t sq,
                                         const unsigned char* smem, int tid) {
  const int wg = tid / 128, warp = tid / 32, lane = tid % 32;
  const float inv0 = softmax.l[0] > 0.0f ? 1.0f / softmax.l[0] : 0.0f;
  const float inv1 = softmax.l[1] > 0.0f ? 1.0f / softmax.l[1] : 0.0f;
  const int r0 = warp * 16 + lane / 4;
  const uint32_t col_bytes = 4 * (lane & 3);
#pragma unroll
  for (int j = 0; j < T::kDT; ++j) {
    const uint32_t lo = pack_bf16x2(acc[j][0] * inv0, acc[j][1] * inv0);
    const uint32_t hi = pack_bf16x2(acc[j][2] * inv1, acc[j][3] * inv1);
    asm volatile(
        "st.shared.u32 [%0], %1;\n" ::"r"(sq + sw128_offset<T::kBlockM>(r0, j) + col_bytes), "r"(lo)
        : "memory");
    asm volatile(
        "st.shared.u32 [%0], %1;\n" ::"r"(sq + sw128_offset<T::kBlockM>(r0 + 8, j) + col_bytes),
        "r"(hi)
        : "memory");
  }
  named_sync(3 + wg, 128);
  bf16* obase = static_cast<bf16*>(p.o);
  constexpr int kChunks = T::kHeadDim / 8;
  for (int e = tid % 128; e < 64 * kChunks; e += 128) {
    const int r = wg * 64 + e / kChunks, c = e % kChunks;
    if (b.m0 + r >= b.q_len || c * 8 >= p.head_dim) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(smem + sw128_offset<T::kBlockM>(r, c));
    bf16* dst = obase + static_cast<int64_t>(b.q_begin + b.m0 + r) * p.o_row_stride +
                static_cast<int64_t>(b.head) * p.o_head_stride + c * 8;
    *reinterpret_cast<uint4*>(dst) = v;
  }
}

// The warpgroup's 64 Q rows (tid in [0, 256): warpgroup tid / 128) into the shared Q tile.
template <class T>
__device__ __forceinline__ void load_q(uint32_t sq, const FlashParams& p,
                                       const sm80::PrefillBlock& b, int tid) {
  const bf16* qbase = static_cast<const bf16*>(p.q);
  load_tile<64, T::kBlockM, T::kHeadDim, 128>(
      sq, (tid / 128) * 64, tid % 128, p.head_dim, qbase, [&](int r) -> const bf16* {
        const int i = b.m0 + r;
        if (i >= b.q_len) return nullptr;
        return qbase + static_cast<int64_t>(b.q_begin + i) * p.q_row_stride +
               static_cast<int64_t>(b.head) * p.q_head_stride;
      });
}

// Registers of one consumer thread.
template <class T>
struct Consumer {
  float acc[T::kDT][4];
  float s[T::kNT][4];
  uint32_t pk[T::kNT][2];
  float alpha[2];
  sm80::RowSoftmax<T::kNT> softmax;

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < T::kDT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < T::kNT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    softmax.init();
  }

  // Mask (tiles past the unmasked prefix), softmax into pk, and O rescaled for the new maximum.
  __device__ __forceinline__ void softmax_tile(const FlashParams& p, const sm80::PrefillBlock& b,
                                               int n, int row_g, int lane) {
    if (n >= b.n_unmasked) {
      sm80::apply_mask<T::kNT>(s, n * T::kBlockN, row_g, lane, b.kv_len, b.causal_offset, p.causal);
    }
    softmax.update(s, pk, p.scale_log2, alpha);
    // alpha is exactly 1 for a row whose max did not move: when that holds for the whole warp the
    // multiplies change no bit and are skipped (most tiles once the running max has settled).
    if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) rescale<T::kDT>(acc, alpha);
  }
};

// Copies the pages holding keys key0 .. key0 + 127 (those below kv_len) of one KV head into a
// stage with the tensor memory accelerator; returns the bytes they bring.
template <class T>
__device__ __forceinline__ uint32_t tma_load_kv(uint32_t sk, uint32_t sv, uint32_t bar,
                                                const FlashParams& p, const KvTensorMaps& maps,
                                                const int32_t* block_row, int kv_head, int kv_len,
                                                int key0) {
  const int rows = maps.box_rows;
  const int keys = min(T::kBlockN, kv_len - key0);
  const int boxes = (keys + rows - 1) / rows;
  constexpr int kBlocks = T::kHeadDim / 64;
  const uint32_t bytes = static_cast<uint32_t>(boxes * kBlocks * rows * 128 * 2);
  mbarrier_arrive_expect_tx(bar, bytes);
  for (int i = 0; i < boxes; ++i) {
    const int key = key0 + i * rows;
    const int page_idx = key / p.page_size;
    const int page = block_row[page_idx];
    const int slot = key - page_idx * p.page_size;
#pragma unroll
    for (int cb = 0; cb < kBlocks; ++cb) {
      const uint32_t off = cb * (T::kBlockN * 128) + i * rows * 128;
      tma_load_4d(sk + off, &maps.k, bar, cb * 64, slot, kv_head, page);
      tma_load_4d(sv + off, &maps.v, bar, cb * 64, slot, kv_head, page);
    }
  }
  return bytes;
}

// Zeroes V rows from `keys` on (slots past kv_len, or pages not copied): their probabilities are
// 0, but 0 times a NaN left in an unused slot would not be. Consumer threads (ctid in [0, 256)),
// followed by a proxy fence and a barrier of both consumer warpgroups before the product.
template <class T>
__device__ __forceinline__ void zero_tail_rows(uint32_t sv, int keys, int ctid) {
  constexpr int kChunks = T::kHeadDim / 8;
  for (int e = keys * kChunks + ctid; e < T::kBlockN * kChunks; e += T::kConsumerThreads) {
    const int r = e / kChunks, c = e % kChunks;
    asm volatile(
        "st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(sv + sw128_offset<T::kBlockN>(r, c)),
        "r"(0)
        : "memory");
  }
  fence_proxy_async_smem();
  named_sync(5, T::kConsumerThreads);
}

template <class T>
__global__ void __launch_bounds__(T::kThreads, 1)
    flash_prefill_kernel(const FlashParams p, const __grid_constant__ KvTensorMaps maps) {
#if SAGELLM_HAS_WGMMA
  constexpr int kS = T::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  sm80::PrefillBlock b;
  if (!sm80::prefill_block<T>(p, b)) return;
  unsigned char* smem = aligned_smem(smem_raw);
  const int tid = threadIdx.x;
  const uint32_t sq = smem_addr(smem);
  const auto sk = [&](int stage) { return sq + T::kSmemQ + stage * T::kSmemKV; };
  const auto sv = [&](int stage) { return sq + T::kSmemQ + kS * T::kSmemKV + stage * T::kSmemKV; };
  // full[s] completes when a tile has landed (tensor-memory copies: one arrival that expects the
  // copies' bytes; cp.async: the 128 producer threads, each once its own copies are in); empty[s]
  // when the 256 consumer threads have retired their products with the stage.
  const auto full = [&](int stage) { return sq + T::kSmemBarriers + stage * 8; };
  const auto empty = [&](int stage) { return sq + T::kSmemBarriers + (kS + stage) * 8; };
  if (tid == 0) {
    for (int i = 0; i < kS; ++i) {
      mbarrier_init(full(i), T::kTma ? 1 : 128);
      mbarrier_init(empty(i), T::kConsumerThreads);
    }
  }
  __syncthreads();
  const int n_tiles = b.n_tiles;

  if (tid >= T::kConsumerThreads) {
    // Producer: tile n goes into stage n % kS once the consumers have released tile n - kS. A
    // cp.async producer signals tile n - 1 after issuing tile n, so two tiles stay in flight.
    setmaxnreg_dec<T::kProducerRegs>();
    const int ptid = tid - T::kConsumerThreads;
    const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;
    if constexpr (T::kTma) {
      if (ptid != 0) return;
      for (int n = 0; n < n_tiles; ++n) {
        const int stage = n % kS;
        if (n >= kS) mbarrier_wait(empty(stage), (n / kS - 1) & 1);
        tma_load_kv<T>(sk(stage), sv(stage), full(stage), p, maps, block_row, b.kv_head, b.kv_len,
                       n * T::kBlockN);
      }
    } else {
      for (int n = 0; n < n_tiles; ++n) {
        const int stage = n % kS;
        if (n >= kS) mbarrier_wait(empty(stage), (n / kS - 1) & 1);
        load_kv<T, 128>(sk(stage), sv(stage), p, block_row, b.kv_head, b.kv_len, n * T::kBlockN,
                        ptid);
        cp_async_commit();
        if (n >= 1) {
          cp_async_wait<1>();
          fence_proxy_async_smem();
          mbarrier_arrive(full((n - 1) % kS));
        }
      }
      if (n_tiles >= 1) {
        cp_async_wait<0>();
        fence_proxy_async_smem();
        mbarrier_arrive(full((n_tiles - 1) % kS));
      }
    }
    return;
  }

  // Consumers: warpgroup wg (0 or 1) owns rows 64 wg .. 64 wg + 63.
  setmaxnreg_inc<T::kConsumerRegs>();
  const int wg = tid / 128, warp = tid / 32, lane = tid % 32;
  // Descriptors: the warpgroup's Q, and stage 0's K and V tiles (stage st: + st * kSmemKV).
  const uint64_t q_desc = sw128_desc(sq + wg * 64 * 128, 0);
  const uint64_t k_desc0 = sw128_desc(sk(0), 0), v_desc0 = sw128_desc(sv(0), T::kBlockN * 128);
  const auto k_desc = [&](int st) { return desc_plus(k_desc0, st * T::kSmemKV); };
  const auto v_desc = [&](int st) { return desc_plus(v_desc0, st * T::kSmemKV); };
  load_q<T>(sq, p, b, tid);
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async_smem();
  named_sync(3 + wg, 128);
  Consumer<T> c;
  c.init();
  const int row_g = b.m0 + warp * 16 + lane / 4;
  // Turns at the tensor cores: barrier 1 + wg is this warpgroup's, 2 - wg the other's. Warpgroup 0
  // goes first; each turn ends by handing over to the other, except warpgroup 1's last (its extra
  // first hand-over balances it).
  const int my_turn = 1 + wg, other_turn = 2 - wg;
  if (n_tiles > 0) {
    // Tensor-memory copies bring whole pages: the last tile's V rows past kv_len are zeroed.
    const int tail_keys = b.kv_len - (n_tiles - 1) * T::kBlockN;
    const bool zero_tail = T::kTma && tail_keys < T::kBlockN;
    if (wg == 1) named_arrive(1, T::kConsumerThreads);
    mbarrier_wait(full(0), 0);
    if (zero_tail && n_tiles == 1) zero_tail_rows<T>(sv(0), tail_keys, tid);
    named_sync(my_turn, T::kConsumerThreads);
    wgmma_fence();
    issue_qk<T>(c.s, q_desc, k_desc(0));
    wgmma_commit();
    named_arrive(other_turn, T::kConsumerThreads);
    wgmma_wait<0>();
    wgmma_keep<T::kNT>(c.s);
    c.softmax_tile(p, b, 0, row_g, lane);
    for (int n = 1; n < n_tiles; ++n) {
      const int stage = n % kS, prev = (n - 1) % kS;
      mbarrier_wait(full(stage), (n / kS) & 1);
      if (zero_tail && n == n_tiles - 1) zero_tail_rows<T>(sv(stage), tail_keys, tid);
      named_sync(my_turn, T::kConsumerThreads);
      wgmma_fence();
      issue_qk<T>(c.s, q_desc, k_desc(stage));
      issue_pv<T>(c.acc, c.pk, v_desc(prev));
      wgmma_commit();
      named_arrive(other_turn, T::kConsumerThreads);
      wgmma_wait<0>();
      wgmma_keep<T::kNT>(c.s);
      wgmma_keep<T::kDT>(c.acc);
      mbarrier_arrive(empty(prev));  // K_{n-1} and V_{n-1} are no longer read
      c.softmax_tile(p, b, n, row_g, lane);
    }
    named_sync(my_turn, T::kConsumerThreads);
    wgmma_fence();
    issue_pv<T>(c.acc, c.pk, v_desc((n_tiles - 1) % kS));
    wgmma_commit();
    if (wg == 0) named_arrive(other_turn, T::kConsumerThreads);
    wgmma_wait<0>();
    wgmma_keep<T::kDT>(c.acc);
  }
  c.softmax.finish();
  epilogue<T>(p, b, c.acc, c.softmax, sq, smem, tid);
#else
  (void)p;
  __trap();  // sm_90a code only; the launcher never runs this elsewhere
#endif
}

}  // namespace sagellm::flash_cuda::sm90
