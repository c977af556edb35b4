// The measurement behind sage_attn's choice of softmax denominator (sage_numerics.h): summing the
// quantized P (the weights that actually multiply V) against summing the fp32 P, both against
// exact fp64 attention, over random-normal inputs with and without K offsets.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "attention/sage/sage_backend.h"
#include "attention_test_util.h"

namespace sagellm::attention_test {
namespace {

TEST(SageRowSum, QuantizedPSumIsTheMoreAccurateChoice) {
  std::vector<ProblemSpec> specs = {
      {"d128 gqa8/2 causal 512 ps64", 8, 2, 128, 64, true, {{512, 512}}},
      {"d64 gqa8/2 decode q1 kv1000 ps64", 8, 2, 64, 64, true, {{1, 1000}, {1, 777}, {1, 1500}}},
      {"d64 mha4 noncausal 256x512 ps16", 4, 4, 64, 16, false, {{256, 512}}},
      {"d128 gqa8/2 causal 512 ps64 peaky (q sigma 3)", 8, 2, 128, 64, true, {{512, 512}}},
  };
  specs[3].q_sigma = 3.0f;
  for (const char* pv : {"fp8", "fp16"}) {
    AttentionOptions o;
    o.sage_pv_dtype = pv;
    auto quantized = make_sage_backend(o, SageRowSum::kQuantizedP);
    auto exact = make_sage_backend(o, SageRowSum::kFloatP);
    double sum_q = 0.0, sum_f = 0.0;
    int wins = 0, cases = 0;
    for (ProblemSpec spec : specs) {
      for (float offset : {0.0f, 5.0f}) {
        for (uint64_t seed : {11}) {
          spec.k_offset_sigma = offset;
          spec.seed = seed;
          const Problem p = make_problem(spec, KVCacheDType::kFloat);
          const std::vector<double> ref = reference_attention(p);
          const Metrics mq = compare(run_backend(*quantized, p), ref);
          const Metrics mf = compare(run_backend(*exact, p), ref);
          std::printf(
              "[row-sum] %-4s %-48s K offset %.0f seed %d: rel-L1 quantized-P %.4e, fp32-P %.4e\n",
              pv, spec.name.c_str(), offset, static_cast<int>(seed), mq.rel_l1, mf.rel_l1);
          sum_q += mq.rel_l1;
          sum_f += mf.rel_l1;
          wins += mq.rel_l1 <= mf.rel_l1 ? 1 : 0;
          ++cases;
        }
      }
    }
    std::printf(
        "[row-sum] %s mean rel-L1: quantized-P %.4e, fp32-P %.4e; quantized-P better or equal "
        "in %d of %d cases\n",
        pv, sum_q / cases, sum_f / cases, wins, cases);
    // The choice must not lose: strictly better on average in fp8 (where P is coarse), and at
    // least as good in fp16 (where both are within fp32 noise of each other).
    if (std::string(pv) == "fp8") {
      EXPECT_LT(sum_q, sum_f);
      EXPECT_GE(wins, cases * 3 / 4);  // measured: 6 of 8 (seed 11); 14 of 16 (seeds 11, 12)
    } else {
      EXPECT_LE(sum_q, sum_f * 1.002);
    }
  }
}

}  // namespace
}  // namespace sagellm::attention_test
