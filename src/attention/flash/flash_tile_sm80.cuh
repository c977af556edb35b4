// Shared-memory tiles and their loads for the sm_80 kernels: Q rows and paged K/V tiles copied
// with cp.async, zero-filled where a row is padding (past q_len or kv_len) or a column lies past
// head_dim (head dims padded up to the kernel's 64 or 128).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "attention/flash/flash_mma_sm80.cuh"
#include "attention/flash/flash_params.h"

namespace sagellm::flash_cuda::sm80 {

using bf16 = __nv_bfloat16;

// [kRows][kHeadDim] bf16 in shared memory. The 16-byte chunks of row r are XOR-swizzled by r % 8,
// so that the 8 row addresses of one ldmatrix matrix (8 consecutive rows, one logical chunk) fall
// into 8 different groups of 4 banks.
template <int kRows, int kHeadDim>
struct SmemTile {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "native head dims are 64 and 128");
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kBytes = kRows * kRowBytes;
  __device__ __forceinline__ static uint32_t offset(int row, int chunk) {
    return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
  }
};

// Thread -> (row, chunk) assignment of a cooperative tile copy: consecutive threads take
// consecutive chunks of a row, so a warp reads whole rows (coalesced).
template <int kRows, int kHeadDim, int kThreads>
struct TileCopy {
  using Tile = SmemTile<kRows, kHeadDim>;
  static constexpr int kRowsPerPass = kThreads / Tile::kChunks;
  static constexpr int kPasses = kRows / kRowsPerPass;
  static_assert(kThreads % Tile::kChunks == 0 && kRows % kRowsPerPass == 0, "tile copy shape");

  // row_ptr(r): global address of element 0 of row r, or nullptr for a padding row.
  template <class RowPtr>
  __device__ __forceinline__ static void load(uint32_t smem, int tid, int head_dim,
                                              const bf16* fallback, RowPtr row_ptr) {
    const int chunk = tid % Tile::kChunks;
    const bool col_ok = chunk * 8 < head_dim;
#pragma unroll
    for (int pass = 0; pass < kPasses; ++pass) {
      const int r = tid / Tile::kChunks + pass * kRowsPerPass;
      const bf16* src = row_ptr(r);
      const bool valid = col_ok && src != nullptr;
      cp_async_16(smem + Tile::offset(r, chunk), valid ? src + chunk * 8 : fallback, valid);
    }
  }
};

// Keys key0 .. key0 + kFlashBlockN - 1 of one KV head, gathered through the request's block table;
// keys at or past kv_len are zero-filled (never read), so stale or unwritten slots cannot leak
// NaN into the products.
template <int kHeadDim, int kThreads>
__device__ __forceinline__ void load_kv_tile(uint32_t sk, uint32_t sv, const FlashParams& p,
                                             const int32_t* block_row, int kv_head, int kv_len,
                                             int key0, int tid) {
  using Copy = TileCopy<kFlashBlockN, kHeadDim, kThreads>;
  using Tile = typename Copy::Tile;
  const bf16* kbase = static_cast<const bf16*>(p.k_pages);
  const bf16* vbase = static_cast<const bf16*>(p.v_pages);
  const int chunk = tid % Tile::kChunks;
  const bool col_ok = chunk * 8 < p.head_dim;
  const int64_t head_off = static_cast<int64_t>(kv_head) * p.kv_head_stride + chunk * 8;
#pragma unroll
  for (int pass = 0; pass < Copy::kPasses; ++pass) {
    const int r = tid / Tile::kChunks + pass * Copy::kRowsPerPass;
    const int key = key0 + r;
    const bool valid = col_ok && key < kv_len;
    int64_t off = 0;
    if (valid) {
      const int page_idx = key / p.page_size;
      const int slot = key - page_idx * p.page_size;
      off = static_cast<int64_t>(block_row[page_idx]) * p.page_stride + head_off +
            static_cast<int64_t>(slot) * p.head_dim;
    }
    const uint32_t dst = Tile::offset(r, chunk);
    cp_async_16(sk + dst, kbase + off, valid);
    cp_async_16(sv + dst, vbase + off, valid);
  }
}

// Running max and sum of the two rows a thread holds in C fragments (g and g+8 of a warp's 16),
// over kNT tiles of 8 keys per call. Scores arrive raw (masked ones -inf); probabilities are
// exp2(s * scale_log2 - m * scale_log2), rounded to bf16 for the P.V product, and the sum l is
// taken over the fp32 values, as FlashAttention does: summing the bf16 roundings instead (weights
// that sum to exactly l) cost one more instruction per score and 3-5% of the Hopper prefill
// kernel's speed (BENCHMARKS.md), for a relative error against fp64 within 0.3% of this one.
// l stays a per-thread partial sum (the quad's four threads hold different keys) until finish().
template <int kNT>
struct RowSoftmax {
  float m[2];  // raw-score max, -inf while no key was visible
  float l[2];

  __device__ __forceinline__ void init() {
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
  }

  // Turns s into packed bf16 P (pk[j][0]: row g, pk[j][1]: row g+8) and returns in alpha the
  // factor the accumulator of each row must be rescaled by.
  __device__ __forceinline__ void update(const float (&s)[kNT][4], uint32_t (&pk)[kNT][2],
                                         float scale_log2, float (&alpha)[2]) {
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      mx[0] = fmaxf(mx[0], fmaxf(s[j][0], s[j][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[j][2], s[j][3]));
    }
    float ms[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      // With no visible key yet the reference is 0, so exp2(-inf - 0) = 0 instead of NaN.
      ms[i] = mx[i] == -INFINITY ? 0.0f : mx[i] * scale_log2;
      // (m_old - m_new) is exactly 0 when the max did not move, so alpha is exactly 1 then (an
      // FMA of m_old * c - ms would leave the rounding error of ms and drift by ulps).
      alpha[i] = mx[i] == -INFINITY ? 1.0f : fast_exp2((m[i] - mx[i]) * scale_log2);
      m[i] = mx[i];
    }
    float rs[2] = {0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      const float p0 = fast_exp2(fmaf(s[j][0], scale_log2, -ms[0]));
      const float p1 = fast_exp2(fmaf(s[j][1], scale_log2, -ms[0]));
      const float p2 = fast_exp2(fmaf(s[j][2], scale_log2, -ms[1]));
      const float p3 = fast_exp2(fmaf(s[j][3], scale_log2, -ms[1]));
      pk[j][0] = pack_bf16x2(p0, p1);
      pk[j][1] = pack_bf16x2(p2, p3);
      rs[0] += p0 + p1;
      rs[1] += p2 + p3;
    }
    l[0] = l[0] * alpha[0] + rs[0];
    l[1] = l[1] * alpha[1] + rs[1];
  }

  // Completes the row sums across the quad (fixed butterfly order: deterministic).
  __device__ __forceinline__ void finish() {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
      l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
  }

  // The row max in log2 units (the exp2 reference), -inf when no key was visible.
  __device__ __forceinline__ float max_log2(int i, float scale_log2) const {
    return m[i] == -INFINITY ? -INFINITY : m[i] * scale_log2;
  }
};

// Warp products shared by both kernels. A warp owns kMT tiles of 16 query rows and works on kKeys
// keys of the shared K/V tile starting at key_base. Q comes either from registers (A fragments
// loaded once, kMT == 1) or from the shared Q tile at every k-step (fewer registers, for kMT > 1,
// where each K/V fragment read from shared memory then feeds kMT products).
template <int kHeadDim, int kKeys, int kMT = 1>
struct WarpMma {
  using KVTile = SmemTile<kFlashBlockN, kHeadDim>;
  static constexpr int kKSteps = kHeadDim / 16;
  static constexpr int kNT = kKeys / 8;     // 8-key tiles of S
  static constexpr int kDT = kHeadDim / 8;  // 8-column tiles of O
  static_assert(kKeys % 16 == 0, "keys per warp");

  // Q rows row0 .. row0+15 of a [kRows][kHeadDim] tile as A fragments.
  template <int kRows>
  __device__ __forceinline__ static void load_q(uint32_t (&qf)[kKSteps][4], uint32_t sq, int row0,
                                                int lane) {
    using QTile = SmemTile<kRows, kHeadDim>;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      ldmatrix_x4(qf[kk], sq + QTile::offset(row0 + (lane & 15), kk * 2 + (lane >> 4)));
    }
  }

  __device__ __forceinline__ static void zero(float (&s)[kMT][kNT][4]) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int j = 0; j < kNT; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    }
  }

  // B fragments of keys key_lane .. +15 for k-step kk (ldmatrix matrices: (keys 0-7, k 0-7),
  // (keys 0-7, k 8-15), (keys 8-15, k 0-7), (keys 8-15, k 8-15)): two 8-key tiles.
  __device__ __forceinline__ static int k_key_lane(int key_base, int lane) {
    return key_base + (lane & 7) + ((lane >> 4) << 3);
  }

  // s = Q K^T for the warp's keys (raw scores, fp32), Q from registers (kMT == 1).
  __device__ __forceinline__ static void qk(float (&s)[kMT][kNT][4],
                                            const uint32_t (&qf)[kKSteps][4], uint32_t sk,
                                            int key_base, int lane) {
    static_assert(kMT == 1, "Q in registers holds one m-tile");
    zero(s);
    const int key_lane = k_key_lane(key_base, lane);
    const int chunk_lane = (lane >> 3) & 1;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int nn = 0; nn < kNT / 2; ++nn) {
        uint32_t b[4];
        ldmatrix_x4(b, sk + KVTile::offset(key_lane + nn * 16, kk * 2 + chunk_lane));
        mma_bf16_16816(s[0][2 * nn], qf[kk], b[0], b[1]);
        mma_bf16_16816(s[0][2 * nn + 1], qf[kk], b[2], b[3]);
      }
    }
  }

  // s = Q K^T with Q rows row0 .. row0 + 16 * kMT - 1 read from the shared [kRows] Q tile.
  template <int kRows>
  __device__ __forceinline__ static void qk_smem(float (&s)[kMT][kNT][4], uint32_t sq, int row0,
                                                 uint32_t sk, int key_base, int lane) {
    using QTile = SmemTile<kRows, kHeadDim>;
    zero(s);
    const int key_lane = k_key_lane(key_base, lane);
    const int chunk_lane = (lane >> 3) & 1;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        ldmatrix_x4(a[mt], sq + QTile::offset(row0 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
      }
#pragma unroll
      for (int nn = 0; nn < kNT / 2; ++nn) {
        uint32_t b[4];
        ldmatrix_x4(b, sk + KVTile::offset(key_lane + nn * 16, kk * 2 + chunk_lane));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_bf16_16816(s[mt][2 * nn], a[mt], b[0], b[1]);
          mma_bf16_16816(s[mt][2 * nn + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }

  // acc = acc * alpha (per row), then acc += P V over the warp's keys.
  __device__ __forceinline__ static void pv(float (&acc)[kMT][kDT][4],
                                            const uint32_t (&pk)[kMT][kNT][2],
                                            const float (&alpha)[kMT][2], uint32_t sv, int key_base,
                                            int lane) {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int j = 0; j < kDT; ++j) {
        acc[mt][j][0] *= alpha[mt][0];
        acc[mt][j][1] *= alpha[mt][0];
        acc[mt][j][2] *= alpha[mt][1];
        acc[mt][j][3] *= alpha[mt][1];
      }
    }
    // Transposed ldmatrix matrices: (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15),
    // (keys 8-15, d 8-15): the B fragments of two 8-column tiles of V for one 16-key k-step.
    const int key_lane = key_base + (lane & 7) + (((lane >> 3) & 1) << 3);
    const int chunk_lane = lane >> 4;
#pragma unroll
    for (int kk = 0; kk < kNT / 2; ++kk) {
#pragma unroll
      for (int dd = 0; dd < kDT / 2; ++dd) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, sv + KVTile::offset(key_lane + kk * 16, dd * 2 + chunk_lane));
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const uint32_t a[4] = {pk[mt][2 * kk][0], pk[mt][2 * kk][1], pk[mt][2 * kk + 1][0],
                                 pk[mt][2 * kk + 1][1]};
          mma_bf16_16816(acc[mt][2 * dd], a, b[0], b[1]);
          mma_bf16_16816(acc[mt][2 * dd + 1], a, b[2], b[3]);
        }
      }
    }
  }
};

}  // namespace sagellm::flash_cuda::sm80
