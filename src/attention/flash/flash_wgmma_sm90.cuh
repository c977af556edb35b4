// Warpgroup-level building blocks of the Hopper (sm_90a) kernels: shared-memory matrix
// descriptors for 128-byte-swizzled tiles, the asynchronous wgmma bf16 products with fp32
// accumulation (both operands in shared memory, or A in registers), and the fences around them.
//
// Tile layout (what the descriptors describe and what the loads write): a [rows][cols] bf16 tile
// is stored as cols / 64 column blocks of [rows][64]; row r of a block is 128 bytes at r * 128,
// and its 16-byte chunk c sits at chunk position c ^ (r % 8). With the tile 1024-byte aligned this
// is the hardware's 128-byte swizzle (address bits 4-6 XOR bits 7-9), so the same bytes serve as a
// K-major operand (rows = M or N, cols = K: Q and K) and as an MN-major one (rows = K, cols = N:
// V, read transposed by the instruction).
//
// Accumulator fragments of wgmma m64nN (per warp w of the warpgroup, g = lane / 4, t = lane % 4):
// d[j][0..1] = (row 16w + g, cols 8j + 2t, +1), d[j][2..3] = (row 16w + g + 8, same cols): the
// mma.sync m16n8 C layout, repeated over N / 8 column tiles. The register A operand has the
// mma.sync m16n8k16 A layout, so a bf16-packed score fragment is the A operand of the next product
// without going through shared memory (as in the sm_80 kernels).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace sagellm::flash_cuda::sm90 {

// wgmma exists on sm_90a only; elsewhere these compile to nothing and the kernels that use them
// trap (they are never launched there: the launcher checks the device and the binary).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SAGELLM_HAS_WGMMA 1
#else
#define SAGELLM_HAS_WGMMA 0
#endif

__device__ __forceinline__ unsigned char* aligned_smem(unsigned char* raw) {
  // The swizzle patterns are functions of the address: tiles start on 1024-byte boundaries.
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  return raw + ((1024 - (addr & 1023)) & 1023);
}

// Byte offset of 16-byte chunk `chunk` (0 .. cols / 8 - 1) of row `row` in a kRows-row tile.
template <int kRows>
__device__ __forceinline__ uint32_t sw128_offset(int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * (kRows * 128) + row * 128 +
                               (((chunk & 7) ^ (row & 7)) << 4));
}

// Descriptor of a 128-byte-swizzled operand starting at shared address `addr` (16-byte units in
// bits 0-13), with the leading-dimension byte offset in bits 16-29 (MN-major: the distance
// between 64-column blocks; unused for K-major), the stride byte offset in bits 32-45 (the
// distance between groups of 8 rows: 1024) and the swizzle mode in bits 62-63 (1: 128 bytes).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t leading_bytes) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (uint64_t{1} << 62);
}

// Descriptor of a 64-byte-swizzled K-major operand (rows of 64 bytes, 8-row atoms of 512 bytes:
// address bits 4-5 XOR bits 7-8, the layout of the sm_80 kernels' 64-byte tiles).
__device__ __forceinline__ uint64_t sw64_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(512 >> 4) << 32) | (uint64_t{2} << 62);
}

// The descriptor of the operand `off_bytes` (a multiple of 16) past the one `desc` describes: the
// start address field is addr >> 4 in bits 0-13 and shared addresses stay below 2^18, so the add
// never carries out of the field. One 32-bit add per product in the main loops instead of
// rebuilding each descriptor (mask, shift, or) in the uniform datapath.
__device__ __forceinline__ uint64_t desc_plus(uint64_t desc, uint32_t off_bytes) {
  const uint32_t lo = static_cast<uint32_t>(desc) + (off_bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}

__device__ __forceinline__ void wgmma_fence() {
#if SAGELLM_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if SAGELLM_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most n committed wgmma groups of this warpgroup are still in flight.
template <int n>
__device__ __forceinline__ void wgmma_wait() {
#if SAGELLM_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(n) : "memory");
#endif
}

// Makes this thread's generic-proxy writes to shared memory (cp.async, st.shared) visible to the
// async proxy that wgmma reads through; a barrier must follow before another thread's wgmma.
__device__ __forceinline__ void fence_proxy_async_smem() {
#if SAGELLM_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Compiler fence for the accumulator of an asynchronous product, placed right after the wait that
// retires it: the compiler sees the product as finished when it is issued, and would otherwise be
// free to move reads of the accumulator above the wait.
template <int kNT>
__device__ __forceinline__ void wgmma_keep(float (&d)[kNT][4]) {
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+f"(d[j][i])::"memory");
  }
}

// ---- mbarriers (the producer/consumer handshake of warp-specialized kernels) ----

__device__ __forceinline__ void mbarrier_init(uint32_t bar, int count) {
#if SAGELLM_HAS_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}

__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
#if SAGELLM_HAS_WGMMA
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// Blocks until the phase of the given parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, int parity) {
#if SAGELLM_HAS_WGMMA
  asm volatile(
      "{\n.reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}

// Arrives once and adds `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if SAGELLM_HAS_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
#endif
}

// Tensor-memory-accelerator copy of one box of a 4-D tensor map into shared memory; its bytes
// count against the transaction count of mbarrier `bar`.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* map, uint32_t bar, int c0,
                                            int c1, int c2, int c3) {
#if SAGELLM_HAS_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, "
      "{%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#endif
}

// Named barriers 1..15 among `threads` threads (barrier 0 is __syncthreads): sync waits for all,
// arrive only signals.
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Moves registers between warpgroups: the calling warpgroup's per-thread limit becomes n.
template <int n>
__device__ __forceinline__ void setmaxnreg_inc() {
#if SAGELLM_HAS_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(n));
#endif
}

template <int n>
__device__ __forceinline__ void setmaxnreg_dec() {
#if SAGELLM_HAS_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(n));
#endif
}

#define SAGELLM_WG_ACC4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define SAGELLM_WG_ACC_N64                                                        \
  SAGELLM_WG_ACC4(0), SAGELLM_WG_ACC4(1), SAGELLM_WG_ACC4(2), SAGELLM_WG_ACC4(3), \
      SAGELLM_WG_ACC4(4), SAGELLM_WG_ACC4(5), SAGELLM_WG_ACC4(6), SAGELLM_WG_ACC4(7)
#define SAGELLM_WG_ACC_N128                                                               \
  SAGELLM_WG_ACC_N64, SAGELLM_WG_ACC4(8), SAGELLM_WG_ACC4(9), SAGELLM_WG_ACC4(10),        \
      SAGELLM_WG_ACC4(11), SAGELLM_WG_ACC4(12), SAGELLM_WG_ACC4(13), SAGELLM_WG_ACC4(14), \
      SAGELLM_WG_ACC4(15)
#define SAGELLM_WG_REGS_32                                                                     \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define SAGELLM_WG_REGS_64                                                                  \
  SAGELLM_WG_REGS_32                                                                        \
  ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, " \
  "%49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// d (64 x kN, fp32) = (accumulate ? d : 0) + A (64 x 16, bf16, K-major in shared memory) *
// B (16 x kN, bf16 in shared memory; K-major when kTransB == 0, MN-major when 1).
template <int kN, int kTransB>
__device__ __forceinline__ void wgmma_ss(float (&d)[kN / 8][4], uint64_t desc_a, uint64_t desc_b,
                                         bool accumulate) {
#if SAGELLM_HAS_WGMMA
  static_assert(kN == 64 || kN == 128, "wgmma_ss: N is 64 or 128");
  if constexpr (kN == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SAGELLM_WG_REGS_32
        "}, %32, %33, p, 1, 1, 0, %35;\n}\n"
        : SAGELLM_WG_ACC_N64
        : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kTransB));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SAGELLM_WG_REGS_64
        "}, %64, %65, p, 1, 1, 0, %67;\n}\n"
        : SAGELLM_WG_ACC_N128
        : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(kTransB));
  }
#else
  (void)d, (void)desc_a, (void)desc_b, (void)accumulate;
#endif
}

// d (64 x kN, fp32) += A (64 x 16, bf16 fragments in registers: a[0..3] in the m16n8k16 A layout
// of the warp's 16 rows) * B (16 x kN, bf16 in shared memory; K-major or MN-major as above).
template <int kN, int kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[kN / 8][4], const uint32_t (&a)[4],
                                         uint64_t desc_b) {
#if SAGELLM_HAS_WGMMA
  static_assert(kN == 64 || kN == 128, "wgmma_rs: N is 64 or 128");
  if constexpr (kN == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SAGELLM_WG_REGS_32
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : SAGELLM_WG_ACC_N64
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1), "n"(kTransB));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SAGELLM_WG_REGS_64
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
        : SAGELLM_WG_ACC_N128
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1), "n"(kTransB));
  }
#else
  (void)d, (void)a, (void)desc_b;
#endif
}

#undef SAGELLM_WG_ACC4
#undef SAGELLM_WG_ACC_N64
#undef SAGELLM_WG_ACC_N128
#undef SAGELLM_WG_REGS_32
#undef SAGELLM_WG_REGS_64

}  // namespace sagellm::flash_cuda::sm90
