#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace sagellm::server {

namespace {

// Bucket bounds in seconds, close to SGLang's and vLLM's so dashboards carry over.
const std::vector<double> kTtftBounds = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                         0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                         7.5,   10.0,  20.0, 40.0, 80.0, 160.0};
const std::vector<double> kItlBounds = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025,
                                        0.03,   0.04,  0.05,  0.075, 0.1,  0.15,  0.2,  0.3,
                                        0.4,    0.5,   0.75,  1.0,   2.5,  5.0};
const std::vector<double> kE2eBounds = {0.05, 0.1,  0.25, 0.5,   1.0,   2.5,   5.0,   10.0,
                                        20.0, 40.0, 60.0, 120.0, 300.0, 600.0, 1200.0};

void gauge(std::string& out, const char* name, const char* help, double value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, value);
}

void counter(std::string& out, const char* name, const char* help, int64_t value) {
  out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t b = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                       bounds_.begin());
  std::lock_guard lock(mu_);
  ++counts_[b];
  sum_ += value;
  ++count_;
}

uint64_t Histogram::count() const {
  std::lock_guard lock(mu_);
  return count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard lock(mu_);
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  out += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
}

ServerMetrics::ServerMetrics()
    : ttft_(kTtftBounds), itl_(kItlBounds), e2e_(kE2eBounds), queue_(kE2eBounds) {}

void ServerMetrics::observe_finished(const std::string& finish_reason, double e2e_seconds,
                                     double queue_seconds, int prompt_tokens,
                                     int completion_tokens) {
  e2e_.observe(e2e_seconds);
  queue_.observe(queue_seconds);
  prompt_tokens_.fetch_add(prompt_tokens);
  generation_tokens_.fetch_add(completion_tokens);
  std::lock_guard lock(mu_);
  ++finished_[finish_reason];
}

std::string ServerMetrics::render(const SchedulerStats* s) const {
  std::string out;
  ttft_.render(out, "sagellm:time_to_first_token_seconds",
               "Time from request arrival to the first generated token.");
  itl_.render(out, "sagellm:inter_token_latency_seconds",
              "Time between consecutive generated tokens of a request.");
  e2e_.render(out, "sagellm:e2e_request_latency_seconds",
              "Time from request arrival to its last token.");
  queue_.render(out, "sagellm:queue_time_seconds",
                "Time a request waited before its first scheduled step.");
  counter(out, "sagellm:prompt_tokens_total", "Prompt tokens of finished requests.",
          prompt_tokens_.load());
  counter(out, "sagellm:generation_tokens_total", "Generated tokens of finished requests.",
          generation_tokens_.load());
  counter(out, "sagellm:rejected_requests_total", "Requests answered with a 4xx/5xx error.",
          rejected_.load());
  {
    std::lock_guard lock(mu_);
    out +=
        "# HELP sagellm:request_success_total Finished requests by finish reason.\n"
        "# TYPE sagellm:request_success_total counter\n";
    for (const auto& [reason, n] : finished_) {
      out += fmt::format("sagellm:request_success_total{{finish_reason=\"{}\"}} {}\n", reason, n);
    }
  }
  if (s != nullptr) {
    gauge(out, "sagellm:num_running_reqs", "Requests in the running batch.", s->running);
    gauge(out, "sagellm:num_queue_reqs", "Requests waiting to be scheduled.", s->waiting);
    gauge(out, "sagellm:token_usage", "Fraction of KV-cache pages held by requests.",
          s->kv_usage());
    gauge(out, "sagellm:kv_cache_pages_total", "KV-cache pages.", s->pages_total);
    gauge(out, "sagellm:kv_cache_pages_used", "KV-cache pages held by requests.", s->pages_in_use);
    gauge(out, "sagellm:kv_cache_pages_cached",
          "KV-cache pages held only by the prefix cache (reclaimable).", s->pages_cached);
    counter(out, "sagellm:prefix_cache_hit_tokens_total",
            "Prompt tokens served from the prefix cache.", s->cached_prompt_tokens);
    counter(out, "sagellm:scheduled_prompt_tokens_total", "Prompt tokens of admitted requests.",
            s->prompt_tokens);
    counter(out, "sagellm:preemptions_total",
            "Requests preempted (recomputed later) because KV pages ran out.", s->preemptions);
  }
  return out;
}

}  // namespace sagellm::server
