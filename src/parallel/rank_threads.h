// One thread per tensor-parallel rank. A forward step runs on every rank at once (the ranks meet
// in collectives, so they cannot run one after another), each on its own thread: a GPU rank's
// thread keeps its device current and its CUDA-graph captures thread-local.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sagellm {

class RankThreads {
 public:
  explicit RankThreads(int size);
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int size() const { return static_cast<int>(threads_.size()); }

  // Runs fn(rank) on every rank's thread and waits for all of them. When a rank throws,
  // on_error(message) is called at once from that thread (to abort the group's collectives, in
  // which the other ranks may be waiting for it); the first error is rethrown once every rank has
  // returned.
  void run(const std::function<void(int)>& fn,
           const std::function<void(const std::string&)>& on_error = {});

 private:
  void loop(int rank);

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* job_ = nullptr;
  const std::function<void(const std::string&)>* on_error_ = nullptr;
  uint64_t job_id_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace sagellm
