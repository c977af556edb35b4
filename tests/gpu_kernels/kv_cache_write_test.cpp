// KV-cache scatter against a host model of the paged layout: a copy, so bit-exact, and nothing
// outside the named slots may change.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/ops.h"

namespace sagellm {
namespace {

using testing::bf16;
using testing::expect_error;
class KvCacheWriteGpu : public testing::GpuTest {};

struct KvCase {
  int rows;
  int kv_heads;
  int head_dim;
  int page_size;
  int num_pages;
  int q_heads;  // K and V are views into fused [q | k | v] rows
};

void check_kv_write(const KvCase& c, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "rows " << c.rows << " head_dim " << c.head_dim);
  const int64_t stride = int64_t(c.q_heads + 2 * c.kv_heads) * c.head_dim;
  const std::vector<float> qkv = testing::random_bf16_values(size_t(c.rows) * stride, seed);
  // Distinct (page, slot) targets; every fifth row is padding (page -1).
  std::vector<int32_t> targets(size_t(c.num_pages) * c.page_size);
  std::iota(targets.begin(), targets.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(targets.begin(), targets.end(), rng);
  std::vector<int32_t> pages(c.rows);
  std::vector<int32_t> slots(c.rows);
  for (int t = 0; t < c.rows; ++t) {
    pages[t] = t % 5 == 4 ? -1 : targets[t] / c.page_size;
    slots[t] = targets[t] % c.page_size;
  }
  EXPECT_NO_THROW(gpu::validate_kv_slots(pages, slots, c.num_pages, c.page_size));

  const size_t cache_elems = size_t(c.num_pages) * c.kv_heads * c.page_size * c.head_dim;
  const std::vector<float> k_init = testing::random_bf16_values(cache_elems, seed + 1, 100.0f);
  const std::vector<float> v_init = testing::random_bf16_values(cache_elems, seed + 2, 100.0f);
  std::vector<float> k_want = k_init;
  std::vector<float> v_want = v_init;
  for (int t = 0; t < c.rows; ++t) {
    if (pages[t] < 0) continue;
    for (int h = 0; h < c.kv_heads; ++h) {
      for (int d = 0; d < c.head_dim; ++d) {
        const size_t dst =
            ((size_t(pages[t]) * c.kv_heads + h) * c.page_size + slots[t]) * c.head_dim + d;
        const size_t src = size_t(t) * stride + size_t(c.q_heads + h) * c.head_dim + d;
        k_want[dst] = qkv[src];
        v_want[dst] = qkv[src + size_t(c.kv_heads) * c.head_dim];
      }
    }
  }

  auto d_qkv = testing::upload(testing::to_bf16(qkv));
  auto d_k = testing::upload(testing::to_bf16(k_init));
  auto d_v = testing::upload(testing::to_bf16(v_init));
  auto d_pages = testing::upload(pages);
  auto d_slots = testing::upload(slots);
  gpu::KVCacheWriteParams p;
  p.k = d_qkv.data() + int64_t(c.q_heads) * c.head_dim;
  p.k_row_stride = stride;
  p.v = p.k + int64_t(c.kv_heads) * c.head_dim;
  p.v_row_stride = stride;
  p.k_cache = d_k.data();
  p.v_cache = d_v.data();
  p.pages = d_pages.data();
  p.slots = d_slots.data();
  p.rows = c.rows;
  p.kv_heads = c.kv_heads;
  p.head_dim = c.head_dim;
  p.page_size = c.page_size;
  p.num_pages = c.num_pages;
  gpu::kv_cache_write(p, nullptr);
  EXPECT_EQ(testing::to_float(testing::download(d_k)), k_want);
  EXPECT_EQ(testing::to_float(testing::download(d_v)), v_want);
}

TEST_F(KvCacheWriteGpu, VectorPath) { check_kv_write({40, 2, 64, 16, 6, 4}, 31); }

TEST_F(KvCacheWriteGpu, HeadDim128) { check_kv_write({100, 8, 128, 64, 3, 32}, 32); }

TEST_F(KvCacheWriteGpu, ScalarPath) { check_kv_write({30, 3, 10, 8, 5, 1}, 33); }

TEST_F(KvCacheWriteGpu, ManyRows) { check_kv_write({70000, 1, 8, 64, 1100, 0}, 34); }

TEST_F(KvCacheWriteGpu, SkipsOutOfRangeTargets) {
  const int head_dim = 8;
  const std::vector<float> kv = testing::random_bf16_values(2 * head_dim, 5);
  auto d_k = testing::upload(testing::to_bf16(kv));
  const std::vector<float> init(2 * 4 * head_dim, 3.0f);  // 2 pages of 4 slots
  auto d_kc = testing::upload(testing::to_bf16(init));
  auto d_vc = testing::upload(testing::to_bf16(init));
  auto d_pages = testing::upload(std::vector<int32_t>{2, 0});
  auto d_slots = testing::upload(std::vector<int32_t>{0, 4});
  gpu::KVCacheWriteParams p;
  p.k = d_k.data();
  p.v = d_k.data();
  p.k_cache = d_kc.data();
  p.v_cache = d_vc.data();
  p.pages = d_pages.data();
  p.slots = d_slots.data();
  p.rows = 2;
  p.kv_heads = 1;
  p.head_dim = head_dim;
  p.page_size = 4;
  p.num_pages = 2;
  gpu::kv_cache_write(p, nullptr);
  EXPECT_EQ(testing::to_float(testing::download(d_kc)), init);
  EXPECT_EQ(testing::to_float(testing::download(d_vc)), init);
}

TEST(KvCacheSlots, ValidationNamesTheBadRow) {
  const std::vector<int32_t> pages = {0, -1, 3};
  const std::vector<int32_t> slots = {1, 99, 2};
  expect_error([&] { gpu::validate_kv_slots(pages, slots, 3, 4); },
               {"row 2 names page 3", "[0, 3)"});
  const std::vector<int32_t> bad_slots = {4, 0, 0};
  expect_error([&] { gpu::validate_kv_slots(pages, bad_slots, 4, 4); }, {"row 0 names slot 4"});
  expect_error([&] { gpu::validate_kv_slots(pages, std::vector<int32_t>{1}, 4, 4); },
               {"3 pages but 1 slots"});
  EXPECT_NO_THROW(gpu::validate_kv_slots(pages, slots, 4, 4));  // slot 99 belongs to padding
}

}  // namespace
}  // namespace sagellm
