// RoPE in place on bf16 q/k rows against sagellm::Rope (the CPU twin), including llama3 scaling
// and positions up to 128K.
//
// Bound: both sides use the same fp32 angle. The twin's cos/sin are correctly rounded (computed
// in double), the kernel's cosf/sinf are within 2 ulp, so each differs by at most 2.5 ulp
// <= 5 * 2^-24 relative; the two products and the sum add 2^-24 each per side. With
// x1*c - x2*s (or x2*c + x1*s) cancelling, the error is relative to |x1| + |x2|, not to the
// result: e32 = 10 * 2^-24 * (|x1| + |x2|). Then the final bf16 rounding (gpu_test_util.h).
#include "model/rope.h"

#include <fmt/format.h>

#include <cstdint>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "io/model_config.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::bf16;
using testing::expect_error;
class RopeGpu : public testing::GpuTest {};

io::RopeConfig default_rope() {
  io::RopeConfig r;
  r.theta = 10000.0;
  return r;
}

io::RopeConfig llama3_rope() {
  io::RopeConfig r;
  r.type = "llama3";
  r.theta = 500000.0;
  r.factor = 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position_embeddings = 8192;
  return r;
}

struct RopeCase {
  io::RopeConfig rope;
  int rows;
  int head_dim;
  int q_heads;
  int k_heads;
  int v_heads;  // untouched heads after k in the fused row
};

std::vector<uint16_t> run_case(const RopeCase& c, const std::vector<float>& qkv,
                               const std::vector<int32_t>& positions) {
  const std::vector<float> inv_freq = rope_inv_freq(c.rope, c.head_dim);
  const int64_t stride = int64_t(c.q_heads + c.k_heads + c.v_heads) * c.head_dim;
  auto d_qkv = testing::upload(testing::to_bf16(qkv));
  auto d_inv = testing::upload(inv_freq);
  auto d_pos = testing::upload(positions);
  gpu::RopeParams p;
  p.q = c.q_heads ? d_qkv.data() : nullptr;
  p.q_heads = c.q_heads;
  p.q_row_stride = stride;
  p.k = c.k_heads ? d_qkv.data() + int64_t(c.q_heads) * c.head_dim : nullptr;
  p.k_heads = c.k_heads;
  p.k_row_stride = stride;
  p.rows = c.rows;
  p.head_dim = c.head_dim;
  p.inv_freq = d_inv.data();
  p.positions = d_pos.data();
  gpu::rope(p, nullptr);
  std::vector<uint16_t> bits;
  for (bf16 b : testing::download(d_qkv)) bits.push_back(testing::bits_of(b));
  return bits;
}

void check_rope(const RopeCase& c, uint64_t seed) {
  const std::string what =
      fmt::format("rope {} rows {} head_dim {}", c.rope.type, c.rows, c.head_dim);
  SCOPED_TRACE(what);
  const int heads = c.q_heads + c.k_heads + c.v_heads;
  const int hd = c.head_dim;
  const int half = hd / 2;
  const std::vector<float> qkv = testing::random_bf16_values(size_t(c.rows) * heads * hd, seed);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pos_dist(0, 131071);
  std::vector<int32_t> positions(c.rows);
  for (int32_t& p : positions) p = pos_dist(rng);
  positions[0] = 0;
  if (c.rows > 2) {
    positions[1] = 1;
    positions[2] = 131071;
  }

  const std::vector<uint16_t> got_bits = run_case(c, qkv, positions);

  const Rope rope(c.rope, hd);
  std::vector<float> cs(hd);
  std::vector<float> got;
  std::vector<double> ref;
  std::vector<double> bound;
  size_t v_changed = 0;
  for (int t = 0; t < c.rows; ++t) {
    const float* row = qkv.data() + size_t(t) * heads * hd;
    std::vector<float> rotated(row, row + size_t(c.q_heads + c.k_heads) * hd);
    rope.angles(positions[t], cs.data());
    rope.apply(rotated.data(), c.q_heads + c.k_heads, cs.data());
    for (int h = 0; h < c.q_heads + c.k_heads; ++h) {
      for (int i = 0; i < hd; ++i) {
        const size_t at = size_t(h) * hd + i;
        const float partner = row[size_t(h) * hd + (i < half ? i + half : i - half)];
        const double e32 = 10 * testing::kF32Unit * (std::fabs(row[at]) + std::fabs(partner));
        got.push_back(bf16_to_float(got_bits[size_t(t) * heads * hd + at]));
        ref.push_back(rotated[at]);
        bound.push_back(testing::bf16_output_bound(rotated[at], e32));
      }
    }
    for (size_t at = size_t(c.q_heads + c.k_heads) * hd; at < size_t(heads) * hd; ++at) {
      if (bf16_to_float(got_bits[size_t(t) * heads * hd + at]) != row[at]) ++v_changed;
    }
  }
  testing::expect_within_bounds(what, testing::compare(got, ref, bound), got, ref);
  EXPECT_EQ(v_changed, 0u) << "values outside q and k were modified";
  EXPECT_EQ(got_bits, run_case(c, qkv, positions)) << "not deterministic";
}

TEST_F(RopeGpu, MatchesCpuHeadDim128) { check_rope({default_rope(), 300, 128, 4, 2, 2}, 21); }

TEST_F(RopeGpu, MatchesCpuLlama3Scaling) { check_rope({llama3_rope(), 200, 64, 3, 1, 1}, 22); }

TEST_F(RopeGpu, OddHalfAndQueryOnly) { check_rope({default_rope(), 17, 10, 5, 0, 0}, 23); }

TEST_F(RopeGpu, KeyOnlyManyRows) { check_rope({llama3_rope(), 66000, 16, 0, 1, 1}, 24); }

// The fused rope + cache write of a decode step against the two kernels it replaces, bit for bit:
// q/k rotated in place, K (rotated) and V in their slots, padding rows (page -1) and out-of-pool
// targets skipped, nothing else in the cache touched.
std::vector<uint16_t> bits(const std::vector<bf16>& v) {
  std::vector<uint16_t> out;
  for (bf16 b : v) out.push_back(testing::bits_of(b));
  return out;
}

void check_rope_kv_write(int rows, int q_heads, int kv_heads, int head_dim, int page_size,
                         int num_pages, uint64_t seed) {
  SCOPED_TRACE(fmt::format("rope_kv_write rows {} q {} kv {} head_dim {}", rows, q_heads, kv_heads,
                           head_dim));
  const int64_t stride = int64_t(q_heads + 2 * kv_heads) * head_dim;
  const std::vector<bf16> qkv =
      testing::to_bf16(testing::random_bf16_values(size_t(rows) * stride, seed));
  const size_t cache_elems = size_t(num_pages) * kv_heads * page_size * head_dim;
  const std::vector<bf16> k_init =
      testing::to_bf16(testing::random_bf16_values(cache_elems, seed + 1, 50.0f));
  const std::vector<bf16> v_init =
      testing::to_bf16(testing::random_bf16_values(cache_elems, seed + 2, 50.0f));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pos_dist(0, 131071);
  std::vector<int32_t> positions(rows), pages(rows), slots(rows);
  for (int t = 0; t < rows; ++t) {
    positions[t] = pos_dist(rng);
    // Distinct targets (so the order of the rows' writes cannot matter), a padding row and a page
    // outside the pool now and then.
    pages[t] = t % 7 == 3 ? -1 : t % 7 == 5 ? num_pages : (t / page_size) % num_pages;
    slots[t] = t % page_size;
  }
  const std::vector<float> inv_freq = rope_inv_freq(llama3_rope(), head_dim);
  auto d_inv = testing::upload(inv_freq);
  auto d_pos = testing::upload(positions);
  auto d_pages = testing::upload(pages);
  auto d_slots = testing::upload(slots);
  struct Out {
    std::vector<uint16_t> qkv, k, v;
  };
  auto run = [&](bool fused) {
    auto d_qkv = testing::upload(qkv);
    auto d_k = testing::upload(k_init);
    auto d_v = testing::upload(v_init);
    bf16* base = d_qkv.data();
    gpu::RopeParams rp;
    rp.q = base;
    rp.q_heads = q_heads;
    rp.q_row_stride = stride;
    rp.k = base + int64_t(q_heads) * head_dim;
    rp.k_heads = kv_heads;
    rp.k_row_stride = stride;
    rp.rows = rows;
    rp.head_dim = head_dim;
    rp.inv_freq = d_inv.data();
    rp.positions = d_pos.data();
    gpu::KVCacheWriteParams kw;
    kw.k = rp.k;
    kw.k_row_stride = stride;
    kw.v = rp.k + int64_t(kv_heads) * head_dim;
    kw.v_row_stride = stride;
    kw.k_cache = d_k.data();
    kw.v_cache = d_v.data();
    kw.pages = d_pages.data();
    kw.slots = d_slots.data();
    kw.rows = rows;
    kw.kv_heads = kv_heads;
    kw.head_dim = head_dim;
    kw.page_size = page_size;
    kw.num_pages = num_pages;
    if (fused) {
      gpu::rope_kv_write(rp, kw, nullptr);
    } else {
      gpu::rope(rp, nullptr);
      gpu::kv_cache_write(kw, nullptr);
    }
    return Out{bits(testing::download(d_qkv)), bits(testing::download(d_k)),
               bits(testing::download(d_v))};
  };
  const Out want = run(false);
  const Out got = run(true);
  EXPECT_EQ(got.qkv, want.qkv);
  EXPECT_EQ(got.k, want.k);
  EXPECT_EQ(got.v, want.v);
  EXPECT_NE(want.k, bits(k_init)) << "the case wrote nothing";
}

TEST_F(RopeGpu, FusedCacheWriteEqualsRopeThenWrite) {
  check_rope_kv_write(1, 32, 8, 128, 64, 4, 41);  // a Llama-3-8B decode row
  check_rope_kv_write(37, 4, 2, 64, 16, 5, 42);
  check_rope_kv_write(9, 3, 1, 10, 8, 3, 43);  // odd half, scalar layout
}

TEST_F(RopeGpu, FusedCacheWriteRejectsAMismatchedK) {
  gpu::RopeParams rp;
  rp.rows = 1;
  rp.head_dim = 8;
  rp.k_heads = 1;
  auto d = testing::upload(testing::to_bf16(std::vector<float>(64, 1.0f)));
  rp.k = d.data();
  auto d_inv = testing::upload(std::vector<float>(4, 1.0f));
  auto d_pos = testing::upload(std::vector<int32_t>{0});
  rp.inv_freq = d_inv.data();
  rp.positions = d_pos.data();
  gpu::KVCacheWriteParams kw;
  kw.rows = 1;
  kw.kv_heads = 1;
  kw.head_dim = 8;
  kw.k = rp.k + 8;  // not the rotated rows
  kw.page_size = 4;
  kw.num_pages = 1;
  expect_error([&] { gpu::rope_kv_write(rp, kw, nullptr); }, {"rope_kv_write: the cache's K"});
}

TEST_F(RopeGpu, RejectsBadArguments) {
  gpu::RopeParams p;
  p.rows = 1;
  p.head_dim = 7;
  p.q_heads = 1;
  expect_error([&] { gpu::rope(p, nullptr); }, {"head_dim must be even"});
  p.head_dim = 8;
  p.q_row_stride = 4;
  expect_error([&] { gpu::rope(p, nullptr); }, {"row stride is smaller"});
  p.q_row_stride = 0;
  expect_error([&] { gpu::rope(p, nullptr); }, {"rope: null"});
}

}  // namespace
}  // namespace sagellm
