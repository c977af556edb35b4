// fp32 <-> bf16 conversions: bf16 -> fp32 is exact; fp32 -> bf16 rounds to nearest even exactly
// as float_to_bf16 (core/dtype.h), so both are compared bit for bit.
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::bf16;
class CastGpu : public testing::GpuTest {};

// Floats over the whole exponent range (subnormals to overflow), plus the special values.
std::vector<float> tricky_floats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> v(n);
  for (float& x : v) {
    do {
      x = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    } while (std::isnan(x));
  }
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::denorm_min(),
                            1.0f + 1.0f / 256.0f,  // a tie: rounds to even (1.0)
                            1.0f + 3.0f / 256.0f,  // a tie: rounds to even (1 + 4/256)
                            3.3961776e38f};        // rounds up to infinity
  for (size_t i = 0; i < std::size(specials) && i < n; ++i) v[i * 7 % n] = specials[i];
  return v;
}

std::vector<uint16_t> gpu_f32_to_bf16(const std::vector<float>& in, size_t in_offset,
                                      size_t out_offset) {
  std::vector<float> padded(in_offset, 1.0f);
  padded.insert(padded.end(), in.begin(), in.end());
  auto d_in = testing::upload(padded);
  DeviceBuffer<bf16> d_out(out_offset + in.size());
  gpu::f32_to_bf16(d_in.data() + in_offset, d_out.data() + out_offset,
                   static_cast<int64_t>(in.size()), nullptr);
  const std::vector<bf16> out = testing::download(d_out);
  std::vector<uint16_t> bits;
  for (size_t i = out_offset; i < out.size(); ++i) bits.push_back(testing::bits_of(out[i]));
  return bits;
}

void check_f32_to_bf16(size_t n, size_t in_offset, size_t out_offset) {
  SCOPED_TRACE(::testing::Message() << "n " << n << " offsets " << in_offset << "/" << out_offset);
  std::vector<float> in = tricky_floats(n, n);
  in[n / 2] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<uint16_t> got = gpu_f32_to_bf16(in, in_offset, out_offset);
  size_t mismatches = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(in[i])) {
      EXPECT_TRUE(std::isnan(bf16_to_float(got[i])));
    } else if (got[i] != float_to_bf16(in[i])) {
      if (++mismatches < 5) ADD_FAILURE() << "at " << i << ": " << in[i] << " -> " << got[i];
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST_F(CastGpu, F32ToBf16RoundsToNearestEven) {
  check_f32_to_bf16(1000003, 0, 0);  // vector path and a tail of 3
  check_f32_to_bf16(4099, 1, 0);     // misaligned input: scalar path
  check_f32_to_bf16(4099, 0, 3);     // misaligned output
  check_f32_to_bf16(5, 0, 0);        // tail only
}

TEST_F(CastGpu, Bf16ToF32IsExactForEveryBitPattern) {
  for (size_t offset : {size_t{0}, size_t{1}}) {
    std::vector<bf16> all(offset + 65536 + 5);
    for (size_t i = 0; i < all.size(); ++i) {
      all[i] = std::bit_cast<bf16>(static_cast<uint16_t>(i - offset));
    }
    auto d_in = testing::upload(all);
    DeviceBuffer<float> d_out(all.size());
    gpu::bf16_to_f32(d_in.data() + offset, d_out.data() + offset,
                     static_cast<int64_t>(all.size() - offset), nullptr);
    const std::vector<float> out = testing::download(d_out);
    size_t mismatches = 0;
    for (size_t i = offset; i < all.size(); ++i) {
      const float want = bf16_to_float(testing::bits_of(all[i]));
      const bool same = std::isnan(want)
                            ? std::isnan(out[i])
                            : std::bit_cast<uint32_t>(out[i]) == std::bit_cast<uint32_t>(want);
      if (!same) ++mismatches;
    }
    EXPECT_EQ(mismatches, 0u) << "offset " << offset;
  }
}

}  // namespace
}  // namespace sagellm
