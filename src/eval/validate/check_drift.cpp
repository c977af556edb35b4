// Check 6: activation drift (per layer, candidate against baseline on the same input tokens) and
// determinism (identical reruns, and a request alone against the same request inside a batch),
// kept apart: drift compares two backends, determinism compares a backend with itself.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/logging.h"
#include "eval/validate/session.h"
#include "eval/validate/step_runner.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

struct Activations {
  std::vector<std::vector<float>> hidden, attn;  // [layer][rows * width], rows in input order
};

Activations capture(Engine& e, std::span<const int32_t> ids) {
  Activations a;
  const size_t layers = static_cast<size_t>(e.config().num_layers);
  a.hidden.resize(layers);
  a.attn.resize(layers);
  e.score(ids, [&](const LayerActivations& l) {
    auto& h = a.hidden.at(static_cast<size_t>(l.layer));
    auto& at = a.attn.at(static_cast<size_t>(l.layer));
    h.insert(h.end(), l.hidden.begin(), l.hidden.end());
    at.insert(at.end(), l.attn_out.begin(), l.attn_out.end());
  });
  return a;
}

struct Drift {
  double cosine = 0, rel_l2 = 0, max_abs = 0;
};

// Cosine similarity and relative L2 error of `test` against `ref`, in double precision.
Drift drift(const std::vector<float>& ref, const std::vector<float>& test) {
  double dot = 0, rr = 0, tt = 0, dd = 0, mx = 0;
  const size_t n = std::min(ref.size(), test.size());
  for (size_t i = 0; i < n; ++i) {
    const double r = ref[i], t = test[i], d = t - r;
    dot += r * t;
    rr += r * r;
    tt += t * t;
    dd += d * d;
    mx = std::max(mx, std::abs(d));
  }
  Drift out;
  out.cosine = rr > 0 && tt > 0 ? dot / std::sqrt(rr * tt) : (rr == tt ? 1.0 : 0.0);
  out.rel_l2 = rr > 0 ? std::sqrt(dd / rr) : (dd == 0 ? 0.0 : INFINITY);
  out.max_abs = mx;
  return out;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

// The input of the drift and determinism measurements: BOS then the start of the first corpus
// (or of the long-context text), else seeded random ids.
std::vector<int32_t> input_tokens(const Session& s, json& source) {
  const int n = s.opt.drift_tokens;
  const int bos = s.base->config().bos_token_id;
  std::vector<int32_t> ids;
  if (bos >= 0) ids.push_back(bos);
  const Corpus* c = !s.corpora.empty()        ? &s.corpora[0]
                    : !s.long_corpora.empty() ? &s.long_corpora[0]
                                              : nullptr;
  if (c != nullptr) {
    source = c->path.string();
    for (size_t i = 0; static_cast<int>(ids.size()) < n && i < c->ids.size(); ++i) {
      ids.push_back(c->ids[i]);
    }
  } else {
    source = "seeded random token ids";
  }
  std::mt19937_64 rng(s.opt.seed);
  const int vocab = s.base->config().vocab_size;
  while (static_cast<int>(ids.size()) < n) {
    ids.push_back(static_cast<int32_t>(3 + rng() % static_cast<uint64_t>(vocab - 3)));
  }
  return ids;
}

GenerationRequest greedy(std::span<const int32_t> prompt, int tokens) {
  GenerationRequest r;
  r.prompt.assign(prompt.begin(), prompt.end());
  r.sampling.temperature = 0;
  r.sampling.max_tokens = tokens;
  r.sampling.ignore_eos = true;
  return r;
}

// Forwards to another backend and keeps every call's inputs and outputs, so a request's rows of a
// batched call can be recomputed with the request alone on exactly the same inputs.
class RecordingAttention final : public AttentionBackend {
 public:
  struct Call {
    AttentionShape shape;
    AttentionBatch batch;
    int layer = 0;
    std::vector<float> q, out;
  };
  explicit RecordingAttention(const AttentionBackend& inner) : inner_(inner) {}
  std::string_view name() const override { return inner_.name(); }
  KVCacheDType default_kv_cache_dtype() const override { return inner_.default_kv_cache_dtype(); }
  void forward(const AttentionShape& shape, const AttentionBatch& batch, const PagedKVCache& cache,
               int layer, const float* q, float* out) const override {
    inner_.forward(shape, batch, cache, layer, q, out);
    int rows = 0;
    for (const AttentionSeq& s : batch.seqs) rows += s.q_len;
    const size_t n = static_cast<size_t>(rows) * shape.num_heads * shape.head_dim;
    calls_.push_back(
        Call{shape, batch, layer, std::vector<float>(q, q + n), std::vector<float>(out, out + n)});
  }
  // Recomputes request `seq` of every recorded call alone; true when all rows are bitwise equal.
  // Must run before the cache changes (the next step may seal pages the calls read unsealed).
  bool alone_matches(const PagedKVCache& cache, size_t seq, double* max_diff) const {
    bool same = true;
    for (const Call& c : calls_) {
      const AttentionSeq& s = c.batch.seqs.at(seq);
      const size_t width = static_cast<size_t>(c.shape.num_heads) * c.shape.head_dim;
      AttentionBatch single;
      single.causal = c.batch.causal;
      single.seqs.push_back(AttentionSeq{0, s.q_len, s.kv_len, s.pages});
      std::vector<float> out(static_cast<size_t>(s.q_len) * width);
      inner_.forward(c.shape, single, cache, c.layer, c.q.data() + s.q_start * width, out.data());
      const std::vector<float> batched(
          c.out.begin() + static_cast<std::ptrdiff_t>(s.q_start * width),
          c.out.begin() + static_cast<std::ptrdiff_t>(s.q_start * width + out.size()));
      same = same && bitwise_equal(out, batched);
      *max_diff = std::max(*max_diff, max_abs_diff(out, batched));
    }
    calls_.clear();
    return same;
  }

 private:
  const AttentionBackend& inner_;
  mutable std::vector<Call> calls_;
};

// One request prefilled and decoded alone, and inside a varlen batch between two other requests
// of other lengths (one forward call each, unlike Engine::generate, which prefills requests one at
// a time). Compares the request's logits, and separately the attention backend's output for its
// rows recomputed alone on the batched call's exact inputs: the first is the whole model's batch
// invariance, the second the attention backend's own.
json batch_invariance(const Engine& e, std::span<const int32_t> prompt, uint64_t seed) {
  const int page = e.cache().shape().page_size;
  const int vocab = e.config().vocab_size;
  std::mt19937_64 rng(seed);
  auto random = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int32_t& t : v) t = static_cast<int32_t>(3 + rng() % static_cast<uint64_t>(vocab - 3));
    return v;
  };
  const std::vector<int32_t> before = random(37), after = random(page + 27);
  const std::vector<int32_t> next = {prompt[prompt.size() / 2]};
  const std::vector<int32_t> next_before = random(1), next_after = random(1);
  const int64_t cap = 4 * (static_cast<int64_t>(prompt.size() + after.size()) + 2 * page);

  StepRunner alone(e.model(), e.attention(), e.cache().dtype(), page, cap);
  const int a = alone.add_request();
  const std::vector<float> pre_alone = alone.step({{a, prompt}}, LogitsMode::kAll);
  const std::vector<float> dec_alone = alone.step({{a, next}}, LogitsMode::kAll);

  RecordingAttention rec(e.attention());
  StepRunner batch(e.model(), rec, e.cache().dtype(), page, cap);
  const int b0 = batch.add_request(), b1 = batch.add_request(), b2 = batch.add_request();
  double attn_pre_diff = 0, attn_dec_diff = 0;
  const std::vector<float> pre_batch =
      batch.step({{b0, before}, {b1, prompt}, {b2, after}}, LogitsMode::kAll);
  const bool attn_pre = rec.alone_matches(batch.cache(), 1, &attn_pre_diff);
  const std::vector<float> dec_batch =
      batch.step({{b0, next_before}, {b1, next}, {b2, next_after}}, LogitsMode::kAll);
  const bool attn_dec = rec.alone_matches(batch.cache(), 1, &attn_dec_diff);

  const size_t v = static_cast<size_t>(vocab);
  const std::vector<float> pre_rows(
      pre_batch.begin() + static_cast<std::ptrdiff_t>(before.size() * v),
      pre_batch.begin() + static_cast<std::ptrdiff_t>((before.size() + prompt.size()) * v));
  const std::vector<float> dec_row(dec_batch.begin() + static_cast<std::ptrdiff_t>(v),
                                   dec_batch.begin() + static_cast<std::ptrdiff_t>(2 * v));
  return {{"prompt_tokens", prompt.size()},
          {"other_requests_tokens", {before.size(), after.size()}},
          {"logits_prefill_identical", bitwise_equal(pre_alone, pre_rows)},
          {"logits_prefill_max_abs_diff", max_abs_diff(pre_alone, pre_rows)},
          {"logits_decode_identical", bitwise_equal(dec_alone, dec_row)},
          {"logits_decode_max_abs_diff", max_abs_diff(dec_alone, dec_row)},
          {"attention_prefill_identical", attn_pre},
          {"attention_prefill_max_abs_diff", attn_pre_diff},
          {"attention_decode_identical", attn_dec},
          {"attention_decode_max_abs_diff", attn_dec_diff}};
}

json determinism(Session& s, Engine& e, std::span<const int32_t> ids, Progress& progress) {
  const ValidateOptions& o = s.opt;
  json d;
  d["backend"] = std::string(e.attention().name());
  // Reruns of the same scoring: bitwise-identical logits.
  const std::vector<float> first = e.score(ids);
  int identical = 1;
  double worst = 0;
  for (int r = 1; r < o.determinism_runs; ++r) {
    const std::vector<float> again = e.score(ids);
    identical += bitwise_equal(first, again) ? 1 : 0;
    worst = std::max(worst, max_abs_diff(first, again));
  }
  progress.advance();
  d["logits_runs"] = o.determinism_runs;
  d["logits_identical_runs"] = identical;
  d["logits_max_abs_diff"] = worst;

  // Reruns of greedy generation (temperature 0): identical tokens.
  const size_t plen = std::min<size_t>(ids.size(), 32);
  const int gen =
      static_cast<int>(std::min<int64_t>(o.greedy_tokens, s.context - static_cast<int64_t>(plen)));
  const GenerationRequest req = greedy(ids.first(plen), gen);
  const std::vector<int32_t> ref = e.generate({req}).at(0).tokens;
  int gen_identical = 1;
  for (int r = 1; r < o.determinism_runs; ++r) {
    gen_identical += e.generate({req}).at(0).tokens == ref ? 1 : 0;
  }
  progress.advance();
  d["generation_runs"] = o.determinism_runs;
  d["generation_identical_runs"] = gen_identical;
  d["generation_tokens"] = ref.size();

  // The same request alone and inside a batch of others (different prompts and lengths).
  std::vector<GenerationRequest> batch;
  const size_t n = ids.size();
  batch.push_back(greedy(ids.subspan(n / 3, std::min<size_t>(n - n / 3, 17)), gen));
  batch.push_back(req);
  batch.push_back(greedy(ids.subspan(n / 2, std::min<size_t>(n - n / 2, 45)), gen));
  batch.push_back(greedy(ids.subspan(1, std::min<size_t>(n - 1, 9)), gen / 2 + 1));
  const std::vector<GenerationResult> br = e.generate(batch);
  d["batch_generation_identical"] = br.at(1).tokens == ref;
  d["batch_generation_requests"] = batch.size();
  if (o.engine.device == "cpu") {
    d["batch"] = batch_invariance(e, ids.first(std::min<size_t>(ids.size(), 150)), o.seed + 99);
  }
  progress.advance();
  return d;
}

}  // namespace

json check_drift(Session& s) {
  json out;
  json source;
  const std::vector<int32_t> ids = input_tokens(s, source);
  out["input"] = {{"source", source}, {"tokens", ids.size()}};
  Progress progress("drift and determinism", 8);
  const Activations a = capture(*s.base, ids);
  progress.advance();
  const Activations b = capture(*s.cand, ids);
  progress.advance();
  out["layers"] = json::array();
  for (size_t l = 0; l < a.hidden.size(); ++l) {
    const Drift h = drift(a.hidden[l], b.hidden[l]);
    const Drift at = drift(a.attn[l], b.attn[l]);
    out["layers"].push_back({{"layer", l},
                             {"hidden_cosine", h.cosine},
                             {"hidden_rel_l2", h.rel_l2},
                             {"hidden_max_abs_diff", h.max_abs},
                             {"attn_cosine", at.cosine},
                             {"attn_rel_l2", at.rel_l2},
                             {"attn_max_abs_diff", at.max_abs}});
  }
  out["what"] =
      "hidden: the residual stream after each layer; attn: the attention output before o_proj; "
      "candidate against baseline on the same input tokens (cosine similarity and relative L2 "
      "error over all tokens and channels of the layer)";
  out["determinism"] = {{"baseline", determinism(s, *s.base, ids, progress)},
                        {"candidate", determinism(s, *s.cand, ids, progress)}};
  progress.finish();
  return out;
}

}  // namespace sagellm::eval::validate
