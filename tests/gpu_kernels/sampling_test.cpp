// gpu::sample_rows against the CPU sampler (sagellm::sample_with_uniform) given the same
// uniforms: every id must be equal, on every run, in any layout, except draws proven to lie within
// rounding distance of a boundary (testing::draw_within_rounding), which are counted and printed.
#include "engine/sampling.h"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "common/sampling_cases.h"
#include "gpu_test_util.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::expect_error;
class SamplingGpu : public testing::GpuTest {};

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Batch {
  int rows = 0;
  int vocab = 0;
  std::vector<float> logits;  // [rows][vocab]
  std::vector<sampling::DrawParams> draws;
  std::vector<testing::LogitsKind> kinds;
};

Batch random_batch(int rows, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Batch b;
  b.rows = rows;
  b.vocab = vocab;
  b.logits.reserve(static_cast<size_t>(rows) * vocab);
  for (int r = 0; r < rows; ++r) {
    const auto kind = static_cast<testing::LogitsKind>(
        r % 16 == 15 ? static_cast<int>(testing::LogitsKind::kAllMasked) : (r + seed) % 5);
    const std::vector<float> row = testing::sampling_row(kind, vocab, rng);
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    b.draws.push_back(testing::random_draw(rng, vocab));
    b.kinds.push_back(kind);
  }
  return b;
}

std::vector<int32_t> cpu_ids(const Batch& b) {
  SamplingScratch scratch;
  std::vector<int32_t> ids(static_cast<size_t>(b.rows));
  for (int r = 0; r < b.rows; ++r) {
    const std::span<const float> row(b.logits.data() + static_cast<size_t>(r) * b.vocab,
                                     static_cast<size_t>(b.vocab));
    ids[static_cast<size_t>(r)] =
        sample_with_uniform(row, b.draws[static_cast<size_t>(r)], scratch);
  }
  return ids;
}

// `host` holds the logits as the kernel is told to find them (p.logits is set here).
std::vector<int32_t> gpu_ids(const std::vector<float>& host, size_t offset,
                             const std::vector<sampling::DrawParams>& draws,
                             gpu::SampleRowsParams p) {
  std::vector<float> padded(offset, kInf);  // read by mistake, +inf would take all
  padded.insert(padded.end(), host.begin(), host.end());
  auto d_logits = testing::upload(padded);
  auto d_draws = testing::upload(draws);
  DeviceBuffer<int32_t> d_ids(draws.size());
  p.logits = d_logits.data() + offset;
  p.params = d_draws.data();
  p.ids = d_ids.data();
  gpu::sample_rows(p, nullptr);
  return testing::download(d_ids);
}

std::vector<int32_t> gpu_ids(const Batch& b) {
  gpu::SampleRowsParams p;
  p.rows = b.rows;
  p.vocab = b.vocab;
  return gpu_ids(b.logits, 0, b.draws, p);
}

// Counts the rows where the GPU and the CPU drew different tokens, failing the test for each,
// except draws that testing::draw_within_rounding proves to lie within rounding distance of a
// boundary: those are counted in `boundary` (when given) and printed, and any other mismatch fails.
int count_mismatches(const Batch& b, const std::vector<int32_t>& got,
                     const std::vector<int32_t>& want, int* boundary = nullptr) {
  int mismatches = 0, at_boundary = 0;
  for (int r = 0; r < b.rows; ++r) {
    const auto k = static_cast<size_t>(r);
    if (got[k] == want[k]) continue;
    const sampling::DrawParams& d = b.draws[k];
    const std::span<const float> row(b.logits.data() + k * static_cast<size_t>(b.vocab),
                                     static_cast<size_t>(b.vocab));
    if (testing::draw_within_rounding(row, d, got[k], want[k])) {
      ++at_boundary;
      std::printf(
          "[ sampling ] vocab %d row %d: gpu %d cpu %d, u=%.17g within rounding of a "
          "boundary\n",
          b.vocab, r, got[k], want[k], d.uniform);
      continue;
    }
    if (++mismatches <= 5) {
      ADD_FAILURE() << "vocab " << b.vocab << " row " << r << " (" << kind_name(b.kinds[k])
                    << ") T=" << d.temperature << " top_k=" << d.top_k << " top_p=" << d.top_p
                    << " min_p=" << d.min_p << " u=" << d.uniform << ": gpu " << got[k] << " cpu "
                    << want[k];
    }
  }
  if (boundary != nullptr) {
    *boundary += at_boundary;
  } else if (at_boundary > 0) {
    std::printf("[ sampling ] %d draws within rounding of a boundary\n", at_boundary);
  }
  return mismatches;
}

TEST_F(SamplingGpu, MatchesCpuSamplerOnRandomRowsAndParams) {
  const int vocabs[] = {1, 2, 3, 5, 31, 32, 33, 100, 257, 1000, 4099, 32000, 128256, 131075};
  int draws = 0, mismatches = 0, no_token = 0, boundary = 0;
  for (int vocab : vocabs) {
    const int rows = vocab >= 100000 ? 160 : vocab >= 10000 ? 240 : 400;
    const Batch b = random_batch(rows, vocab, 1000 + static_cast<uint64_t>(vocab));
    const std::vector<int32_t> want = cpu_ids(b);
    const std::vector<int32_t> got = gpu_ids(b);
    mismatches += count_mismatches(b, got, want, &boundary);
    draws += rows;
    for (int32_t id : want) no_token += id < 0 ? 1 : 0;
    // Bitwise determinism: a second run gives the same ids.
    EXPECT_EQ(gpu_ids(b), got) << "vocab " << vocab;
  }
  std::printf(
      "[ sampling ] %d GPU draws against the CPU sampler: %d mismatches, %d within rounding of a "
      "boundary (%d rows without a token)\n",
      draws, mismatches, boundary, no_token);
  RecordProperty("draws", draws);
  RecordProperty("mismatches", mismatches);
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(no_token, 0);
  EXPECT_GT(draws, 3000);
}

// Many draws from one row: the sampled frequencies come from the uniforms, and every id matches.
TEST_F(SamplingGpu, OneRowManyUniforms) {
  const int vocab = 128256;
  const int rows = 512;
  std::mt19937_64 rng(77);
  const std::vector<float> row = testing::sampling_row(testing::LogitsKind::kNormal, vocab, rng);
  Batch b;
  b.rows = rows;
  b.vocab = vocab;
  for (int r = 0; r < rows; ++r) {
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    sampling::DrawParams d;
    d.temperature = r % 2 ? 0.8f : 1.0f;
    d.top_k = r % 3 == 0 ? 50 : 0;
    d.top_p = r % 4 == 0 ? 0.95f : 1.0f;
    d.min_p = r % 5 == 0 ? 0.05f : 0.0f;
    d.uniform = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    b.draws.push_back(d);
    b.kinds.push_back(testing::LogitsKind::kNormal);
  }
  const std::vector<int32_t> got = gpu_ids(b);
  EXPECT_EQ(count_mismatches(b, got, cpu_ids(b)), 0);
  EXPECT_EQ(gpu_ids(b), got);
}

TEST_F(SamplingGpu, StridedMisalignedAndSegmentedLayouts) {
  const Batch b = random_batch(48, 5003, 4242);
  const std::vector<int32_t> want = cpu_ids(b);
  // Dense rows with a row stride and a buffer that starts 1 float in.
  const int64_t stride = 5011;
  std::vector<float> strided(static_cast<size_t>(b.rows) * stride, kInf);
  for (int r = 0; r < b.rows; ++r) {
    std::copy_n(b.logits.begin() + static_cast<ptrdiff_t>(r) * b.vocab, b.vocab,
                strided.begin() + static_cast<ptrdiff_t>(r) * stride);
  }
  gpu::SampleRowsParams p;
  p.rows = b.rows;
  p.vocab = b.vocab;
  p.row_stride = stride;
  EXPECT_EQ(count_mismatches(b, gpu_ids(strided, 1, b.draws, p), want), 0);
  // Tensor-parallel gathered logits: [rank][rows][part], the last part padded past the vocab.
  for (int ranks : {2, 3, 8}) {
    SCOPED_TRACE(::testing::Message() << ranks << " ranks");
    const int part = (b.vocab + ranks - 1) / ranks;
    std::vector<float> gathered(static_cast<size_t>(ranks) * b.rows * part, kInf);  // padding
    for (int k = 0; k < ranks; ++k) {
      for (int r = 0; r < b.rows; ++r) {
        for (int c = 0; c < part && k * part + c < b.vocab; ++c) {
          gathered[(static_cast<size_t>(k) * b.rows + r) * part + c] =
              b.logits[static_cast<size_t>(r) * b.vocab + k * part + c];
        }
      }
    }
    gpu::SampleRowsParams q;
    q.rows = b.rows;
    q.vocab = b.vocab;
    q.segment = part;
    q.row_stride = part;
    q.segment_stride = static_cast<int64_t>(b.rows) * part;
    EXPECT_EQ(count_mismatches(b, gpu_ids(gathered, 0, b.draws, q), want), 0);
  }
}

TEST_F(SamplingGpu, EdgeRows) {
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  const int vocab = 40000;
  std::vector<std::vector<float>> rows;
  std::vector<sampling::DrawParams> draws;
  auto add = [&](std::vector<float> row, float temperature, int top_k, float top_p, float min_p,
                 double u) {
    rows.push_back(std::move(row));
    draws.push_back({temperature, top_k, top_p, min_p, u});
  };
  std::mt19937_64 rng(9);
  const std::vector<float> normal = testing::sampling_row(testing::LogitsKind::kNormal, vocab, rng);
  std::vector<float> all_equal(vocab, -2.5f);
  std::vector<float> zeros(vocab, 0.0f);
  for (int i = 0; i < vocab; i += 2) zeros[static_cast<size_t>(i)] = -0.0f;
  std::vector<float> two_inf = normal;
  two_inf[30000] = kInf;
  two_inf[7] = kInf;
  std::vector<float> masked(vocab, -kInf);
  for (int i = 0; i < vocab; i += 3) masked[static_cast<size_t>(i)] = kNaN;
  std::vector<float> last_only = masked;
  last_only[vocab - 1] = -1e30f;
  for (double u : {0.0, 0.25, 0.5, 0.999, 1.0 - 0x1.0p-53}) {
    // u just below 1 lands within rounding distance of the far tail's boundaries, where the CPU's
    // double sums and the GPU's exact ones may differ (sampling_select.h): only rows whose weights
    // are exact (all 1) take it. u = 0.999 with the rows of 40000 weights of exactly 1 (all_equal,
    // T = 1e30) is such a case too: 0.999 * 40000 rounds to the partial sum 39960 in double, the
    // exact product is 3.6e-14 below it, so the CPU takes the next token; the test expects those
    // two draws at the boundary.
    const bool exact_only = u > 0.999;
    if (exact_only) {
      add(all_equal, 1.0f, 0, 1.0f, 0.0f, u);
      add(all_equal, 1.0f, 777, 0.5f, 0.0f, u);
      add(zeros, 1.0f, 1001, 1.0f, 0.0f, u);
      add(two_inf, 1.0f, 0, 1.0f, 0.0f, u);
      continue;
    }
    add(normal, 1.0f, 0, 1.0f, 0.0f, u);
    add(normal, 0.5f, vocab, 0.9f, 0.1f, u);
    add(all_equal, 1.0f, 0, 1.0f, 0.0f, u);    // uniform over the vocabulary
    add(all_equal, 1.0f, 777, 0.5f, 0.0f, u);  // ties cut by id
    add(zeros, 1.0f, 1001, 1.0f, 0.0f, u);     // -0 and +0 tie
    add(two_inf, 1.0f, 0, 1.0f, 0.0f, u);      // the two +inf share the mass
    add(two_inf, 0.0f, 0, 1.0f, 0.0f, u);      // greedy: the lower +inf id
    add(last_only, 3.0f, 5, 0.5f, 0.5f, u);    // one candidate, at the end
    add(masked, 1.0f, 0, 1.0f, 0.0f, u);       // nothing: -1
    add(masked, 0.0f, 0, 1.0f, 0.0f, u);       // nothing, greedy: -1
    add(normal, 1e-30f, 0, 1.0f, 0.0f, u);     // tiny temperature: the argmax
    add(normal, 1e30f, 0, 1.0f, 0.0f, u);      // huge: nearly uniform
  }
  Batch b;
  b.rows = static_cast<int>(rows.size());
  b.vocab = vocab;
  for (const auto& r : rows) b.logits.insert(b.logits.end(), r.begin(), r.end());
  b.draws = draws;
  b.kinds.assign(rows.size(), testing::LogitsKind::kNormal);
  const std::vector<int32_t> want = cpu_ids(b);
  const std::vector<int32_t> got = gpu_ids(b);
  int boundary = 0;
  EXPECT_EQ(count_mismatches(b, got, want, &boundary), 0);
  std::printf("[ sampling ] edge rows: %d draws within rounding of a boundary\n", boundary);
  EXPECT_LE(boundary, 2);
  EXPECT_EQ(gpu_ids(b), got);
  EXPECT_EQ(got[6], 7);  // greedy among the +inf
  EXPECT_EQ(got[7], vocab - 1);
  EXPECT_EQ(got[8], -1);
  EXPECT_EQ(got[9], -1);
  EXPECT_EQ(got[2], 0);  // u = 0: the first token
}

TEST_F(SamplingGpu, TimesLlamaSizedBatches) {
  const int vocab = 128256;
  for (int rows : {1, 64}) {
    const Batch b = random_batch(rows, vocab, 31);
    std::vector<sampling::DrawParams> draws(static_cast<size_t>(rows));
    for (sampling::DrawParams& d : draws) d = {0.8f, 0, 0.95f, 0.0f, 0.37};
    auto d_logits = testing::upload(b.logits);
    auto d_draws = testing::upload(draws);
    DeviceBuffer<int32_t> d_ids(static_cast<size_t>(rows));
    gpu::SampleRowsParams p;
    p.logits = d_logits.data();
    p.rows = rows;
    p.vocab = vocab;
    p.params = d_draws.data();
    p.ids = d_ids.data();
    gpu::sample_rows(p, nullptr);
    cudaEvent_t start = nullptr, stop = nullptr;
    SAGELLM_CUDA_CHECK(cudaEventCreate(&start));
    SAGELLM_CUDA_CHECK(cudaEventCreate(&stop));
    const int reps = 20;
    SAGELLM_CUDA_CHECK(cudaEventRecord(start, nullptr));
    for (int i = 0; i < reps; ++i) gpu::sample_rows(p, nullptr);
    SAGELLM_CUDA_CHECK(cudaEventRecord(stop, nullptr));
    SAGELLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    SAGELLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    (void)cudaEventDestroy(start);
    (void)cudaEventDestroy(stop);
    std::printf("[ sampling ] %d x %d, T 0.8, top_p 0.95: %.3f ms per call\n", rows, vocab,
                ms / reps);
    RecordProperty("ms_rows_" + std::to_string(rows), std::to_string(ms / reps));
  }
}

TEST_F(SamplingGpu, RejectsBadArguments) {
  gpu::SampleRowsParams p;
  p.rows = 1;
  p.vocab = 0;
  expect_error([&] { gpu::sample_rows(p, nullptr); }, {"sample_rows: bad shape"});
  p.vocab = (1 << 24) + 1;
  expect_error([&] { gpu::sample_rows(p, nullptr); }, {"sample_rows: bad shape"});
  p.vocab = 10;
  p.row_stride = 5;
  expect_error([&] { gpu::sample_rows(p, nullptr); }, {"row stride 5 is smaller"});
  p.row_stride = 0;
  p.segment = 4;
  p.segment_stride = 3;
  expect_error([&] { gpu::sample_rows(p, nullptr); }, {"segment stride 3"});
  p.segment = 0;
  expect_error([&] { gpu::sample_rows(p, nullptr); }, {"null pointer"});
}

}  // namespace
}  // namespace sagellm
