// bf16 GEMM for Linear layers through cuBLASLt: C[m][n] = A[m][k] · W[n][k]^T (+ C), with A and W
// bf16 row-major (W in Hugging Face's [out, in] layout), fp32 accumulation (CUBLAS_COMPUTE_32F)
// and C in bf16 or fp32, rounded once.
//
// Split-K, when cuBLASLt chooses it, is restricted to reducing partial sums in fp32 (never in the
// output type: bf16 partial sums would lose the fp32 accumulation). For a fixed shape and pointer
// alignment the algorithm is fixed (cached), so repeated calls give bitwise-identical results.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

struct GemmArgs {
  const __nv_bfloat16* a = nullptr;  // [m][lda]
  const __nv_bfloat16* w = nullptr;  // [n][k], dense
  void* c = nullptr;                 // [m][ldc] of c_dtype
  DType c_dtype = DType::kBF16;      // kBF16 or kF32
  int m = 0;                         // 0 is a no-op (an empty batch)
  int n = 0;
  int k = 0;
  int64_t lda = 0;          // elements; 0 means k
  int64_t ldc = 0;          // elements; 0 means n
  bool accumulate = false;  // C = A·W^T + C (beta = 1), e.g. adding into the residual stream
};

// Owns the cuBLASLt handle, a workspace (32 MiB by default) and the algorithm chosen for each
// (shape, dtype, alignment). One instance per stream: concurrent calls on different streams
// would share the workspace. Plan lookup is thread-safe; enqueuing is host-only work that can be
// captured in a CUDA graph once the shape has been seen (the first call of a shape queries the
// heuristic, which does not touch the GPU).
class Gemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  explicit Gemm(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Throws sagellm::Error on bad arguments or when cuBLASLt has no algorithm for the case.
  void run(const GemmArgs& args, cudaStream_t stream);

  void linear(const __nv_bfloat16* a, const __nv_bfloat16* w, __nv_bfloat16* c, int m, int n, int k,
              cudaStream_t stream, bool accumulate = false);
  void linear(const __nv_bfloat16* a, const __nv_bfloat16* w, float* c, int m, int n, int k,
              cudaStream_t stream, bool accumulate = false);

  // act = silu(gate) * up (gpu::silu_mul) of [gate | up] = A · W^T, with W = [gate; up] of
  // 2 * inter rows. On the GEMV path one pass over W writes act directly (the same bits as the
  // two steps, one launch fewer per layer); otherwise the GEMM writes gate_up ([m][2 * inter])
  // and silu_mul reads it.
  void linear_swiglu(const __nv_bfloat16* a, const __nv_bfloat16* w, __nv_bfloat16* gate_up,
                     __nv_bfloat16* act, int m, int inter, int k, cudaStream_t stream);

  // The QKV projection of rows whose q, k and v heads are rp's q, rp's k and kw's v, in that order
  // in each row of qkv (n = (q_heads + 2 * kv_heads) * head_dim, row stride n), followed by
  // rope_kv_write(rp, kw). On the GEMV path RoPE and the cache write run in its epilogue (the
  // same bits, one launch fewer per layer); otherwise linear() and then rope_kv_write().
  void linear_rope_kv_write(const __nv_bfloat16* a, const __nv_bfloat16* w, __nv_bfloat16* qkv,
                            int m, int k, const RopeParams& rp, const KVCacheWriteParams& kw,
                            cudaStream_t stream);

  size_t workspace_bytes() const;
  size_t cached_plans() const;

  // For M <= 4 (decode) run() uses sagellm's GEMV kernel, which reads W at close to full
  // bandwidth and gives each row of C the same bits whatever M is; off, cuBLASLt runs every case
  // (for comparisons).
  void set_small_m_kernel(bool on) { use_gemv_ = on; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool use_gemv_ = true;
};

}  // namespace sagellm::gpu
