// Split-KV kernel for decode and short extends (q_len * group <= 64 rows), sm_80 mma.sync. Its
// partial results are reduced by the shared fixed-order combine (attention/split_kv_combine.cuh).
//
// Rows are packed across the GQA group: row r of a 16-row block is new token r / group of query
// head kv_head * group + r % group, so one CTA reads each K/V tile once for the whole group.
// A request's keys are cut into flash_num_splits(kv_len) splits of whole 64-key tiles (a function
// of kv_len alone); grid = (split, m-block x KV head, request). K/V tiles stream through a
// cp.async ring. Inside a CTA each of the 4 warps
// takes 16 keys of every tile and keeps its own running max, sum and accumulator; the warps are
// merged at the end in warp order. A request with one split writes bf16 output directly; otherwise
// each split writes (unnormalized acc, max, sum) to the workspace and the combine kernel reduces
// the splits in split order. No atomics anywhere: bitwise reproducible, batch independent.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/flash/flash_params.h"
#include "attention/flash/flash_tile_sm80.cuh"
#include "core/cuda_pdl.cuh"

namespace sagellm::flash_cuda::sm80 {

// kStages K/V tiles in the shared-memory ring: kStages - 1 tiles are in flight while one is
// multiplied. Two stages measured best on an H200 (B=64, 16K keys: 3.4 TB/s against 2.8 with
// three, which cost a CTA per SM; a single request gained only ~10%).
template <int kHeadDim_, int kStages_ = 2>
struct DecodeTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kFlashDecodeBlockM;
  static constexpr int kBlockN = kFlashBlockN;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = kStages_;
  static constexpr int kKeysPerWarp = kBlockN / kWarps;
  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;
  using Mma = WarpMma<kHeadDim, kKeysPerWarp>;
  static constexpr int kSmemQ = QTile::kBytes;
  static constexpr int kSmemKV = KVTile::kBytes;
  // Warp merge area (reuses the K/V ring): per warp [16][kHeadDim + 4] fp32 accumulators (the
  // padding spreads the rows over banks) and [16] (max, sum) pairs.
  static constexpr int kMergeStride = kHeadDim + 4;
  static constexpr int kSmemMergeAcc = kWarps * kBlockM * kMergeStride * 4;
  static constexpr int kSmemMerge = kSmemMergeAcc + kWarps * kBlockM * 2 * 4;
  static constexpr int kSmemRing = 2 * kStages * kSmemKV;
  static constexpr int kSmemBytes = kSmemQ + (kSmemRing > kSmemMerge ? kSmemRing : kSmemMerge);
};

struct DecodeBlock {
  int seq, kv_head, m_block;
  int q_begin, q_len, kv_len, group, rows;
  int causal_offset;
  int num_splits, split;
  int tile_begin, tile_end;
};

template <class T>
__device__ __forceinline__ bool decode_block(const FlashParams& p, DecodeBlock& b) {
  b.seq = blockIdx.z;
  b.q_begin = p.cu_seqlens_q[b.seq];
  b.q_len = p.cu_seqlens_q[b.seq + 1] - b.q_begin;
  b.group = p.num_heads / p.num_kv_heads;
  if (!flash_uses_split_kernel(b.q_len, b.group)) return false;
  b.rows = b.q_len * b.group;
  b.m_block = blockIdx.y / p.num_kv_heads;
  b.kv_head = blockIdx.y % p.num_kv_heads;
  if (b.m_block * T::kBlockM >= b.rows) return false;
  b.kv_len = p.kv_lens[b.seq];
  b.num_splits = flash_num_splits(b.kv_len);
  b.split = blockIdx.x;
  if (b.split >= b.num_splits) return false;
  b.causal_offset = b.kv_len - b.q_len;
  const int tps = flash_tiles_per_split(b.kv_len);
  b.tile_begin = b.split * tps;
  b.tile_end = min(b.tile_begin + tps, flash_ceil_div(b.kv_len, T::kBlockN));
  if (p.causal) {
    // The block's last row is its latest token; nothing past its limit is loaded.
    const int last_row = min((b.m_block + 1) * T::kBlockM, b.rows) - 1;
    const int key_end = b.causal_offset + last_row / b.group + 1;
    b.tile_end = min(b.tile_end, flash_ceil_div(key_end, T::kBlockN));
  }
  return true;
}

// cp.async.wait_group n for a run-time n in [0, N].
template <int N>
__device__ __forceinline__ void cp_async_wait_upto(int n) {
  if constexpr (N == 0) {
    cp_async_wait<0>();
  } else {
    if (n >= N) {
      cp_async_wait<N>();
    } else {
      cp_async_wait_upto<N - 1>(n);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(T::kThreads) flash_decode_kernel(const FlashParams p) {
  extern __shared__ __align__(128) unsigned char smem[];
  // The metadata decode_block reads is uploaded before the step, not written by its kernels, so
  // it is read before the wait for the previous kernel (programmatic dependent launch).
  DecodeBlock b;
  if (!decode_block<T>(p, b)) {
    cuda_pdl::pdl_wait();
    return;
  }
  using Mma = typename T::Mma;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t sq = smem_addr(smem);
  const auto sk = [&](int stage) { return sq + T::kSmemQ + stage * T::kSmemKV; };
  const auto sv = [&](int stage) {
    return sq + T::kSmemQ + T::kStages * T::kSmemKV + stage * T::kSmemKV;
  };
  const bf16* qbase = static_cast<const bf16*>(p.q);
  const int32_t* block_row = p.block_table + static_cast<int64_t>(b.seq) * p.block_table_stride;
  const int row_base = b.m_block * T::kBlockM;

  // Keys before this step's new tokens (kv_len - q_len on) are in pages no kernel of the step
  // writes (only the new tokens' slots are written; shared prefix pages are full), so the
  // prologue's tiles that hold only such keys are loaded before the wait, overlapping the tail of
  // the kernel that writes q and the new keys. Q and the other tiles wait.
  const int first_new_key = b.kv_len - b.q_len;
  int early_tiles = 0;
#pragma unroll
  for (int i = 0; i < T::kStages - 1; ++i) {
    const int tile = b.tile_begin + i;
    if (early_tiles == i && tile < b.tile_end && (tile + 1) * T::kBlockN <= first_new_key) {
      load_kv_tile<T::kHeadDim, T::kThreads>(sk(i), sv(i), p, block_row, b.kv_head, b.kv_len,
                                             tile * T::kBlockN, tid);
      cp_async_commit();
      ++early_tiles;
    }
  }
  cuda_pdl::pdl_wait();
  cuda_pdl::pdl_launch_dependents();
  TileCopy<T::kBlockM, T::kHeadDim, T::kThreads>::load(
      sq, tid, p.head_dim, qbase, [&](int r) -> const bf16* {
        const int pr = row_base + r;
        if (pr >= b.rows) return nullptr;
        const int t = pr / b.group, head = b.kv_head * b.group + pr % b.group;
        return qbase + static_cast<int64_t>(b.q_begin + t) * p.q_row_stride +
               static_cast<int64_t>(head) * p.q_head_stride;
      });
  cp_async_commit();
  // The rest of the prologue's kStages - 1 tiles, one commit group each (empty groups keep the
  // count: kStages groups in all, the early tiles' first, then Q's).
#pragma unroll
  for (int i = 0; i < T::kStages - 1; ++i) {
    if (i < early_tiles) continue;
    if (b.tile_begin + i < b.tile_end) {
      load_kv_tile<T::kHeadDim, T::kThreads>(sk(i), sv(i), p, block_row, b.kv_head, b.kv_len,
                                             (b.tile_begin + i) * T::kBlockN, tid);
    }
    cp_async_commit();
  }
  cp_async_wait_upto<T::kStages - 1>(T::kStages - 1 - early_tiles);  // Q has landed
  __syncthreads();
  uint32_t qf[Mma::kKSteps][4];
  Mma::template load_q<T::kBlockM>(qf, sq, 0, lane);

  float acc[1][Mma::kDT][4];
#pragma unroll
  for (int j = 0; j < Mma::kDT; ++j)
    acc[0][j][0] = acc[0][j][1] = acc[0][j][2] = acc[0][j][3] = 0.0f;
  RowSoftmax<Mma::kNT> softmax;
  softmax.init();
  // Key limits of the thread's two rows (the token of a padding row is harmless: never stored).
  const int tok0 = (row_base + lane / 4) / b.group;
  const int tok1 = (row_base + lane / 4 + 8) / b.group;
  const int lim0 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok0) : b.kv_len - 1;
  const int lim1 = p.causal ? min(b.kv_len - 1, b.causal_offset + tok1) : b.kv_len - 1;
  const int warp_key = warp * T::kKeysPerWarp;

  int stage = 0;
  for (int n = b.tile_begin; n < b.tile_end; ++n) {
    // Tile n + kStages - 1 goes to the stage read in the previous iteration (ended by a barrier).
    const int ahead = n + T::kStages - 1;
    if (ahead < b.tile_end) {
      const int ahead_stage = stage == 0 ? T::kStages - 1 : stage - 1;
      load_kv_tile<T::kHeadDim, T::kThreads>(sk(ahead_stage), sv(ahead_stage), p, block_row,
                                             b.kv_head, b.kv_len, ahead * T::kBlockN, tid);
    }
    cp_async_commit();
    cp_async_wait<T::kStages - 1>();  // tile n has landed
    __syncthreads();
    float s[1][Mma::kNT][4];
    Mma::qk(s, qf, sk(stage), warp_key, lane);
    const int key0 = n * T::kBlockN + warp_key;
#pragma unroll
    for (int j = 0; j < Mma::kNT; ++j) {
      const int key = key0 + j * 8 + 2 * (lane & 3);
      if (key > lim0) s[0][j][0] = -INFINITY;
      if (key + 1 > lim0) s[0][j][1] = -INFINITY;
      if (key > lim1) s[0][j][2] = -INFINITY;
      if (key + 1 > lim1) s[0][j][3] = -INFINITY;
    }
    uint32_t pk[1][Mma::kNT][2];
    float alpha[1][2];
    softmax.update(s[0], pk[0], p.scale_log2, alpha[0]);
    Mma::pv(acc, pk, alpha, sv(stage), warp_key, lane);
    __syncthreads();
    stage = stage + 1 == T::kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
  __syncthreads();  // the K/V ring becomes the merge area
  softmax.finish();

  float* merge_acc = reinterpret_cast<float*>(smem + T::kSmemQ);
  float* merge_ml = reinterpret_cast<float*>(smem + T::kSmemQ + T::kSmemMergeAcc);
  {
    const int r0 = lane / 4, c0 = 2 * (lane & 3);
    float* wa = merge_acc + warp * T::kBlockM * T::kMergeStride;
#pragma unroll
    for (int j = 0; j < Mma::kDT; ++j) {
      *reinterpret_cast<float2*>(wa + r0 * T::kMergeStride + j * 8 + c0) =
          make_float2(acc[0][j][0], acc[0][j][1]);
      *reinterpret_cast<float2*>(wa + (r0 + 8) * T::kMergeStride + j * 8 + c0) =
          make_float2(acc[0][j][2], acc[0][j][3]);
    }
    if ((lane & 3) == 0) {
      float* wm = merge_ml + warp * T::kBlockM * 2;
      wm[r0 * 2] = softmax.max_log2(0, p.scale_log2);
      wm[r0 * 2 + 1] = softmax.l[0];
      wm[(r0 + 8) * 2] = softmax.max_log2(1, p.scale_log2);
      wm[(r0 + 8) * 2 + 1] = softmax.l[1];
    }
  }
  __syncthreads();

  bf16* obase = static_cast<bf16*>(p.o);
  for (int e = tid; e < T::kBlockM * T::kHeadDim; e += T::kThreads) {
    const int r = e / T::kHeadDim, d = e % T::kHeadDim;
    const int pr = row_base + r;
    if (pr >= b.rows || d >= p.head_dim) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < T::kWarps; ++w) mx = fmaxf(mx, merge_ml[(w * T::kBlockM + r) * 2]);
    const float ref = mx == -INFINITY ? 0.0f : mx;
    float sum = 0.0f, a = 0.0f;
#pragma unroll
    for (int w = 0; w < T::kWarps; ++w) {
      const float wt = fast_exp2(merge_ml[(w * T::kBlockM + r) * 2] - ref);
      sum += merge_ml[(w * T::kBlockM + r) * 2 + 1] * wt;
      a += merge_acc[(w * T::kBlockM + r) * T::kMergeStride + d] * wt;
    }
    const int t = pr / b.group, head = b.kv_head * b.group + pr % b.group;
    if (b.num_splits == 1) {
      obase[static_cast<int64_t>(b.q_begin + t) * p.o_row_stride +
            static_cast<int64_t>(head) * p.o_head_stride + d] =
          __float2bfloat16_rn(sum > 0.0f ? a / sum : 0.0f);
    } else {
      const int64_t slot = static_cast<int64_t>(p.split_offsets[b.seq]) +
                           (static_cast<int64_t>(t) * p.num_heads + head) * b.num_splits + b.split;
      p.split_acc[slot * p.head_dim + d] = a;
      if (d == 0) {
        p.split_ml[slot * 2] = mx;
        p.split_ml[slot * 2 + 1] = sum;
      }
    }
  }
}

}  // namespace sagellm::flash_cuda::sm80
