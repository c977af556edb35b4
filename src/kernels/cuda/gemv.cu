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

// kSplit warps share each group of kRowsPerWarp rows, warp `slice` taking every kSplit-th
// k-chunk; their partial sums meet in shared memory and are added in slice order. Splitting k
// keeps enough loads in flight when there are few rows (n = 4096: 512 CTAs without a split,
// fewer than the GPU holds at once).
//
// kSwiGlu: W is [gate; up] with 2 * n rows and the warp group's two rows are gate row j and up
// row n + j; C[m][j] = silu(gate) * up of the two bf16-rounded sums (silu_mul's formula). The
// sums are the bits the plain kernel gives for W's 2 * n rows (same order and split).
template <int M, bool kF32, int kSplit, bool kSwiGlu>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvArgs p) {
  static_assert(!kSwiGlu || (kRowsPerWarp == 2 && !kF32), "SwiGLU pairs a gate and an up row");
  static_assert(kWarps % kSplit == 0, "the warps of a CTA form whole split groups");
  constexpr int kGroups = kWarps / kSplit;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int group = warp / kSplit;
  const int slice = warp - group * kSplit;
  // First output of the warp group: kRowsPerWarp consecutive ones, or one (gate, up) pair.
  const int n0 = (blockIdx.x * kGroups + group) * (kSwiGlu ? 1 : kRowsPerWarp);
  const __nv_bfloat16* w_rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    // A row past the end re-reads the last row; its result is not stored.
    const int row = kSwiGlu ? min(n0, p.n - 1) + r * p.n : min(n0 + r, p.n - 1);
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
  int base = n0 < p.n ? slice * kChunk + lane * 8 : p.k;
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
      finish(m, (blockIdx.x * kGroups + g) * (kSwiGlu ? 1 : kRowsPerWarp), sums);
    }
  }
}

// Warps that share a row group: a function of W's rows alone (not of m, so a request's row of C
// is the same bits in any batch).
int gemv_split(int w_rows) { return w_rows <= 8192 ? 4 : w_rows <= 16384 ? 2 : 1; }

template <int M, int kSplit>
cudaError_t launch_split(const GemvArgs& p, cudaStream_t stream) {
  const int outputs_per_cta = kWarps / kSplit * (p.swiglu ? 1 : kRowsPerWarp);
  const dim3 grid((p.n + outputs_per_cta - 1) / outputs_per_cta);
  auto kernel = p.swiglu  ? gemv_kernel<M, false, kSplit, true>
                : p.c_f32 ? gemv_kernel<M, true, kSplit, false>
                          : gemv_kernel<M, false, kSplit, false>;
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
         !(a.swiglu && a.c_f32) &&
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
