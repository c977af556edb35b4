// Token sampling. Every step is defined so that a seed gives the same tokens on every platform:
// the uniform is built from raw generator bits, every filter keeps a prefix of one strict total
// order (logit descending, id ascending), and the candidates are only ever rearranged by this
// file's own selection code, so sums add the same numbers in the same order everywhere.
#include "engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "core/error.h"

namespace sagellm {
namespace {

using Candidate = std::pair<float, int32_t>;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Rank of a candidate as one integer: a larger key ranks first (sampling::rank_key, the GPU's
// too: the float's bits in an unsigned order-preserving form above the inverted id, so the lower
// id wins ties). This strict total order (ids are unique) is what every filter and the draw use,
// and comparing one integer keeps the selection loops free of unpredictable branches.
uint64_t rank_key(const Candidate& c) { return sampling::rank_key(c.first, c.second); }

bool ranks_before(const Candidate& a, const Candidate& b) { return rank_key(a) > rank_key(b); }

// std::uniform_real_distribution is implementation-defined; 53 raw bits scaled by 2^-53 are not.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

uint64_t seed_from_device() {
  std::random_device rd;
  const uint64_t hi = rd();
  return (hi << 32) ^ rd();
}

// Deterministic pivots for the selections below, so every platform rearranges the candidates the
// same way and all later sums run in the same order.
class PivotSource {
 public:
  size_t pick(size_t lo, size_t hi) {
    state_ += 0x9E3779B97F4A7C15ull;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return lo + static_cast<size_t>(z % (hi - lo));
  }

 private:
  uint64_t state_ = 0;
};

// Candidates [lo, hi) rearranged in place by this file's own code (std::nth_element and
// std::partition leave implementation-defined orders, which would change summation order and so,
// rarely, a draw).
class Candidates {
 public:
  Candidates(std::vector<Candidate>& c, const std::vector<double>& weight) : c_(c), w_(weight) {}

  double weight(size_t i) const { return w_[static_cast<size_t>(c_[i].second)]; }

  double sum(size_t lo, size_t hi) const {
    double s = 0.0;
    for (size_t i = lo; i < hi; ++i) s += weight(i);
    return s;
  }

  // Moves the k highest-ranked of [0, m) to the front (in no particular order).
  void select_top(size_t m, size_t k) {
    size_t lo = 0, hi = m;
    for (int round = 0; hi - lo > kSmall; ++round) {
      if (round == kMaxRounds) break;
      const size_t p = partition(lo, hi);
      if (p == k || p + 1 == k) return;
      if (p > k) {
        hi = p;
      } else {
        lo = p + 1;
      }
    }
    sort(lo, hi);
  }

  // Finds the first candidate in rank order at which the running weight of [0, m) exceeds
  // `target` (or reaches it, when `inclusive`). On return the candidates ranked before it occupy
  // [0, position). Returns m when the running weight never gets there (rounding).
  size_t select_mass(size_t m, double target, bool inclusive) {
    auto crosses = [&](double mass) { return inclusive ? mass >= target : mass > target; };
    size_t lo = 0, hi = m;
    double before = 0.0;  // weight of [0, lo)
    for (int round = 0; hi - lo > kSmall && round < kMaxRounds; ++round) {
      const size_t p = partition(lo, hi);
      const double above = before + sum(lo, p);
      if (crosses(above)) {
        hi = p;
        continue;
      }
      before = above + weight(p);
      if (crosses(before)) return p;
      lo = p + 1;
    }
    sort(lo, hi);
    for (size_t i = lo; i < hi; ++i) {
      before += weight(i);
      if (crosses(before)) return i;
    }
    return m;
  }

  // Moves the candidates of [0, m) that satisfy `keep` to the front; returns how many there are.
  template <typename Keep>
  size_t keep_front(size_t m, Keep keep) {
    size_t n = 0;
    for (size_t i = 0; i < m; ++i) {
      if (keep(i)) std::swap(c_[n++], c_[i]);
    }
    return n;
  }

 private:
  static constexpr size_t kSmall = 32;
  static constexpr int kMaxRounds = 64;  // beyond this, pivots are pathological: just sort

  void sort(size_t lo, size_t hi) {
    std::sort(c_.begin() + static_cast<std::ptrdiff_t>(lo),
              c_.begin() + static_cast<std::ptrdiff_t>(hi), ranks_before);
  }

  // Median-of-three pivot; afterwards [lo, p) rank before c_[p] and (p, hi) after it.
  size_t partition(size_t lo, size_t hi) {
    size_t a = pivots_.pick(lo, hi), b = pivots_.pick(lo, hi), c = pivots_.pick(lo, hi);
    if (ranks_before(c_[b], c_[a])) std::swap(a, b);
    if (ranks_before(c_[c], c_[b])) b = ranks_before(c_[c], c_[a]) ? a : c;
    std::swap(c_[b], c_[hi - 1]);
    const uint64_t pivot = rank_key(c_[hi - 1]);
    size_t store = lo;
    for (size_t i = lo; i + 1 < hi; ++i) {
      const bool before = rank_key(c_[i]) > pivot;
      std::swap(c_[store], c_[i]);  // unconditional: cheaper than a mispredicted branch
      store += before ? 1 : 0;
    }
    std::swap(c_[store], c_[hi - 1]);
    return store;
  }

  std::vector<Candidate>& c_;
  const std::vector<double>& w_;
  PivotSource pivots_;
};

// The argmax (lowest id on ties, NaN as -inf), or -1 when every logit is -inf or NaN.
int32_t argmax_or_none(std::span<const float> logits) {
  int32_t best = -1;
  float best_value = -kInf;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float v = logits[i];
    if (!(v > -kInf)) continue;  // NaN counts as -inf
    if (best < 0 || v > best_value) {
      best = static_cast<int32_t>(i);
      best_value = v;
    }
  }
  return best;
}

// One draw at temperature > 0; `uniform()` is called once, only when a token can be drawn, at
// the moment of the draw. Returns -1 when every logit is -inf or NaN.
template <typename Uniform>
int32_t draw(std::span<const float> logits, const sampling::DrawParams& d, Uniform&& uniform,
             SamplingScratch& scratch) {
  // Candidates: NaN and -inf can never be drawn. If some logits are +inf, those tokens take all
  // the mass in equal shares (the limit of the softmax).
  const size_t vocab = logits.size();
  bool any_pos_inf = false;
  float max_logit = -kInf;
  for (float v : logits) {
    if (v == kInf) {
      any_pos_inf = true;
    } else if (v > max_logit) {
      max_logit = v;
    }
  }
  std::vector<Candidate>& cands = scratch.candidates;
  std::vector<double>& weights = scratch.weights;
  cands.clear();
  if (any_pos_inf) {
    max_logit = 0.0f;
    for (size_t i = 0; i < vocab; ++i) {
      if (logits[i] == kInf) cands.emplace_back(0.0f, static_cast<int32_t>(i));
    }
  } else {
    if (!(max_logit > -kInf)) return -1;
    for (size_t i = 0; i < vocab; ++i) {
      // + 0.0f turns -0 into +0, so both zeros tie and the lower id wins as for any other tie.
      if (logits[i] > -kInf) cands.emplace_back(logits[i] + 0.0f, static_cast<int32_t>(i));
    }
  }

  Candidates cand(cands, weights);
  size_t m = cands.size();
  if (d.top_k > 0 && static_cast<size_t>(d.top_k) < m) {
    m = static_cast<size_t>(d.top_k);
    cand.select_top(cands.size(), m);
  }

  // Weights relative to the top token, so the top weight is exactly 1 and min-p compares weights
  // directly. The division happens in double, so a tiny temperature cannot overflow. Only the
  // candidates' entries are ever read, so the rest of the weights is left as it is.
  const double temperature = d.temperature;
  const double top = max_logit;
  weights.resize(vocab);
  for (size_t i = 0; i < m; ++i) {
    const Candidate& c = cands[i];
    weights[static_cast<size_t>(c.second)] =
        std::exp((static_cast<double>(c.first) - top) / temperature);
  }
  double total = cand.sum(0, m);

  if (d.top_p < 1.0f) {
    const size_t last = cand.select_mass(m, static_cast<double>(d.top_p) * total, true);
    if (last + 1 < m) {
      m = last + 1;
      total = cand.sum(0, m);
    }
  }

  if (d.min_p > 0.0f) {
    const double min_p = d.min_p;
    const size_t kept = cand.keep_front(m, [&](size_t i) { return cand.weight(i) >= min_p; });
    if (kept < m) {
      m = kept;
      total = cand.sum(0, m);
    }
  }

  // Inverse-CDF draw over the kept tokens in rank order; exactly one uniform per sample.
  const size_t chosen = cand.select_mass(m, uniform() * total, false);
  if (chosen < m) return cands[chosen].second;
  // Rounding left the running sum just short of the total: take the lowest-ranked token that has
  // mass, which is where the sequential walk would have stopped.
  std::optional<size_t> fallback;
  for (size_t i = 0; i < m; ++i) {
    if (cand.weight(i) > 0.0 && (!fallback || ranks_before(cands[*fallback], cands[i]))) {
      fallback = i;
    }
  }
  return cands[fallback.value_or(0)].second;
}

void check_row(std::span<const float> logits) {
  SAGELLM_CHECK(!logits.empty(), "sampling: the logits are empty");
  SAGELLM_CHECK(logits.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
                "sampling: {} logits exceed the int32 token id range", logits.size());
}

}  // namespace

void SamplingParams::validate() const {
  if (!std::isfinite(temperature)) {
    fail("temperature must be a finite number (got {})", temperature);
  }
  if (temperature < 0.0f) fail("temperature must be >= 0 (got {})", temperature);
  if (top_k < -1) fail("top_k must be -1 (disabled) or >= 0 (got {})", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1] (got {})", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1] (got {})", min_p);
  if (max_tokens < 0) fail("max_tokens must be >= 0 (got {})", max_tokens);
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) fail("stop[{}] must be a non-empty string", i);
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    if (stop_token_ids[i] < 0) {
      fail("stop_token_ids[{}] must be >= 0 (got {})", i, stop_token_ids[i]);
    }
  }
}

int32_t argmax(std::span<const float> logits) {
  SAGELLM_CHECK(!logits.empty(), "argmax: the logits are empty");
  const int32_t best = argmax_or_none(logits);
  if (best < 0) fail_no_token(0.0f, logits.size());
  return best;
}

void fail_no_token(float temperature, size_t vocab) {
  if (temperature == 0.0f) {
    fail("argmax: all {} logits are -inf or NaN; no token can be chosen", vocab);
  }
  fail("sampling: all {} logits are -inf or NaN; no token can be sampled", vocab);
}

sampling::DrawParams draw_params(const SamplingParams& p, double u) {
  sampling::DrawParams d;
  d.temperature = p.temperature;
  d.top_k = p.top_k;
  d.top_p = p.top_p;
  d.min_p = p.min_p;
  d.uniform = u;
  return d;
}

int32_t sample_with_uniform(std::span<const float> logits, const sampling::DrawParams& d,
                            SamplingScratch& scratch) {
  check_row(logits);
  if (!(d.temperature > 0.0f)) return argmax_or_none(logits);
  return draw(
      logits, d, [&] { return d.uniform; }, scratch);
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), rng_(params.seed ? *params.seed : seed_from_device()) {
  params_.validate();
}

double Sampler::next_uniform() { return params_.temperature > 0.0f ? uniform01(rng_) : 0.0; }

int32_t Sampler::sample(std::span<const float> logits) {
  check_row(logits);
  if (params_.temperature == 0.0f) return argmax(logits);
  const int32_t id = draw(
      logits, draw_params(params_, 0.0), [&] { return uniform01(rng_); }, scratch_);
  if (id < 0) fail_no_token(params_.temperature, logits.size());
  return id;
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  // An empty stop string would end every generation before it starts; validate() rejects it at the
  // API boundary and here it is simply ignored.
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string StopStringMatcher::feed(std::string_view text) {
  if (stopped_) return {};
  pending_.append(text);

  size_t earliest = std::string::npos;
  for (const std::string& s : stops_) {
    earliest = std::min(earliest, pending_.find(s));
  }
  if (earliest != std::string::npos) {
    std::string out = pending_.substr(0, earliest);
    pending_.clear();
    stopped_ = true;
    return out;
  }

  // Hold back the longest suffix that could still grow into a stop string. Text before it can
  // never become part of a match, because any match starting there would have needed a longer
  // such suffix.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    const size_t longest = std::min(s.size() - 1, pending_.size());
    for (size_t len = longest; len > hold; --len) {
      if (std::string_view(pending_).substr(pending_.size() - len) ==
          std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringMatcher::flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  return stopped_ ? std::string() : out;
}

}  // namespace sagellm
