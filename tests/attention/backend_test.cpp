// Backend contract: registry and options, argument checks, bottom-right causal mask, masked and
// stale keys, batch independence, determinism across runs and thread counts, and the agreement of
// sealed 8-bit pages with on-the-fly quantization.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <limits>

#include "attention/sage/sage_backend.h"
#include "attention_test_util.h"
#include "core/error.h"

namespace sagellm::attention_test {
namespace {

struct Variant {
  std::string backend;
  std::string pv;
  KVCacheDType dtype;
  KVValueCodes codes() const { return pv == "int8" ? KVValueCodes::kInt8 : KVValueCodes::kFp8E4M3; }
  std::string label() const {
    return backend + (backend == "sage_attn" ? "/" + pv : "") + "/" +
           std::string(kv_cache_dtype_name(dtype));
  }
};

std::vector<Variant> all_variants() {
  std::vector<Variant> v;
  for (KVCacheDType dt : {KVCacheDType::kFloat, KVCacheDType::kInt8}) {
    v.push_back({"flash", "fp8", dt});
    v.push_back({"sage_attn", "fp8", dt});
    v.push_back({"sage_attn", "int8", dt});
    v.push_back({"sage_attn", "fp16", dt});
  }
  return v;
}

std::unique_ptr<AttentionBackend> make(const Variant& v) {
  AttentionOptions o;
  o.sage_pv_dtype = v.pv;
  return make_attention_backend(v.backend, o);
}

bool bitwise_equal(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

ProblemSpec varlen_spec() {
  return {"varlen", 8,    2, 64, 16, true, {{50, 50}, {77, 377}, {1, 1000}, {0, 40}, {20, 33}},
          3.0f,     1.0f, 77};
}

TEST(AttentionRegistry, NamesDefaultsAndErrors) {
  EXPECT_EQ(attention_backend_names(), (std::vector<std::string>{"flash", "sage_attn"}));
  auto flash = make_attention_backend("flash");
  auto sage = make_attention_backend("sage_attn");
  EXPECT_EQ(flash->name(), "flash");
  EXPECT_EQ(sage->name(), "sage_attn");
  EXPECT_EQ(flash->default_kv_cache_dtype(), KVCacheDType::kFloat);
  EXPECT_EQ(sage->default_kv_cache_dtype(), KVCacheDType::kInt8);
  try {
    make_attention_backend("xformers");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "unknown attention backend 'xformers' (choose one of: flash, sage_attn)");
  }
  AttentionOptions o;
  o.sage_pv_dtype = "bf16";
  try {
    make_attention_backend("sage_attn", o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "unknown --sage-pv-dtype 'bf16' (choose one of: fp8, int8, fp16)");
  }
  EXPECT_THROW(make_sage_backend(o), Error);
  o.sage_pv_dtype = "fp16";
  EXPECT_EQ(make_attention_backend("sage_attn", o)->name(), "sage_attn");
}

TEST(AttentionContract, RejectsBatchesThatDoNotFitTheCache) {
  ProblemSpec spec{"small", 4, 2, 64, 16, true, {{10, 40}}};
  for (const Variant& var : all_variants()) {
    Problem p = make_problem(spec, var.dtype, 0, false, var.codes());
    auto b = make(var);
    std::vector<float> out(p.q.size());
    auto expect_error = [&](const AttentionShape& sh, const AttentionBatch& batch, int layer) {
      EXPECT_THROW(b->forward(sh, batch, *p.cache, layer, p.q.data(), out.data()), Error)
          << var.label();
    };
    AttentionBatch bad = p.batch;
    bad.seqs[0].kv_len = 5;  // fewer cached tokens than new ones
    expect_error(p.shape, bad, 0);
    bad = p.batch;
    bad.seqs[0].kv_len = 49;  // needs 4 pages, has 3
    expect_error(p.shape, bad, 0);
    bad = p.batch;
    bad.seqs[0].pages[1] = 99;
    expect_error(p.shape, bad, 0);
    bad = p.batch;
    bad.seqs.push_back(bad.seqs[0]);  // overlapping rows
    expect_error(p.shape, bad, 0);
    expect_error(p.shape, p.batch, 1);  // layer
    AttentionShape sh = p.shape;
    sh.head_dim = 128;
    expect_error(sh, p.batch, 0);
    sh = p.shape;
    sh.num_heads = 5;
    expect_error(sh, p.batch, 0);
    sh = p.shape;
    sh.sm_scale = std::numeric_limits<float>::quiet_NaN();
    expect_error(sh, p.batch, 0);
  }
}

// Query i of a request with prefix P sees keys 0..P+i: each prefill row must equal the same
// token decoded alone over exactly those keys (bitwise for flash, whose numerics are per row).
TEST(AttentionContract, FlashCausalMaskIsAlignedBottomRight) {
  ProblemSpec spec{"prefix", 8, 2, 64, 16, true, {{45, 345}}, 0.0f, 1.0f, 5};
  const Problem p = make_problem(spec, KVCacheDType::kFloat);
  auto flash = make_attention_backend("flash");
  const std::vector<float> prefill = run_backend(*flash, p);
  const size_t row = static_cast<size_t>(spec.num_heads) * spec.head_dim;
  for (int i = 0; i < 45; i += 11) {
    AttentionBatch one;
    AttentionSeq s = p.batch.seqs[0];
    s.q_start = 0;
    s.q_len = 1;
    s.kv_len = 300 + i + 1;
    one.seqs.push_back(s);
    std::vector<float> out(row);
    flash->forward(p.shape, one, *p.cache, 0, &p.q[i * row], out.data());
    for (size_t d = 0; d < row; ++d) ASSERT_EQ(out[d], prefill[i * row + d]) << i;
  }
}

// Slots past kv_len (stale data of a reused page) must never be read: garbage there leaves every
// backend's output bitwise unchanged.
TEST(AttentionContract, SlotsPastKvLenAreNeverRead) {
  ProblemSpec spec{"tail", 8, 2, 64, 16, true, {{30, 70}, {1, 41}}, 2.0f, 1.0f, 9};
  for (const Variant& var : all_variants()) {
    Problem p = make_problem(spec, var.dtype, 0, false, var.codes());
    auto b = make(var);
    const std::vector<float> clean = run_backend(*b, p);
    std::vector<float> junk(static_cast<size_t>(spec.num_kv_heads) * spec.head_dim);
    for (size_t i = 0; i < junk.size(); ++i) {
      junk[i] = i % 3 == 0 ? std::numeric_limits<float>::quiet_NaN() : 1e30f;
    }
    for (const AttentionSeq& s : p.batch.seqs) {
      // Fill the tail page up to (not including) its last slot, which would seal it.
      for (int t = s.kv_len; t % spec.page_size != spec.page_size - 1; ++t) {
        p.cache->write(0, s.pages[t / spec.page_size], t % spec.page_size, junk.data(),
                       junk.data());
      }
    }
    const std::vector<float> dirty = run_backend(*b, p);
    EXPECT_TRUE(bitwise_equal(clean.data(), dirty.data(), clean.size())) << var.label();
  }
}

// Per-request numerics never depend on the rest of the batch.
TEST(AttentionContract, RequestAloneEqualsRequestInsideVarlenBatch) {
  for (const Variant& var : all_variants()) {
    const Problem p = make_problem(varlen_spec(), var.dtype, 0, false, var.codes());
    auto b = make(var);
    const std::vector<float> batched = run_backend(*b, p);
    const size_t row = static_cast<size_t>(p.spec.num_heads) * p.spec.head_dim;
    for (const AttentionSeq& s : p.batch.seqs) {
      if (s.q_len == 0) continue;
      AttentionBatch alone;
      alone.causal = p.batch.causal;
      alone.seqs.push_back(s);
      alone.seqs[0].q_start = 0;
      std::vector<float> out(static_cast<size_t>(s.q_len) * row);
      b->forward(p.shape, alone, *p.cache, 0, &p.q[s.q_start * row], out.data());
      EXPECT_TRUE(bitwise_equal(out.data(), &batched[s.q_start * row], out.size()))
          << var.label() << " request at row " << s.q_start;
    }
  }
}

TEST(AttentionContract, BitwiseDeterministicAcrossRunsAndThreadCounts) {
  const int saved = omp_get_max_threads();
  for (const Variant& var : all_variants()) {
    const Problem p = make_problem(varlen_spec(), var.dtype, 0, false, var.codes());
    auto b = make(var);
    omp_set_num_threads(2);
    const std::vector<float> first = run_backend(*b, p);
    const std::vector<float> second = run_backend(*b, p);
    omp_set_num_threads(1);
    const std::vector<float> one_thread = run_backend(*b, p);
    omp_set_num_threads(3);
    const std::vector<float> three_threads = run_backend(*b, p);
    EXPECT_TRUE(bitwise_equal(first.data(), second.data(), first.size())) << var.label();
    EXPECT_TRUE(bitwise_equal(first.data(), one_thread.data(), first.size())) << var.label();
    EXPECT_TRUE(bitwise_equal(first.data(), three_threads.data(), first.size())) << var.label();
    for (float x : first) ASSERT_TRUE(std::isfinite(x)) << var.label();
  }
  omp_set_num_threads(saved);
}

// A sealed page of the 8-bit cache and the same bf16 values quantized on the fly from a float
// cache are the same numbers (fp8 and int8 P.V read V codes in both cases).
TEST(AttentionContract, SageSealedPagesEqualOnTheFlyQuantization) {
  ProblemSpec spec = varlen_spec();
  for (const char* pv : {"fp8", "int8"}) {
    const KVValueCodes codes =
        std::string(pv) == "int8" ? KVValueCodes::kInt8 : KVValueCodes::kFp8E4M3;
    const Problem sealed = make_problem(spec, KVCacheDType::kInt8, 0, false, codes);
    const Problem on_the_fly = make_problem(spec, KVCacheDType::kFloat, 0, /*bf16=*/true);
    AttentionOptions o;
    o.sage_pv_dtype = pv;
    auto sage = make_attention_backend("sage_attn", o);
    EXPECT_EQ(sage->kv_value_codes(), codes) << pv;
    const std::vector<float> a = run_backend(*sage, sealed);
    const std::vector<float> b = run_backend(*sage, on_the_fly);
    EXPECT_TRUE(bitwise_equal(a.data(), b.data(), a.size())) << pv;
  }
}

// A cache whose sealed pages hold V in the other encoding is refused, not misread.
TEST(AttentionContract, SageRefusesACacheWithTheOtherValueCodes) {
  ProblemSpec spec = varlen_spec();
  const Problem fp8_pages = make_problem(spec, KVCacheDType::kInt8);
  AttentionOptions o;
  o.sage_pv_dtype = "int8";
  auto sage = make_attention_backend("sage_attn", o);
  std::vector<float> out(fp8_pages.q.size());
  try {
    sage->forward(fp8_pages.shape, fp8_pages.batch, *fp8_pages.cache, 0, fp8_pages.q.data(),
                  out.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stores V as fp8_e4m3 codes"), std::string::npos)
        << e.what();
  }
}

TEST(AttentionContract, EmptyBatchAndRequestsWithoutNewTokensTouchNothing) {
  ProblemSpec spec{"empty", 4, 2, 64, 16, true, {{0, 40}, {0, 0}}};
  for (const Variant& var : all_variants()) {
    const Problem p = make_problem(spec, var.dtype, 0, false, var.codes());
    auto b = make(var);
    float sentinel = 42.0f;
    b->forward(p.shape, p.batch, *p.cache, 0, nullptr, &sentinel);
    b->forward(p.shape, AttentionBatch{}, *p.cache, 0, nullptr, nullptr);
    EXPECT_EQ(sentinel, 42.0f);
  }
}

}  // namespace
}  // namespace sagellm::attention_test
