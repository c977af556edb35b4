#include "eval/validate/report_sections.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "eval/validate/validate_options.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

constexpr const char* kDash = "—";

bool is_num(const json& v) { return v.is_number(); }

const json& at(const json& j, const char* key) {
  static const json null_json;
  return j.is_object() && j.contains(key) ? j[key] : null_json;
}

std::string str(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return kDash;
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) return fmt_g(v);
  return v.dump();
}

std::string yes_no(const json& v) {
  return v.is_boolean() ? (v.get<bool>() ? "yes" : "no") : kDash;
}

std::string verdict_word(const std::string& v) {
  if (v == "pass") return "PASS";
  if (v == "warn") return "WARN";
  if (v == "fail") return "FAIL";
  if (v == "skipped") return "SKIPPED";
  return v;
}

std::string short_text(std::string s, size_t n) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (s.size() > n) {
    size_t cut = n;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s = s.substr(0, cut) + "…";
  }
  return s;
}

std::string file_name(const json& path) {
  if (!path.is_string()) return kDash;
  const std::filesystem::path p(path.get<std::string>());
  return p.filename().empty() ? p.string() : p.filename().string();
}

const char* kTitles[][2] = {{"runtime", "1. Runtime flag"},
                            {"logits", "2. Logits vs baseline"},
                            {"perplexity", "3. Perplexity"},
                            {"throughput", "4. Throughput"},
                            {"memory", "5. Memory"},
                            {"drift", "6. Activation drift and determinism"},
                            {"context", "7. Context-length accuracy"}};

std::string title_of(const std::string& id) {
  for (const auto& t : kTitles) {
    if (id == t[0]) return t[1];
  }
  return id;
}

Table criteria_table(const json& s) {
  Table t{"Verdict criteria", {"criterion", "measured", "limit", "status"}, {}};
  for (const json& c : at(s, "criteria")) {
    t.rows.push_back({str(c["what"]), short_text(str(c["value"]), 120), str(c["limit"]),
                      verdict_word(str(c["status"]))});
  }
  return t;
}

// One-line key numbers per check, for the summary table.
std::string key_numbers(const std::string& id, const json& s, const json& report) {
  if (s.contains("error")) return "error: " + short_text(str(s["error"]), 100);
  if (s.contains("skipped")) return str(s["skipped"]);
  const std::string cand = str(report["candidate"]), base = str(report["baseline"]);
  if (id == "runtime") {
    return fmt::format("default {}, unknown name rejected: {}",
                       str(at(s["default_backend"], "reported")),
                       yes_no(at(s["unknown_backend"], "rejected")));
  }
  if (id == "logits") {
    const json& a = s["all"];
    return fmt::format("mean KLD {}, p99 {}, same top-1 {}, over {} tokens",
                       fmt_sci(a["kld"]["mean"]), fmt_sci(a["kld"]["p99"]), fmt_pct(a["same_top1"]),
                       str(a["tokens"]));
  }
  if (id == "perplexity") {
    std::string out;
    for (const json& p : s["corpora"]) {
      if (!out.empty()) out += "; ";
      out += fmt::format("{}: {} → {} ({:+.3f}%)", file_name(p["file"]),
                         fmt_g(p["baseline"]["ppl"], 5), fmt_g(p["candidate"]["ppl"], 5),
                         100.0 * p.value("relative_delta", 0.0));
    }
    return out;
  }
  if (id == "throughput") return fmt::format("{} cells, both backends", s["cells"].size());
  if (id == "memory") {
    return fmt::format("KV bytes/token {} → {} ({}x)", str(s["backends"][0]["bytes_per_token"]),
                       str(s["backends"][1]["bytes_per_token"]), fmt_g(s["kv_bytes_ratio"], 3));
  }
  if (id == "drift") {
    double min_cos = 1;
    for (const json& l : s["layers"]) min_cos = std::min(min_cos, l.value("hidden_cosine", 1.0));
    bool reruns = true, attn = true, logits = true, batch_measured = false;
    for (const char* role : {"baseline", "candidate"}) {
      const json& d = s["determinism"][role];
      const json& bt = at(d, "batch");
      batch_measured = batch_measured || !bt.is_null();
      reruns = reruns && d.value("logits_identical_runs", 0) == d.value("logits_runs", -1) &&
               d.value("generation_identical_runs", 0) == d.value("generation_runs", -1) &&
               d.value("batch_generation_identical", false);
      attn = attn && (bt.is_null() || (bt.value("attention_prefill_identical", false) &&
                                       bt.value("attention_decode_identical", false)));
      logits = logits && (bt.is_null() || (bt.value("logits_prefill_identical", false) &&
                                           bt.value("logits_decode_identical", false)));
    }
    // The step-level batch comparison drives the CPU model; elsewhere only whole generations are
    // compared (the reruns column).
    const std::string batch =
        batch_measured ? fmt::format("batch-invariant attention: {}, logits: {}",
                                     attn ? "yes" : "NO", logits ? "yes" : "no")
                       : std::string("batch-invariant attention and logits: not measured here");
    return fmt::format("lowest hidden cosine {:.6f}; reruns and batch generation identical: {}; {}",
                       min_cos, reruns ? "yes" : "NO", batch);
  }
  if (id == "context") {
    return fmt::format("passkey {} {} / {} {}", base, fmt_pct(s["passkey"]["baseline_rate"], 0),
                       cand, fmt_pct(s["passkey"]["candidate_rate"], 0));
  }
  (void)base;
  return "";
}

void runtime_section(const json& s, Section& out) {
  Table eng{"Engines",
            {"role", "backend", "loaded", "load s", "KV cache", "cache tokens", "RSS growth",
             "device memory growth"},
            {}};
  for (const char* role : {"baseline", "candidate"}) {
    const json& e = at(at(s, "engines"), role);
    eng.rows.push_back(
        {role, str(e.contains("backend") ? e["backend"] : at(e, "backend_requested")),
         yes_no(at(e, "loaded")), fmt_g(at(e, "load_seconds"), 3), str(at(e, "kv_cache_dtype")),
         str(at(e, "cache_tokens")), fmt_bytes(at(e, "rss_growth_bytes")),
         fmt_bytes(at(e, "device_used_growth_bytes"))});
  }
  out.tables.push_back(eng);
  Table gen{"Greedy generation (prompt \"Once upon a time\")",
            {"role", "backend", "tokens", "decode tok/s", "text"},
            {}};
  for (const char* role : {"baseline", "candidate"}) {
    const json& g = at(at(s, "generation"), role);
    if (g.is_null()) continue;
    gen.rows.push_back(
        {role, str(at(g, "backend")), str(at(g, "generated_tokens")),
         fmt_g(at(g, "decode_tokens_per_s"), 4),
         g.contains("error") ? "error: " + str(g["error"]) : short_text(str(at(g, "text")), 80)});
  }
  out.tables.push_back(gen);
  out.paragraphs.push_back(fmt::format(
      "An engine built with default options reports backend `{}`. Asking for the backend `{}` "
      "gives: \"{}\".",
      str(at(at(s, "default_backend"), "reported")), str(at(at(s, "unknown_backend"), "name")),
      str(at(at(s, "unknown_backend"), "message"))));
}

Table kld_table(const json& s) {
  Table t{"Per-token KL(baseline ‖ candidate) over every scored token",
          {"corpus", "tokens", "mean KLD", "median", "p99", "p99.9", "max", "same top-1", "RMS Δp"},
          {}};
  auto row = [&](const std::string& name, const json& k) {
    t.rows.push_back(
        {name, str(k["tokens"]), fmt_sci(k["kld"]["mean"]) + " ± " + fmt_sci(k["kld"]["stderr"]),
         fmt_sci(k["kld"]["median"]), fmt_sci(k["kld"]["p99"]), fmt_sci(k["kld"]["p99.9"]),
         fmt_sci(k["kld"]["max"]), fmt_pct(k["same_top1"]) + " ± " + fmt_pct(k["same_top1_stderr"]),
         fmt_pct(k["rms_delta_p"], 3)});
  };
  for (const json& k : s["corpora"]) row(file_name(k["file"]), k);
  if (s["corpora"].size() > 1) row("all", s["all"]);
  return t;
}

void logits_section(const json& s, Section& out) {
  out.paragraphs.push_back(fmt::format(
      "Each corpus is cut into windows of {} tokens (BOS first, every token scored once, as for "
      "perplexity); both backends score the same windows and each token's next-token "
      "distributions are compared (KL in nats, as llama.cpp's --kl-divergence reports).",
      str(s["ctx"])));
  out.tables.push_back(kld_table(s));
  const json& g = s["greedy"];
  Table gt{fmt::format("Greedy continuation agreement ({} tokens per prompt)",
                       str(g["tokens_per_prompt"])),
           {"prompt", "corpus", "offset", "leading tokens equal"},
           {}};
  int i = 0;
  for (const json& p : g["prompts"]) {
    gt.rows.push_back({std::to_string(++i), file_name(p["corpus"]), str(p["offset"]),
                       fmt::format("{} / {}", str(p["agree"]), str(g["tokens_per_prompt"]))});
  }
  out.tables.push_back(gt);
  out.paragraphs.push_back(fmt::format(
      "Greedy agreement: mean {} leading tokens, minimum {}, {} of {} prompts identical "
      "throughout.",
      fmt_g(g["mean_agree"], 3), str(g["min_agree"]), str(g["fully_equal"]), g["prompts"].size()));
}

void perplexity_section(const json& s, const json& report, Section& out) {
  const std::string base = str(report["baseline"]), cand = str(report["candidate"]);
  Table t{"Perplexity (± one standard error from the per-token variance)",
          {"corpus", "ctx", "windows", "tokens", "PPL " + base, "PPL " + cand, "Δ relative"},
          {}};
  for (const json& p : s["corpora"]) {
    t.rows.push_back(
        {file_name(p["file"]), str(s["ctx"]), str(p["windows"]), str(p["tokens"]),
         fmt_g(p["baseline"]["ppl"], 6) + " ± " + fmt_g(p["baseline"]["ppl_stderr"], 3),
         fmt_g(p["candidate"]["ppl"], 6) + " ± " + fmt_g(p["candidate"]["ppl_stderr"], 3),
         fmt::format("{:+.4f}% ± {:.4f}%", 100.0 * p.value("relative_delta", 0.0),
                     100.0 * p.value("relative_delta_stderr", 0.0))});
  }
  out.tables.push_back(t);
  out.paragraphs.emplace_back(
      "The relative delta is exp(mean(NLL_candidate − NLL_baseline)) − 1 over the same tokens; its "
      "± is the standard error of that paired mean, which is much smaller than either PPL's own "
      "±.");
}

void throughput_section(const json& s, Section& out) {
  Table t{fmt::format("Tokens/s ({} generated tokens per request)", str(s["output_len"])),
          {"backend", "batch", "context", "prompt", "prefill tok/s", "decode tok/s",
           "attention share prefill", "attention share decode"},
          {}};
  for (const json& c : s["cells"]) {
    t.rows.push_back({str(c["backend"]), str(c["batch"]), str(c["context"]),
                      str(c["prompt_tokens"]), fmt_g(c["prefill_tokens_per_s"], 4),
                      fmt_g(c["decode_tokens_per_s"], 4),
                      fmt_pct(at(c, "attention_share_prefill"), 1),
                      fmt_pct(at(c, "attention_share_decode"), 1)});
  }
  out.tables.push_back(t);
  out.paragraphs.push_back(str(s["method"]) + ".");
  if (s.contains("attention_share_method")) {
    out.paragraphs.push_back("Attention share: " + str(s["attention_share_method"]) + ".");
  }
  if (s.contains("note")) out.paragraphs.push_back(str(s["note"]));
}

void memory_section(const json& s, const json& report, Section& out) {
  const json& w = s["weights"];
  out.paragraphs.push_back(fmt::format(
      "Weights: {} parameters; this process holds them as {} ({}); in bf16 they take {}.",
      str(w["parameters"]), str(w["dtype_held"]), fmt_bytes(w["bytes_held"]),
      fmt_bytes(w["bf16_bytes"])));
  const bool gpu = s.contains("device_total_bytes");
  Table t{fmt::format("KV cache (budget {} GiB, context {})", fmt_g(s["kv_budget_gib"], 4),
                      str(report["model"]["context_length"])),
          {"backend", "KV dtype", "bytes/token", "capacity tokens", "max-context requests",
           "engine RSS growth", gpu ? "engine device memory" : "CPU cache RSS/token"},
          {}};
  for (const json& b : s["backends"]) {
    const json& load = at(b, "engine_load");
    t.rows.push_back({str(b["backend"]), str(b["kv_cache_dtype"]), str(b["bytes_per_token"]),
                      str(b["capacity_tokens"]), str(b["capacity_requests_at_max_context"]),
                      fmt_bytes(at(load, "rss_growth_bytes")),
                      gpu ? fmt_bytes(at(load, "device_used_growth_bytes"))
                          : fmt_g(at(at(b, "cpu_cache"), "measured_bytes_per_token"), 4)});
  }
  out.tables.push_back(t);
  out.paragraphs.push_back(
      fmt::format("Peak resident memory of this run (every check, both engines): {}.",
                  fmt_bytes(s["peak_rss_bytes"])));
  if (gpu) {
    out.paragraphs.push_back(fmt::format(
        "Device memory in use (cudaMemGetInfo, both engines loaded): {} of {}; the most seen "
        "after any check: {}.",
        fmt_bytes(s["device_used_bytes"]), fmt_bytes(s["device_total_bytes"]),
        fmt_bytes(s["device_used_max_sampled_bytes"])));
  }
  Table m{"What the numbers mean", {"number", "meaning"}, {}};
  for (auto& [k, v] : s["meaning"].items()) m.rows.push_back({k, str(v)});
  out.tables.push_back(m);
  if (s.contains("note")) out.paragraphs.push_back(str(s["note"]));
}

void drift_section(const json& s, Section& out) {
  out.paragraphs.push_back(fmt::format("Input: {} tokens of {}. {}.", str(s["input"]["tokens"]),
                                       str(s["input"]["source"]), str(s["what"])));
  Table t{"Per-layer drift, candidate against baseline",
          {"layer", "hidden cosine", "hidden rel-L2", "attn cosine", "attn rel-L2"},
          {}};
  for (const json& l : s["layers"]) {
    t.rows.push_back({str(l["layer"]), fmt::format("{:.7f}", l.value("hidden_cosine", NAN)),
                      fmt_sci(l["hidden_rel_l2"]),
                      fmt::format("{:.7f}", l.value("attn_cosine", NAN)),
                      fmt_sci(l["attn_rel_l2"])});
  }
  out.tables.push_back(t);
  Table d{"Determinism (each backend against itself)",
          {"backend", "identical logits", "identical greedy tokens", "same tokens in a batch",
           "same attention output in a batch (prefill / decode)",
           "same logits in a batch (prefill / decode)"},
          {}};
  for (const char* role : {"baseline", "candidate"}) {
    const json& x = s["determinism"][role];
    const json& bt = at(x, "batch");
    auto pair = [&](const char* pre, const char* dec, const char* pre_diff, const char* dec_diff) {
      if (bt.is_null()) return std::string(kDash);
      auto one = [&](const char* same, const char* diff) {
        return bt.value(same, false) ? std::string("yes")
                                     : "no (max |Δ| " + fmt_sci(bt[diff]) + ")";
      };
      return one(pre, pre_diff) + " / " + one(dec, dec_diff);
    };
    d.rows.push_back(
        {str(x["backend"]),
         fmt::format("{} of {} runs", str(x["logits_identical_runs"]), str(x["logits_runs"])),
         fmt::format("{} of {} runs", str(x["generation_identical_runs"]),
                     str(x["generation_runs"])),
         yes_no(x["batch_generation_identical"]),
         pair("attention_prefill_identical", "attention_decode_identical",
              "attention_prefill_max_abs_diff", "attention_decode_max_abs_diff"),
         pair("logits_prefill_identical", "logits_decode_identical", "logits_prefill_max_abs_diff",
              "logits_decode_max_abs_diff")});
  }
  out.tables.push_back(d);
  out.paragraphs.emplace_back(
      "Reruns: the same input scored (and greedily continued) again gives bitwise-identical "
      "results. Batch: one request alone and the same request in one forward call between two "
      "others of other lengths; the attention column recomputes the backend alone on the batched "
      "call's exact inputs, so it isolates the attention backend from the rest of the model.");
}

void context_section(const json& s, const json& report, Section& out) {
  const json& pb = s["position_buckets"];
  std::string sources;
  for (const json& f : pb["source"]) sources += (sources.empty() ? "" : ", ") + file_name(f);
  out.paragraphs.push_back(fmt::format(
      "Long text ({}) scored in {} window(s) of {} tokens by both backends; each token is "
      "bucketed by its position in the window.",
      sources, str(pb["windows"]), str(pb["window"])));
  Table b{"KLD and top-1 agreement by position",
          {"positions", "tokens", "mean KLD", "p99 KLD", "max KLD", "same top-1"},
          {}};
  for (const json& x : pb["buckets"]) {
    b.rows.push_back({str(x["label"]), str(x["tokens"]), fmt_sci(at(x, "mean_kld")),
                      fmt_sci(at(x, "p99_kld")), fmt_sci(at(x, "max_kld")),
                      fmt_pct(at(x, "same_top1"))});
  }
  out.tables.push_back(b);
  const json& p = s["passkey"];
  out.paragraphs.push_back(fmt::format(
      "Passkey retrieval: {} seeded keys per cell. Prompt: {}. Overall exact match: {} {}, {} {}.",
      str(p["trials"]), str(p["format"]), str(report["baseline"]), fmt_pct(p["baseline_rate"], 1),
      str(report["candidate"]), fmt_pct(p["candidate_rate"], 1)));
  for (const char* role : {"baseline", "candidate"}) {
    Table t{fmt::format("Passkey exact match, {} (rows: prompt tokens, columns: needle depth)",
                        str(report[role])),
            {"length"},
            {}};
    for (const json& d : p["depths"]) t.header.push_back(fmt_pct(d, 0));
    for (const json& len : p["lengths"]) {
      std::vector<std::string> row = {str(len)};
      for (const json& d : p["depths"]) {
        std::string cell = kDash;
        for (const json& c : p["cells"]) {
          if (c["length"] == len && c["depth"] == d) {
            cell = fmt::format("{}/{}", str(c[role]["matches"]), str(c["trials"]));
          }
        }
        row.push_back(cell);
      }
      t.rows.push_back(row);
    }
    out.tables.push_back(t);
  }
}

}  // namespace

std::string fmt_g(const json& v, int digits) {
  if (!is_num(v)) return v.is_null() ? kDash : str(v);
  const double d = v.get<double>();
  if (!std::isfinite(d)) return fmt::format("{}", d);
  return fmt::format("{:.{}g}", d, digits);
}

std::string fmt_sci(const json& v) {
  if (!is_num(v)) return kDash;
  const double d = v.get<double>();
  if (d == 0) return "0";
  return fmt::format("{:.3e}", d);
}

std::string fmt_pct(const json& v, int decimals) {
  if (!is_num(v)) return kDash;
  return fmt::format("{:.{}f}%", 100.0 * v.get<double>(), decimals);
}

std::string fmt_bytes(const json& v) {
  if (!is_num(v)) return kDash;
  const double b = v.get<double>();
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.2f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{:.0f} B", b);
}

std::string report_title(const json& report) {
  return fmt::format("sagellm validate: {} against {} on {}", str(report["candidate"]),
                     str(report["baseline"]), file_name(report["model"]["path"]));
}

std::vector<Section> build_sections(const json& report) {
  std::vector<Section> out;
  const json& checks = report["checks"];

  Section summary{"summary", "Summary", str(at(report, "verdict")), {}, {}};
  summary.paragraphs.push_back(
      fmt::format("Overall verdict: **{}**.", verdict_word(str(at(report, "verdict")))));
  Table st{"", {"check", "verdict", "key numbers", "seconds"}, {}};
  for (std::string_view name : kCheckNames) {
    const std::string id(name);
    if (!checks.contains(id)) continue;
    const json& s = checks[id];
    st.rows.push_back({title_of(id), verdict_word(str(at(s, "verdict"))),
                       key_numbers(id, s, report), fmt_g(at(s, "seconds"), 3)});
  }
  summary.tables.push_back(st);
  out.push_back(summary);

  const json& m = report["model"];
  const json& dev = report["device"];
  Section setup{"setup", "Setup", "", {}, {}};
  setup.tables.push_back(Table{
      "",
      {"item", "value"},
      {{"model", str(m["path"])},
       {"shape",
        fmt::format("{} layers, hidden {}, {} heads / {} KV heads, head_dim {}, vocab {}, "
                    "context {}",
                    str(m["layers"]), str(m["hidden_size"]), str(m["heads"]), str(m["kv_heads"]),
                    str(m["head_dim"]), str(m["vocab_size"]), str(m["context_length"]))},
       {"weights dtype (checkpoint)", str(m["torch_dtype"])},
       {"baseline / candidate", str(report["baseline"]) + " / " + str(report["candidate"])},
       {"sage P·V dtype", str(report["options"]["sage_pv_dtype"])},
       {"device", fmt::format("{}: {} ({} threads)", str(dev["kind"]), str(dev["name"]),
                              str(dev["threads"]))},
       {"sagellm",
        fmt::format("{} (commit {})", str(report["sagellm_version"]), str(report["git_commit"]))},
       {"command", str(report["command_line"])},
       {"started", str(report["started_at"])},
       {"duration", fmt_g(report["duration_seconds"], 4) + " s"},
       {"quick", yes_no(report["options"]["quick"])}}});
  out.push_back(setup);

  for (std::string_view name : kCheckNames) {
    const std::string id(name);
    if (!checks.contains(id)) continue;
    const json& s = checks[id];
    Section sec{id, title_of(id), str(at(s, "verdict")), {}, {}};
    if (s.contains("error")) {
      sec.paragraphs.push_back("The check could not finish: " + str(s["error"]));
    } else if (s.contains("skipped")) {
      sec.paragraphs.push_back("Skipped: " + str(s["skipped"]));
    } else {
      try {
        if (id == "runtime") runtime_section(s, sec);
        if (id == "logits") logits_section(s, sec);
        if (id == "perplexity") perplexity_section(s, report, sec);
        if (id == "throughput") throughput_section(s, sec);
        if (id == "memory") memory_section(s, report, sec);
        if (id == "drift") drift_section(s, sec);
        if (id == "context") context_section(s, report, sec);
      } catch (const std::exception& e) {
        sec.paragraphs.push_back(std::string("(incomplete measurements: ") + e.what() + ")");
      }
    }
    sec.tables.push_back(criteria_table(s));
    out.push_back(sec);
  }

  Section th{"thresholds", "Thresholds", "", {}, {}};
  Table tt{"Set with the flags below; these are the values this report was judged with.",
           {"flag", "value", "meaning"},
           {}};
  for (const json& t : report["thresholds"]) {
    const std::string flag = str(t["flag"]);
    const json& used = at(at(report, "judged_with"), flag.c_str());
    tt.rows.push_back({flag, fmt_g(used.is_null() ? t["value"] : used, 6), str(t["meaning"])});
  }
  th.tables.push_back(tt);
  out.push_back(th);
  return out;
}

}  // namespace sagellm::eval::validate
