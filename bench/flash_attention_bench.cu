// Kernel benchmark of the `flash` CUDA kernels.
//   prefill: B requests of N new tokens over N keys (empty prefix), H heads, head_dim D, causal and
//     not; TFLOP/s counted as 4*B*H*N^2*D (halved for causal), as FlashAttention reports it.
//   decode: B requests of one new token over N cached keys (GQA H/KVH); GB/s of K/V read.
// Times are the median of repeated launches measured with CUDA events, after warm-up, on random
// bf16 data (never zeros). Usage: flash_attention_bench [--quick | --variants]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "attention/flash/flash_cuda.h"
#include "attention/flash/flash_launch_sm90.cuh"
#include "attention/flash/flash_prefill_sm80.cuh"
#include "attention/flash/flash_prefill_sm90.cuh"

namespace {

#define BENCH_CHECK(expr)                                                \
  do {                                                                   \
    const cudaError_t err_ = (expr);                                     \
    if (err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(err_));                            \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

// Uniform-ish values in [-2, 2) from a hash of the index (no host generation for GBs of data).
__global__ void fill_random(__nv_bfloat16* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    x[i] = __float2bfloat16(static_cast<float>(h >> 8) * (4.0f / 16777216.0f) - 2.0f);
  }
}

template <typename T>
T* device_alloc(size_t n) {
  void* p = nullptr;
  BENCH_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <typename T>
T* upload(const std::vector<T>& h) {
  T* d = device_alloc<T>(h.size());
  if (!h.empty())
    BENCH_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

struct Case {
  int batch, heads, kv_heads, head_dim, q_len, kv_len;
  bool causal;
};

// Median milliseconds per call.
// Median milliseconds per call (events around each call) and, for decode, in *graph_ms the time
// per call of a CUDA graph of kGraphCalls calls (no host launch gaps: what a captured decode step
// sees).
constexpr int kGraphCalls = 20;

double run_case(const Case& c, int reps, double* flops_out, double* bytes_out, double* graph_ms) {
  using namespace sagellm;
  using namespace sagellm::flash_cuda;
  const int ps = 64;
  AttentionShape shape{c.heads, c.kv_heads, c.head_dim,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  AttentionBatch batch;
  batch.causal = c.causal;
  const int pages_per_seq = (c.kv_len + ps - 1) / ps;
  // Pages of different requests interleaved, as in a cache that has been in use.
  for (int b = 0; b < c.batch; ++b) {
    AttentionSeq s;
    s.q_start = b * c.q_len;
    s.q_len = c.q_len;
    s.kv_len = c.kv_len;
    for (int i = 0; i < pages_per_seq; ++i) s.pages.push_back(i * c.batch + b);
    batch.seqs.push_back(s);
  }
  const FlashPlan plan = select_flash_kernel(shape, batch, ps);
  if (!plan.supported()) {
    std::fprintf(stderr, "unsupported: %s\n", plan.unsupported_reason.c_str());
    std::exit(1);
  }
  FlashParams p = flash_params_for(plan);
  const size_t rows = static_cast<size_t>(c.batch) * c.q_len;
  const size_t qn = rows * c.heads * c.head_dim;
  const size_t pool = static_cast<size_t>(pages_per_seq) * c.batch * c.kv_heads * ps * c.head_dim;
  auto* q = device_alloc<__nv_bfloat16>(qn);
  auto* o = device_alloc<__nv_bfloat16>(qn);
  auto* k = device_alloc<__nv_bfloat16>(pool);
  auto* v = device_alloc<__nv_bfloat16>(pool);
  fill_random<<<1024, 256>>>(q, qn, 1);
  fill_random<<<1024, 256>>>(k, pool, 2);
  fill_random<<<1024, 256>>>(v, pool, 3);
  BENCH_CHECK(cudaGetLastError());
  int stride = 0;
  int32_t* table = upload(flash_block_table(batch, ps, &stride));
  int32_t* cu = upload(flash_cu_seqlens_q(batch));
  int32_t* kv = upload(flash_kv_lens(batch));
  int32_t* offsets = upload(plan.split_offsets);
  float* acc = device_alloc<float>(static_cast<size_t>(plan.split_acc_floats()));
  float* ml = device_alloc<float>(static_cast<size_t>(plan.split_ml_floats()));
  p.q = q;
  p.o = o;
  p.k_pages = k;
  p.v_pages = v;
  p.block_table = table;
  p.block_table_stride = stride;
  p.cu_seqlens_q = cu;
  p.kv_lens = kv;
  p.split_offsets = offsets;
  p.split_acc = acc;
  p.split_ml = ml;

  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) flash_attention_cuda(plan, p, nullptr);
  BENCH_CHECK(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK(cudaEventRecord(start));
    flash_attention_cuda(plan, p, nullptr);
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    float t = 0.0f;
    BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  *graph_ms = 0.0;
  if (c.q_len == 1) {
    cudaStream_t stream;
    BENCH_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    BENCH_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kGraphCalls; ++i) flash_attention_cuda(plan, p, stream);
    BENCH_CHECK(cudaStreamEndCapture(stream, &graph));
    BENCH_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    BENCH_CHECK(cudaGraphLaunch(exec, stream));
    BENCH_CHECK(cudaStreamSynchronize(stream));
    std::vector<float> gms;
    for (int i = 0; i < 5; ++i) {
      BENCH_CHECK(cudaEventRecord(start, stream));
      BENCH_CHECK(cudaGraphLaunch(exec, stream));
      BENCH_CHECK(cudaEventRecord(stop, stream));
      BENCH_CHECK(cudaEventSynchronize(stop));
      float t = 0.0f;
      BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
      gms.push_back(t / kGraphCalls);
    }
    std::sort(gms.begin(), gms.end());
    *graph_ms = gms[gms.size() / 2];
    BENCH_CHECK(cudaGraphExecDestroy(exec));
    BENCH_CHECK(cudaGraphDestroy(graph));
    BENCH_CHECK(cudaStreamDestroy(stream));
  }
  // Attention FLOPs as FlashAttention counts them: 2 products of 2*N*M*D each.
  double f = 4.0 * c.batch * c.heads * static_cast<double>(c.q_len) * c.kv_len * c.head_dim;
  if (c.causal && c.q_len == c.kv_len) f *= 0.5;
  *flops_out = f;
  *bytes_out = 2.0 * c.batch * c.kv_len * c.kv_heads * c.head_dim * 2.0 +
               2.0 * qn * 2.0;  // K and V once, q in, o out
  for (void* ptr : std::initializer_list<void*>{q, o, k, v, table, cu, kv, offsets, acc, ml}) {
    BENCH_CHECK(cudaFree(ptr));
  }
  BENCH_CHECK(cudaEventDestroy(start));
  BENCH_CHECK(cudaEventDestroy(stop));
  return ms[ms.size() / 2];
}

using LaunchFn = cudaError_t (*)(const sagellm::flash_cuda::FlashParams&, int, int, cudaStream_t);

template <class T>
cudaError_t launch_sm80(const sagellm::flash_cuda::FlashParams& p, int max_q_len, int /*pages*/,
                        cudaStream_t s) {
  const cudaError_t err =
      cudaFuncSetAttribute(sagellm::flash_cuda::sm80::flash_prefill_kernel<T>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((max_q_len + T::kBlockM - 1) / T::kBlockM, p.num_heads, p.num_seqs);
  sagellm::flash_cuda::sm80::flash_prefill_kernel<T><<<grid, T::kThreads, T::kSmemBytes, s>>>(p);
  return cudaGetLastError();
}

// Prefill kernel variants (sm_80 tile shapes, Hopper schedules) launched directly on one prefill
// problem: median ms, and whether the output is bitwise the library kernel's (same per-row
// arithmetic order) or how far it is from it.
void run_variant(const char* name, const Case& c, LaunchFn launch_fn) {
  using namespace sagellm;
  using namespace sagellm::flash_cuda;
  const int ps = 64;
  AttentionShape shape{c.heads, c.kv_heads, c.head_dim,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  AttentionBatch batch;
  batch.causal = c.causal;
  const int pages_per_seq = (c.kv_len + ps - 1) / ps;
  for (int b = 0; b < c.batch; ++b) {
    AttentionSeq s;
    s.q_start = b * c.q_len;
    s.q_len = c.q_len;
    s.kv_len = c.kv_len;
    for (int i = 0; i < pages_per_seq; ++i) s.pages.push_back(i * c.batch + b);
    batch.seqs.push_back(s);
  }
  const FlashPlan plan = select_flash_kernel(shape, batch, ps);
  FlashParams p = flash_params_for(plan);
  const size_t qn = static_cast<size_t>(c.batch) * c.q_len * c.heads * c.head_dim;
  const size_t pool = static_cast<size_t>(pages_per_seq) * c.batch * c.kv_heads * ps * c.head_dim;
  auto* q = device_alloc<__nv_bfloat16>(qn);
  auto* o = device_alloc<__nv_bfloat16>(qn);
  auto* o_ref = device_alloc<__nv_bfloat16>(qn);
  auto* k = device_alloc<__nv_bfloat16>(pool);
  auto* v = device_alloc<__nv_bfloat16>(pool);
  fill_random<<<1024, 256>>>(q, qn, 11);
  fill_random<<<1024, 256>>>(k, pool, 12);
  fill_random<<<1024, 256>>>(v, pool, 13);
  int stride = 0;
  int32_t* table = upload(flash_block_table(batch, ps, &stride));
  int32_t* cu = upload(flash_cu_seqlens_q(batch));
  int32_t* kv = upload(flash_kv_lens(batch));
  p.q = q;
  p.o = o_ref;
  p.k_pages = k;
  p.v_pages = v;
  p.block_table = table;
  p.block_table_stride = stride;
  p.cu_seqlens_q = cu;
  p.kv_lens = kv;
  flash_attention_cuda(plan, p, nullptr);
  p.o = o;
  const auto launch = [&] { BENCH_CHECK(launch_fn(p, c.q_len, plan.num_pages, nullptr)); };
  for (int i = 0; i < 3; ++i) launch();
  BENCH_CHECK(cudaGetLastError());
  BENCH_CHECK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < 10; ++i) {
    BENCH_CHECK(cudaEventRecord(start));
    launch();
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    float t = 0.0f;
    BENCH_CHECK(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  BENCH_CHECK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  std::vector<uint16_t> a(qn), b(qn);
  BENCH_CHECK(cudaMemcpy(a.data(), o, qn * 2, cudaMemcpyDeviceToHost));
  BENCH_CHECK(cudaMemcpy(b.data(), o_ref, qn * 2, cudaMemcpyDeviceToHost));
  const auto bf16_value = [](uint16_t bits) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return static_cast<double>(f);
  };
  double max_diff = 0.0;
  for (size_t i = 0; i < qn; ++i) {
    const double d = std::fabs(bf16_value(a[i]) - bf16_value(b[i]));
    max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
  }
  double f = 4.0 * c.batch * c.heads * static_cast<double>(c.q_len) * c.kv_len * c.head_dim;
  if (c.causal) f *= 0.5;
  std::printf("variant %-22s D%d N%d %-6s %9.4f ms %7.1f TFLOP/s  %s (max |diff| %.3g)\n", name,
              c.head_dim, c.q_len, c.causal ? "causal" : "full", ms[ms.size() / 2],
              f / ms[ms.size() / 2] * 1e-9, a == b ? "bitwise = library" : "differs from library",
              max_diff);
  std::fflush(stdout);
  for (void* ptr : std::initializer_list<void*>{q, o, o_ref, k, v, table, cu, kv}) {
    BENCH_CHECK(cudaFree(ptr));
  }
  BENCH_CHECK(cudaEventDestroy(start));
  BENCH_CHECK(cudaEventDestroy(stop));
}

void run_variants() {
  using sagellm::flash_cuda::sm80::PrefillTraits;
  namespace sm90 = sagellm::flash_cuda::sm90;
  const bool hopper = sm90::prefill_available();
  std::printf("library prefill kernel: %s\n", hopper ? "sm_90a wgmma" : "sm_80 mma.sync");
  for (bool causal : {false, true}) {
    for (int n : {4096, 8192, 16384}) {
      const Case c{4, 32, 32, 128, n, n, causal};
      run_variant("sm80 M128 4w x32", c, launch_sm80<PrefillTraits<128, 128, 2>>);
      if (!hopper) continue;
      run_variant("sm90 cp.async gather", c,
                  sm90::launch_prefill_variant<sm90::PrefillTraits<128, false>>);
      run_variant("sm90 TMA pages", c,
                  sm90::launch_prefill_variant<sm90::PrefillTraits<128, true>>);
    }
  }
  for (bool causal : {false, true}) {
    const Case c{4, 32, 32, 64, 8192, 8192, causal};
    run_variant("sm80 M128 8w x16", c, launch_sm80<PrefillTraits<64, 128, 1>>);
    if (!hopper) continue;
    run_variant("sm90 cp.async gather", c,
                sm90::launch_prefill_variant<sm90::PrefillTraits<64, false>>);
    run_variant("sm90 TMA pages", c, sm90::launch_prefill_variant<sm90::PrefillTraits<64, true>>);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  if (argc > 1 && std::strcmp(argv[1], "--variants") == 0) {
    run_variants();
    return 0;
  }
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  std::printf("%-8s %3s %4s %4s %4s %6s %6s %-6s %10s %10s %9s %10s %9s\n", "kind", "B", "H", "KVH",
              "D", "q_len", "kv_len", "mask", "ms", "TFLOP/s", "GB/s", "graph ms", "GB/s");
  std::vector<Case> cases;
  for (int n : {4096, 8192, 16384}) {
    for (bool causal : {false, true}) cases.push_back({4, 32, 32, 128, n, n, causal});
  }
  for (int n : {4096, 8192}) cases.push_back({4, 32, 32, 64, n, n, true});
  for (int b : {1, 16, 64}) {
    for (int n : {1024, 4096, 16384}) cases.push_back({b, 32, 8, 128, 1, n, true});
  }
  if (quick) cases.resize(2);
  for (const Case& c : cases) {
    double flops = 0.0, bytes = 0.0, graph_ms = 0.0;
    const double ms = run_case(c, c.q_len == 1 ? 50 : 10, &flops, &bytes, &graph_ms);
    std::printf("%-8s %3d %4d %4d %4d %6d %6d %-6s %10.4f %10.1f %9.1f %10.4f %9.1f\n",
                c.q_len == 1 ? "decode" : "prefill", c.batch, c.heads, c.kv_heads, c.head_dim,
                c.q_len, c.kv_len, c.causal ? "causal" : "full", ms, flops / ms * 1e-9,
                bytes / ms * 1e-6, graph_ms, graph_ms > 0.0 ? bytes / graph_ms * 1e-6 : 0.0);
    std::fflush(stdout);
  }
  return 0;
}
