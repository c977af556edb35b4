// Server metrics in the Prometheus text format: latency histograms (time to first token,
// inter-token latency, end-to-end latency, queue time), token and request counters, and the
// scheduler's gauges (running and waiting requests, KV-cache usage) read at scrape time.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine/scheduler.h"

namespace sagellm::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the _bucket/_sum/_count lines (with # HELP and # TYPE) to `out`.
  void render(std::string& out, const std::string& name, const std::string& help) const;
  uint64_t count() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative
  double sum_ = 0.0;
  uint64_t count_ = 0;
};

class ServerMetrics {
 public:
  ServerMetrics();

  void observe_time_to_first_token(double seconds) { ttft_.observe(seconds); }
  void observe_inter_token_latency(double seconds) { itl_.observe(seconds); }
  void observe_finished(const std::string& finish_reason, double e2e_seconds, double queue_seconds,
                        int prompt_tokens, int completion_tokens);
  void count_rejected() { rejected_.fetch_add(1); }

  std::string render(const SchedulerStats* stats) const;

  const Histogram& time_to_first_token() const { return ttft_; }

 private:
  Histogram ttft_, itl_, e2e_, queue_;
  std::atomic<int64_t> prompt_tokens_{0}, generation_tokens_{0}, rejected_{0};
  mutable std::mutex mu_;
  std::map<std::string, int64_t> finished_;  // by finish reason
};

}  // namespace sagellm::server
