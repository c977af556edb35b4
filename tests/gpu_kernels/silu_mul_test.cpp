// SiLU(gate) * up against cpu::silu_mul.
//
// Bound: expf is within 2 ulp on the GPU and 1 ulp in glibc, so e^-g differs by at most
// 3 ulp <= 6 * 2^-24 relative, and so does 1 + e^-g; that sum, the division and the product
// add 2^-24 each per side: 12 * 2^-24, rounded up to e32 = 16 * 2^-24 * |ref|. Then the final
// bf16 rounding (gpu_test_util.h).
#include <fmt/format.h>

#include <cstdint>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::bf16;
using testing::expect_error;
class SiluMulGpu : public testing::GpuTest {};

std::vector<uint16_t> run_gpu(const std::vector<float>& gate_up, int rows, int inter,
                              size_t offset) {
  std::vector<bf16> in(offset, testing::to_bf16(1.0f));
  const std::vector<bf16> b = testing::to_bf16(gate_up);
  in.insert(in.end(), b.begin(), b.end());
  auto d_in = testing::upload(in);
  DeviceBuffer<bf16> d_out(offset + size_t(rows) * inter);
  gpu::silu_mul(d_in.data() + offset, d_out.data() + offset, rows, inter, nullptr);
  const std::vector<bf16> out = testing::download(d_out);
  std::vector<uint16_t> bits;
  for (size_t i = offset; i < out.size(); ++i) bits.push_back(testing::bits_of(out[i]));
  return bits;
}

void check_silu_mul(int rows, int inter, size_t offset) {
  const std::string what = fmt::format("silu_mul rows {} inter {} offset {}", rows, inter, offset);
  SCOPED_TRACE(what);
  // Gates spread wide (stddev 4) so both tails of the sigmoid are exercised.
  std::vector<float> gate_up = testing::random_bf16_values(size_t(rows) * 2 * inter, inter, 4.0f);
  std::vector<float> want(size_t(rows) * inter);
  cpu::silu_mul(gate_up.data(), want.data(), rows, inter);
  const std::vector<uint16_t> bits = run_gpu(gate_up, rows, inter, offset);
  std::vector<float> got;
  std::vector<double> ref(want.begin(), want.end());
  std::vector<double> bound;
  for (size_t i = 0; i < want.size(); ++i) {
    got.push_back(bf16_to_float(bits[i]));
    bound.push_back(
        testing::bf16_output_bound(want[i], 16 * testing::kF32Unit * std::fabs(want[i])));
  }
  testing::expect_within_bounds(what, testing::compare(got, ref, bound), got, ref);
  EXPECT_EQ(bits, run_gpu(gate_up, rows, inter, offset)) << "not deterministic";
}

TEST_F(SiluMulGpu, MatchesCpu) {
  check_silu_mul(1, 14336, 0);  // decode row, Llama-3-8B width
  check_silu_mul(33, 1376, 0);
  check_silu_mul(7, 77, 0);     // inter % 8 != 0: scalar path
  check_silu_mul(9, 256, 3);    // misaligned
  check_silu_mul(70000, 8, 0);  // many rows
}

TEST_F(SiluMulGpu, RejectsBadArguments) {
  expect_error([] { gpu::silu_mul(nullptr, nullptr, 1, 0, nullptr); }, {"silu_mul: bad shape"});
  expect_error([] { gpu::silu_mul(nullptr, nullptr, 1, 8, nullptr); }, {"null pointer"});
}

}  // namespace
}  // namespace sagellm
