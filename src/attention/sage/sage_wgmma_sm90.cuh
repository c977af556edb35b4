// The 8-bit wgmma products of the Hopper sage_attn kernel (sm_90a): INT8 Q K^T with int32
// accumulation (both operands K-major in shared memory) and FP8 e4m3 P V with fp32 accumulation
// (P in registers, V K-major in shared memory), or UINT8 P times INT8 V with int32 accumulation
// (int8 P.V). 8-bit operands are K-major only, which is why the
// 8-bit pages store V transposed (sage_params.h). Fragment layouts are the m16n8k32 ones of
// sage_mma.cuh, per warp of the warpgroup.
#pragma once

#include <cstdint>

#include "attention/flash/flash_wgmma_sm90.cuh"

namespace sagellm::sage_cuda::sm90 {

// d (64 x 64, int32) = (accumulate ? d : 0) + A (64 x 32, s8) * B (32 x 64, s8).
__device__ __forceinline__ void wgmma_s8_n64(int (&d)[8][4], uint64_t desc_a, uint64_t desc_b,
                                             bool accumulate) {
#if SAGELLM_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31}, %32, %33, p;\n}\n"
      : "+r"(d[0][0]), "+r"(d[0][1]), "+r"(d[0][2]), "+r"(d[0][3]), "+r"(d[1][0]), "+r"(d[1][1]),
        "+r"(d[1][2]), "+r"(d[1][3]), "+r"(d[2][0]), "+r"(d[2][1]), "+r"(d[2][2]), "+r"(d[2][3]),
        "+r"(d[3][0]), "+r"(d[3][1]), "+r"(d[3][2]), "+r"(d[3][3]), "+r"(d[4][0]), "+r"(d[4][1]),
        "+r"(d[4][2]), "+r"(d[4][3]), "+r"(d[5][0]), "+r"(d[5][1]), "+r"(d[5][2]), "+r"(d[5][3]),
        "+r"(d[6][0]), "+r"(d[6][1]), "+r"(d[6][2]), "+r"(d[6][3]), "+r"(d[7][0]), "+r"(d[7][1]),
        "+r"(d[7][2]), "+r"(d[7][3])
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)desc_a, (void)desc_b, (void)accumulate;
#endif
}

#define SAGELLM_ACC4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])

// d (64 x 136, fp32) = (accumulate ? d : 0) + A (64 x 32, e4m3 fragments in registers) *
// B (32 x 136, e4m3 in shared memory): the 128 channels of V and 8 more columns (V's row sums).
__device__ __forceinline__ void wgmma_e4m3_n136(float (&d)[17][4], const uint32_t (&a)[4],
                                                uint64_t desc_b, bool accumulate) {
#if SAGELLM_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %73, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n136k32.f32.e4m3.e4m3 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, "
      "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, "
      "%63, %64, %65, %66, %67}, "
      "{%68, %69, %70, %71}, %72, p, 1, 1;\n}\n"
      : SAGELLM_ACC4(0), SAGELLM_ACC4(1), SAGELLM_ACC4(2), SAGELLM_ACC4(3), SAGELLM_ACC4(4),
        SAGELLM_ACC4(5), SAGELLM_ACC4(6), SAGELLM_ACC4(7), SAGELLM_ACC4(8), SAGELLM_ACC4(9),
        SAGELLM_ACC4(10), SAGELLM_ACC4(11), SAGELLM_ACC4(12), SAGELLM_ACC4(13), SAGELLM_ACC4(14),
        SAGELLM_ACC4(15), SAGELLM_ACC4(16)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)a, (void)desc_b, (void)accumulate;
#endif
}

#undef SAGELLM_ACC4
#define SAGELLM_ACC4I(j) "+r"(d[j][0]), "+r"(d[j][1]), "+r"(d[j][2]), "+r"(d[j][3])

// d (64 x 144, int32) = (accumulate ? d : 0) + A (64 x 32, u8 fragments in registers) *
// B (32 x 144, s8 in shared memory): V's 128 channels, then a row of ones (the row sums of P)
// and 15 zero rows (mixed-sign integer products take N in steps of 16 past 128).
__device__ __forceinline__ void wgmma_u8s8_n144(int (&d)[18][4], const uint32_t (&a)[4],
                                                uint64_t desc_b, bool accumulate) {
#if SAGELLM_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %77, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n144k32.s32.u8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, "
      "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, "
      "%63, %64, %65, %66, %67, %68, %69, %70, %71}, "
      "{%72, %73, %74, %75}, %76, p;\n}\n"
      : SAGELLM_ACC4I(0), SAGELLM_ACC4I(1), SAGELLM_ACC4I(2), SAGELLM_ACC4I(3), SAGELLM_ACC4I(4),
        SAGELLM_ACC4I(5), SAGELLM_ACC4I(6), SAGELLM_ACC4I(7), SAGELLM_ACC4I(8), SAGELLM_ACC4I(9),
        SAGELLM_ACC4I(10), SAGELLM_ACC4I(11), SAGELLM_ACC4I(12), SAGELLM_ACC4I(13),
        SAGELLM_ACC4I(14), SAGELLM_ACC4I(15), SAGELLM_ACC4I(16), SAGELLM_ACC4I(17)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)a, (void)desc_b, (void)accumulate;
#endif
}

#undef SAGELLM_ACC4I

// d (64 x 16, fp32) = (accumulate ? d : 0) + A (64 x 16, bf16 m16n8k16 A fragments in registers)
// * B (16 x 16, bf16, K-major in shared memory).
__device__ __forceinline__ void wgmma_bf16_n16_rs(float (&d)[2][4], const uint32_t (&a)[4],
                                                  uint64_t desc_b, bool accumulate) {
#if SAGELLM_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, "
      "{%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),
        "+f"(d[1][2]), "+f"(d[1][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(accumulate)));
#else
  (void)d, (void)a, (void)desc_b, (void)accumulate;
#endif
}

template <int kNT>
__device__ __forceinline__ void wgmma_keep_int(int (&d)[kNT][4]) {
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(d[j][i])::"memory");
  }
}

}  // namespace sagellm::sage_cuda::sm90
