// The collectives of a tensor-parallel group whose ranks are threads of this process working on
// host memory: the CPU path's twin of NcclGroup. Every rank calls the same collectives in the same
// order; each call returns once every rank has contributed.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace sagellm {

class HostGroup {
 public:
  explicit HostGroup(int size);
  int size() const { return size_; }

  // Sums `data` over the ranks in place. The sum is taken in rank order on every rank, so every
  // rank holds the same bits.
  void all_reduce_sum(int rank, std::span<float> data);
  // out = every rank's `in`, rank after rank ([size][in.size()]).
  void all_gather(int rank, std::span<const float> in, std::span<float> out);

  // Fails the calls waiting now and every later one: a rank that threw never reaches the next
  // rendezvous, and the others must not wait for it.
  void abort(const std::string& why);
  // Makes an aborted group usable again. Only while no rank is inside a collective (after every
  // rank's step returned).
  void reset();

 private:
  void arrive_and_wait(std::unique_lock<std::mutex>& lock);
  // One collective: publishes this rank's buffer, waits for every rank's, checks that the sizes
  // agree, runs `read` over the published buffers (in_), and waits until every rank has read them
  // before returning (so that no buffer is written while another rank reads it).
  void exchange(int rank, const float* data, size_t count, const char* what,
                const std::function<void()>& read);

  int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
  std::string why_;
  std::vector<const float*> in_;  // each rank's contribution to the call in progress
  std::vector<size_t> count_;
};

}  // namespace sagellm
