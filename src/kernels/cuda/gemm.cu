#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>

#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

// The largest power of two (at most 256) dividing the address: cuBLASLt assumes 256-byte aligned
// matrices unless told otherwise, and an algorithm that needs more than a pointer has must not
// be chosen for it.
uint32_t alignment_of(const void* p) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && addr % a != 0) a >>= 1;
  return a;
}

struct PlanKey {
  int m, n, k;
  int64_t lda, ldc;
  int c_dtype;
  bool accumulate;
  uint32_t align_a, align_w, align_c;

  auto tied() const {
    return std::tie(m, n, k, lda, ldc, c_dtype, accumulate, align_a, align_w, align_c);
  }
  bool operator<(const PlanKey& o) const { return tied() < o.tied(); }
};

// Descriptors of one GEMM case and the algorithm cuBLASLt's heuristic picked for it.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr;
  cublasLtMatrixLayout_t c_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c_layout != nullptr) (void)cublasLtMatrixLayoutDestroy(c_layout);
    if (a_layout != nullptr) (void)cublasLtMatrixLayoutDestroy(a_layout);
    if (w_layout != nullptr) (void)cublasLtMatrixLayoutDestroy(w_layout);
    if (desc != nullptr) (void)cublasLtMatmulDescDestroy(desc);
  }
};

struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  Preference() { SAGELLM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref)); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  ~Preference() { (void)cublasLtMatmulPreferenceDestroy(pref); }

  template <typename T>
  void set(cublasLtMatmulPreferenceAttributes_t attr, T value) {
    SAGELLM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
  }
};

const char* dtype_label(int c_dtype) {
  return c_dtype == static_cast<int>(DType::kF32) ? "fp32" : "bf16";
}

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer<uint8_t> workspace;
  mutable std::mutex mu;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;

  ~Impl() {
    plans.clear();
    if (handle != nullptr) (void)cublasLtDestroy(handle);
  }

  const Plan& plan(const PlanKey& key) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = plans.find(key);
    if (it != plans.end()) return *it->second;
    auto p = std::make_unique<Plan>();
    SAGELLM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // cuBLASLt is column-major: row-major C[m][n] is C^T (n x m), and C^T = W · A^T with W seen
    // as a k x n column-major matrix (transposed) and A as k x m (not transposed).
    const cublasOperation_t trans_w = CUBLAS_OP_T;
    const cublasOperation_t trans_a = CUBLAS_OP_N;
    SAGELLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                        &trans_w, sizeof(trans_w)));
    SAGELLM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                        &trans_a, sizeof(trans_a)));
    const cudaDataType_t c_type =
        key.c_dtype == static_cast<int>(DType::kF32) ? CUDA_R_32F : CUDA_R_16BF;
    SAGELLM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->w_layout, CUDA_R_16BF, key.k, key.n, key.k));
    SAGELLM_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p->a_layout, CUDA_R_16BF, key.k, key.m, key.lda));
    SAGELLM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c_layout, c_type, key.n, key.m, key.ldc));

    Preference pref;
    pref.set<uint64_t>(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace.bytes());
    // Split-K partial sums only in the compute type (fp32), never in bf16.
    pref.set<uint32_t>(CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                       CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    pref.set<uint32_t>(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_w);
    pref.set<uint32_t>(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
    pref.set<uint32_t>(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
    pref.set<uint32_t>(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_c);

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->w_layout, p->a_layout, p->c_layout,
                                       p->c_layout, pref.pref, 1, &result, &found);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && found == 0)) {
      ::sagellm::detail::throw_error(
          detail::concat("cuBLASLt has no algorithm for the bf16 GEMM m=", key.m, " n=", key.n,
                         " k=", key.k, " lda=", key.lda, " ldc=", key.ldc, " (output ",
                         dtype_label(key.c_dtype), ", pointer alignment A ", key.align_a, " W ",
                         key.align_w, " C ", key.align_c, " bytes)"));
    }
    SAGELLM_CUBLAS_CHECK(st);
    p->algo = result.algo;
    return *plans.emplace(key, std::move(p)).first->second;
  }
};

Gemm::Gemm(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  SAGELLM_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  impl_->workspace = DeviceBuffer<uint8_t>(workspace_bytes);
}

Gemm::~Gemm() = default;

size_t Gemm::workspace_bytes() const { return impl_->workspace.bytes(); }

size_t Gemm::cached_plans() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->plans.size();
}

void Gemm::run(const GemmArgs& args, cudaStream_t stream) {
  const int64_t lda = args.lda == 0 ? args.k : args.lda;
  const int64_t ldc = args.ldc == 0 ? args.n : args.ldc;
  SAGELLM_GPU_REQUIRE(args.m >= 0 && args.n > 0 && args.k > 0, "gemm: bad shape m=", args.m,
                      " n=", args.n, " k=", args.k);
  SAGELLM_GPU_REQUIRE(args.c_dtype == DType::kBF16 || args.c_dtype == DType::kF32,
                      "gemm: the output must be BF16 or F32 (got ", dtype_name(args.c_dtype), ")");
  SAGELLM_GPU_REQUIRE(lda >= args.k && ldc >= args.n, "gemm: leading dimensions lda=", lda,
                      " ldc=", ldc, " are smaller than k=", args.k, " / n=", args.n);
  if (args.m == 0) return;
  SAGELLM_GPU_REQUIRE(args.a != nullptr && args.w != nullptr && args.c != nullptr,
                      "gemm: null pointer");
  // Decode-sized M: the bandwidth-bound GEMV kernel, when it takes the case.
  GemvArgs gv;
  gv.a = args.a;
  gv.w = args.w;
  gv.c = args.c;
  gv.c_f32 = args.c_dtype == DType::kF32;
  gv.m = args.m;
  gv.n = args.n;
  gv.k = args.k;
  gv.lda = lda;
  gv.ldc = ldc;
  if (use_gemv_ && gemv_supports(gv, args.accumulate)) {
    SAGELLM_CUDA_CHECK(gemv_launch(gv, stream));
    return;
  }
  PlanKey key{args.m,
              args.n,
              args.k,
              lda,
              ldc,
              static_cast<int>(args.c_dtype),
              args.accumulate,
              alignment_of(args.a),
              alignment_of(args.w),
              alignment_of(args.c)};
  const Plan& plan = impl_->plan(key);
  const float alpha = 1.0f;
  const float beta = args.accumulate ? 1.0f : 0.0f;
  SAGELLM_CUBLAS_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &alpha, args.w, plan.w_layout,
                                      args.a, plan.a_layout, &beta, args.c, plan.c_layout, args.c,
                                      plan.c_layout, &plan.algo, impl_->workspace.data(),
                                      impl_->workspace.bytes(), stream));
}

void Gemm::linear(const __nv_bfloat16* a, const __nv_bfloat16* w, __nv_bfloat16* c, int m, int n,
                  int k, cudaStream_t stream, bool accumulate) {
  GemmArgs args;
  args.a = a;
  args.w = w;
  args.c = c;
  args.c_dtype = DType::kBF16;
  args.m = m;
  args.n = n;
  args.k = k;
  args.accumulate = accumulate;
  run(args, stream);
}

void Gemm::linear(const __nv_bfloat16* a, const __nv_bfloat16* w, float* c, int m, int n, int k,
                  cudaStream_t stream, bool accumulate) {
  GemmArgs args;
  args.a = a;
  args.w = w;
  args.c = c;
  args.c_dtype = DType::kF32;
  args.m = m;
  args.n = n;
  args.k = k;
  args.accumulate = accumulate;
  run(args, stream);
}

void Gemm::linear_swiglu(const __nv_bfloat16* a, const __nv_bfloat16* w, __nv_bfloat16* gate_up,
                         __nv_bfloat16* act, int m, int inter, int k, cudaStream_t stream) {
  SAGELLM_GPU_REQUIRE(m >= 0 && inter > 0 && k > 0, "gemm: bad SwiGLU shape m=", m,
                      " inter=", inter, " k=", k);
  if (m == 0) return;
  SAGELLM_GPU_REQUIRE(a != nullptr && w != nullptr && act != nullptr, "gemm: null pointer");
  GemvArgs gv;
  gv.a = a;
  gv.w = w;
  gv.c = act;
  gv.swiglu = true;
  gv.m = m;
  gv.n = inter;
  gv.k = k;
  gv.lda = k;
  gv.ldc = inter;
  if (use_gemv_ && gemv_supports(gv, false)) {
    SAGELLM_CUDA_CHECK(gemv_launch(gv, stream));
    return;
  }
  SAGELLM_GPU_REQUIRE(gate_up != nullptr, "gemm: null pointer");
  linear(a, w, gate_up, m, 2 * inter, k, stream);
  silu_mul(gate_up, act, m, inter, stream);
}

void Gemm::linear_rope_kv_write(const __nv_bfloat16* a, const __nv_bfloat16* w, __nv_bfloat16* qkv,
                                int m, int k, const RopeParams& rp, const KVCacheWriteParams& kw,
                                cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rp.q_heads + 2 * rp.k_heads) * rp.head_dim;
  SAGELLM_GPU_REQUIRE(m >= 0 && k > 0 && n > 0 && n <= int64_t{0x7fffffff},
                      "gemm: bad QKV shape m=", m, " n=", n, " k=", k);
  if (m == 0) return;
  RopeParams r = rp;
  KVCacheWriteParams c = kw;
  const int hd = rp.head_dim;
  // The epilogue writes the rotated heads into qkv's rows, so the rows RoPE and the cache write
  // read must be those rows.
  const bool fused_layout = rp.q == qkv && rp.k == qkv + static_cast<int64_t>(rp.q_heads) * hd &&
                            kw.v == rp.k + static_cast<int64_t>(rp.k_heads) * hd &&
                            rp.q_row_stride == n && rp.k_row_stride == n && kw.v_row_stride == n &&
                            rp.rows == m && kw.rows == m && kw.kv_heads == rp.k_heads;
  GemvArgs gv;
  gv.a = a;
  gv.w = w;
  gv.c = qkv;
  gv.rope = true;
  gv.m = m;
  gv.n = static_cast<int>(n);
  gv.k = k;
  gv.lda = k;
  gv.ldc = n;
  gv.rope_kv.q_heads = rp.q_heads;
  gv.rope_kv.kv_heads = rp.k_heads;
  gv.rope_kv.head_dim = hd;
  if (!(use_gemv_ && fused_layout && gemv_supports(gv, false))) {
    linear(a, w, qkv, m, static_cast<int>(n), k, stream);
    rope_kv_write(rp, kw, stream);
    return;
  }
  SAGELLM_GPU_REQUIRE(a != nullptr && w != nullptr, "gemm: null pointer");
  if (!rope_kv_write_prepare(r, c)) {  // nothing to rotate or cache
    linear(a, w, qkv, m, static_cast<int>(n), k, stream);
    return;
  }
  gv.rope_kv.inv_freq = r.inv_freq;
  gv.rope_kv.positions = r.positions;
  gv.rope_kv.k_cache = c.k_cache;
  gv.rope_kv.v_cache = c.v_cache;
  gv.rope_kv.pages = c.pages;
  gv.rope_kv.slots = c.slots;
  gv.rope_kv.page_size = c.page_size;
  gv.rope_kv.num_pages = c.num_pages;
  SAGELLM_CUDA_CHECK(gemv_launch(gv, stream));
}

}  // namespace sagellm::gpu
