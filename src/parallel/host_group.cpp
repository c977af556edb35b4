#include "parallel/host_group.h"

#include <algorithm>

#include "core/error.h"

namespace sagellm {

HostGroup::HostGroup(int size) : size_(size) {
  SAGELLM_CHECK(size >= 1, "a tensor-parallel group needs at least one rank (got {})", size);
  in_.resize(static_cast<size_t>(size));
  count_.resize(static_cast<size_t>(size));
}

void HostGroup::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!aborted_) why_ = why;
    aborted_ = true;
  }
  cv_.notify_all();
}

void HostGroup::reset() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = false;
  why_.clear();
  arrived_ = 0;
  ++generation_;
}

void HostGroup::arrive_and_wait(std::unique_lock<std::mutex>& lock) {
  SAGELLM_CHECK(!aborted_, "tensor-parallel group aborted: {}", why_);
  const uint64_t gen = generation_;
  if (++arrived_ == size_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
  SAGELLM_CHECK(generation_ != gen, "tensor-parallel group aborted: {}", why_);
}

void HostGroup::exchange(int rank, const float* data, size_t count, const char* what,
                         const std::function<void()>& read) {
  std::unique_lock<std::mutex> lock(mu_);
  in_[static_cast<size_t>(rank)] = data;
  count_[static_cast<size_t>(rank)] = count;
  arrive_and_wait(lock);
  const bool same =
      std::all_of(count_.begin(), count_.end(), [&](size_t n) { return n == count_[0]; });
  lock.unlock();
  // Every rank sees the same sizes, so either all throw here or none does.
  SAGELLM_CHECK(same, "tensor-parallel {}: the ranks passed different sizes", what);
  read();
  lock.lock();
  arrive_and_wait(lock);
}

void HostGroup::all_reduce_sum(int rank, std::span<float> data) {
  std::vector<float> sum(data.size());
  exchange(rank, data.data(), data.size(), "all-reduce", [&] {
    std::copy(in_[0], in_[0] + sum.size(), sum.begin());
    for (size_t k = 1; k < in_.size(); ++k) {
      const float* src = in_[k];
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += src[i];
    }
  });
  std::copy(sum.begin(), sum.end(), data.begin());
}

void HostGroup::all_gather(int rank, std::span<const float> in, std::span<float> out) {
  SAGELLM_CHECK(out.size() == in.size() * static_cast<size_t>(size_),
                "tensor-parallel all-gather: output holds {} values, {} ranks x {} expected",
                out.size(), size_, in.size());
  exchange(rank, in.data(), in.size(), "all-gather", [&] {
    for (size_t k = 0; k < in_.size(); ++k) {
      std::copy(in_[k], in_[k] + in.size(),
                out.begin() + static_cast<std::ptrdiff_t>(k * in.size()));
    }
  });
}

}  // namespace sagellm
