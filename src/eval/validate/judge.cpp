// Verdicts: every check lists the criteria it was judged on (value, limit, status), and its
// verdict is the worst status among them. Measurements are never changed here.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "eval/validate/validate.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

int rank(const std::string& status) {
  if (status == "fail") return 3;
  if (status == "warn") return 2;
  if (status == "pass") return 1;
  return 0;  // info, skipped
}

class Criteria {
 public:
  // A criterion whose status is pass when `ok`, else `otherwise` (fail or warn).
  void add(const std::string& what, const json& value, const std::string& limit, bool ok,
           const char* otherwise = "fail") {
    items_.push_back(
        {{"what", what}, {"value", value}, {"limit", limit}, {"status", ok ? "pass" : otherwise}});
  }
  void info(const std::string& what, const json& value, const std::string& note) {
    items_.push_back({{"what", what}, {"value", value}, {"limit", note}, {"status", "info"}});
  }
  void apply(json& section) const {
    std::string verdict = "pass";
    for (const json& c : items_) {
      if (rank(c["status"]) > rank(verdict)) verdict = c["status"];
    }
    section["criteria"] = items_;
    section["verdict"] = verdict;
  }

 private:
  json items_ = json::array();
};

std::string g(double v) { return fmt::format("{:.4g}", v); }
double num(const json& j, const char* key, double fallback = NAN) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : fallback;
}

void judge_runtime(json& s, Criteria& c) {
  for (const char* role : {"baseline", "candidate"}) {
    const json& e = s["engines"][role];
    c.add(fmt::format("{} backend '{}' loads", role, e.value("backend_requested", std::string())),
          e.value("loaded", false), "loads", e.value("loaded", false));
    if (s.contains("generation") && s["generation"].contains(role)) {
      const json& gen = s["generation"][role];
      c.add(fmt::format("{} generates {} greedy tokens", role, gen.value("requested_tokens", 0)),
            gen.value("generated_tokens", 0), "all of them, ids in the vocabulary",
            gen.value("ok", false));
    }
  }
  c.add("default backend", s["default_backend"]["reported"], "flash",
        s["default_backend"].value("ok", false));
  const json& u = s["unknown_backend"];
  c.add(fmt::format("unknown backend '{}' rejected", u.value("name", std::string())),
        u.value("rejected", false), "rejected with an error", u.value("rejected", false));
  if (u.value("rejected", false)) {
    c.add("its message names it and the valid choices", u.value("message", std::string()),
          "clear message", u.value("message_is_clear", false), "warn");
  }
}

void judge_logits(json& s, const Thresholds& t, Criteria& c) {
  auto judge_one = [&](const json& k, const std::string& label) {
    c.add("mean KLD" + label, k["kld"]["mean"], "<= " + g(t.max_mean_kld),
          num(k["kld"], "mean") <= t.max_mean_kld);
    c.add("p99 KLD" + label, k["kld"]["p99"], "<= " + g(t.max_p99_kld),
          num(k["kld"], "p99") <= t.max_p99_kld);
    c.add("same top-1" + label, k["same_top1"], ">= " + g(t.min_same_top1),
          num(k, "same_top1") >= t.min_same_top1);
  };
  if (s["corpora"].size() > 1) {
    for (const json& k : s["corpora"]) judge_one(k, " (" + k.value("file", std::string()) + ")");
  }
  judge_one(s["all"], s["corpora"].size() > 1 ? " (all corpora)" : "");
  c.info("greedy agreement (mean leading tokens equal)", s["greedy"]["mean_agree"],
         fmt::format("of {}; informative only: greedy paths split wherever the top-2 margin is "
                     "tiny",
                     s["greedy"].value("tokens_per_prompt", 0)));
}

void judge_perplexity(json& s, const Thresholds& t, Criteria& c) {
  for (const json& p : s["corpora"]) {
    const std::string f = " (" + p.value("file", std::string()) + ")";
    for (const char* role : {"baseline", "candidate"}) {
      const double ppl = num(p[role], "ppl");
      c.add(std::string(role) + " PPL is a perplexity" + f, p[role]["ppl"], ">= 1 and finite",
            std::isfinite(ppl) && ppl >= 1.0);
    }
    c.add("relative PPL delta" + f, p["relative_delta"], "|x| <= " + g(t.max_ppl_delta),
          std::abs(num(p, "relative_delta")) <= t.max_ppl_delta);
  }
}

void judge_throughput(json& s, const json& report, const Thresholds& t, Criteria& c) {
  const int out_len = s.value("output_len", 0);
  bool all_measured = true;
  for (const json& cell : s["cells"]) {
    all_measured = all_measured && num(cell, "prefill_tokens_per_s", 0) > 0 &&
                   num(cell, "decode_tokens_per_s", 0) > 0 &&
                   cell.value("generated_tokens", 0) == cell.value("batch", 0) * out_len;
  }
  c.add("every cell measured (tokens generated, rates > 0)", s["cells"].size(), "all cells",
        all_measured && !s["cells"].empty());
  // Decode speed ratio at the largest context, per batch size.
  const bool gpu = report["device"].value("kind", std::string()) != "cpu";
  int max_ctx = 0;
  for (const json& cell : s["cells"]) max_ctx = std::max(max_ctx, cell.value("context", 0));
  for (const json& base : s["cells"]) {
    if (base.value("role", std::string()) != "baseline" || base.value("context", 0) != max_ctx) {
      continue;
    }
    for (const json& cand : s["cells"]) {
      if (cand.value("role", std::string()) != "candidate" || cand.value("context", 0) != max_ctx ||
          cand.value("batch", 0) != base.value("batch", 0)) {
        continue;
      }
      const double ratio = num(cand, "decode_tokens_per_s") / num(base, "decode_tokens_per_s");
      const std::string what = fmt::format("decode speed candidate/baseline, batch {}, context {}",
                                           base.value("batch", 0), max_ctx);
      if (gpu) {
        c.add(what, ratio, ">= " + g(t.min_speedup), ratio >= t.min_speedup, "warn");
      } else {
        c.info(what, ratio, "not judged on CPU: the CPU twin emulates the 8-bit kernels");
      }
    }
  }
}

void judge_memory(json& s, Criteria& c) {
  const json& b = s["backends"][0];
  const json& k = s["backends"][1];
  if (k.value("kv_cache_dtype", std::string()) == "int8") {
    c.add("8-bit KV cache bytes/token below the baseline's", s["kv_bytes_ratio"], "< 1",
          num(s, "kv_bytes_ratio") < 1.0);
  } else {
    c.info("KV bytes/token candidate/baseline", s["kv_bytes_ratio"], "candidate cache not 8-bit");
  }
  for (const json& e : {b, k}) {
    c.add(fmt::format("{} budget holds a full-context request", e.value("backend", std::string())),
          e["capacity_requests_at_max_context"], ">= 1",
          e.value("capacity_requests_at_max_context", 0) >= 1, "warn");
  }
  c.add("peak RSS measured", s["peak_rss_bytes"], "> 0", num(s, "peak_rss_bytes", 0) > 0, "warn");
}

void judge_drift(json& s, const Thresholds& t, Criteria& c) {
  double min_cos = 1.0, max_rel = 0.0;
  for (const json& l : s["layers"]) {
    min_cos = std::min(min_cos, num(l, "hidden_cosine", -1));
    max_rel = std::max(max_rel, num(l, "hidden_rel_l2", INFINITY));
  }
  c.add("lowest hidden-state cosine over layers", min_cos, ">= " + g(t.min_drift_cosine),
        min_cos >= t.min_drift_cosine && !s["layers"].empty());
  c.add("highest hidden-state relative L2 over layers", max_rel, "<= " + g(t.max_drift_rel_l2),
        max_rel <= t.max_drift_rel_l2);
  for (const char* role : {"baseline", "candidate"}) {
    const json& d = s["determinism"][role];
    const std::string b = d.value("backend", std::string(role));
    c.add(b + ": identical logits over reruns", d["logits_identical_runs"],
          fmt::format("{} of {}", d.value("logits_runs", 0), d.value("logits_runs", 0)),
          d.value("logits_identical_runs", 0) == d.value("logits_runs", -1));
    c.add(b + ": identical greedy tokens over reruns", d["generation_identical_runs"],
          fmt::format("{} of {}", d.value("generation_runs", 0), d.value("generation_runs", 0)),
          d.value("generation_identical_runs", 0) == d.value("generation_runs", -1));
    c.add(b + ": same tokens alone and inside a batch", d["batch_generation_identical"], "true",
          d.value("batch_generation_identical", false));
    if (d.contains("batch")) {
      const json& bt = d["batch"];
      const bool attn = bt.value("attention_prefill_identical", false) &&
                        bt.value("attention_decode_identical", false);
      c.add(b + ": attention output of a request alone = inside a batch (bitwise)", attn, "true",
            attn);
      const bool logits =
          bt.value("logits_prefill_identical", false) && bt.value("logits_decode_identical", false);
      c.add(b + ": logits of a request alone = inside a batch (bitwise)", logits,
            attn ? "true (a difference with identical attention comes from the model's other "
                   "layers, e.g. BLAS kernels chosen by row count)"
                 : "true",
            logits, "warn");
    }
  }
}

void judge_context(json& s, const Thresholds& t, Criteria& c) {
  for (const json& b : s["position_buckets"]["buckets"]) {
    if (b.value("tokens", 0) == 0) continue;
    c.add("mean KLD at positions " + b.value("label", std::string()), b["mean_kld"],
          "<= " + g(t.max_bucket_kld), num(b, "mean_kld") <= t.max_bucket_kld);
  }
  const json& p = s["passkey"];
  bool complete = p["cells"].size() == p["lengths"].size() * p["depths"].size();
  for (const json& cell : p["cells"]) {
    complete = complete && cell.value("trials", 0) == p.value("trials", -1);
  }
  c.add("passkey grid complete", p["cells"].size(), "every length x depth, every trial", complete);
  const double base = num(p, "baseline_rate"), cand = num(p, "candidate_rate");
  if (base < t.min_passkey) {
    c.add("baseline passkey exact match", base,
          ">= " + g(t.min_passkey) +
              " (below: this model does not retrieve, so the grid cannot "
              "judge the candidate)",
          false, "warn");
  } else {
    c.add("candidate passkey exact match", cand, ">= " + g(t.min_passkey), cand >= t.min_passkey);
  }
  double worst_drop = 0;
  for (const json& cell : p["cells"]) {
    worst_drop =
        std::max(worst_drop, num(cell["baseline"], "rate") - num(cell["candidate"], "rate"));
  }
  c.add("largest passkey cell drop below the baseline", worst_drop, "<= " + g(t.max_passkey_drop),
        worst_drop <= t.max_passkey_drop);
}

}  // namespace

void judge(json& report, const Thresholds& t) {
  std::string overall = "pass";
  for (auto& [name, s] : report["checks"].items()) {
    Criteria c;
    if (s.contains("skipped")) {
      s["verdict"] = "skipped";
      s["criteria"] = json::array();
      continue;
    }
    if (s.contains("error")) {
      c.add("the check ran", s["error"], "no error", false);
    } else {
      try {
        if (name == "runtime") judge_runtime(s, c);
        if (name == "logits") judge_logits(s, t, c);
        if (name == "perplexity") judge_perplexity(s, t, c);
        if (name == "throughput") judge_throughput(s, report, t, c);
        if (name == "memory") judge_memory(s, c);
        if (name == "drift") judge_drift(s, t, c);
        if (name == "context") judge_context(s, t, c);
      } catch (const std::exception& e) {
        c.add("the measurements could be judged", e.what(), "complete report", false);
      }
    }
    c.apply(s);
    if (rank(s["verdict"]) > rank(overall)) overall = s["verdict"];
  }
  report["verdict"] = overall;
  json thresholds = json::object();
  for (const ThresholdInfo& i : t.describe()) thresholds[i.flag] = i.value;
  report["judged_with"] = thresholds;
}

}  // namespace sagellm::eval::validate
