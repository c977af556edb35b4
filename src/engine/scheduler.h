// Continuous-batching scheduler over the Engine's step API. Every step builds one varlen batch:
// each running request contributes its next token (decode) or its next prefill chunk (within a
// per-step token budget), and waiting requests join while there is room. When KV pages run out,
// the most recently admitted request is preempted: its pages are freed and it is recomputed from
// its prompt and the tokens it already produced when it is admitted again (its sampler state
// carries over, so the output is the one it would have produced uninterrupted). Full pages are
// shared across requests through the prefix cache.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/error.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "kv_cache/prefix_cache.h"

namespace sagellm {

struct SchedulerOptions {
  int max_running_requests = 256;
  int chunked_prefill_size = 2048;  // prefill tokens per step (decode tokens are not counted)
  bool enable_prefix_cache = true;
};

// A snapshot published at the end of each scheduler step (a reply may reach its client first).
struct SchedulerStats {
  int running = 0;
  int waiting = 0;
  int pages_total = 0;
  int pages_free = 0;                // in the allocator
  int pages_cached = 0;              // held by the prefix cache and by no request (reclaimable)
  int pages_in_use = 0;              // held by requests
  int64_t prompt_tokens = 0;         // prompt tokens of admitted requests (first admission)
  int64_t cached_prompt_tokens = 0;  // of which the prefix cache served
  int64_t generation_tokens = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;
  double kv_usage() const {
    return pages_total > 0 ? static_cast<double>(pages_in_use) / pages_total : 0.0;
  }
};

// Raised by submit() once shutdown has begun.
class SchedulerClosed : public Error {
 public:
  using Error::Error;
};

class Scheduler {
 public:
  Scheduler(Engine& engine, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Thread-safe. Validates the request (throws sagellm::Error naming the problem) and queues it;
  // returns its id.
  uint64_t submit(RequestSpec spec);
  // Thread-safe. The request ends with finish_reason "abort" and its pages are freed at the next
  // step boundary; unknown or finished ids are ignored.
  void cancel(uint64_t id);

  // Runs steps on a background thread until shutdown().
  void start();
  // Stops accepting requests, lets in-flight ones finish for up to `grace`, ends the rest with
  // finish_reason "abort", and stops the background thread. Later calls do nothing.
  void shutdown(std::chrono::milliseconds grace);
  // One step on the caller's thread (when start() was not called). Returns false when idle.
  bool step();
  // Runs steps until nothing is left.
  void run_until_idle();

  SchedulerStats stats() const;
  const Engine& engine() const { return engine_; }

 private:
  struct Request;
  using Clock = std::chrono::steady_clock;

  void drain_inbox();
  void abort_all(const char* reason);
  bool grow(Request& r, int kv_len, bool may_evict);
  void release_pages(Request& r);
  void preempt(Request& r);
  void finish(Request& r, const char* reason, RequestOutput out);
  // `logits` (the row the token was drawn from) is read only when the request wants logprobs.
  void accept(Request& r, int32_t token, const float* logits);
  void cache_full_pages(Request& r);
  void publish_stats();
  void loop();

  Engine& engine_;
  SchedulerOptions options_;
  std::unique_ptr<PrefixCache> prefix_cache_;

  // Owned by the stepping thread.
  std::deque<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;
  SchedulerStats counters_;

  // Shared with submitters.
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::vector<std::unique_ptr<Request>> inbox_;
  std::vector<uint64_t> cancels_;
  uint64_t next_id_ = 1;
  bool accepting_ = true;
  bool stopping_ = false;
  bool stopped_ = false;
  std::optional<Clock::time_point> deadline_;
  SchedulerStats published_;
  std::thread thread_;
};

}  // namespace sagellm
