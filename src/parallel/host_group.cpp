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

void HostGroup::all_reduce_sum(int rank, std::span<float> data) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto r = static_cast<size_t>(rank);
  in_[r] = data.data();
  count_[r] = data.size();
  arrive_and_wait(lock);
  // Every rank has published its buffer and none writes until all have read (second rendezvous).
  const bool same =
      std::all_of(count_.begin(), count_.end(), [&](size_t n) { return n == count_[0]; });
  lock.unlock();
  SAGELLM_CHECK(same, "tensor-parallel all-reduce: the ranks passed different sizes");
  std::vector<float> sum(data.begin(), data.end());
  if (size_ > 1) {
    std::copy(in_[0], in_[0] + data.size(), sum.begin());
    for (size_t k = 1; k < in_.size(); ++k) {
      const float* src = in_[k];
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += src[i];
    }
  }
  lock.lock();
  arrive_and_wait(lock);
  lock.unlock();
  std::copy(sum.begin(), sum.end(), data.begin());
}

void HostGroup::all_gather(int rank, std::span<const float> in, std::span<float> out) {
  SAGELLM_CHECK(out.size() == in.size() * static_cast<size_t>(size_),
                "tensor-parallel all-gather: output holds {} values, {} ranks x {} expected",
                out.size(), size_, in.size());
  std::unique_lock<std::mutex> lock(mu_);
  const auto r = static_cast<size_t>(rank);
  in_[r] = in.data();
  count_[r] = in.size();
  arrive_and_wait(lock);
  const bool same =
      std::all_of(count_.begin(), count_.end(), [&](size_t n) { return n == count_[0]; });
  lock.unlock();
  SAGELLM_CHECK(same, "tensor-parallel all-gather: the ranks passed different sizes");
  for (size_t k = 0; k < in_.size(); ++k) {
    std::copy(in_[k], in_[k] + in.size(), out.begin() + static_cast<std::ptrdiff_t>(k * in.size()));
  }
  lock.lock();
  arrive_and_wait(lock);
}

}  // namespace sagellm
