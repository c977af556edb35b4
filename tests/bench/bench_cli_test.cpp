// `sagellm bench` and `sagellm bench-attention` as a user runs them: JSON that parses, numbers
// consistent with each other and with the formulas the output states, skipped cells with their
// reason, and one clear error for bad flags.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/fixtures.h"
#include "common/run_command.h"

namespace sagellm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::CommandResult;

std::string quote(const std::string& s) { return "'" + s + "'"; }

CommandResult sagellm(const std::string& args) {
  return testing::run_command(quote(testing::sagellm_binary()) + " " + args);
}

std::string stories() { return quote(testing::model_dir("stories260K").string()); }

json run_json(const std::string& args) {
  const CommandResult r = sagellm(args + " --json");
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  if (r.exit_code != 0) return json::object();
  return json::parse(r.out);
}

void expect_clean_error(const CommandResult& r, const std::string& fragment) {
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_LT(r.exit_code, 128) << "crashed: " << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

// The shape of the attention cases below: small enough for an exact fp64 check of every row.
std::string small_shape(int batch = 2, int repeats = 3) {
  return "--batch " + std::to_string(batch) + " --repeats " + std::to_string(repeats) +
         " --heads 4 --kv-heads 2 --head-dim 64 --page-size 16 --warmup 1 ";
}

double flops_of(const json& shape, const json& c) {
  double f = 4.0 * shape["batch"].get<double>() * shape["heads"].get<double>() *
             c["q_len"].get<double>() * c["kv_len"].get<double>() * shape["head_dim"].get<double>();
  return c["causal"].get<bool>() ? f / 2 : f;
}

TEST(BenchAttention, FlashPrefillTimingsFormulaAndExactAccuracy) {
  const json j = run_json("bench-attention " + small_shape() +
                          "--seq-lens 40,96 --causal --reference-rows 0 --seed 3");
  ASSERT_TRUE(j.contains("cases")) << j.dump();
  EXPECT_EQ(j["backend"], "flash");
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_FALSE(j["commit"].get<std::string>().empty());
  EXPECT_NE(j["command_line"].get<std::string>().find("bench-attention"), std::string::npos);
  const json& shape = j["shape"];
  ASSERT_EQ(j["cases"].size(), 2u);
  int i = 0;
  for (const json& c : j["cases"]) {
    const int n = i++ == 0 ? 40 : 96;
    EXPECT_EQ(c["seq_len"], n);
    EXPECT_EQ(c["q_len"], n);
    EXPECT_EQ(c["kv_len"], n);
    EXPECT_TRUE(c["causal"].get<bool>());
    ASSERT_EQ(c["seconds"].size(), 3u);
    double lo = 1e300, hi = 0;
    for (const json& s : c["seconds"]) {
      EXPECT_GT(s.get<double>(), 0.0);
      lo = std::min(lo, s.get<double>());
      hi = std::max(hi, s.get<double>());
    }
    const double med = c["median_seconds"].get<double>();
    EXPECT_GE(med, lo);
    EXPECT_LE(med, hi);
    EXPECT_DOUBLE_EQ(c["min_seconds"].get<double>(), lo);
    // 4*B*H*N^2*D, halved for causal, over the median time.
    const double flops = flops_of(shape, c);
    EXPECT_DOUBLE_EQ(c["flops"].get<double>(), 4.0 * 2 * 4 * n * n * 64 / 2);
    EXPECT_DOUBLE_EQ(c["flops"].get<double>(), flops);
    EXPECT_NEAR(c["tflops_per_s"].get<double>(), flops / med * 1e-12,
                1e-9 * c["tflops_per_s"].get<double>());
    // The float cache holds bf16-sized K and V: 2 (K, V) x KV heads x D x 2 bytes per token.
    EXPECT_DOUBLE_EQ(c["kv_bytes"].get<double>(), 2.0 * n * (2 * 2 * 64 * 2));
    // Every row checked; the CPU flash backend computes in fp32 on bf16-valued inputs.
    const json& acc = c["accuracy"];
    EXPECT_EQ(acc["rows_checked"], 2 * n * 4);
    EXPECT_EQ(acc["rows_total"], 2 * n * 4);
    EXPECT_EQ(acc["non_finite"], 0);
    EXPECT_GT(acc["cosine"].get<double>(), 1.0 - 1e-9);
    EXPECT_LT(acc["rel_l1"].get<double>(), 1e-5);
    EXPECT_GT(acc["rel_l1"].get<double>(), 0.0);  // fp32 is not fp64: an error of zero is a bug
    EXPECT_LT(acc["rmse"].get<double>(), 1e-5);
  }
}

TEST(BenchAttention, SageIsLessAccurateThanFlashButWithinBounds) {
  const std::string common = small_shape(2, 1) + "--seq-lens 160 --k-offset 5 --seed 11 ";
  const json flash = run_json("bench-attention --backend flash " + common);
  const json sage = run_json("bench-attention --backend sage_attn " + common);
  ASSERT_TRUE(flash.contains("cases") && sage.contains("cases"));
  EXPECT_EQ(sage["backend"], "sage_attn");
  EXPECT_EQ(sage["sage_pv_dtype"], "fp8");
  const json& f = flash["cases"][0]["accuracy"];
  const json& s = sage["cases"][0]["accuracy"];
  std::printf("[bench-attention] rel-L1 flash %.3e sage_attn %.3e, cosine %.7f %.7f\n",
              f["rel_l1"].get<double>(), s["rel_l1"].get<double>(), f["cosine"].get<double>(),
              s["cosine"].get<double>());
  EXPECT_GT(s["rel_l1"].get<double>(), 10 * f["rel_l1"].get<double>());
  EXPECT_LT(s["rel_l1"].get<double>(), 0.05);
  EXPECT_GT(s["cosine"].get<double>(), 0.99);
  EXPECT_LT(s["cosine"].get<double>(), f["cosine"].get<double>());
  // Non-causal: the FLOPs are not halved.
  EXPECT_FALSE(sage["cases"][0]["causal"].get<bool>());
  EXPECT_DOUBLE_EQ(sage["cases"][0]["flops"].get<double>(), 4.0 * 2 * 4 * 160 * 160 * 64);
  // The 8-bit cache reads fewer bytes per token than the bf16 one: per KV head 1 + 1 byte per
  // channel plus 388 bytes of means and scales (fp32 means, bf16 V scales, the fp32 K scale) per
  // page of 16 tokens, against 2 + 2 bytes.
  EXPECT_DOUBLE_EQ(sage["cases"][0]["kv_bytes"].get<double>(),
                   2.0 * 160 * ((2 * (2 * 64 * 16 + 64 * 4 + 4 + 64 * 2) + 15) / 16));
  EXPECT_LT(sage["cases"][0]["kv_bytes"].get<double>(),
            0.7 * flash["cases"][0]["kv_bytes"].get<double>());
}

TEST(BenchAttention, DecodeReportsKvBytesPerSecondAndSampledRows) {
  const json j = run_json("bench-attention " + small_shape(3) +
                          "--seq-lens 300 --decode --causal --reference-rows 5");
  ASSERT_TRUE(j.contains("cases")) << j.dump();
  const json& c = j["cases"][0];
  EXPECT_TRUE(j["shape"]["decode"].get<bool>());
  EXPECT_FALSE(c["causal"].get<bool>());  // one query token: the mask changes nothing
  EXPECT_EQ(c["q_len"], 1);
  EXPECT_DOUBLE_EQ(c["flops"].get<double>(), 4.0 * 3 * 4 * 1 * 300 * 64);
  const double kv_bytes = 3.0 * 300 * (2 * 2 * 64 * 2);
  EXPECT_DOUBLE_EQ(c["kv_bytes"].get<double>(), kv_bytes);
  EXPECT_NEAR(c["kv_bytes_per_s"].get<double>(), kv_bytes / c["median_seconds"].get<double>(),
              1e-9 * c["kv_bytes_per_s"].get<double>());
  EXPECT_EQ(c["accuracy"]["rows_checked"], 5);
  EXPECT_EQ(c["accuracy"]["rows_total"], 3 * 4);
  EXPECT_LT(c["accuracy"]["rel_l1"].get<double>(), 1e-5);
}

TEST(BenchAttention, SameSeedSameInputsOtherSeedOtherInputs) {
  const std::string args = "bench-attention " + small_shape(2, 1) + "--seq-lens 64 ";
  const json a = run_json(args + "--seed 5");
  const json b = run_json(args + "--seed 5");
  const json c = run_json(args + "--seed 6");
  ASSERT_TRUE(a.contains("cases") && b.contains("cases") && c.contains("cases"));
  EXPECT_EQ(a["cases"][0]["accuracy"]["rmse"], b["cases"][0]["accuracy"]["rmse"]);
  EXPECT_NE(a["cases"][0]["accuracy"]["rmse"], c["cases"][0]["accuracy"]["rmse"]);
}

TEST(BenchAttention, TableAndOutputFile) {
  const fs::path out = fs::temp_directory_path() /
                       ("sagellm_bench_attention_" + std::to_string(::getpid()) + ".json");
  const CommandResult r =
      sagellm("bench-attention " + small_shape() + "--seq-lens 32 --output " + quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("TFLOP/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rel-L1"), std::string::npos) << r.out;
  const json j = json::parse(testing::read_text(out));
  fs::remove(out);
  EXPECT_EQ(j["cases"].size(), 1u);
  EXPECT_EQ(j["cases"][0]["seq_len"], 32);
}

TEST(BenchAttention, BadFlagsGiveOneClearError) {
  expect_clean_error(sagellm("bench-attention --heads 6 --kv-heads 4"), "multiple of --kv-heads");
  expect_clean_error(sagellm("bench-attention --backend nope"), "unknown attention backend 'nope'");
  expect_clean_error(sagellm("bench-attention --seq-lens 0"), "--seq-lens");
  expect_clean_error(sagellm("bench-attention --seq-lens 12,x"), "--seq-lens");
  expect_clean_error(sagellm("bench-attention --batch 0"), "--batch");
  expect_clean_error(sagellm("bench-attention --device tpu"), "unknown --device 'tpu'");
  expect_clean_error(sagellm("bench-attention --k-offset -1"), "--k-offset");
  expect_clean_error(sagellm("bench-attention --batch 100000 --seq-lens 100000"), "too large");
  expect_clean_error(sagellm("bench-attention --heads 1 --kv-heads 1 --batch 1000000 "
                             "--seq-lens 2000 --head-dim 1024"),
                     "host memory");
  expect_clean_error(
      sagellm("bench-attention --device cuda --backend sage_attn --sage-pv-dtype fp9"),
      "unknown --sage-pv-dtype 'fp9'");
  // Without a GPU (CI) --device cuda is refused: no CUDA in the build, or no GPU found.
  const CommandResult cuda =
      sagellm("bench-attention --device cuda " + small_shape() + "--seq-lens 16");
  if (cuda.exit_code != 0) expect_clean_error(cuda, "CUDA");
}

TEST(Bench, GridOnStories260KWithSkippedCells) {
  const json j = run_json("bench --model " + stories() +
                          " --batch-sizes 1,3 --input-lens 17,100,600 --output-len 6 --repeats 2 "
                          "--prefill-chunk 64 --seed 2");
  ASSERT_TRUE(j.contains("cells")) << j.dump();
  EXPECT_EQ(j["command"], "bench");
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_EQ(j["attention_backend"], "flash");
  EXPECT_EQ(j["model_config"]["num_layers"], 5);
  EXPECT_EQ(j["context_length"], 512);
  EXPECT_FALSE(j["commit"].get<std::string>().empty());
  EXPECT_NE(j["command_line"].get<std::string>().find("--batch-sizes"), std::string::npos);
  const json& mem = j["memory"];
  // stories260K: 5 layers x 4 KV heads x head_dim 8, K and V at 2 bytes.
  EXPECT_EQ(mem["kv_bytes_per_token"], 5 * 4 * 8 * 2 * 2);
  EXPECT_GT(mem["weight_bytes"].get<double>(), 0.5e6);
  EXPECT_GE(mem["kv_capacity_tokens"].get<int64_t>(), 512);
  EXPECT_GT(j["peak_rss_bytes"].get<double>(), mem["weight_bytes"].get<double>());
  ASSERT_EQ(j["cells"].size(), 6u);
  int ran = 0;
  for (const json& c : j["cells"]) {
    const int batch = c["batch"], input = c["input_len"];
    if (input == 600) {
      ASSERT_TRUE(c.contains("skipped")) << c.dump();
      EXPECT_NE(c["skipped"].get<std::string>().find("context length 512"), std::string::npos);
      continue;
    }
    ASSERT_FALSE(c.contains("skipped")) << c.dump();
    ++ran;
    EXPECT_EQ(c["prefill_tokens"], batch * input);
    EXPECT_EQ(c["decode_tokens"], batch * 5);
    EXPECT_EQ(c["decode_steps"], 5);
    // Steps of at most 64 tokens: at least ceil(batch * input / 64) of them.
    EXPECT_GE(c["prefill_steps"].get<int>(), (batch * input + 63) / 64);
    EXPECT_EQ(c["prefill_seconds_all"].size(), 2u);
    const double ps = c["prefill_seconds"].get<double>(), ds = c["decode_seconds"].get<double>();
    EXPECT_GT(ps, 0.0);
    EXPECT_GT(ds, 0.0);
    EXPECT_NEAR(c["prefill_tokens_per_s"].get<double>(), batch * input / ps,
                1e-9 * batch * input / ps);
    EXPECT_NEAR(c["decode_tokens_per_s"].get<double>(), batch * 5 / ds, 1e-9 * batch * 5 / ds);
    // The median step is one of the decode run's steps.
    EXPECT_GT(c["decode_step_seconds_median"].get<double>(), 0.0);
    EXPECT_LE(c["decode_step_seconds_median"].get<double>(), ds);
    EXPECT_EQ(c["kv_bytes"], 640 * batch * (input + 5));
  }
  EXPECT_EQ(ran, 4);
}

TEST(Bench, CellsThatDoNotFitTheKvCacheAreSkipped) {
  const json j = run_json("bench --model " + stories() +
                          " --kv-cache-tokens 256 --page-size 16 --batch-sizes 1,4 "
                          "--input-lens 100 --output-len 4 --attention-backend sage_attn");
  ASSERT_TRUE(j.contains("cells")) << j.dump();
  EXPECT_EQ(j["attention_backend"], "sage_attn");
  EXPECT_EQ(j["kv_cache_dtype"], "int8");
  EXPECT_EQ(j["memory"]["kv_capacity_tokens"], 256);
  ASSERT_EQ(j["cells"].size(), 2u);
  EXPECT_FALSE(j["cells"][0].contains("skipped")) << j["cells"][0].dump();
  EXPECT_GT(j["cells"][0]["decode_tokens_per_s"].get<double>(), 0.0);
  ASSERT_TRUE(j["cells"][1].contains("skipped"));
  // 4 requests x 103 tokens need 4 x 7 pages of 16; the cache has 16.
  EXPECT_NE(j["cells"][1]["skipped"].get<std::string>().find("needs 28 KV pages"),
            std::string::npos)
      << j["cells"][1]["skipped"];
}

// --attention-share times the attention inside one more run of each cell: a fraction of each
// phase, and in decode larger at a long context than at a short one (a decode step's attention
// reads the whole context, the rest of the step does not grow with it).
// llama31-tiny-random (head_dim 64) at 8 and 2048 tokens: attention's part of the work grows
// enough with the context to stand out of the timing noise of a loaded machine (stories260K's
// head_dim 8 attention is mostly call overhead at any length it holds).
TEST(Bench, AttentionShareIsAFractionThatGrowsWithTheContext) {
  const std::string model = quote(testing::model_dir("llama31-tiny-random").string());
  for (const char* backend : {"flash", "sage_attn"}) {
    SCOPED_TRACE(backend);
    const json j = run_json("bench --model " + model +
                            " --batch-sizes 2 --input-lens 8,2048 --output-len 16 --repeats 1 "
                            "--attention-share --attention-backend " +
                            backend);
    ASSERT_EQ(j["cells"].size(), 2u) << j.dump();
    for (const json& c : j["cells"]) {
      for (const char* k : {"attention_share_prefill", "attention_share_decode"}) {
        ASSERT_TRUE(c[k].is_number()) << c.dump();
        EXPECT_GT(c[k].get<double>(), 0.0) << k;
        EXPECT_LT(c[k].get<double>(), 1.0) << k;
      }
      const json& t = c["attention_timed_run"];
      EXPECT_LE(t["decode_attention_seconds"].get<double>(), t["decode_seconds"].get<double>());
    }
    // The prefill share grows from ~0.1 to ~0.5; a decode step's share at this size is too small a
    // time to order reliably, but its attention time grows ~50-fold.
    EXPECT_GT(j["cells"][1]["attention_share_prefill"].get<double>(),
              j["cells"][0]["attention_share_prefill"].get<double>());
    EXPECT_GT(j["cells"][1]["attention_timed_run"]["decode_attention_seconds"].get<double>(),
              5 * j["cells"][0]["attention_timed_run"]["decode_attention_seconds"].get<double>());
  }
  // Without the flag the cells carry no share.
  const json plain =
      run_json("bench --model " + stories() + " --batch-sizes 1 --input-lens 8 --output-len 2");
  EXPECT_FALSE(plain["cells"][0].contains("attention_share_decode"));
}

TEST(Bench, DummyWeightsTableAndOutputFile) {
  const fs::path out =
      fs::temp_directory_path() / ("sagellm_bench_" + std::to_string(::getpid()) + ".json");
  const CommandResult r = sagellm("bench --model " + stories() +
                                  " --load-format dummy --batch-sizes 2 --input-lens 8 "
                                  "--output-len 1 --output " +
                                  quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prefill tok/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dummy weights"), std::string::npos) << r.out;
  const json j = json::parse(testing::read_text(out));
  fs::remove(out);
  EXPECT_EQ(j["load_format"], "dummy");
  const json& c = j["cells"].at(0);
  EXPECT_GT(c["prefill_tokens_per_s"].get<double>(), 0.0);
  // One output token comes from prefill: no decode step to time.
  EXPECT_EQ(c["decode_steps"], 0);
  EXPECT_TRUE(c["decode_tokens_per_s"].is_null());
}

TEST(Bench, BadFlagsGiveOneClearError) {
  expect_clean_error(sagellm("bench --model " + stories() + " --batch-sizes 0"), "--batch-sizes");
  expect_clean_error(sagellm("bench --model " + stories() + " --input-lens 5,abc"), "--input-lens");
  expect_clean_error(sagellm("bench --model " + stories() + " --output-len 0"), "--output-len");
  expect_clean_error(sagellm("bench --model /nonexistent/model"), "/nonexistent/model");
  expect_clean_error(sagellm("bench --model " + stories() + " --attention-backend nope"),
                     "unknown attention backend 'nope'");
  expect_clean_error(sagellm("bench --batch-sizes 1"), "--model");
}

}  // namespace
}  // namespace sagellm
