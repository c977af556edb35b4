// Per-row argmax against sagellm::argmax (the CPU sampler's greedy choice): exact, lowest index
// on ties, NaN and -inf never chosen.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "engine/sampling.h"
#include "gpu_test_util.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::expect_error;
class ArgmaxGpu : public testing::GpuTest {};

constexpr float kInf = std::numeric_limits<float>::infinity();

struct ArgmaxResult {
  std::vector<int32_t> ids;
  std::vector<float> values;
};

// logits is [rows][stride]; the buffer starts `offset` floats into its allocation.
ArgmaxResult run_gpu(const std::vector<float>& logits, int rows, int vocab, int64_t stride,
                     size_t offset) {
  std::vector<float> padded(offset, 1e30f);
  padded.insert(padded.end(), logits.begin(), logits.end());
  auto d_logits = testing::upload(padded);
  DeviceBuffer<int32_t> d_ids(rows);
  DeviceBuffer<float> d_values(rows);
  gpu::argmax_rows(d_logits.data() + offset, rows, vocab, stride, d_ids.data(), d_values.data(),
                   nullptr);
  return {testing::download(d_ids), d_values.to_host()};
}

void check_rows(const std::vector<float>& logits, int rows, int vocab, int64_t stride,
                size_t offset) {
  SCOPED_TRACE(::testing::Message() << "rows " << rows << " vocab " << vocab << " stride " << stride
                                    << " offset " << offset);
  const ArgmaxResult got = run_gpu(logits, rows, vocab, stride, offset);
  size_t mismatches = 0;
  for (int t = 0; t < rows; ++t) {
    const std::span<const float> row(logits.data() + t * stride, vocab);
    bool any = false;
    for (float v : row) any = any || v > -kInf;
    const int32_t want = any ? argmax(row) : -1;
    if (got.ids[t] != want) {
      if (++mismatches < 5)
        ADD_FAILURE() << "row " << t << ": got " << got.ids[t] << " want " << want;
      continue;
    }
    const float want_value = any ? row[want] : -kInf;
    EXPECT_EQ(got.values[t], want_value) << "row " << t;
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST_F(ArgmaxGpu, MatchesCpuOnRandomLogits) {
  const int rows = 64;
  const int vocab = 128256;  // Llama-3
  const std::vector<float> logits = testing::random_bf16_values(size_t(rows) * vocab, 41, 3.0f);
  check_rows(logits, rows, vocab, vocab, 0);
}

TEST_F(ArgmaxGpu, OddVocabStridedAndMisaligned) {
  const int rows = 33;
  const int vocab = 1001;
  const int64_t stride = 1004;
  const std::vector<float> logits = testing::random_bf16_values(size_t(rows) * stride, 42);
  check_rows(logits, rows, vocab, stride, 0);
  check_rows(logits, rows, vocab, stride, 1);
  check_rows(logits, rows, vocab, vocab, 3);
}

TEST_F(ArgmaxGpu, TiesNaNAndInfinities) {
  const int vocab = 32000;
  const int rows = 8;
  std::vector<float> logits = testing::random_bf16_values(size_t(rows) * vocab, 43);
  auto row = [&](int t) { return logits.data() + size_t(t) * vocab; };
  // 0: the maximum three times, handled by different threads and warps: the lowest index wins.
  row(0)[31000] = 50.0f;
  row(0)[17] = 50.0f;
  row(0)[4096 + 5] = 50.0f;
  // 1: ties at the first and last index.
  row(1)[0] = 60.0f;
  row(1)[vocab - 1] = 60.0f;
  // 2: NaN is never the answer, even in front.
  row(2)[0] = std::numeric_limits<float>::quiet_NaN();
  row(2)[100] = std::numeric_limits<float>::quiet_NaN();
  row(2)[200] = 40.0f;
  // 3: +inf twice.
  row(3)[900] = kInf;
  row(3)[901] = kInf;
  // 4: everything -inf or NaN: no token.
  for (int i = 0; i < vocab; ++i)
    row(4)[i] = i % 3 ? -kInf : std::numeric_limits<float>::quiet_NaN();
  // 5: all equal: index 0.
  for (int i = 0; i < vocab; ++i) row(5)[i] = -2.5f;
  // 6: one finite value among -inf, at the end.
  for (int i = 0; i < vocab; ++i) row(6)[i] = -kInf;
  row(6)[vocab - 1] = -1e30f;
  check_rows(logits, rows, vocab, vocab, 0);
  const ArgmaxResult got = run_gpu(logits, rows, vocab, vocab, 0);
  EXPECT_EQ(got.ids[0], 17);
  EXPECT_EQ(got.ids[1], 0);
  EXPECT_EQ(got.ids[2], 200);
  EXPECT_EQ(got.ids[3], 900);
  EXPECT_EQ(got.ids[4], -1);
  EXPECT_EQ(got.ids[5], 0);
  EXPECT_EQ(got.ids[6], vocab - 1);
}

TEST_F(ArgmaxGpu, ManyRowsIsDeterministic) {
  const int rows = 70000;
  const int vocab = 12;
  // Coarse values so ties are frequent.
  std::vector<float> logits(size_t(rows) * vocab);
  std::mt19937_64 rng(44);
  for (float& v : logits) v = static_cast<float>(rng() % 5);
  check_rows(logits, rows, vocab, vocab, 0);
  EXPECT_EQ(run_gpu(logits, rows, vocab, vocab, 0).ids, run_gpu(logits, rows, vocab, vocab, 0).ids);
}

TEST_F(ArgmaxGpu, RejectsBadArguments) {
  expect_error([] { gpu::argmax_rows(nullptr, 1, 0, 0, nullptr, nullptr, nullptr); },
               {"argmax_rows: bad shape"});
  expect_error([] { gpu::argmax_rows(nullptr, 1, 10, 5, nullptr, nullptr, nullptr); },
               {"row stride 5 is smaller"});
}

}  // namespace
}  // namespace sagellm
