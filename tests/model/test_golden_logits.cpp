// The CPU forward pass against logits computed by Hugging Face transformers (../shared/golden).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/backend.h"
#include "common/fixtures.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "kv_cache/kv_cache.h"
#include "model/llama.h"

namespace sagellm {
namespace {

using testing::model_dir;
using testing::shared_dir;

std::vector<int32_t> read_ids(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  EXPECT_EQ(e->dtype, DType::kI32);
  std::vector<int32_t> v(static_cast<size_t>(e->numel()));
  std::memcpy(v.data(), e->data, e->nbytes);
  return v;
}

std::vector<float> read_f32(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  EXPECT_EQ(e->dtype, DType::kF32);
  std::vector<float> v(static_cast<size_t>(e->numel()));
  std::memcpy(v.data(), e->data, e->nbytes);
  return v;
}

struct Runner {
  const LlamaModel& model;
  std::unique_ptr<AttentionBackend> attention;
  PagedKVCache cache;
  int page_size;

  Runner(const LlamaModel& m, const std::string& backend, int max_tokens, int page = 64)
      : model(m),
        attention(make_attention_backend(backend)),
        cache(KVCacheShape{m.config().num_layers, m.config().num_kv_heads, m.config().head_dim,
                           page, (max_tokens + page - 1) / page},
              attention->default_kv_cache_dtype()),
        page_size(page) {}

  // Logits of every position, prefilled `chunk` tokens per forward step.
  std::vector<float> all_logits(const std::vector<int32_t>& ids, int chunk) {
    const int n = static_cast<int>(ids.size());
    std::vector<int> pages;
    for (int i = 0; i < (n + page_size - 1) / page_size; ++i) pages.push_back(*cache.allocate());
    std::vector<float> out;
    for (int start = 0; start < n; start += chunk) {
      const int len = std::min(chunk, n - start);
      ForwardBatch b;
      b.tokens.assign(ids.begin() + start, ids.begin() + start + len);
      b.logits_mode = LogitsMode::kAll;
      b.attention.seqs.push_back(AttentionSeq{0, len, start + len, pages});
      std::vector<float> part = model.forward(b, cache, *attention);
      out.insert(out.end(), part.begin(), part.end());
    }
    for (int p : pages) cache.release(p);
    return out;
  }
};

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST(GoldenLogits, Stories260KAllPromptsWithin1e4) {
  const LlamaModel model = LlamaModel::load(model_dir("stories260K"));
  io::SafetensorsFile golden(shared_dir() / "golden/stories260K/golden.safetensors");
  for (const char* prompt : {"bos_only", "short", "medium", "long", "full_context"}) {
    const std::vector<int32_t> ids = read_ids(golden, std::string(prompt) + ".input_ids");
    const std::vector<float> want = read_f32(golden, std::string(prompt) + ".logits");
    Runner r(model, "flash", 512);
    const std::vector<float> got = r.all_logits(ids, 512);
    ASSERT_EQ(got.size(), want.size()) << prompt;
    const float err = max_abs_diff(got.data(), want.data(), got.size());
    std::printf("stories260K %-12s %4zu tokens: max |logit - golden| = %.3g\n", prompt, ids.size(),
                static_cast<double>(err));
    EXPECT_LE(err, 1e-4f) << prompt;
  }
}

TEST(GoldenLogits, ChunkedPrefillAndDecodeMatchOneShot) {
  const LlamaModel model = LlamaModel::load(model_dir("stories260K"));
  io::SafetensorsFile golden(shared_dir() / "golden/stories260K/golden.safetensors");
  const std::vector<int32_t> ids = read_ids(golden, "long.input_ids");
  const std::vector<float> want = read_f32(golden, "long.logits");
  for (int chunk : {1, 7, 64, 100}) {
    Runner r(model, "flash", 512, /*page=*/16);
    const std::vector<float> got = r.all_logits(ids, chunk);
    EXPECT_LE(max_abs_diff(got.data(), want.data(), got.size()), 1e-4f) << "chunk " << chunk;
  }
}

TEST(GoldenLogits, Llama31TinyRandomLongPositionsWithin1e3) {
  const LlamaModel model = LlamaModel::load(model_dir("llama31-tiny-random"));
  io::SafetensorsFile golden(shared_dir() / "golden/llama31-tiny-random/golden.safetensors");
  const std::vector<int32_t> ids = read_ids(golden, "input_ids");
  const std::vector<int32_t> positions = read_ids(golden, "positions");
  const std::vector<float> want = read_f32(golden, "logits");
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  Runner r(model, "flash", static_cast<int>(ids.size()));
  const std::vector<float> got = r.all_logits(ids, 2048);
  float worst = 0.0f;
  for (size_t i = 0; i < positions.size(); ++i) {
    const float err =
        max_abs_diff(&got[static_cast<size_t>(positions[i]) * vocab], &want[i * vocab], vocab);
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-3f) << "position " << positions[i];
  }
  std::printf("llama31-tiny-random: max |logit - golden| over 48 positions up to 8191 = %.3g\n",
              static_cast<double>(worst));
}

TEST(GoldenLogits, BatchedRequestsMatchAlone) {
  const LlamaModel model = LlamaModel::load(model_dir("stories260K"));
  io::SafetensorsFile golden(shared_dir() / "golden/stories260K/golden.safetensors");
  const std::vector<int32_t> a = read_ids(golden, "medium.input_ids");
  const std::vector<int32_t> b = read_ids(golden, "short.input_ids");
  for (const std::string backend : {"flash", "sage_attn"}) {
    Runner alone(model, backend, 512);
    const std::vector<float> la = alone.all_logits(a, 512);
    const std::vector<float> lb = alone.all_logits(b, 512);
    Runner r(model, backend, 512);
    std::vector<int> pa{*r.cache.allocate()}, pb{*r.cache.allocate()};
    ForwardBatch batch;
    batch.tokens = a;
    batch.tokens.insert(batch.tokens.end(), b.begin(), b.end());
    batch.logits_mode = LogitsMode::kAll;
    batch.attention.seqs.push_back(
        AttentionSeq{0, static_cast<int>(a.size()), static_cast<int>(a.size()), pa});
    batch.attention.seqs.push_back(AttentionSeq{
        static_cast<int>(a.size()), static_cast<int>(b.size()), static_cast<int>(b.size()), pb});
    const std::vector<float> both = model.forward(batch, r.cache, *r.attention);
    ASSERT_EQ(both.size(), la.size() + lb.size());
    // The GEMMs see a different M, so only float rounding may differ.
    EXPECT_LE(max_abs_diff(both.data(), la.data(), la.size()), 5e-5f) << backend;
    EXPECT_LE(max_abs_diff(both.data() + la.size(), lb.data(), lb.size()), 5e-5f) << backend;
  }
}

TEST(GoldenLogits, SageAttentionStaysCloseToGolden) {
  const LlamaModel model = LlamaModel::load(model_dir("stories260K"));
  io::SafetensorsFile golden(shared_dir() / "golden/stories260K/golden.safetensors");
  const std::vector<int32_t> ids = read_ids(golden, "full_context.input_ids");
  const std::vector<float> want = read_f32(golden, "full_context.logits");
  Runner r(model, "sage_attn", 512);
  const std::vector<float> got = r.all_logits(ids, 512);
  const size_t vocab = 512;
  size_t same_top1 = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const float* g = &got[t * vocab];
    const float* w = &want[t * vocab];
    same_top1 += std::max_element(g, g + vocab) - g == std::max_element(w, w + vocab) - w;
  }
  const double frac = static_cast<double>(same_top1) / static_cast<double>(ids.size());
  std::printf("sage_attn vs golden on full_context: same top-1 %.1f%%\n", 100 * frac);
  EXPECT_GE(frac, 0.95);
  EXPECT_GT(max_abs_diff(got.data(), want.data(), got.size()), 0.0f);  // it really is 8-bit
}

TEST(ModelLoad, RejectsTokenIdOutsideVocabulary) {
  const LlamaModel model = LlamaModel::load(model_dir("stories260K"));
  Runner r(model, "flash", 64);
  ForwardBatch b;
  b.tokens = {1, 512};
  b.attention.seqs.push_back(AttentionSeq{0, 2, 2, {*r.cache.allocate()}});
  try {
    model.forward(b, r.cache, *r.attention);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sagellm
