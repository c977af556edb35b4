// Prefill / extend kernel, sm_80 (mma.sync m16n8k16 bf16, fp32 accumulation; runs on sm_90 too).
//
// One CTA = kBlockM (128) new tokens of one request and one query head, split over the warps in
// 16-row m-tiles (the tile shapes per head dim are chosen in flash_prefill_sm80.cu). K/V tiles of
// 64 keys are gathered from the paged cache with cp.async into a two-stage shared-memory ring,
// so the next tile loads while the current one is multiplied. Per tile and warp:
// S = Q K^T (fp32), bottom-right causal / length mask on the tiles that need it (tiles no row of
// the CTA can see are never loaded), online softmax in fp32 with exp2, O += P V with P in bf16.
// The epilogue divides by the row sums and stores bf16 through shared memory.
//
// Structure: Traits (tile sizes, shared memory) / mainloop (tile loop) / epilogue (store) are kept
// apart so that a Hopper version (wgmma + TMA) can reuse the launcher, masking and epilogue.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/flash/flash_params.h"
#include "attention/flash/flash_tile_sm80.cuh"

namespace sagellm::flash_cuda::sm80 {

// kBlockM query rows per CTA, kMTiles 16-row tiles per warp (kBlockM / (16 * kMTiles) warps).
// With one m-tile per warp Q stays in registers; with more, Q is re-read from shared memory at
// every k-step and each K/V fragment feeds kMTiles products (half the shared-memory traffic per
// product at two).
template <int kHeadDim_, int kBlockM_ = kFlashPrefillBlockM, int kMTiles_ = 1>
struct PrefillTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kFlashBlockN;
  static constexpr int kMTiles = kMTiles_;
  static constexpr bool kQInRegs = kMTiles == 1;
  static constexpr int kWarps = kBlockM / (16 * kMTiles);
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = 2;
  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  using Mma = WarpMma<kHeadDim, kBlockN, kMTiles>;  // every warp multiplies all keys of a tile
  static constexpr int kSmemQ = QTile::kBytes;
  static constexpr int kSmemKV = KVTile::kBytes;
  static constexpr int kSmemBytes = kSmemQ + 2 * kStages * kSmemKV;
  static_assert(kWarps * 16 * kMTiles == kBlockM, "rows per CTA");
};

// Where a CTA's work lies; block-uniform.
struct PrefillBlock {
  int seq, head, kv_head;
  int q_begin, q_len, kv_len;
  int m0;             // first new token of the CTA
  int causal_offset;  // kv_len - q_len: token i sees keys <= causal_offset + i
  int n_tiles;        // K/V tiles with a key visible to some row of the CTA
  int n_unmasked;     // leading tiles every row sees entirely (no mask needed)
};

template <class T>
__device__ __forceinline__ bool prefill_block(const FlashParams& p, PrefillBlock& b) {
  b.seq = blockIdx.z;
  b.head = blockIdx.y;
  b.q_begin = p.cu_seqlens_q[b.seq];
  b.q_len = p.cu_seqlens_q[b.seq + 1] - b.q_begin;
  const int group = p.num_heads / p.num_kv_heads;
  if (b.q_len <= 0 || flash_uses_split_kernel(b.q_len, group)) return false;
  // Heavier (later) blocks of a causal request first: they have the most tiles.
  b.m0 = (gridDim.x - 1 - blockIdx.x) * T::kBlockM;
  if (b.m0 >= b.q_len) return false;
  b.kv_head = b.head / group;
  b.kv_len = p.kv_lens[b.seq];
  b.causal_offset = b.kv_len - b.q_len;
  const int rows = min(T::kBlockM, b.q_len - b.m0);
  const int key_end = p.causal ? min(b.kv_len, b.causal_offset + b.m0 + rows) : b.kv_len;
  const int all_see = p.causal ? min(b.kv_len, b.causal_offset + b.m0 + 1) : b.kv_len;
  b.n_tiles = flash_ceil_div(key_end, T::kBlockN);
  b.n_unmasked = all_see / T::kBlockN;
  return true;
}

// Masks keys past kv_len and, when causal, keys past each row's limit. row_g is the new-token
// index of the thread's first row (the second is row_g + 8).
template <int kNT>
__device__ __forceinline__ void apply_mask(float (&s)[kNT][4], int key0, int row_g, int lane,
                                           int kv_len, int causal_offset, bool causal) {
  const int lim0 = causal ? min(kv_len - 1, causal_offset + row_g) : kv_len - 1;
  const int lim1 = causal ? min(kv_len - 1, causal_offset + row_g + 8) : kv_len - 1;
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int key = key0 + j * 8 + 2 * (lane & 3);
    if (key > lim0) s[j][0] = -INFINITY;
    if (key + 1 > lim0) s[j][1] = -INFINITY;
    if (key > lim1) s[j][2] = -INFINITY;
    if (key + 1 > lim1) s[j][3] = -INFINITY;
  }
}

// Normalizes the warp's rows and stores them as bf16: fragments -> shared memory (the Q tile,
// no longer read) -> 16-byte coalesced global stores of the valid rows and columns.
template <class T>
__device__ __forceinline__ void prefill_epilogue(
    const FlashParams& p, const PrefillBlock& b, float (&acc)[T::kMTiles][T::Mma::kDT][4],
    const RowSoftmax<T::Mma::kNT> (&softmax)[T::kMTiles], unsigned char* smem, int tid) {
  const int warp = tid / 32, lane = tid % 32;
  const uint32_t so = smem_addr(smem);
  // Every warp has finished reading Q (the main loop ends with a barrier), so its rows of the Q
  // tile take the warp's output.
#pragma unroll
  for (int mt = 0; mt < T::kMTiles; ++mt) {
    const float inv0 = softmax[mt].l[0] > 0.0f ? 1.0f / softmax[mt].l[0] : 0.0f;
    const float inv1 = softmax[mt].l[1] > 0.0f ? 1.0f / softmax[mt].l[1] : 0.0f;
    const int r0 = (warp * T::kMTiles + mt) * 16 + lane / 4;
    const uint32_t col_bytes = 4 * (lane & 3);
#pragma unroll
    for (int j = 0; j < T::Mma::kDT; ++j) {
      const uint32_t lo = pack_bf16x2(acc[mt][j][0] * inv0, acc[mt][j][1] * inv0);
      const uint32_t hi = pack_bf16x2(acc[mt][j][2] * inv1, acc[mt][j][3] * inv1);
      asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(so + T::QTile::offset(r0, j) + col_bytes),
                   "r"(lo)
                   : "memory");
      asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(so + T::QTile::offset(r0 + 8, j) + col_bytes),
                   "r"(hi)
                   : "memory");
    }
  }
  __syncthreads();
  bf16* obase = static_cast<bf16*>(p.o);
  constexpr int kChunks = T::QTile::kChunks;
  for (int e = tid; e < T::kBlockM * kChunks; e += T::kThreads) {
    const int r = e / kChunks, c = e % kChunks;
    if (b.m0 + r >= b.q_len || c * 8 >= p.head_dim) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(smem + T::QTile::offset(r, c));
    bf16* dst = obase + static_cast<int64_t>(b.q_begin + b.m0 + r) * p.o_row_stride +
                static_cast<int64_t>(b.head) * p.o_head_stride + c * 8;
    *reinterpret_cast<uint4*>(dst) = v;
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads) flash_prefill_kernel(const FlashParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  PrefillBlock b;
  if (!prefill_block<T>(p, b)) return;
  using Mma = typename T::Mma;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t sq = smem_addr(smem);
  const auto sk = [&](int stage) { return sq + T::kSmemQ + stage * T::kSmemKV; };
  const auto sv = [&](int stage) {
    return sq + T::kSmemQ + T::kStages * T::kSmemKV + stage * T::kSmemKV;
  };
  const bf16* qbase = static_cast<const bf16*>(p.q);
  const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;

  TileCopy<T::kBlockM, T::kHeadDim, T::kThreads>::load(
      sq, tid, p.head_dim, qbase, [&](int r) -> const bf16* {
        const int i = b.m0 + r;
        return i < b.q_len ? qbase + static_cast<int64_t>(b.q_begin + i) * p.q_row_stride +
                                 static_cast<int64_t>(b.head) * p.q_head_stride
                           : nullptr;
      });
  cp_async_commit();
  load_kv_tile<T::kHeadDim, T::kThreads>(sk(0), sv(0), p, block_row, b.kv_head, b.kv_len, 0, tid);
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();
  constexpr int kMT = T::kMTiles;
  const int warp_row0 = warp * 16 * kMT;
  uint32_t qf[T::kQInRegs ? Mma::kKSteps : 1][4];
  if constexpr (T::kQInRegs) Mma::template load_q<T::kBlockM>(qf, sq, warp_row0, lane);

  float acc[kMT][Mma::kDT][4];
  RowSoftmax<Mma::kNT> softmax[kMT];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    softmax[mt].init();
#pragma unroll
    for (int j = 0; j < Mma::kDT; ++j) {
      acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
    }
  }
  const int row_g = b.m0 + warp_row0 + lane / 4;

  for (int n = 0; n < b.n_tiles; ++n) {
    const int stage = n & 1;
    if (n + 1 < b.n_tiles) {
      // The other stage was last read in iteration n-1, which ended with a barrier.
      load_kv_tile<T::kHeadDim, T::kThreads>(sk(stage ^ 1), sv(stage ^ 1), p, block_row, b.kv_head,
                                             b.kv_len, (n + 1) * T::kBlockN, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    float s[kMT][Mma::kNT][4];
    if constexpr (T::kQInRegs) {
      Mma::qk(s, qf, sk(stage), 0, lane);
    } else {
      Mma::template qk_smem<T::kBlockM>(s, sq, warp_row0, sk(stage), 0, lane);
    }
    uint32_t pk[kMT][Mma::kNT][2];
    float alpha[kMT][2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      if (n >= b.n_unmasked) {
        apply_mask<Mma::kNT>(s[mt], n * T::kBlockN, row_g + mt * 16, lane, b.kv_len,
                             b.causal_offset, p.causal);
      }
      softmax[mt].update(s[mt], pk[mt], p.scale_log2, alpha[mt]);
    }
    Mma::pv(acc, pk, alpha, sv(stage), 0, lane);
    __syncthreads();
  }
  cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) softmax[mt].finish();
  prefill_epilogue<T>(p, b, acc, softmax, smem, tid);
}

}  // namespace sagellm::flash_cuda::sm80
