// Tensor parallelism on the GPU: the NCCL collectives, the forward pass's tensor-parallel path
// (a group of one, which every machine with one GPU runs), and --tp-size 2/4/8 against one rank
// where the machine has that many GPUs. GPU machine only (label gpu); NCCL is loaded at run time,
// from SAGELLM_NCCL_LIBRARY or libnccl.so.2 on the library path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention/cuda_attention.h"
#include "common/fixtures.h"
#include "core/cuda_check.h"
#include "core/cuda_device.h"
#include "core/device_buffer.h"
#include "core/dtype.h"
#include "core/error.h"
#include "engine/engine.h"
#include "kv_cache/kv_cache_cuda.h"
#include "model/llama_cuda.h"
#include "model/weight_source.h"
#include "parallel/nccl_group.h"
#include "parallel/tp_shard.h"

namespace sagellm {
namespace {

using testing::model_dir;

// A group over GPU 0, or the reason there is none (no GPU, or NCCL cannot be loaded).
std::unique_ptr<NcclGroup> one_gpu_group(std::string* why) {
  if (cuda_device_count() == 0) {
    *why = "no CUDA GPU present";
    return nullptr;
  }
  try {
    return std::make_unique<NcclGroup>(std::vector<int>{0});
  } catch (const Error& e) {
    *why = e.what();
    return nullptr;
  }
}

TEST(NcclGroup, OneRankCollectivesDirectAndInACudaGraph) {
  std::string why;
  const std::unique_ptr<NcclGroup> group = one_gpu_group(&why);
  if (!group) GTEST_SKIP() << why;
  EXPECT_EQ(group->size(), 1);
  std::printf("NCCL %s\n", group->version().c_str());
  SAGELLM_CUDA_CHECK(cudaSetDevice(0));
  std::mt19937 rng(5);
  std::vector<uint16_t> bits(4096);
  for (uint16_t& b : bits) b = float_to_bf16(std::normal_distribution<float>(0.f, 3.f)(rng));
  std::vector<float> values(1000);
  for (float& v : values) v = std::normal_distribution<float>(0.f, 1.f)(rng);
  DeviceBuffer<uint16_t> buf = DeviceBuffer<uint16_t>::from_host(bits);
  DeviceBuffer<float> in = DeviceBuffer<float>::from_host(values);
  DeviceBuffer<float> out(values.size());
  cudaStream_t s = nullptr;
  SAGELLM_CUDA_CHECK(cudaStreamCreate(&s));
  for (int graph = 0; graph < 2; ++graph) {
    SCOPED_TRACE(graph);
    std::vector<float> zeros(values.size(), 0.f);
    out.upload(zeros);
    if (graph == 1) {
      cudaGraph_t g = nullptr;
      cudaGraphExec_t exec = nullptr;
      SAGELLM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      group->all_reduce_sum_bf16(0, buf.data(), bits.size(), s);
      group->all_gather_f32(0, in.data(), out.data(), values.size(), s);
      SAGELLM_CUDA_CHECK(cudaStreamEndCapture(s, &g));
      SAGELLM_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
      SAGELLM_CUDA_CHECK(cudaGraphLaunch(exec, s));
      SAGELLM_CUDA_CHECK(cudaStreamSynchronize(s));
      SAGELLM_CUDA_CHECK(cudaGraphExecDestroy(exec));
      SAGELLM_CUDA_CHECK(cudaGraphDestroy(g));
    } else {
      group->all_reduce_sum_bf16(0, buf.data(), bits.size(), s);
      group->all_gather_f32(0, in.data(), out.data(), values.size(), s);
      SAGELLM_CUDA_CHECK(cudaStreamSynchronize(s));
    }
    EXPECT_EQ(buf.to_host(), bits);  // a sum over one rank is the rank's own values
    EXPECT_EQ(out.to_host(), values);
  }
  SAGELLM_CUDA_CHECK(cudaStreamDestroy(s));
}

// Logits of a prefill (every row) and of decode steps (replayed from CUDA graphs after the first
// of each shape) from `model` over a fresh cache.
std::vector<float> run_steps(LlamaCudaModel& model, KVCacheDType dtype, const std::string& backend,
                             const std::vector<int32_t>& prompt, int decode_steps) {
  const io::ModelConfig& c = model.config();
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_size = 64;
  s.num_pages = 32;
  GpuKVCache cache(s, dtype, dtype == KVCacheDType::kInt8 ? 8 : 0);
  AttentionOptions ao;
  const std::unique_ptr<CudaAttention> attention = make_cuda_attention(backend, ao);
  AttentionSeq seq{0, static_cast<int>(prompt.size()), static_cast<int>(prompt.size()), {}};
  auto grow = [&](int kv_len) {
    while (static_cast<int>(seq.pages.size()) * s.page_size < kv_len) {
      seq.pages.push_back(*cache.allocate());
    }
  };
  grow(seq.kv_len);
  ForwardBatch b;
  b.tokens = prompt;
  b.logits_mode = LogitsMode::kAll;
  b.attention.seqs = {seq};
  std::vector<float> all = model.forward(b, cache, *attention);
  const int vocab = c.vocab_size;
  for (int i = 0; i < decode_steps; ++i) {
    const float* last = all.data() + all.size() - static_cast<size_t>(vocab);
    const auto next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
    seq.q_start = 0;
    seq.q_len = 1;
    seq.kv_len += 1;
    grow(seq.kv_len);
    ForwardBatch d;
    d.tokens = {next};
    d.logits_mode = LogitsMode::kLastPerSeq;
    d.attention.seqs = {seq};
    const std::vector<float> l = model.forward(d, cache, *attention);
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

TEST(TensorParallelCuda, AGroupOfOneComputesThePlainModelsBits) {
  std::string why;
  const std::unique_ptr<NcclGroup> group = one_gpu_group(&why);
  if (!group) GTEST_SKIP() << why;
  SAGELLM_CUDA_CHECK(cudaSetDevice(0));
  for (const char* name : {"stories260K", "llama31-tiny-random"}) {
    const auto weights = checkpoint_weights(model_dir(name));
    std::vector<int32_t> prompt(150);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = 1 + static_cast<int32_t>(i * 53 % 500);
    for (const char* backend : {"flash", "sage_attn"}) {
      SCOPED_TRACE(std::string(name) + " " + backend);
      const KVCacheDType dtype =
          std::string(backend) == "flash" ? KVCacheDType::kFloat : KVCacheDType::kInt8;
      LlamaCudaModel plain(*weights, 256);
      LlamaCudaModel grouped(*weights, 256, tp_shard(weights->config(), 0, 1), group.get());
      const std::vector<float> a = run_steps(plain, dtype, backend, prompt, 20);
      const std::vector<float> b = run_steps(grouped, dtype, backend, prompt, 20);
      EXPECT_GE(grouped.cuda_graphs_captured(), 1u);
      ASSERT_EQ(a.size(), b.size());
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
    }
  }
}

TEST(TensorParallelCuda, MoreRanksThanGpusIsOneClearError) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU present";
  EngineOptions o;
  o.model_dir = model_dir("stories260K");
  o.device = "cuda";
  o.tp_size = cuda_device_count() * 2;
  try {
    Engine e(o);
    ADD_FAILURE() << "accepted --tp-size " << o.tp_size;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GPUs"), std::string::npos) << e.what();
  }
}

// Mean KL(ref || got) per row and the fraction of rows with the same argmax.
std::pair<double, double> kl_and_top1(const std::vector<float>& ref, const std::vector<float>& got,
                                      size_t vocab) {
  const size_t rows = ref.size() / vocab;
  double kl_sum = 0;
  size_t same = 0;
  for (size_t r = 0; r < rows; ++r) {
    const float* a = ref.data() + r * vocab;
    const float* b = got.data() + r * vocab;
    const double ma = *std::max_element(a, a + vocab), mb = *std::max_element(b, b + vocab);
    double za = 0, zb = 0;
    for (size_t i = 0; i < vocab; ++i) {
      za += std::exp(a[i] - ma);
      zb += std::exp(b[i] - mb);
    }
    for (size_t i = 0; i < vocab; ++i) {
      const double la = a[i] - ma - std::log(za), lb = b[i] - mb - std::log(zb);
      kl_sum += std::exp(la) * (la - lb);
    }
    same += std::max_element(a, a + vocab) - a == std::max_element(b, b + vocab) - b;
  }
  return {kl_sum / static_cast<double>(rows), static_cast<double>(same) / rows};
}

// --tp-size N on N GPUs against one GPU, within bf16 tolerance: the ranks' partial sums are
// rounded to bf16 before NCCL adds them, where one GPU rounds the whole sum once.
TEST(TensorParallelCuda, RanksOverSeveralGpusMatchOneGpu) {
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << gpus << " GPU(s): --tp-size 2 and up need at least 2";
  for (const char* name : {"stories260K", "llama31-tiny-random", "llama-3.1-8b-shape"}) {
    EngineOptions o;
    o.model_dir = model_dir(name);
    o.device = "cuda";
    o.kv_cache_tokens = 8192;  // small caches: both engines hold GPU 0
    if (std::string(name) == "llama-3.1-8b-shape") o.load_format = "dummy";
    Engine one(o);
    std::vector<int32_t> ids(300);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = 1 + static_cast<int32_t>(i * 37 % 500);
    const std::vector<float> ref = one.score(ids);
    for (int tp = 2; tp <= gpus; tp *= 2) {
      if (!tp_unsupported_reason(one.config(), tp).empty()) continue;
      SCOPED_TRACE(std::string(name) + " tp " + std::to_string(tp));
      EngineOptions ot = o;
      ot.tp_size = tp;
      Engine many(ot);
      const auto [kl, top1] = kl_and_top1(ref, many.score(ids), one.config().vocab_size);
      std::printf("%s tp %d vs 1: mean KL %.3g, same top-1 %.4f\n", name, tp, kl, top1);
      EXPECT_LT(kl, 2e-3);
      EXPECT_GE(top1, 0.97);
    }
  }
}

}  // namespace
}  // namespace sagellm
