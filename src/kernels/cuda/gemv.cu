#include "core/cuda_pdl.cuh"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/kernel_util.cuh"

namespace sagellm::gpu {

namespace {

constexpr int kWarps = 4;        // per CTA
constexpr int kRowsPerWarp = 2;  // rows of W (outputs n) per warp
constexpr int kUnroll = 4;       // 256-element k-chunks loaded per row before any math
constexpr int kChunk = 32 * 8;   // elements of k one warp covers with one 16-byte load per lane

__device__ __forceinline__ void unpack8(const uint4& raw, float (&f)[8]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = __uint_as_float(w[j] << 16);
    f[2 * j + 1] = __uint_as_float(w[j] & 0xFFFF0000u);
  }
}

// The epilogue of kRopeKv for token m and pair q (rows row0 and row0 + head_dim/2 of C): what
// gpu::rope_kv_write does to the bf16-rounded sums.
__device__ __forceinline__ void rope_kv_store(const GemvArgs& p, int m, int q, int row0,
                                              const float (&sums)[kRowsPerWarp]) {
  const GemvRopeKv& rk = p.rope_kv;
  const int half = rk.head_dim / 2;
  const int head = q / half;
  const int i = q - head * half;
  const float x1 = detail::round_to_bf16(sums[0]);
  const float x2 = detail::round_to_bf16(sums[1]);
  __nv_bfloat16 y1, y2;
  if (head < rk.q_heads + rk.kv_heads) {
    float c, s;
    detail::rope_cos_sin(rk.inv_freq[i], rk.positions[m], &c, &s);
    detail::rope_rotate(x1, x2, c, s, &y1, &y2);
  } else {
    y1 = __float2bfloat16_rn(x1);
    y2 = __float2bfloat16_rn(x2);
  }
  __nv_bfloat16* row = static_cast<__nv_bfloat16*>(p.c) + m * p.ldc;
  row[row0] = y1;
  row[row0 + half] = y2;
  if (head < rk.q_heads) return;
  const int32_t page = rk.pages[m];
  const int32_t slot = rk.slots[m];
  if (page < 0 || page >= rk.num_pages || slot < 0 || slot >= rk.page_size) return;
  const bool is_v = head >= rk.q_heads + rk.kv_heads;
  const int kv_head = head - rk.q_heads - (is_v ? rk.kv_heads : 0);
  const int64_t at =
      ((static_cast<int64_t>(page) * rk.kv_heads + kv_head) * rk.page_size + slot) * rk.head_dim +
      i;
  __nv_bfloat16* cache = is_v ? rk.v_cache : rk.k_cache;
  cache[at] = y1;
  cache[at + half] = y2;
}

// kSplit warps share each group of kRowsPerWarp rows, warp `slice` taking every kSplit-th
// k-chunk; their partial sums meet in shared memory and are added in slice order. Splitting k
// keeps enough loads in flight when there are few rows (n = 4096: 512 CTAs without a split,
// fewer than the GPU holds at once).
//
// kSwiGlu: W is [gate; up] with 2 * n rows and the warp group's two rows are gate row j and up
// row n + j; C[m][j] = silu(gate) * up of the two bf16-rounded sums (silu_mul's formula). The
// sums are the bits the plain kernel gives for W's 2 * n rows (same order and split).
//
// kRopeKv: the warp group's two rows are rows i and i + head_dim/2 of one head of the QKV
// projection (pair q = head * head_dim/2 + i), which RoPE rotates together; the epilogue rotates
// q and k heads and writes k and v heads to the cache (GemvRopeKv).
enum class Epilogue { kStore, kSwiGlu, kRopeKv };

template <int M, bool kF32, int kSplit, Epilogue kEp>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvArgs p) {
  constexpr bool kSwiGlu = kEp == Epilogue::kSwiGlu;
  constexpr bool kRopeKv = kEp == Epilogue::kRopeKv;
  constexpr bool kPairs = kSwiGlu || kRopeKv;  // a warp group computes one pair of rows
  static_assert(!kPairs || (kRowsPerWarp == 2 && !kF32), "pairs of rows, bf16 outputs");
  static_assert(kWarps % kSplit == 0, "the warps of a CTA form whole split groups");
  constexpr int kGroups = kWarps / kSplit;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int group = warp / kSplit;
  const int slice = warp - group * kSplit;
  // Outputs of the kernel: rows of C, or pairs.
  const int units = kRopeKv ? p.n / 2 : p.n;
  // First output of the warp group: kRowsPerWarp consecutive ones, or one pair.
  const int n0 = (blockIdx.x * kGroups + group) * (kPairs ? 1 : kRowsPerWarp);
  const int half = p.rope_kv.head_dim / 2;
  // Row r of W (and C) of pair q in kRopeKv.
  const auto rope_row = [&](int q, int r) {
    const int head = q / half;
    return head * p.rope_kv.head_dim + (q - head * half) + r * half;
  };
  const __nv_bfloat16* w_rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    // A row past the end re-reads the last row; its result is not stored.
    const int row = kSwiGlu   ? min(n0, p.n - 1) + r * p.n
                    : kRopeKv ? rope_row(min(n0, units - 1), r)
                              : min(n0 + r, p.n - 1);
    w_rows[r] = p.w + static_cast<int64_t>(row) * p.k;
  }
  float acc[M][kRowsPerWarp];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) acc[m][r] = 0.0f;
  }
  constexpr int kStride = kChunk * kSplit;  // between this warp's consecutive k-chunks
  uint4 wv[kUnroll][kRowsPerWarp];
  const auto load_w = [&](int base) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int kk = base + u * kStride;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        wv[u][r] = kk < p.k ? __ldcs(reinterpret_cast<const uint4*>(w_rows[r] + kk))
                            : make_uint4(0, 0, 0, 0);
      }
    }
  };
  int base = n0 < units ? slice * kChunk + lane * 8 : p.k;
  // W is no kernel's output: its first loads go out before the wait for the kernel that writes A
  // (cuda_pdl.cuh), so that they overlap that kernel's tail.
  if (base < p.k) load_w(base);
  cuda_pdl::pdl_wait();
  cuda_pdl::pdl_launch_dependents();
  while (base < p.k) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int kk = base + u * kStride;
      if (kk >= p.k) break;
      float wf[kRowsPerWarp][8];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) unpack8(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float av[8];
        // A may have been written while this CTA waited: a coherent load, not the read-only path.
        unpack8(__ldca(reinterpret_cast<const uint4*>(p.a + m * p.lda + kk)), av);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[m][r] = fmaf(av[j], wf[r][j], acc[m][r]);
        }
      }
    }
    base += kStride * kUnroll;
    if (base < p.k) load_w(base);
  }
  auto store = [&](int m, int n, float v) {
    const int64_t at = m * p.ldc + n;
    if constexpr (kF32) {
      static_cast<float*>(p.c)[at] = v;
    } else {
      static_cast<__nv_bfloat16*>(p.c)[at] = __float2bfloat16_rn(v);
    }
  };
  // sums[r]: the full sums of the group's rows for token m.
  auto finish = [&](int m, int n0_group, const float(&sums)[kRowsPerWarp]) {
    if constexpr (kSwiGlu) {
      // On the bf16-rounded sums, as gpu::silu_mul reads them from the GEMV's output.
      if (n0_group < p.n) {
        store(m, n0_group,
              detail::silu_mul(detail::round_to_bf16(sums[0]), detail::round_to_bf16(sums[1])));
      }
    } else if constexpr (kRopeKv) {
      if (n0_group < units) rope_kv_store(p, m, n0_group, rope_row(n0_group, 0), sums);
    } else {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (n0_group + r < p.n) store(m, n0_group + r, sums[r]);
      }
    }
  };
  if constexpr (kSplit == 1) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float sums[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) sums[r] = detail::warp_sum(acc[m][r]);
      if (lane == 0) finish(m, n0, sums);
    }
  } else {
    __shared__ float part[kWarps][M][kRowsPerWarp];
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float s = detail::warp_sum(acc[m][r]);
        if (lane == 0) part[warp][m][r] = s;
      }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < kGroups * M; t += blockDim.x) {
      const int g = t / M;
      const int m = t % M;
      float sums[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        float sum = part[g * kSplit][m][r];
#pragma unroll
        for (int sl = 1; sl < kSplit; ++sl) sum += part[g * kSplit + sl][m][r];
        sums[r] = sum;
      }
      finish(m, (blockIdx.x * kGroups + g) * (kPairs ? 1 : kRowsPerWarp), sums);
    }
  }
}

// Warps that share a row group: a function of W's rows alone (not of m, so a request's row of C
// is the same bits in any batch). Two warps a row up to 32768 rows: an 8B model's gate/up
// (28672 rows) decoded batch 4 2.6% faster on the H200 than with one, batch 1 the same.
int gemv_split(int w_rows) { return w_rows <= 8192 ? 4 : w_rows <= 32768 ? 2 : 1; }

template <int M, int kSplit>
cudaError_t launch_split(const GemvArgs& p, cudaStream_t stream) {
  const bool pairs = p.swiglu || p.rope;
  const int units = p.rope ? p.n / 2 : p.n;
  const int outputs_per_cta = kWarps / kSplit * (pairs ? 1 : kRowsPerWarp);
  const dim3 grid((units + outputs_per_cta - 1) / outputs_per_cta);
  auto kernel = p.swiglu  ? gemv_kernel<M, false, kSplit, Epilogue::kSwiGlu>
                : p.rope  ? gemv_kernel<M, false, kSplit, Epilogue::kRopeKv>
                : p.c_f32 ? gemv_kernel<M, true, kSplit, Epilogue::kStore>
                          : gemv_kernel<M, false, kSplit, Epilogue::kStore>;
  return cuda_pdl::launch_dependent(kernel, grid, kWarps * 32, 0, stream, p);
}

template <int M>
cudaError_t launch_m(const GemvArgs& p, cudaStream_t stream) {
  switch (gemv_split(p.swiglu ? 2 * p.n : p.n)) {
    case 4:
      return launch_split<M, 4>(p, stream);
    case 2:
      return launch_split<M, 2>(p, stream);
    default:
      return launch_split<M, 1>(p, stream);
  }
}

}  // namespace

bool gemv_supports(const GemvArgs& a, bool accumulate) {
  return !accumulate && a.m >= 1 && a.m <= kGemvMaxRows && a.n >= 1 && a.k % 8 == 0 &&
         a.lda % 8 == 0 && detail::aligned16(a.a) && detail::aligned16(a.w) &&
         !((a.swiglu || a.rope) && a.c_f32) && !(a.swiglu && a.rope) &&
         (!a.rope || (a.rope_kv.head_dim > 0 && a.rope_kv.head_dim % 2 == 0 &&
                      a.rope_kv.q_heads >= 0 && a.rope_kv.kv_heads >= 0 &&
                      a.n == (a.rope_kv.q_heads + 2 * a.rope_kv.kv_heads) * a.rope_kv.head_dim &&
                      a.ldc >= a.n)) &&
         a.n <= (a.swiglu ? 65535 * kWarps : 65535 * kWarps * kRowsPerWarp);
}

cudaError_t gemv_launch(const GemvArgs& p, cudaStream_t stream) {
  switch (p.m) {
    case 1:
      return launch_m<1>(p, stream);
    case 2:
      return launch_m<2>(p, stream);
    case 3:
      return launch_m<3>(p, stream);
    case 4:
      return launch_m<4>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace sagellm::gpu
