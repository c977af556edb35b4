#include "eval/validate/step_runner.h"

#include <random>

#include "core/error.h"

namespace sagellm::eval::validate {

namespace {

KVCacheShape shape_for(const LlamaModel& model, int page_size, int64_t capacity_tokens) {
  const io::ModelConfig& c = model.config();
  KVCacheShape s;
  s.num_layers = c.num_layers;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.page_size = page_size;
  s.num_pages = static_cast<int>((capacity_tokens + page_size - 1) / page_size);
  return s;
}

}  // namespace

StepRunner::StepRunner(const LlamaModel& model, const AttentionBackend& attention,
                       KVCacheDType dtype, int page_size, int64_t capacity_tokens)
    : model_(model),
      attention_(attention),
      cache_(shape_for(model, page_size, capacity_tokens), dtype) {}

int StepRunner::add_request() {
  requests_.emplace_back();
  return static_cast<int>(requests_.size()) - 1;
}

void StepRunner::reserve(Request& r, int64_t tokens) {
  const int page_size = cache_.shape().page_size;
  while (static_cast<int64_t>(r.pages.size()) * page_size < tokens) {
    std::optional<int> p = cache_.allocate();
    SAGELLM_CHECK(p.has_value(), "validate: the measurement cache of {} pages is full",
                  cache_.shape().num_pages);
    r.pages.push_back(*p);
  }
}

std::vector<float> StepRunner::step(const std::vector<Part>& parts, LogitsMode mode) {
  ForwardBatch b;
  b.logits_mode = mode;
  for (const Part& p : parts) {
    Request& r = requests_.at(static_cast<size_t>(p.request));
    reserve(r, r.kv_len + static_cast<int64_t>(p.tokens.size()));
    r.kv_len += static_cast<int>(p.tokens.size());
    b.attention.seqs.push_back(AttentionSeq{static_cast<int>(b.tokens.size()),
                                            static_cast<int>(p.tokens.size()), r.kv_len, r.pages});
    b.tokens.insert(b.tokens.end(), p.tokens.begin(), p.tokens.end());
  }
  return model_.forward(b, cache_, attention_);
}

void StepRunner::fill_random(int request, int64_t tokens, uint64_t seed) {
  Request& r = requests_.at(static_cast<size_t>(request));
  reserve(r, r.kv_len + tokens);
  const KVCacheShape& s = cache_.shape();
  const size_t width = static_cast<size_t>(s.num_kv_heads) * s.head_dim;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> k(width), v(width);
  for (int64_t t = 0; t < tokens; ++t) {
    const int pos = r.kv_len + static_cast<int>(t);
    for (int layer = 0; layer < s.num_layers; ++layer) {
      for (size_t i = 0; i < width; ++i) {
        k[i] = normal(rng);
        v[i] = normal(rng);
      }
      cache_.write(layer, r.pages[static_cast<size_t>(pos / s.page_size)], pos % s.page_size,
                   k.data(), v.data());
    }
  }
  r.kv_len += static_cast<int>(tokens);
}

}  // namespace sagellm::eval::validate
