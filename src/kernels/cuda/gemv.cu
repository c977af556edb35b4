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

template <int M, bool kF32>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemvArgs p) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n0 = (blockIdx.x * kWarps + warp) * kRowsPerWarp;
  if (n0 >= p.n) return;
  const __nv_bfloat16* w_rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    // A row past the end re-reads the last row; its result is not stored.
    w_rows[r] = p.w + static_cast<int64_t>(min(n0 + r, p.n - 1)) * p.k;
  }
  float acc[M][kRowsPerWarp];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) acc[m][r] = 0.0f;
  }
  for (int base = lane * 8; base < p.k; base += kChunk * kUnroll) {
    uint4 wv[kUnroll][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int kk = base + u * kChunk;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        wv[u][r] = kk < p.k ? __ldcs(reinterpret_cast<const uint4*>(w_rows[r] + kk))
                            : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int kk = base + u * kChunk;
      if (kk >= p.k) break;
      float wf[kRowsPerWarp][8];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) unpack8(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float av[8];
        unpack8(__ldg(reinterpret_cast<const uint4*>(p.a + m * p.lda + kk)), av);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[m][r] = fmaf(av[j], wf[r][j], acc[m][r]);
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float s = detail::warp_sum(acc[m][r]);
      if (lane == 0 && n0 + r < p.n) {
        const int64_t at = m * p.ldc + n0 + r;
        if constexpr (kF32) {
          static_cast<float*>(p.c)[at] = s;
        } else {
          static_cast<__nv_bfloat16*>(p.c)[at] = __float2bfloat16_rn(s);
        }
      }
    }
  }
}

template <int M>
cudaError_t launch_m(const GemvArgs& p, cudaStream_t stream) {
  const int rows_per_cta = kWarps * kRowsPerWarp;
  const dim3 grid((p.n + rows_per_cta - 1) / rows_per_cta);
  if (p.c_f32) {
    gemv_kernel<M, true><<<grid, kWarps * 32, 0, stream>>>(p);
  } else {
    gemv_kernel<M, false><<<grid, kWarps * 32, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace

bool gemv_supports(const GemvArgs& a, bool accumulate) {
  return !accumulate && a.m >= 1 && a.m <= kGemvMaxRows && a.n >= 1 && a.k % 8 == 0 &&
         a.lda % 8 == 0 && detail::aligned16(a.a) && detail::aligned16(a.w) &&
         a.n <= 65535 * kWarps * kRowsPerWarp;
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
    case 5:
      return launch_m<5>(p, stream);
    case 6:
      return launch_m<6>(p, stream);
    case 7:
      return launch_m<7>(p, stream);
    case 8:
      return launch_m<8>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace sagellm::gpu
