// RMSNorm (plain and fused with the residual add) against cpu::rmsnorm.
//
// Bound: the kernel and the twin evaluate the same fp32 formula; only the order of the sum of
// squares differs. Each fp32 sum of `dim` positive terms (products rounded or fused) is within
// dim * 2^-24 (relative) of the exact one, so the two sums differ by at most 2 * dim * 2^-24; the
// inverse square root halves that, and the mean, eps, sqrt, division and the two products add at
// most 2^-24 each on each side: e32 = (dim + 16) * 2^-24 * |ref|. Then the final bf16 rounding
// (gpu_test_util.h).
#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::bf16;
using testing::expect_error;
class RmsNormGpu : public testing::GpuTest {};

constexpr float kEps = 1e-5f;

struct NormInputs {
  std::vector<float> x, residual, weight;
};

NormInputs make_inputs(int rows, int dim, uint64_t seed) {
  NormInputs in;
  in.x = testing::random_bf16_values(size_t(rows) * dim, seed, 1.5f);
  in.residual = testing::random_bf16_values(size_t(rows) * dim, seed + 1, 4.0f);
  in.weight = testing::random_bf16_values(dim, seed + 2, 0.2f, 1.0f);
  return in;
}

std::vector<double> norm_bounds(const std::vector<float>& ref, int dim) {
  std::vector<double> b(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e32 = (dim + 16) * testing::kF32Unit * std::fabs(ref[i]);
    b[i] = testing::bf16_output_bound(ref[i], e32);
  }
  return b;
}

// Runs the GPU kernel on buffers placed `offset` elements into their allocations (odd offsets
// make them misaligned, even ones not 16-byte aligned, which exercises the scalar-load paths).
struct NormRun {
  std::vector<float> out;
  std::vector<float> residual_after;
  std::vector<uint16_t> out_bits;
};

NormRun run_gpu(const NormInputs& in, int rows, int dim, bool fused, size_t offset) {
  const size_t n = size_t(rows) * dim;
  auto pad = [&](const std::vector<float>& v) {
    std::vector<bf16> p(offset + v.size(), testing::to_bf16(0.5f));
    const std::vector<bf16> b = testing::to_bf16(v);
    std::copy(b.begin(), b.end(), p.begin() + offset);
    return testing::upload(p);
  };
  auto d_x = pad(in.x);
  auto d_res = pad(in.residual);
  auto d_w = pad(in.weight);
  DeviceBuffer<bf16> d_out(offset + n);
  if (fused) {
    gpu::add_rmsnorm(d_res.data() + offset, d_x.data() + offset, d_w.data() + offset,
                     d_out.data() + offset, rows, dim, kEps, nullptr);
  } else {
    gpu::rmsnorm(d_x.data() + offset, d_w.data() + offset, d_out.data() + offset, rows, dim, kEps,
                 nullptr);
  }
  const std::vector<bf16> out = testing::download(d_out);
  const std::vector<bf16> res = d_res.to_host();
  NormRun r;
  for (size_t i = 0; i < n; ++i) {
    r.out.push_back(testing::to_float(out[offset + i]));
    r.out_bits.push_back(testing::bits_of(out[offset + i]));
    r.residual_after.push_back(testing::to_float(res[offset + i]));
  }
  return r;
}

void check_rmsnorm(int rows, int dim, bool fused, size_t offset) {
  const std::string what = fmt::format("{} rows {} dim {} offset {}",
                                       fused ? "add_rmsnorm" : "rmsnorm", rows, dim, offset);
  SCOPED_TRACE(what);
  const NormInputs in = make_inputs(rows, dim, 100 + dim + rows);
  const NormRun got = run_gpu(in, rows, dim, fused, offset);

  std::vector<float> normed_input = in.x;
  if (fused) {
    // residual += x in fp32, rounded once to bf16: must match bit for bit.
    size_t mismatches = 0;
    for (size_t i = 0; i < in.x.size(); ++i) {
      normed_input[i] = round_to_bf16(in.residual[i] + in.x[i]);
      if (got.residual_after[i] != normed_input[i]) ++mismatches;
    }
    EXPECT_EQ(mismatches, 0u) << "residual after the add";
  }
  std::vector<float> want(in.x.size());
  cpu::rmsnorm(normed_input.data(), in.weight.data(), want.data(), rows, dim, kEps);
  const std::vector<double> ref(want.begin(), want.end());
  const std::vector<double> bound = norm_bounds(want, dim);
  testing::expect_within_bounds(what, testing::compare(got.out, ref, bound), got.out, ref);
}

TEST_F(RmsNormGpu, MatchesCpu) {
  check_rmsnorm(1, 4096, false, 0);    // decode row, 16-byte path
  check_rmsnorm(37, 64, false, 0);     // stories260K width
  check_rmsnorm(5, 100, false, 0);     // dim % 8 != 0: scalar path
  check_rmsnorm(9, 8192, false, 1);    // misaligned
  check_rmsnorm(70000, 16, false, 0);  // more rows than one grid row of blocks covers
  // More chunks than threads (the kernel's loop over chunks; up to dim 8192 a thread keeps its one
  // chunk in registers).
  check_rmsnorm(3, 16384, false, 0);
  check_rmsnorm(2, 1100, false, 0);
}

TEST_F(RmsNormGpu, AddRmsNormMatchesCpuAndUpdatesResidual) {
  check_rmsnorm(1, 4096, true, 0);
  check_rmsnorm(37, 64, true, 0);
  check_rmsnorm(5, 100, true, 0);
  check_rmsnorm(9, 384, true, 3);
  check_rmsnorm(66000, 24, true, 0);
  check_rmsnorm(2, 20480, true, 0);
}

TEST_F(RmsNormGpu, RowDoesNotDependOnBatchOrAlignment) {
  const int rows = 64;
  const int dim = 1024;
  for (bool fused : {false, true}) {
    const NormInputs in = make_inputs(rows, dim, 7);
    const NormRun batch = run_gpu(in, rows, dim, fused, 0);
    // Row 17 alone, and the whole batch 4 elements (8 bytes) off 16-byte alignment.
    NormInputs one;
    one.x.assign(in.x.begin() + 17 * dim, in.x.begin() + 18 * dim);
    one.residual.assign(in.residual.begin() + 17 * dim, in.residual.begin() + 18 * dim);
    one.weight = in.weight;
    const NormRun single = run_gpu(one, 1, dim, fused, 0);
    const NormRun shifted = run_gpu(in, rows, dim, fused, 4);
    EXPECT_EQ(0, std::memcmp(single.out_bits.data(), batch.out_bits.data() + 17 * dim, dim * 2))
        << "fused " << fused;
    EXPECT_EQ(shifted.out_bits, batch.out_bits) << "fused " << fused;
  }
}

TEST_F(RmsNormGpu, IsDeterministic) {
  const NormInputs in = make_inputs(300, 2048, 9);
  for (bool fused : {false, true}) {
    EXPECT_EQ(run_gpu(in, 300, 2048, fused, 0).out_bits, run_gpu(in, 300, 2048, fused, 0).out_bits);
  }
}

TEST_F(RmsNormGpu, RejectsBadArguments) {
  DeviceBuffer<bf16> b(64);
  expect_error([&] { gpu::rmsnorm(b.data(), b.data(), b.data(), 1, 0, kEps, nullptr); },
               {"rmsnorm: bad shape"});
  expect_error([&] { gpu::rmsnorm(b.data(), b.data(), b.data(), 1, 8, -1.0f, nullptr); },
               {"eps must be >= 0"});
  expect_error(
      [&] { gpu::add_rmsnorm(b.data(), b.data(), b.data(), b.data(), 1, 8, kEps, nullptr); },
      {"must not alias the residual"});
}

}  // namespace
}  // namespace sagellm
