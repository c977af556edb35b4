// `validate --quick` on stories260K, every number of report.json checked against an independent
// computation: the golden perplexity, KL divergence and perplexity recomputed here from the two
// backends' logits with textbook formulas, greedy agreement from fresh generations, memory figures
// from their formulas, drift from fresh activations, and a complete passkey grid.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/fixtures.h"
#include "core/error.h"
#include "engine/engine.h"
#include "eval/validate/passkey.h"
#include "eval/validate/validate.h"

namespace sagellm {
namespace {

namespace fs = std::filesystem;
namespace v = eval::validate;
using nlohmann::json;

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

fs::path sample_text() { return testing::shared_dir() / "data" / "tinystories" / "sample.txt"; }

v::ValidateOptions quick_options(const fs::path& out) {
  v::ValidateOptions o;
  o.engine.model_dir = testing::model_dir("stories260K");
  o.quick = true;
  o.corpora = {sample_text()};
  o.haystack_dir = testing::shared_dir() / "data" / "haystack";
  o.out_dir = out;
  o.command_line = "test";
  return o;
}

EngineOptions engine_options(const std::string& backend) {
  EngineOptions e;
  e.model_dir = testing::model_dir("stories260K");
  e.attention_backend = backend;
  return e;
}

// log-softmax in long double, written out here rather than taken from the library.
std::vector<long double> log_probs(const float* x, size_t n) {
  long double mx = x[0];
  for (size_t i = 1; i < n; ++i) mx = std::max<long double>(mx, x[i]);
  long double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(static_cast<long double>(x[i]) - mx);
  const long double lse = mx + std::log(sum);
  std::vector<long double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] - lse;
  return out;
}

size_t first_argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return best;
}

// The quick report, computed once; every part below checks a piece of it. (One test, not many:
// ctest runs each test in its own process, and the report takes seconds to a minute to compute.)
struct QuickRun {
  fs::path dir;
  json report;
};

void check_report_has_every_check_and_metadata(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& r = run.report;
  for (std::string_view c : v::kCheckNames) {
    ASSERT_TRUE(checks_.contains(std::string(c))) << c;
    const json& s = checks_[std::string(c)];
    EXPECT_FALSE(s.contains("error")) << c << ": " << s.dump();
    EXPECT_TRUE(s["verdict"] == "pass" || s["verdict"] == "warn" || s["verdict"] == "fail") << c;
    EXPECT_FALSE(s["criteria"].empty()) << c;
    EXPECT_GE(s["seconds"].get<double>(), 0.0);
  }
  EXPECT_EQ(r["baseline"], "flash");
  EXPECT_EQ(r["candidate"], "sage_attn");
  EXPECT_EQ(r["sagellm_version"], SAGELLM_VERSION);
  EXPECT_TRUE(r["git_commit"].is_string());
  EXPECT_EQ(r["device"]["kind"], "cpu");
  EXPECT_EQ(r["command_line"], "test");
  EXPECT_EQ(r["model"]["layers"], 5);
  EXPECT_EQ(r["model"]["context_length"], 512);
  EXPECT_NE(r["model"]["path"].get<std::string>().find("stories260K"), std::string::npos);
  EXPECT_GT(r["duration_seconds"].get<double>(), 0.0);
  EXPECT_TRUE(r["verdict"] == "pass" || r["verdict"] == "warn" || r["verdict"] == "fail");
}

void check_runtime_flag(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& s = checks_["runtime"];
  EXPECT_EQ(s["verdict"], "pass") << s.dump(1);
  EXPECT_EQ(s["default_backend"]["reported"], "flash");
  EXPECT_EQ(s["unknown_backend"]["rejected"], true);
  EXPECT_NE(s["unknown_backend"]["message"].get<std::string>().find("no_such_backend"),
            std::string::npos);
  for (const char* role : {"baseline", "candidate"}) {
    EXPECT_EQ(s["engines"][role]["loaded"], true);
    EXPECT_EQ(s["generation"][role]["generated_tokens"], 16);
    EXPECT_EQ(s["generation"][role]["ok"], true);
    EXPECT_FALSE(s["generation"][role]["text"].get<std::string>().empty());
  }
  EXPECT_EQ(s["engines"]["baseline"]["kv_cache_dtype"], "bf16");
  EXPECT_EQ(s["engines"]["candidate"]["kv_cache_dtype"], "int8");
}

void check_flash_perplexity_equals_golden(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& p = checks_["perplexity"]["corpora"][0];
  EXPECT_EQ(checks_["perplexity"]["ctx"], 512);
  EXPECT_EQ(p["tokens"], 1882);
  EXPECT_EQ(p["windows"], 4);
  EXPECT_NEAR(p["baseline"]["ppl"].get<double>(), 6.2783, 5e-4);
  EXPECT_NEAR(p["baseline"]["mean_nll"].get<double>(), 1.83710, 5e-5);
}

// Both backends score the golden windows here; KLD, top-1, delta-p and both perplexities are
// recomputed with plain formulas and compared with the report.
void check_logits_and_perplexity_match_an_independent_computation(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  Engine flash(engine_options("flash")), sage(engine_options("sage_attn"));
  const std::vector<int32_t> ids = flash.tokenizer().encode(read(sample_text()), false);
  const size_t vocab = 512, piece = 511;
  std::vector<double> kld, nll_f, nll_s, dp2;
  size_t same = 0;
  for (size_t begin = 0; begin < ids.size(); begin += piece) {
    std::vector<int32_t> seq = {flash.config().bos_token_id};
    seq.insert(seq.end(), ids.begin() + begin, ids.begin() + std::min(ids.size(), begin + piece));
    const std::vector<float> lf = flash.score(seq), ls = sage.score(seq);
    for (size_t j = 0; j + 1 < seq.size(); ++j) {
      const std::vector<long double> p = log_probs(&lf[j * vocab], vocab);
      const std::vector<long double> q = log_probs(&ls[j * vocab], vocab);
      long double k = 0;
      for (size_t i = 0; i < vocab; ++i) k += std::exp(p[i]) * (p[i] - q[i]);
      kld.push_back(static_cast<double>(k));
      const auto t = static_cast<size_t>(seq[j + 1]);
      nll_f.push_back(static_cast<double>(-p[t]));
      nll_s.push_back(static_cast<double>(-q[t]));
      const double d = static_cast<double>(std::exp(q[t]) - std::exp(p[t]));
      dp2.push_back(d * d);
      same += first_argmax(&lf[j * vocab], vocab) == first_argmax(&ls[j * vocab], vocab) ? 1 : 0;
    }
  }
  ASSERT_EQ(kld.size(), 1882u);
  auto mean = [](const std::vector<double>& x) {
    long double s = 0;
    for (double v : x) s += v;
    return static_cast<double>(s / x.size());
  };
  const json& k = checks_["logits"]["corpora"][0];
  EXPECT_EQ(k["tokens"], 1882);
  EXPECT_NEAR(k["kld"]["mean"].get<double>(), mean(kld), 1e-6 * mean(kld) + 1e-12);
  EXPECT_NEAR(k["kld"]["max"].get<double>(), *std::max_element(kld.begin(), kld.end()), 1e-6);
  std::vector<double> sorted = kld;
  std::sort(sorted.begin(), sorted.end());
  const double pos = 0.99 * (sorted.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const double p99 = sorted[lo] + (sorted[lo + 1] - sorted[lo]) * (pos - lo);
  EXPECT_NEAR(k["kld"]["p99"].get<double>(), p99, 1e-6 * p99 + 1e-12);
  EXPECT_DOUBLE_EQ(k["same_top1"].get<double>(), static_cast<double>(same) / 1882.0);
  EXPECT_NEAR(k["rms_delta_p"].get<double>(), std::sqrt(mean(dp2)), 1e-9);
  EXPECT_GT(mean(kld), 0.0);  // sage_attn really differs from flash
  // The report's "all" row is the same single corpus.
  EXPECT_EQ(checks_["logits"]["all"]["kld"]["mean"], k["kld"]["mean"]);

  const json& p = checks_["perplexity"]["corpora"][0];
  EXPECT_NEAR(p["baseline"]["ppl"].get<double>(), std::exp(mean(nll_f)), 1e-9);
  EXPECT_NEAR(p["candidate"]["ppl"].get<double>(), std::exp(mean(nll_s)), 1e-9);
  EXPECT_NEAR(p["relative_delta"].get<double>(), std::exp(mean(nll_s) - mean(nll_f)) - 1.0, 1e-9);
  // The +/- is the standard error from the per-token variance: std(nll) / sqrt(n), times PPL.
  double ss = 0;
  const double m = mean(nll_f);
  for (double x : nll_f) ss += (x - m) * (x - m);
  const double se =
      std::sqrt(ss / (nll_f.size() - 1)) / std::sqrt(static_cast<double>(nll_f.size()));
  EXPECT_NEAR(p["baseline"]["ppl_stderr"].get<double>(), std::exp(m) * se, 1e-9);
}

void check_greedy_agreement_matches_fresh_generations(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  Engine flash(engine_options("flash")), sage(engine_options("sage_attn"));
  const std::vector<int32_t> ids = flash.tokenizer().encode(read(sample_text()), false);
  const json& g = checks_["logits"]["greedy"];
  ASSERT_EQ(g["prompts"].size(), 2u);  // --quick: 2 prompts per corpus
  EXPECT_EQ(g["tokens_per_prompt"], 64);
  for (size_t i = 0; i < 2; ++i) {
    const int64_t offset = static_cast<int64_t>((ids.size() - 32) * i / 2);
    EXPECT_EQ(g["prompts"][i]["offset"], offset);
    GenerationRequest r;
    r.prompt = {1};
    r.prompt.insert(r.prompt.end(), ids.begin() + offset, ids.begin() + offset + 32);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 64;
    r.sampling.ignore_eos = true;
    const std::vector<int32_t> a = flash.generate({r}).at(0).tokens;
    const std::vector<int32_t> b = sage.generate({r}).at(0).tokens;
    ASSERT_EQ(a.size(), 64u);
    size_t k = 0;
    while (k < 64 && a[k] == b[k]) ++k;
    EXPECT_EQ(g["prompts"][i]["agree"], k) << "prompt " << i;
  }
}

void check_throughput_grid_is_complete_and_consistent(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& s = checks_["throughput"];
  ASSERT_EQ(s["cells"].size(), 8u);  // 2 backends x batch {1,2} x context {128,512}
  for (const json& c : s["cells"]) {
    const int b = c["batch"], ctx = c["context"], prompt = c["prompt_tokens"];
    EXPECT_EQ(prompt, std::min(ctx, 512 - 16)) << c.dump();
    EXPECT_EQ(c["generated_tokens"], b * 16);
    EXPECT_EQ(c["prefill_tokens"], b * prompt);
    EXPECT_EQ(c["decode_tokens"], b * 15);  // the first token comes from the prefill
    for (const char* k : {"prefill_tokens_per_s", "decode_tokens_per_s"}) {
      EXPECT_GT(c[k].get<double>(), 0.0);
      EXPECT_TRUE(std::isfinite(c[k].get<double>()));
    }
    EXPECT_NEAR(c["prefill_tokens_per_s"].get<double>(),
                c["prefill_tokens"].get<double>() / c["prefill_seconds"].get<double>(), 1e-6);
    for (const char* k : {"attention_share_prefill", "attention_share_decode"}) {
      EXPECT_GT(c[k].get<double>(), 0.0) << k;
      EXPECT_LT(c[k].get<double>(), 1.0) << k;
    }
    EXPECT_EQ(c["step"]["prefill_tokens"], prompt);
    EXPECT_EQ(c["step"]["decode_tokens"], b * 8);
    EXPECT_LE(c["step"]["decode_attention_seconds"].get<double>(),
              c["step"]["decode_seconds"].get<double>());
  }
}

void check_memory_numbers_equal_their_formulas(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& s = checks_["memory"];
  const int layers = 5, kv_heads = 4, head_dim = 8, page = 64, hidden = 64, heads = 8;
  const json& flash = s["backends"][0];
  const json& sage = s["backends"][1];
  EXPECT_EQ(flash["backend"], "flash");
  EXPECT_EQ(flash["bytes_per_token"], layers * kv_heads * head_dim * 2 * 2);  // K and V in bf16
  // int8 K and fp8 V codes, plus per page and head: K mean (fp32 per channel), V scales (bf16 per
  // channel), K scale (fp32).
  const int heads_total = layers * kv_heads;
  const int page_bytes = heads_total * (2 * head_dim * page + head_dim * 4 + 4 + head_dim * 2);
  EXPECT_EQ(sage["bytes_per_token"], (page_bytes + page - 1) / page);
  const double budget = 16.0 * 1024 * 1024 * 1024;
  for (const json& b : {flash, sage}) {
    const int64_t bpt = b["bytes_per_token"];
    const int64_t pages = static_cast<int64_t>(budget / static_cast<double>(bpt * page));
    EXPECT_EQ(b["capacity_tokens"], pages * page);
    EXPECT_EQ(b["capacity_requests_at_max_context"], pages / (512 / page));
    // The CPU cache keeps float32 K and V of every page: at least that much resident memory.
    const double cpu = b["cpu_cache"]["measured_bytes_per_token"];
    const double floats = layers * kv_heads * head_dim * 2 * 4.0;
    EXPECT_GE(cpu, 0.95 * floats) << b.dump();
    EXPECT_LE(cpu, 1.6 * floats) << b.dump();
  }
  // stories260K: tied embeddings, intermediate 172 (from config.json).
  const int inter = 172, vocab = 512;
  const int64_t params =
      int64_t{vocab} * hidden + hidden +
      layers * (2 * hidden + int64_t{heads + 2 * kv_heads} * head_dim * hidden +
                int64_t{hidden} * heads * head_dim + 3 * int64_t{inter} * hidden);
  EXPECT_EQ(s["weights"]["parameters"], params);
  EXPECT_EQ(s["weights"]["bytes_held"], params * 4);
  EXPECT_GT(s["peak_rss_bytes"].get<double>(), 0.0);
  // Two engines of stories260K and the run's buffers: more than the weights, far below a GiB.
  EXPECT_LT(s["peak_rss_bytes"].get<double>(), 1024.0 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(s["kv_bytes_ratio"].get<double>(),
                   sage["bytes_per_token"].get<double>() / flash["bytes_per_token"].get<double>());
}

void check_drift_matches_fresh_activations(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& s = checks_["drift"];
  ASSERT_EQ(s["layers"].size(), 5u);
  EXPECT_EQ(s["input"]["tokens"], 256);  // --quick
  Engine flash(engine_options("flash")), sage(engine_options("sage_attn"));
  std::vector<int32_t> ids = {1};
  const std::vector<int32_t> text = flash.tokenizer().encode(read(sample_text()), false);
  ids.insert(ids.end(), text.begin(), text.begin() + 255);
  std::vector<std::vector<float>> hf(5), hs(5);
  flash.score(ids, [&](const LayerActivations& a) {
    hf[a.layer].assign(a.hidden.begin(), a.hidden.end());
  });
  sage.score(ids, [&](const LayerActivations& a) {
    hs[a.layer].assign(a.hidden.begin(), a.hidden.end());
  });
  for (size_t l = 0; l < 5; ++l) {
    long double dot = 0, aa = 0, bb = 0, dd = 0;
    for (size_t i = 0; i < hf[l].size(); ++i) {
      dot += static_cast<long double>(hf[l][i]) * hs[l][i];
      aa += static_cast<long double>(hf[l][i]) * hf[l][i];
      bb += static_cast<long double>(hs[l][i]) * hs[l][i];
      dd += std::pow(static_cast<long double>(hs[l][i]) - hf[l][i], 2);
    }
    const json& x = s["layers"][l];
    EXPECT_EQ(x["layer"], l);
    EXPECT_NEAR(x["hidden_cosine"].get<double>(), static_cast<double>(dot / std::sqrt(aa * bb)),
                1e-12);
    EXPECT_NEAR(x["hidden_rel_l2"].get<double>(), static_cast<double>(std::sqrt(dd / aa)), 1e-9);
    for (const char* k : {"hidden_cosine", "attn_cosine"}) {
      EXPECT_GT(x[k].get<double>(), 0.0);
      EXPECT_LE(x[k].get<double>(), 1.0);
      EXPECT_LT(x[k].get<double>(), 1.0) << "sage_attn must differ from flash";
    }
  }
}

void check_determinism_passes(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& s = checks_["drift"]["determinism"];
  for (const char* role : {"baseline", "candidate"}) {
    const json& d = s[role];
    EXPECT_EQ(d["logits_runs"], 3);
    EXPECT_EQ(d["logits_identical_runs"], 3) << role;
    EXPECT_EQ(d["logits_max_abs_diff"], 0.0);
    EXPECT_EQ(d["generation_identical_runs"], 3) << role;
    EXPECT_EQ(d["batch_generation_identical"], true) << role;
    EXPECT_EQ(d["batch"]["attention_prefill_identical"], true) << role;
    EXPECT_EQ(d["batch"]["attention_decode_identical"], true) << role;
    EXPECT_EQ(d["batch"]["attention_decode_max_abs_diff"], 0.0);
    EXPECT_TRUE(d["batch"]["logits_decode_identical"].is_boolean());
  }
  for (const json& c : checks_["drift"]["criteria"]) {
    if (c["what"].get<std::string>().find("attention output") != std::string::npos ||
        c["what"].get<std::string>().find("reruns") != std::string::npos) {
      EXPECT_EQ(c["status"], "pass") << c.dump();
    }
  }
}

void check_passkey_grid_is_complete(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& p = checks_["context"]["passkey"];
  EXPECT_EQ(p["lengths"], json({256, 512}));  // context 512 < 1K
  EXPECT_EQ(p["depths"], json({0.0, 0.25, 0.5, 0.75, 1.0}));
  ASSERT_EQ(p["cells"].size(), 10u);
  std::vector<int> keys = p["keys"];
  ASSERT_EQ(keys.size(), 5u);
  for (int k : keys) {
    EXPECT_GE(k, 10000);
    EXPECT_LE(k, 99999);
  }
  int total[2] = {0, 0};
  for (const json& c : p["cells"]) {
    EXPECT_EQ(c["trials"], 5);
    EXPECT_LE(c["prompt_tokens"].get<int>(), std::min(c["length"].get<int>(), 512 - 8));
    EXPECT_GE(c["prompt_tokens"].get<int>(), std::min(c["length"].get<int>(), 512 - 8) - 4);
    int i = 0;
    for (const char* role : {"baseline", "candidate"}) {
      const json& r = c[role];
      ASSERT_EQ(r["answers"].size(), 5u);
      int matches = 0;
      for (size_t t = 0; t < 5; ++t) {
        matches += v::passkey_matches(r["answers"][t].get<std::string>(), keys[t]) ? 1 : 0;
      }
      EXPECT_EQ(r["matches"], matches);
      EXPECT_DOUBLE_EQ(r["rate"].get<double>(), matches / 5.0);
      total[i++] += matches;
    }
  }
  EXPECT_DOUBLE_EQ(p["baseline_rate"].get<double>(), total[0] / 50.0);
  EXPECT_DOUBLE_EQ(p["candidate_rate"].get<double>(), total[1] / 50.0);
}

void check_position_buckets_cover_every_scored_token(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const json& b = checks_["context"]["position_buckets"];
  EXPECT_EQ(b["window"], 512);
  EXPECT_EQ(b["windows"], 1);  // --quick
  EXPECT_EQ(b["tokens"], 511);
  ASSERT_EQ(b["buckets"].size(), 5u);
  EXPECT_EQ(b["buckets"][0]["label"], "0-512");
  EXPECT_EQ(b["buckets"][0]["tokens"], 511);
  for (size_t i = 1; i < 5; ++i) EXPECT_EQ(b["buckets"][i]["tokens"], 0);
  EXPECT_GT(b["buckets"][0]["mean_kld"].get<double>(), 0.0);
  EXPECT_LE(b["buckets"][0]["same_top1"].get<double>(), 1.0);
}

void check_markdown_and_html_have_every_section(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  const std::string md = read(run.dir / "quick" / "report.md");
  const std::string html = read(run.dir / "quick" / "report.html");
  const json on_disk = json::parse(read(run.dir / "quick" / "report.json"));
  EXPECT_EQ(on_disk["checks"]["perplexity"]["corpora"][0]["baseline"]["ppl"],
            checks_["perplexity"]["corpora"][0]["baseline"]["ppl"]);
  for (const char* title :
       {"## 1. Runtime flag", "## 2. Logits vs baseline", "## 3. Perplexity", "## 4. Throughput",
        "## 5. Memory", "## 6. Activation drift and determinism", "## 7. Context-length accuracy",
        "## Thresholds", "--max-mean-kld"}) {
    EXPECT_NE(md.find(title), std::string::npos) << title;
  }
  for (const char* id :
       {"runtime", "logits", "perplexity", "throughput", "memory", "drift", "context"}) {
    EXPECT_NE(html.find(std::string("<section id=\"") + id + "\""), std::string::npos) << id;
  }
  for (const char* chart :
       {"kld-quantiles", "throughput-prefill", "throughput-decode", "drift-cosine", "drift-rel-l2",
        "kld-by-position", "passkey-baseline", "passkey-candidate"}) {
    EXPECT_NE(
        html.find(std::string("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"") +
                  chart + "\""),
        std::string::npos)
        << chart;
  }
  // Self-contained: nothing is fetched.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("href="), std::string::npos);
  EXPECT_NE(html.find("6.2783"), std::string::npos);
}

// Re-judging the same measurements with other thresholds changes only the verdicts.
void check_verdicts_follow_the_thresholds(const QuickRun& run) {
  [[maybe_unused]] const json& checks_ = run.report["checks"];
  json strict = run.report;
  v::Thresholds t;
  t.max_mean_kld = 0;  // sage_attn's KLD is above zero
  v::judge(strict, t);
  EXPECT_EQ(strict["checks"]["logits"]["verdict"], "fail");
  EXPECT_EQ(strict["verdict"], "fail");
  EXPECT_EQ(strict["judged_with"]["--max-mean-kld"], 0.0);

  json loose = run.report;
  v::Thresholds l;
  l.max_mean_kld = 1;
  l.max_p99_kld = 10;
  l.min_same_top1 = 0;
  l.max_ppl_delta = 1;
  v::judge(loose, l);
  EXPECT_EQ(loose["checks"]["logits"]["verdict"], "pass");
  EXPECT_EQ(loose["checks"]["perplexity"]["verdict"], "pass");
  EXPECT_EQ(loose["checks"]["logits"]["all"], run.report["checks"]["logits"]["all"]);

  // stories260K does not retrieve pass keys: the grid cannot judge sage_attn, so it warns.
  const json& ctx = run.report["checks"]["context"];
  if (ctx["passkey"]["baseline_rate"].get<double>() < 0.9) EXPECT_EQ(ctx["verdict"], "warn");
}

TEST(ValidateQuick, EveryNumberMatchesAnIndependentComputation) {
  QuickRun run;
  run.dir = fs::temp_directory_path() / ("sagellm_validate_test_" + std::to_string(::getpid()));
  fs::remove_all(run.dir);
  run.report = v::run_validate(quick_options(run.dir / "quick"));
  v::write_reports(run.report, run.dir / "quick");
  {
    SCOPED_TRACE("check: ReportHasEveryCheckAndMetadata");
    check_report_has_every_check_and_metadata(run);
  }
  {
    SCOPED_TRACE("check: RuntimeFlag");
    check_runtime_flag(run);
  }
  {
    SCOPED_TRACE("check: FlashPerplexityEqualsGolden");
    check_flash_perplexity_equals_golden(run);
  }
  {
    SCOPED_TRACE("check: LogitsAndPerplexityMatchAnIndependentComputation");
    check_logits_and_perplexity_match_an_independent_computation(run);
  }
  {
    SCOPED_TRACE("check: GreedyAgreementMatchesFreshGenerations");
    check_greedy_agreement_matches_fresh_generations(run);
  }
  {
    SCOPED_TRACE("check: ThroughputGridIsCompleteAndConsistent");
    check_throughput_grid_is_complete_and_consistent(run);
  }
  {
    SCOPED_TRACE("check: MemoryNumbersEqualTheirFormulas");
    check_memory_numbers_equal_their_formulas(run);
  }
  {
    SCOPED_TRACE("check: DriftMatchesFreshActivations");
    check_drift_matches_fresh_activations(run);
  }
  {
    SCOPED_TRACE("check: DeterminismPasses");
    check_determinism_passes(run);
  }
  {
    SCOPED_TRACE("check: PasskeyGridIsComplete");
    check_passkey_grid_is_complete(run);
  }
  {
    SCOPED_TRACE("check: PositionBucketsCoverEveryScoredToken");
    check_position_buckets_cover_every_scored_token(run);
  }
  {
    SCOPED_TRACE("check: MarkdownAndHtmlHaveEverySection");
    check_markdown_and_html_have_every_section(run);
  }
  {
    SCOPED_TRACE("check: VerdictsFollowTheThresholds");
    check_verdicts_follow_the_thresholds(run);
  }
  fs::remove_all(run.dir);
}

TEST(Validate, FlashAgainstItselfHasExactlyZeroKld) {
  const fs::path out =
      fs::temp_directory_path() / ("sagellm_validate_ff_" + std::to_string(::getpid()));
  v::ValidateOptions o = quick_options(out);
  o.candidate_backend = "flash";
  o.checks = v::parse_checks("logits,perplexity");
  const json r = v::run_validate(o);
  ASSERT_FALSE(r["checks"].contains("runtime"));
  ASSERT_FALSE(r["checks"].contains("throughput"));
  const json& k = r["checks"]["logits"]["corpora"][0];
  EXPECT_EQ(k["tokens"], 1882);
  EXPECT_EQ(k["kld"]["mean"], 0.0);
  EXPECT_EQ(k["kld"]["max"], 0.0);
  EXPECT_EQ(k["same_top1"], 1.0);
  EXPECT_EQ(k["rms_delta_p"], 0.0);
  const json& p = r["checks"]["perplexity"]["corpora"][0];
  EXPECT_EQ(p["baseline"]["ppl"], p["candidate"]["ppl"]);
  EXPECT_EQ(p["relative_delta"], 0.0);
  EXPECT_EQ(r["checks"]["logits"]["greedy"]["fully_equal"], 2);
  EXPECT_EQ(r["checks"]["logits"]["verdict"], "pass");
  fs::remove_all(out);
}

// Both engines' caches are sized for the checks that run (on a GPU they share its memory): the
// runtime probe alone needs a few pages, the throughput grid its largest batch at its longest
// prompt.
TEST(Validate, CachesAreSizedForTheChecksThatRun) {
  const fs::path out =
      fs::temp_directory_path() / ("sagellm_validate_cache_" + std::to_string(::getpid()));
  v::ValidateOptions o = quick_options(out);
  o.checks = v::parse_checks("runtime");
  const json small = v::run_validate(o)["checks"]["runtime"]["engines"];
  o.checks = v::parse_checks("runtime,throughput");
  o.batch_sizes = {1, 3};
  o.context_lengths = {64, 200};
  o.output_len = 8;
  const json grid = v::run_validate(o)["checks"]["runtime"]["engines"];
  for (const char* role : {"baseline", "candidate"}) {
    SCOPED_TRACE(role);
    const int64_t few = small[role]["cache_tokens"];
    const int64_t many = grid[role]["cache_tokens"];
    EXPECT_GE(few, 16 + 16);         // the probe: a short prompt and 16 tokens
    EXPECT_LT(few, 512);             // not the context length, nor a batch of it
    EXPECT_GE(many, 3 * (200 + 8));  // three requests of 200 + 8 tokens at once
    EXPECT_LT(many, 3 * 512);
  }
  fs::remove_all(out);
}

TEST(Validate, BadInputsAreClearErrors) {
  v::ValidateOptions o = quick_options(fs::temp_directory_path() / "unused");
  o.corpora.clear();
  try {
    v::run_validate(o);
    FAIL() << "no error without a corpus";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--corpus"), std::string::npos) << e.what();
  }
  o = quick_options(fs::temp_directory_path() / "unused");
  o.corpora = {"/nonexistent/corpus.txt"};
  EXPECT_THROW(v::run_validate(o), Error);
  o = quick_options(fs::temp_directory_path() / "unused");
  o.haystack_dir.clear();
  EXPECT_THROW(v::run_validate(o), Error);
  o = quick_options(fs::temp_directory_path() / "unused");
  o.passkey_lengths = {100000};
  EXPECT_THROW(v::run_validate(o), Error);
  EXPECT_THROW(v::parse_checks("runtime,speed"), Error);
  EXPECT_THROW(v::parse_checks(""), Error);
  EXPECT_EQ(v::parse_checks("memory, drift").size(), 2u);
  EXPECT_EQ(v::parse_checks("all").size(), 7u);
}

}  // namespace
}  // namespace sagellm
