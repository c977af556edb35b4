#include "parallel/rank_threads.h"

#include <string>

#include "core/error.h"

namespace sagellm {

RankThreads::RankThreads(int size) {
  SAGELLM_CHECK(size >= 1, "a tensor-parallel group needs at least one rank (got {})", size);
  threads_.reserve(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) threads_.emplace_back([this, r] { loop(r); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::run(const std::function<void(int)>& fn,
                      const std::function<void(const std::string&)>& on_error) {
  std::unique_lock<std::mutex> lock(mu_);
  job_ = &fn;
  on_error_ = &on_error;
  error_ = nullptr;
  pending_ = size();
  ++job_id_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
  on_error_ = nullptr;
  if (error_) std::rethrow_exception(error_);
}

void RankThreads::loop(int rank) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || job_id_ != seen; });
    if (stop_) return;
    seen = job_id_;
    const std::function<void(int)>& fn = *job_;
    const std::function<void(const std::string&)>& on_error = *on_error_;
    lock.unlock();
    std::exception_ptr err;
    std::string what;
    try {
      fn(rank);
    } catch (const std::exception& e) {
      err = std::current_exception();
      what = e.what();
    } catch (...) {
      err = std::current_exception();
      what = "unknown error";
    }
    if (err) {
      // The rank that failed first is the one reported: the others may fail only because the
      // group was aborted for it.
      lock.lock();
      if (!error_) error_ = err;
      lock.unlock();
      if (on_error) on_error(fmt::format("rank {}: {}", rank, what));
    }
    lock.lock();
    if (--pending_ == 0) cv_.notify_all();
  }
}

}  // namespace sagellm
