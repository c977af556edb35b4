#include "engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "core/logging.h"

namespace sagellm {

struct Scheduler::Request {
  Request(uint64_t id_, RequestSpec spec_, const Tokenizer* tokenizer)
      : id(id_),
        spec(std::move(spec_)),
        tokens(spec.prompt),
        prompt_len(static_cast<int>(spec.prompt.size())),
        sampler(spec.sampling),
        matcher(spec.sampling.stop),
        arrival(Clock::now()) {
    if (tokenizer != nullptr) decoder = std::make_unique<IncrementalDecoder>(*tokenizer);
  }

  int remaining() const { return static_cast<int>(tokens.size()) - kv_len; }

  uint64_t id;
  RequestSpec spec;
  std::vector<int32_t> tokens;  // the prompt, then every accepted output token
  int prompt_len;
  int num_output = 0;
  std::vector<int> pages;      // block table
  int kv_len = 0;              // leading tokens whose K/V are in `pages`
  PrefixCache::Handle cached;  // pages[0, cached.depth) belong to the prefix cache
  Sampler sampler;
  StopStringMatcher matcher;
  std::unique_ptr<IncrementalDecoder> decoder;
  Clock::time_point arrival;
  std::optional<Clock::time_point> scheduled;
  int cached_tokens = 0;
  bool done = false;
};

namespace {

// Log-probabilities of the raw model distribution: the chosen token's and the k most likely.
TokenLogprobs logprobs_of(std::span<const float> row, int32_t chosen, int k) {
  double max_logit = -std::numeric_limits<double>::infinity();
  for (float v : row) {
    if (v > max_logit) max_logit = v;
  }
  double sum = 0.0;
  for (float v : row) {
    if (v > -std::numeric_limits<float>::infinity()) sum += std::exp(v - max_logit);
  }
  const double lse = max_logit + std::log(sum);
  auto lp = [&](int32_t id) {
    return static_cast<float>(static_cast<double>(row[static_cast<size_t>(id)]) - lse);
  };
  TokenLogprobs out;
  out.chosen = {chosen, lp(chosen)};
  if (k > 0) {
    std::vector<int32_t> ids(row.size());
    std::iota(ids.begin(), ids.end(), 0);
    const size_t n = std::min(ids.size(), static_cast<size_t>(k));
    auto before = [&](int32_t a, int32_t b) {
      const float la = row[static_cast<size_t>(a)], lb = row[static_cast<size_t>(b)];
      return la != lb ? la > lb : a < b;
    };
    std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n), ids.end(), before);
    for (size_t i = 0; i < n; ++i) out.top.push_back({ids[i], lp(ids[i])});
  }
  return out;
}

}  // namespace

Scheduler::Scheduler(Engine& engine, SchedulerOptions options)
    : engine_(engine), options_(options) {
  SAGELLM_CHECK(options_.max_running_requests >= 1, "--max-running-requests must be >= 1 (got {})",
                options_.max_running_requests);
  SAGELLM_CHECK(options_.chunked_prefill_size >= 1, "--chunked-prefill-size must be >= 1 (got {})",
                options_.chunked_prefill_size);
  if (options_.enable_prefix_cache) {
    prefix_cache_ = std::make_unique<PrefixCache>(engine_.page_size(),
                                                  [this](int page) { engine_.release_page(page); });
  }
  publish_stats();
}

Scheduler::~Scheduler() { shutdown(std::chrono::milliseconds(0)); }

uint64_t Scheduler::submit(RequestSpec spec) {
  spec.sampling.validate();
  const int64_t n = static_cast<int64_t>(spec.prompt.size());
  SAGELLM_CHECK(n > 0, "the prompt is empty");
  const int vocab = engine_.config().vocab_size;
  for (size_t i = 0; i < spec.prompt.size(); ++i) {
    SAGELLM_CHECK(spec.prompt[i] >= 0 && spec.prompt[i] < vocab,
                  "prompt token {} (at {}) is outside the vocabulary [0, {})", spec.prompt[i], i,
                  vocab);
  }
  SAGELLM_CHECK(n < engine_.context_length(),
                "the prompt has {} tokens; this model's context length is {} tokens, which must "
                "also hold at least one generated token",
                n, engine_.context_length());
  const int64_t pages = (n + 1 + engine_.page_size() - 1) / engine_.page_size();
  SAGELLM_CHECK(pages <= engine_.num_pages(),
                "the prompt has {} tokens, more than the KV cache holds ({} tokens)", n,
                static_cast<int64_t>(engine_.num_pages()) * engine_.page_size());
  SAGELLM_CHECK(spec.top_logprobs <= vocab, "top_logprobs must be at most the vocabulary size {}",
                vocab);
  const Tokenizer* tok = engine_.has_tokenizer() ? &engine_.tokenizer() : nullptr;
  std::lock_guard lock(mu_);
  if (!accepting_) throw SchedulerClosed("the server is shutting down");
  const uint64_t id = next_id_++;
  inbox_.push_back(std::make_unique<Request>(id, std::move(spec), tok));
  wake_.notify_one();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard lock(mu_);
  cancels_.push_back(id);
  wake_.notify_one();
}

void Scheduler::start() {
  std::lock_guard lock(mu_);
  if (!thread_.joinable() && !stopping_) thread_ = std::thread([this] { loop(); });
}

void Scheduler::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard lock(mu_);
    // Once stopped, the engine may be gone (a second shutdown comes from a destructor).
    if (stopped_) return;
    accepting_ = false;
    stopping_ = true;
    const auto d = Clock::now() + grace;
    if (!deadline_ || d < *deadline_) deadline_ = d;
    wake_.notify_all();
  }
  if (thread_.joinable()) {
    thread_.join();
  } else {
    run_until_idle();
  }
  std::lock_guard lock(mu_);
  stopped_ = true;
}

void Scheduler::run_until_idle() {
  while (step()) {
  }
}

void Scheduler::loop() {
  bool busy = false;
  while (true) {
    if (!busy) {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stopping_ || !inbox_.empty() || !cancels_.empty(); });
    }
    busy = step();
    std::lock_guard lock(mu_);
    if (stopping_ && !busy && inbox_.empty()) break;
  }
}

void Scheduler::drain_inbox() {
  std::vector<std::unique_ptr<Request>> incoming;
  std::vector<uint64_t> cancels;
  bool past_deadline = false;
  {
    std::lock_guard lock(mu_);
    incoming.swap(inbox_);
    cancels.swap(cancels_);
    past_deadline = deadline_ && Clock::now() >= *deadline_;
  }
  for (auto& r : incoming) {
    if (r->spec.sampling.max_tokens == 0) {
      r->scheduled = Clock::now();
      finish(*r, "length", {});
      continue;
    }
    waiting_.push_back(std::move(r));
  }
  for (uint64_t id : cancels) {
    auto by_id = [id](const std::unique_ptr<Request>& r) { return r->id == id; };
    if (auto it = std::find_if(waiting_.begin(), waiting_.end(), by_id); it != waiting_.end()) {
      finish(**it, "abort", {});
      waiting_.erase(it);
    } else if (auto jt = std::find_if(running_.begin(), running_.end(), by_id);
               jt != running_.end()) {
      finish(**jt, "abort", {});
      running_.erase(jt);
    }
  }
  if (past_deadline) abort_all("abort");
}

void Scheduler::abort_all(const char* reason) {
  for (auto& r : running_) finish(*r, reason, {});
  for (auto& r : waiting_) finish(*r, reason, {});
  running_.clear();
  waiting_.clear();
}

bool Scheduler::grow(Request& r, int kv_len, bool may_evict) {
  const int ps = engine_.page_size();
  const size_t need = static_cast<size_t>((kv_len + ps - 1) / ps);
  while (r.pages.size() < need) {
    std::optional<int> p = engine_.allocate_page();
    if (!p && may_evict && prefix_cache_ &&
        prefix_cache_->evict(static_cast<int>(need - r.pages.size())) > 0) {
      p = engine_.allocate_page();
    }
    if (!p) return false;
    r.pages.push_back(*p);
  }
  return true;
}

void Scheduler::release_pages(Request& r) {
  if (prefix_cache_) prefix_cache_->unlock(r.cached);
  for (size_t j = static_cast<size_t>(r.cached.depth); j < r.pages.size(); ++j) {
    engine_.release_page(r.pages[j]);
  }
  r.pages.clear();
  r.cached = {};
  r.kv_len = 0;
}

void Scheduler::preempt(Request& r) {
  release_pages(r);
  ++counters_.preemptions;
  spdlog::info("scheduler: preempted request {} ({} tokens) to free KV pages", r.id,
               r.tokens.size());
}

void Scheduler::cache_full_pages(Request& r) {
  r.cached = prefix_cache_->insert(
      std::span<const int32_t>(r.tokens.data(), static_cast<size_t>(r.kv_len)), r.pages, r.cached);
}

void Scheduler::finish(Request& r, const char* reason, RequestOutput out) {
  if (r.done) return;
  std::string tail = r.decoder ? r.decoder->flush() : std::string();
  if (!r.matcher.stopped()) {
    out.text += r.matcher.feed(tail);
    if (!r.matcher.stopped()) out.text += r.matcher.flush();
  }
  out.finished = true;
  if (out.finish_reason.empty()) out.finish_reason = reason;
  out.prompt_tokens = r.prompt_len;
  out.completion_tokens = r.num_output;
  out.cached_tokens = r.cached_tokens;
  const Clock::time_point scheduled = r.scheduled.value_or(Clock::now());
  out.queue_seconds = std::chrono::duration<double>(scheduled - r.arrival).count();
  r.done = true;
  release_pages(r);
  if (r.spec.on_output) {
    try {
      r.spec.on_output(out);
    } catch (const std::exception& e) {
      spdlog::error("scheduler: the output callback of request {} threw: {}", r.id, e.what());
    }
  }
}

void Scheduler::accept(Request& r, int32_t token, const float* logits) {
  const SamplingParams& sp = r.spec.sampling;
  const std::vector<int32_t>& eos = engine_.eos_ids();
  const bool is_eos = !sp.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end();
  const bool is_stop_id = std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), token) !=
                          sp.stop_token_ids.end();
  if (is_eos || is_stop_id) {
    finish(r, "stop", {});
    return;
  }
  RequestOutput out;
  r.tokens.push_back(token);
  ++r.num_output;
  ++counters_.generation_tokens;
  out.tokens.push_back(token);
  if (r.spec.top_logprobs >= 0) {
    const auto vocab = static_cast<size_t>(engine_.config().vocab_size);
    out.logprobs.push_back(
        logprobs_of(std::span<const float>(logits, vocab), token, r.spec.top_logprobs));
  }
  const std::string piece = r.decoder ? r.decoder->push(token) : std::string();
  out.text = r.matcher.feed(piece);
  if (r.matcher.stopped()) {
    finish(r, "stop", std::move(out));
  } else if (r.num_output >= sp.max_tokens ||
             static_cast<int64_t>(r.tokens.size()) >= engine_.context_length()) {
    finish(r, "length", std::move(out));
  } else if (r.spec.on_output) {
    out.prompt_tokens = r.prompt_len;
    out.completion_tokens = r.num_output;
    out.cached_tokens = r.cached_tokens;
    try {
      r.spec.on_output(out);
    } catch (const std::exception& e) {
      spdlog::error("scheduler: the output callback of request {} threw: {}", r.id, e.what());
    }
  }
}

bool Scheduler::step() {
  drain_inbox();
  if (running_.empty() && waiting_.empty()) {
    publish_stats();
    return false;
  }
  const int ps = engine_.page_size();
  int budget = options_.chunked_prefill_size;
  std::vector<std::pair<Request*, int>> plan;
  bool preempted = false;

  // Running requests, oldest first: a decode takes one token, a prefill a chunk of the budget.
  // When pages run out, the newest request is preempted (recomputed later) to make room.
  for (size_t i = 0; i < running_.size();) {
    Request& r = *running_[i];
    const int remaining = r.remaining();
    const int len = remaining == 1 ? 1 : std::min(remaining, budget);
    if (len == 0) {
      ++i;
      continue;
    }
    bool ok = grow(r, r.kv_len + len, true);
    bool self_preempted = false;
    while (!ok && running_.size() > 1) {
      Request& victim = *running_.back();
      preempt(victim);
      preempted = true;
      waiting_.push_front(std::move(running_.back()));
      running_.pop_back();
      if (&victim == &r) {
        self_preempted = true;
        break;
      }
      ok = grow(r, r.kv_len + len, true);
    }
    if (self_preempted) break;
    if (!ok) {
      // Alone, with the whole cache to itself, and still too long: it can grow no further.
      finish(r, "length", {});
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    if (remaining > 1) budget -= len;
    plan.emplace_back(&r, len);
    ++i;
  }

  // Waiting requests join while there is room, reusing cached prefix pages.
  while (!preempted && budget > 0 && !waiting_.empty() &&
         static_cast<int>(running_.size()) < options_.max_running_requests) {
    Request& r = *waiting_.front();
    if (prefix_cache_) {
      const int max_pages = (static_cast<int>(r.tokens.size()) - 1) / ps;
      r.cached = prefix_cache_->match(r.tokens, max_pages, r.pages);
      r.kv_len = r.cached.depth * ps;
    }
    const int remaining = r.remaining();
    const int len = remaining == 1 ? 1 : std::min(remaining, budget);
    if (!grow(r, r.kv_len + len, true)) {
      release_pages(r);
      if (!running_.empty()) break;  // wait for running requests to free pages
      // Nothing else holds pages and it still does not fit (it grew while preempted).
      finish(r, "length", {});
      waiting_.pop_front();
      continue;
    }
    if (!r.scheduled) {
      r.scheduled = Clock::now();
      r.cached_tokens = r.kv_len;
      counters_.prompt_tokens += r.prompt_len;
      counters_.cached_prompt_tokens += r.kv_len;
    }
    if (remaining > 1) budget -= len;
    plan.emplace_back(&r, len);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }

  if (plan.empty()) {
    publish_stats();
    return !running_.empty() || !waiting_.empty();
  }

  ForwardBatch batch;
  batch.logits_mode = LogitsMode::kLastPerSeq;
  for (const auto& [r, len] : plan) {
    batch.attention.seqs.push_back(
        AttentionSeq{static_cast<int>(batch.tokens.size()), len, r->kv_len + len, r->pages});
    const auto from = r->tokens.begin() + r->kv_len;
    batch.tokens.insert(batch.tokens.end(), from, from + len);
  }
  // Requests whose prompt this step completes, and decoding ones, draw a token. Unless one of them
  // wants log-probabilities (which need its logits row), the draws run where the logits are (on
  // the GPU, on the device) and only the ids come back. Either way the uniform comes from the
  // request's own Sampler, so a seed gives the same tokens on every device.
  std::vector<bool> draws_token(plan.size());
  bool want_logits = false;
  for (size_t k = 0; k < plan.size(); ++k) {
    const Request& r = *plan[k].first;
    draws_token[k] = plan[k].second == r.remaining();
    want_logits = want_logits || (draws_token[k] && r.spec.top_logprobs >= 0);
  }
  std::vector<float> logits;
  std::vector<int32_t> ids;
  try {
    if (want_logits) {
      logits = engine_.forward(batch);
    } else {
      // Rows that draw nothing (a prefill chunk before the prompt's last) take the greedy default;
      // their ids are not used.
      std::vector<sampling::DrawParams> draws(plan.size());
      for (size_t k = 0; k < plan.size(); ++k) {
        if (!draws_token[k]) continue;
        Sampler& sampler = plan[k].first->sampler;
        draws[k] = draw_params(sampler.params(), sampler.next_uniform());
      }
      ids = engine_.forward_sample(batch, draws);
    }
  } catch (const std::exception& e) {
    spdlog::error("scheduler: forward step failed: {}", e.what());
    for (const auto& [r, len] : plan) {
      RequestOutput out;
      out.finish_reason = "error";
      out.error = e.what();
      finish(*r, "error", std::move(out));
    }
    std::erase_if(running_, [](const std::unique_ptr<Request>& r) { return r->done; });
    publish_stats();
    return true;
  }
  ++counters_.steps;

  const auto vocab = static_cast<size_t>(engine_.config().vocab_size);
  for (size_t k = 0; k < plan.size(); ++k) {
    Request& r = *plan[k].first;
    r.kv_len += plan[k].second;
    if (prefix_cache_) cache_full_pages(r);
    if (r.remaining() != 0) continue;  // a prefill chunk that is not the prompt's last
    try {
      if (want_logits) {
        const std::span<const float> row(logits.data() + k * vocab, vocab);
        accept(r, r.sampler.sample(row), row.data());
      } else {
        if (ids[k] < 0) fail_no_token(r.sampler.params().temperature, vocab);
        accept(r, ids[k], nullptr);
      }
    } catch (const std::exception& e) {
      RequestOutput out;
      out.finish_reason = "error";
      out.error = e.what();
      finish(r, "error", std::move(out));
    }
  }
  std::erase_if(running_, [](const std::unique_ptr<Request>& r) { return r->done; });
  publish_stats();
  return true;
}

void Scheduler::publish_stats() {
  SchedulerStats s = counters_;
  s.running = static_cast<int>(running_.size());
  s.waiting = static_cast<int>(waiting_.size());
  s.pages_total = engine_.num_pages();
  s.pages_free = engine_.num_free_pages();
  s.pages_cached = prefix_cache_ ? prefix_cache_->evictable_pages() : 0;
  s.pages_in_use = s.pages_total - s.pages_free - s.pages_cached;
  std::lock_guard lock(mu_);
  published_ = s;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mu_);
  SchedulerStats s = published_;
  s.waiting += static_cast<int>(inbox_.size());
  return s;
}

}  // namespace sagellm
