// The CPU collectives of a tensor-parallel group and the ranks' threads.
#include "parallel/host_group.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"
#include "parallel/rank_threads.h"

namespace sagellm {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(HostGroup, AllReduceGivesEveryRankTheRankOrderSumAndAllGatherEveryPart) {
  for (int size : {1, 2, 3, 4}) {
    SCOPED_TRACE(size);
    HostGroup group(size);
    RankThreads threads(size);
    const size_t n = 1000;
    std::vector<std::vector<float>> data(static_cast<size_t>(size)), gathered(data.size());
    for (int r = 0; r < size; ++r) data[size_t(r)] = random_values(n, 100u + unsigned(r));
    std::vector<float> expected = data[0];
    for (int r = 1; r < size; ++r) {
      for (size_t i = 0; i < n; ++i) expected[i] += data[size_t(r)][i];
    }
    const std::vector<std::vector<float>> inputs = data;
    // Several collectives back to back, as a forward step makes them.
    threads.run([&](int r) {
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<float> v = inputs[size_t(r)];
        group.all_reduce_sum(r, v);
        data[size_t(r)] = v;
        gathered[size_t(r)].assign(n * size_t(size), 0.0f);
        group.all_gather(r, inputs[size_t(r)], gathered[size_t(r)]);
      }
    });
    for (int r = 0; r < size; ++r) {
      EXPECT_EQ(data[size_t(r)], expected);  // bitwise, on every rank
      for (int k = 0; k < size; ++k) {
        EXPECT_TRUE(std::equal(inputs[size_t(k)].begin(), inputs[size_t(k)].end(),
                               gathered[size_t(r)].begin() + std::ptrdiff_t(size_t(k) * n)));
      }
    }
  }
}

TEST(HostGroup, MismatchedSizesAreAnErrorOnEveryRank) {
  HostGroup group(2);
  RankThreads threads(2);
  std::atomic<int> errors{0};
  threads.run([&](int r) {
    std::vector<float> v(static_cast<size_t>(4 + r), 1.0f);
    try {
      group.all_reduce_sum(r, v);
    } catch (const Error&) {
      ++errors;
    }
  });
  EXPECT_EQ(errors.load(), 2);
}

TEST(RankThreads, AFailingRankAbortsTheGroupAndItsErrorIsTheOneReported) {
  HostGroup group(3);
  RankThreads threads(3);
  std::atomic<int> aborts{0};
  try {
    threads.run(
        [&](int r) {
          if (r == 1) fail("rank one ran out of pages");
          std::vector<float> v(8, 1.0f);
          group.all_reduce_sum(r, v);  // would wait forever for rank 1 without the abort
        },
        [&](const std::string& why) {
          ++aborts;
          group.abort(why);
        });
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank one ran out of pages"), std::string::npos)
        << e.what();
  }
  EXPECT_GE(aborts.load(), 1);
  // The aborted group fails at once from then on; the threads still run work.
  std::vector<float> v(8, 1.0f);
  EXPECT_THROW(group.all_reduce_sum(0, v), Error);
  std::atomic<int> ran{0};
  threads.run([&](int) { ++ran; });
  EXPECT_EQ(ran.load(), 3);
  // Once every rank has returned, the group can be used again.
  group.reset();
  std::vector<float> sums(3);
  threads.run([&](int r) {
    std::vector<float> one(1, static_cast<float>(r));
    group.all_reduce_sum(r, one);
    sums[size_t(r)] = one[0];
  });
  EXPECT_EQ(sums, (std::vector<float>{3.0f, 3.0f, 3.0f}));
}

TEST(RankThreads, RanksRunAtTheSameTimeOnTheirOwnThreads) {
  RankThreads threads(4);
  std::vector<std::thread::id> ids(4);
  HostGroup group(4);
  // A rendezvous inside the job completes only if all four ranks run at once.
  threads.run([&](int r) {
    ids[size_t(r)] = std::this_thread::get_id();
    std::vector<float> v(1, 1.0f);
    group.all_reduce_sum(r, v);
    EXPECT_EQ(v[0], 4.0f);
  });
  for (int a = 0; a < 4; ++a) {
    EXPECT_NE(ids[size_t(a)], std::this_thread::get_id());
    for (int b = a + 1; b < 4; ++b) EXPECT_NE(ids[size_t(a)], ids[size_t(b)]);
  }
}

}  // namespace
}  // namespace sagellm
