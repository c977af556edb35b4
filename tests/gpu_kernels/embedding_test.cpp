// Embedding gather against cpu::embedding: a copy, so the results must be bit-identical.
#include <cstdint>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::bf16;
using testing::expect_error;
class EmbeddingGpu : public testing::GpuTest {};

std::vector<int32_t> random_ids(size_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = dist(rng);
  ids.front() = 0;
  ids.back() = vocab - 1;
  return ids;
}

// `out_offset` elements of padding in front of the output make it misaligned when odd.
void check_embedding(int vocab, int dim, size_t num_ids, size_t out_offset) {
  SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " dim " << dim << " ids " << num_ids
                                    << " out offset " << out_offset);
  const std::vector<float> table = testing::random_bf16_values(size_t(vocab) * dim, 11 + dim);
  const std::vector<int32_t> ids = random_ids(num_ids, vocab, 5 + dim);
  std::vector<float> want(num_ids * dim);
  cpu::embedding(table.data(), ids, want.data(), dim);

  auto d_table = testing::upload(testing::to_bf16(table));
  auto d_ids = testing::upload(ids);
  DeviceBuffer<bf16> d_out(out_offset + num_ids * dim);
  gpu::embedding(d_table.data(), vocab, dim, d_ids.data(), static_cast<int>(num_ids),
                 d_out.data() + out_offset, nullptr);
  const std::vector<bf16> got = testing::download(d_out);
  size_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (testing::to_float(got[out_offset + i]) != want[i]) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(Embedding, ValidateTokenIdsNamesTheBadId) {
  const std::vector<int32_t> ok = {0, 5, 9};
  EXPECT_NO_THROW(gpu::validate_token_ids(ok, 10));
  const std::vector<int32_t> bad = {0, 5, 10};
  expect_error([&] { gpu::validate_token_ids(bad, 10); }, {"token id 10 at position 2", "[0, 10)"});
  const std::vector<int32_t> negative = {-1};
  expect_error([&] { gpu::validate_token_ids(negative, 10); }, {"token id -1 at position 0"});
}

TEST_F(EmbeddingGpu, VectorPathMatchesCpu) { check_embedding(1000, 64, 300, 0); }

TEST_F(EmbeddingGpu, ScalarPathMatchesCpu) {
  check_embedding(1000, 13, 257, 0);  // dim % 8 != 0
  check_embedding(512, 64, 33, 1);    // misaligned output
}

TEST_F(EmbeddingGpu, ManyRows) { check_embedding(300, 16, 70001, 0); }

TEST_F(EmbeddingGpu, OutOfRangeIdGivesNaNRowNotAFault) {
  const int vocab = 50;
  const int dim = 24;
  const std::vector<float> table = testing::random_bf16_values(size_t(vocab) * dim, 3);
  const std::vector<int32_t> ids = {3, 1000000, 7, -5};
  auto d_table = testing::upload(testing::to_bf16(table));
  auto d_ids = testing::upload(ids);
  DeviceBuffer<bf16> d_out(ids.size() * dim);
  gpu::embedding(d_table.data(), vocab, dim, d_ids.data(), 4, d_out.data(), nullptr);
  const std::vector<float> got = testing::to_float(testing::download(d_out));
  for (int i = 0; i < dim; ++i) {
    EXPECT_EQ(got[i], table[3 * dim + i]);
    EXPECT_TRUE(std::isnan(got[dim + i]));
    EXPECT_EQ(got[2 * dim + i], table[7 * dim + i]);
    EXPECT_TRUE(std::isnan(got[3 * dim + i]));
  }
}

TEST_F(EmbeddingGpu, RejectsBadShapes) {
  expect_error([] { gpu::embedding(nullptr, 0, 8, nullptr, 1, nullptr, nullptr); },
               {"embedding: bad shape"});
  expect_error([] { gpu::embedding(nullptr, 10, 8, nullptr, 1, nullptr, nullptr); },
               {"null pointer"});
  EXPECT_NO_THROW(gpu::embedding(nullptr, 10, 8, nullptr, 0, nullptr, nullptr));
}

}  // namespace
}  // namespace sagellm
