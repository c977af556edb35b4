// Counts the streamed responses still being written. httplib stops pumping a chunked response
// the moment the server stops listening, so shutdown waits here first: a stream whose request the
// scheduler has just ended still gets to send its last event and [DONE].
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

namespace sagellm::server {

class OpenStreams {
 public:
  // Counts one stream until the returned token (held by the response) is destroyed. The tokens
  // must not outlive this object.
  std::shared_ptr<void> open() {
    {
      std::lock_guard lock(mu_);
      ++open_;
    }
    return {this, [](OpenStreams* self) { self->close(); }};
  }

  // Returns whether every stream closed before `deadline`.
  bool wait_closed(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mu_);
    return cv_.wait_until(lock, deadline, [this] { return open_ == 0; });
  }

 private:
  void close() {
    std::lock_guard lock(mu_);
    --open_;
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int open_ = 0;
};

}  // namespace sagellm::server
