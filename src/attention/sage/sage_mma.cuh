// Warp-level building blocks of the sage_attn kernels, on top of the flash ones (cp.async,
// ldmatrix, bf16 packing): the INT8 (s8.s8, u8.s8 and s8.u8) and FP8 m16n8k32 tensor-core
// products, the FP16 m16n8k16 product, FP8 <-> FP16/FP32 conversions, and the swizzled
// shared-memory layout of 8-bit tiles.
//
// m16n8k32 fragments (8-bit elements, g = lane / 4, t = lane % 4): A a0 = (row g, k 4t..4t+3),
// a1 = (row g+8, same k), a2 = (row g, k 16+4t..), a3 = (row g+8, k 16+4t..), four elements per
// register, lowest k in the lowest byte; B b0 = (k 4t..4t+3, col g), b1 = (k 16+4t.., col g);
// C c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, cols 2t, 2t+1). ldmatrix of 8-bit data
// viewed as b16 hands thread (g, t) bytes 4t..4t+3 of row g of each 8x16-byte matrix: exactly
// these fragments when rows are the M (or N) index and bytes the K index.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "attention/flash/flash_mma_sm80.cuh"

namespace sagellm::sage_cuda::sm80 {

using flash_cuda::sm80::cp_async_16;
using flash_cuda::sm80::cp_async_commit;
using flash_cuda::sm80::cp_async_wait;
using flash_cuda::sm80::fast_exp2;
using flash_cuda::sm80::ldmatrix_x4;
using flash_cuda::sm80::smem_addr;

// FP8 tensor-core products and conversions exist from compute capability 8.9 on.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define SAGELLM_SAGE_HAS_FP8 1
#else
#define SAGELLM_SAGE_HAS_FP8 0
#endif

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of kRowBytes per row. The chunk
// index is XOR-swizzled so that the 8 row addresses of one ldmatrix matrix (8 consecutive rows,
// one logical chunk) fall into 8 different groups of 4 banks.
template <int kRowBytes>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  static_assert(kRowBytes == 64 || kRowBytes % 128 == 0, "row bytes");
  if constexpr (kRowBytes == 64) {
    return static_cast<uint32_t>(row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4));
  } else {
    return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
  }
}

__device__ __forceinline__ void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// UINT8 P times INT8 V (int8 P.V), exact int32 accumulation.
__device__ __forceinline__ void mma_u8s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// INT8 V times UINT8 P (the split-KV kernel's transposed int8 P.V), exact int32 accumulation.
__device__ __forceinline__ void mma_s8u8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_e4m3_16832(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
#if SAGELLM_SAGE_HAS_FP8
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // the launcher never runs fp8 P.V below compute capability 8.9
#endif
}

// Two FP8 e4m3 codes (bits 0-7 and 8-15 of x) to fp16 (lower code in the lower half). Exact: the
// code's 7 exponent-mantissa bits placed at fp16 bits 7-13 give the value times 2^-8, which the
// multiplication by 256 undoes (subnormals included).
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t x) {
#if SAGELLM_SAGE_HAS_FP8
  uint32_t r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(static_cast<uint16_t>(x & 0xFFFFu)));
  return r;
#else
  const uint32_t h =
      ((x & 0x80u) << 8) | ((x & 0x7Fu) << 7) | ((x & 0x8000u) << 16) | ((x & 0x7F00u) << 15);
  const __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&h), __float2half2_rn(256.0f));
  return *reinterpret_cast<const uint32_t*>(&v);
#endif
}

// FP8 e4m3 codes of two floats, round to nearest even, saturating: lo in bits 0-7, hi in 8-15.
__device__ __forceinline__ uint32_t f32x2_to_e4m3x2(float lo, float hi) {
#if SAGELLM_SAGE_HAS_FP8
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
#else
  __trap();
  return 0;
#endif
}

// int8 P.V's P codes (sage_numerics.h: round to nearest even of p * 255): fmaf(p, 255, kU8Magic)
// rounds once to an integer, which the float's low byte then holds (its ulp is 1 from 2^23 on).
inline constexpr float kU8Magic = 12582912.0f;  // 1.5 * 2^23
__device__ __forceinline__ float u8_code_float(float p) { return fmaf(p, 255.0f, kU8Magic); }

// An int32 product of 8-bit codes accumulated onto kBiasedZero (the bits of kU8Magic) is the float
// kU8Magic + s, exactly while |s| < 2^22 (128 * 128 * 128 = 2^21 bounds the dot products of two
// 128-channel rows of codes), so one FADD gives float(s) where an I2F would be needed otherwise;
// the biased integers keep the order of the products (a max over them is the max over s).
inline constexpr int kBiasedZero = 0x4B400000;
__device__ __forceinline__ float biased_to_float(int b) { return __int_as_float(b) - kU8Magic; }

// The codes of four such floats, a in the lowest byte.
__device__ __forceinline__ uint32_t pack_u8x4(float a, float b, float c, float d) {
  const uint32_t lo = __byte_perm(__float_as_uint(a), __float_as_uint(b), 0x0040u);
  const uint32_t hi = __byte_perm(__float_as_uint(c), __float_as_uint(d), 0x0040u);
  return __byte_perm(lo, hi, 0x5410u);
}

__device__ __forceinline__ float2 f16x2_to_float2(uint32_t h) {
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace sagellm::sage_cuda::sm80
