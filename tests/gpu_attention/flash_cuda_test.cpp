// The `flash` CUDA kernels against an fp64 reference and the CPU twin on the same bf16 inputs:
// head dims (native and padded), GQA groups, causal and not, q_len != kv_len, decode over
// 1..20000 keys, varlen batches on every page size kind, strided and interleaved layouts; bitwise
// reproducibility and batch independence; and the planner's routing and rejections (these need
// no GPU). GPU cases skip on machines without a GPU.
#include "attention/flash/flash_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "gpu_attention_util.h"

namespace sagellm::gpu_attention_test {
namespace {

using flash_cuda::FlashParams;
using flash_cuda::FlashPlan;
using flash_cuda::select_flash_kernel;

std::string label(const Spec& s) {
  return s.name + " H" + std::to_string(s.num_heads) + "/" + std::to_string(s.num_kv_heads) + " D" +
         std::to_string(s.head_dim) + " ps" + std::to_string(s.page_size) +
         (s.causal ? " causal" : " full");
}

void check_spec(const Spec& s) {
  const Problem p = make_problem(s);
  expect_accurate(p, run_gpu(p), label(s));
}

// Prefix of 300 cached tokens + 77 new ones (prefill kernel), a short extend and a decode step
// (split kernel), for native and padded head dims.
TEST(FlashCuda, HeadDimsWithPrefix) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 10;
  for (int hd : {8, 32, 64, 96, 128}) {
    for (bool causal : {true, false}) {
      check_spec({"prefix300+77",
                  8,
                  2,
                  hd,
                  hd == 8 ? 16 : 64,
                  causal,
                  {{77, 377}, {5, 305}, {1, 300}},
                  0.0f,
                  seed++});
    }
  }
}

TEST(FlashCuda, GqaGroups) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 20;
  for (auto [h, kvh] : {std::pair{32, 8}, std::pair{8, 8}, std::pair{3, 1}}) {
    for (int hd : {64, 128}) {
      for (bool causal : {true, false}) {
        // {64, 64} with one query head per KV head is 64 rows: the split kernel, masked inside.
        check_spec({"gqa",
                    h,
                    kvh,
                    hd,
                    32,
                    causal,
                    {{77, 377}, {1, 1000}, {5, 400}, {64, 64}},
                    0.0f,
                    seed++});
      }
    }
  }
}

// Per-channel K offsets (the outliers of real K): large, shared score shifts.
TEST(FlashCuda, KChannelOffsets) {
  SKIP_WITHOUT_GPU();
  check_spec({"k-offset", 32, 8, 128, 64, true, {{77, 377}, {1, 3000}, {9, 600}}, 4.0f, 30});
  check_spec({"k-offset", 8, 2, 64, 16, false, {{130, 130}, {1, 513}}, 4.0f, 31});
}

// One new token over 1..5000 keys (and 20000: the most splits), around every tile and split
// boundary.
TEST(FlashCuda, DecodeLengths) {
  SKIP_WITHOUT_GPU();
  std::vector<Req> reqs;
  for (int kv : {1,   2,   15,  16,  17,   63,   64,   65,   127,  128,  129,  255,  256,  257,
                 300, 511, 512, 513, 1000, 1023, 1024, 1025, 2048, 2049, 4095, 4096, 4097, 5000}) {
    reqs.push_back({1, kv});
  }
  check_spec({"decode 1..5000", 32, 8, 128, 16, true, reqs, 0.0f, 40});
  check_spec({"decode 1..5000", 8, 8, 64, 64, true, reqs, 1.0f, 41});
  check_spec({"decode 20000", 32, 8, 128, 64, true, {{1, 20000}, {2, 20000}}, 0.0f, 42});
}

// Five requests of every kind in one batch (decode, short extend on the split kernel, extend and
// empty-prefix prefill on the prefill kernel, long split), after 5 rows no request owns, on page
// sizes that are and are not powers of two.
TEST(FlashCuda, VarlenBatchPageSizes) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 50;
  for (int ps : {16, 32, 48, 64, 128}) {
    for (bool causal : {true, false}) {
      Spec s{"varlen5",
             32,
             8,
             128,
             ps,
             causal,
             {{1, 1}, {3, 700}, {77, 377}, {200, 200}, {16, 5000}},
             0.0f,
             seed++};
      s.leading_rows = 5;
      check_spec(s);
    }
  }
}

TEST(FlashCuda, EmptyPrefix) {
  SKIP_WITHOUT_GPU();
  check_spec({"q_len == kv_len",
              8,
              2,
              128,
              64,
              true,
              {{1, 1}, {16, 16}, {17, 17}, {64, 64}, {65, 65}, {1000, 1000}},
              0.0f,
              60});
  check_spec({"q_len == kv_len", 8, 2, 64, 32, true, {{63, 63}, {129, 129}, {2, 2}}, 0.0f, 61});
}

// q and o rows inside a wider buffer (a fused QKV projection), and K and V pages interleaved in
// one allocation (page_stride of two pages).
TEST(FlashCuda, StridedLayouts) {
  SKIP_WITHOUT_GPU();
  const Problem p =
      make_problem({"strided", 16, 4, 64, 32, true, {{77, 377}, {1, 900}, {4, 50}}, 0.0f, 70});
  RunOptions opt;
  opt.q_row_pad = 2 * 4 * 64;
  const std::vector<uint16_t> strided = run_gpu(p, opt);
  expect_accurate(p, strided, "fused-qkv q/o rows");
  RunOptions inter;
  inter.interleaved_kv = true;
  const std::vector<uint16_t> interleaved = run_gpu(p, inter);
  expect_accurate(p, interleaved, "interleaved K/V pages");
  // The layout changes addresses only, never arithmetic.
  EXPECT_EQ(strided, run_gpu(p));
  EXPECT_EQ(interleaved, strided);
}

Spec mixed_spec(uint64_t seed) {
  return {"mixed",
          32,
          8,
          128,
          16,
          true,
          {{1, 4097}, {77, 377}, {3, 700}, {1, 1}, {200, 200}, {1, 20000}, {16, 5000}},
          2.0f,
          seed};
}

TEST(FlashCuda, BitwiseReproducible) {
  SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    Spec s = mixed_spec(80 + hd);
    s.head_dim = hd;
    const Problem p = make_problem(s);
    const std::vector<uint16_t> first = run_gpu(p);
    for (int run = 1; run < 10; ++run) {
      ASSERT_EQ(run_gpu(p), first) << "head_dim " << hd << ", run " << run;
    }
  }
}

// Each request alone gives bitwise the rows it gets inside the batch.
TEST(FlashCuda, RequestIndependentOfBatch) {
  SKIP_WITHOUT_GPU();
  for (bool causal : {true, false}) {
    Spec s = mixed_spec(90);
    s.causal = causal;
    const Problem p = make_problem(s);
    const std::vector<uint16_t> batched = run_gpu(p);
    const size_t row_elems = static_cast<size_t>(s.num_heads) * s.head_dim;
    for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
      AttentionSeq seq = p.batch.seqs[r];
      const auto first = p.q_bf16.begin() + static_cast<ptrdiff_t>(seq.q_start * row_elems);
      const std::vector<uint16_t> q(first, first + static_cast<ptrdiff_t>(seq.q_len * row_elems));
      const int q_start = seq.q_start;
      seq.q_start = 0;
      AttentionBatch alone;
      alone.causal = causal;
      alone.seqs = {seq};
      const std::vector<uint16_t> out = run_gpu(p, alone, q, seq.q_len);
      ASSERT_EQ(out.size(), seq.q_len * row_elems);
      EXPECT_EQ(std::memcmp(out.data(), batched.data() + q_start * row_elems,
                            out.size() * sizeof(uint16_t)),
                0)
          << "request " << r << " (q_len " << seq.q_len << ", kv_len " << seq.kv_len << ", causal "
          << causal << ") differs alone and in the batch";
    }
  }
}

// ---- Planner: no GPU needed ----

AttentionBatch batch_of(std::vector<Req> reqs, int page_size, bool causal = true) {
  AttentionBatch b;
  b.causal = causal;
  int row = 0, page = 0;
  for (const Req& r : reqs) {
    AttentionSeq s;
    s.q_start = row;
    s.q_len = r.q_len;
    s.kv_len = r.kv_len;
    for (int i = 0; i < (r.kv_len + page_size - 1) / page_size; ++i) s.pages.push_back(page++);
    row += r.q_len;
    b.seqs.push_back(s);
  }
  return b;
}

TEST(FlashCudaPlan, SplitCountsDependOnKvLenOnly) {
  using namespace flash_cuda;
  EXPECT_EQ(flash_num_splits(0), 1);
  EXPECT_EQ(flash_num_splits(1), 1);
  EXPECT_EQ(flash_num_splits(kFlashBlockN), 1);
  EXPECT_EQ(flash_num_splits(kFlashSplitKeys), kFlashSplitKeys / kFlashBlockN);  // one tile each
  EXPECT_EQ(flash_num_splits(1025), 17);                                         // batch 1, 1K
  EXPECT_EQ(flash_num_splits(8192), 32);
  for (int kv = 1; kv <= 40000; kv += 7) {
    const int splits = flash_num_splits(kv), tps = flash_tiles_per_split(kv);
    const int tiles = (kv + kFlashBlockN - 1) / kFlashBlockN;
    const int want = std::min(
        std::max((kv + kFlashSplitKeys - 1) / kFlashSplitKeys, std::min(tiles, kFlashMinSplits)),
        kFlashMaxSplits);
    ASSERT_GE(splits, 1);
    ASSERT_LE(splits, kFlashMaxSplits);
    ASSERT_GE(splits * tps, tiles) << kv;        // every key is in a split
    ASSERT_LT((splits - 1) * tps, tiles) << kv;  // no split is empty
    ASSERT_GE(2 * splits, want) << kv;           // enough splits to fill the GPU
  }
}

TEST(FlashCudaPlan, RoutesEachRequestOnItsOwnLengths) {
  const AttentionShape shape{32, 8, 128, 0.088f};
  // group 4: q_len <= 16 -> split kernel.
  FlashPlan plan = select_flash_kernel(shape, batch_of({{1, 64}}, 64), 64);
  ASSERT_TRUE(plan.supported()) << plan.unsupported_reason;
  EXPECT_TRUE(plan.run_decode);
  EXPECT_FALSE(plan.run_prefill);
  EXPECT_FALSE(plan.run_combine);  // 64 keys: one tile, one split, written directly
  EXPECT_EQ(plan.split_slots, 0);

  plan = select_flash_kernel(shape, batch_of({{16, 5000}, {17, 17}, {1, 300}}, 64), 64);
  ASSERT_TRUE(plan.supported()) << plan.unsupported_reason;
  EXPECT_TRUE(plan.run_decode);
  EXPECT_TRUE(plan.run_prefill);
  EXPECT_TRUE(plan.run_combine);
  EXPECT_EQ(plan.max_prefill_q_len, 17);
  EXPECT_EQ(plan.max_decode_m_blocks, 4);
  const int s0 = flash_cuda::flash_num_splits(5000), s2 = flash_cuda::flash_num_splits(300);
  EXPECT_EQ(plan.max_splits, std::max(s0, s2));
  ASSERT_EQ(plan.split_offsets.size(), 3u);
  EXPECT_EQ(plan.split_offsets[0], 0);
  EXPECT_EQ(plan.split_offsets[2], 16 * 32 * s0);
  EXPECT_EQ(plan.split_slots, int64_t{16} * 32 * s0 + int64_t{1} * 32 * s2);
  EXPECT_EQ(plan.workspace_bytes(), static_cast<size_t>(plan.split_slots) * (128 + 2) * 4);

  std::string why;
  EXPECT_TRUE(flash_cuda::supports(shape, batch_of({{1, 1}}, 16), 16, &why)) << why;
  EXPECT_TRUE(why.empty());
}

TEST(FlashCudaPlan, RejectsWhatTheKernelsCannotDo) {
  const auto reason = [](const AttentionShape& shape, const AttentionBatch& batch, int ps) {
    const FlashPlan plan = select_flash_kernel(shape, batch, ps);
    std::string why;
    EXPECT_EQ(flash_cuda::supports(shape, batch, ps, &why), plan.supported());
    EXPECT_EQ(why, plan.unsupported_reason);
    return plan.unsupported_reason;
  };
  const AttentionBatch ok = batch_of({{3, 40}}, 16);
  EXPECT_NE(reason({8, 2, 256, 0.06f}, ok, 16).find("head_dim 256"), std::string::npos);
  EXPECT_NE(reason({8, 2, 12, 0.3f}, ok, 16).find("head_dim 12"), std::string::npos);
  EXPECT_NE(reason({8, 2, 64, 0.125f}, ok, 24).find("page size 24"), std::string::npos);
  EXPECT_NE(reason({8, 2, 64, 0.125f}, ok, 0).find("page size 0"), std::string::npos);
  EXPECT_NE(reason({6, 4, 64, 0.125f}, ok, 16).find("cannot share"), std::string::npos);
  EXPECT_NE(reason({8, 2, 64, 0.0f}, ok, 16).find("sm_scale"), std::string::npos);
  AttentionBatch gap = batch_of({{3, 40}, {2, 20}}, 16);
  gap.seqs[1].q_start += 1;
  EXPECT_NE(reason({8, 2, 64, 0.125f}, gap, 16).find("contiguous"), std::string::npos);
  AttentionBatch short_kv = batch_of({{3, 40}}, 16);
  short_kv.seqs[0].kv_len = 2;
  EXPECT_NE(reason({8, 2, 64, 0.125f}, short_kv, 16).find("kv_len"), std::string::npos);
  AttentionBatch few_pages = batch_of({{3, 40}}, 16);
  few_pages.seqs[0].pages.pop_back();
  EXPECT_NE(reason({8, 2, 64, 0.125f}, few_pages, 16).find("pages"), std::string::npos);
  for (int hd : {8, 16, 24, 40, 64, 72, 96, 120, 128}) {
    EXPECT_EQ(reason({8, 2, hd, 0.1f}, ok, 16), "") << hd;
  }
  for (int ps : {16, 32, 48, 64, 128, 256}) EXPECT_EQ(reason({8, 2, 64, 0.1f}, ok, ps), "") << ps;
}

TEST(FlashCudaPlan, LaunchThrowsOnUnsupportedOrMismatchedParams) {
  const AttentionShape bad{8, 2, 256, 0.06f};
  const FlashPlan unsupported = select_flash_kernel(bad, batch_of({{1, 10}}, 16), 16);
  ASSERT_FALSE(unsupported.supported());
  FlashParams params = flash_cuda::flash_params_for(unsupported);
  EXPECT_THROW(flash_cuda::flash_attention_cuda(unsupported, params, nullptr), Error);

  const AttentionShape shape{8, 2, 64, 0.125f};
  const FlashPlan plan = select_flash_kernel(shape, batch_of({{1, 10}}, 16), 16);
  ASSERT_TRUE(plan.supported());
  params = flash_cuda::flash_params_for(plan);
  params.head_dim = 128;  // does not match the plan
  EXPECT_THROW(flash_cuda::flash_attention_cuda(plan, params, nullptr), Error);
  params = flash_cuda::flash_params_for(plan);  // pointers missing
  EXPECT_THROW(flash_cuda::flash_attention_cuda(plan, params, nullptr), Error);
  try {
    flash_cuda::flash_attention_cuda(plan, params, nullptr);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("flash (CUDA)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sagellm::gpu_attention_test
