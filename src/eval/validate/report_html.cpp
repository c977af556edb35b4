// report.html: the same sections as report.md plus charts drawn as inline SVG (error vs position,
// error vs layer, throughput vs context, passkey heat maps). No script and no external file: it
// opens offline.
#include <fmt/format.h>

#include <cmath>
#include <map>

#include "eval/validate/report_sections.h"
#include "eval/validate/svg_chart.h"
#include "eval/validate/validate.h"

namespace sagellm::eval::validate {

using nlohmann::json;

namespace {

constexpr const char* kBaseColor = "#1f77b4";
constexpr const char* kCandColor = "#ff7f0e";
constexpr const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                    "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

double num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

// Paragraph text: HTML-escaped, with `code` and **bold** spans.
std::string inline_markup(const std::string& s) {
  const std::string e = svg::escape(s);
  std::string out;
  bool code = false, bold = false;
  for (size_t i = 0; i < e.size(); ++i) {
    if (e[i] == '`') {
      out += code ? "</code>" : "<code>";
      code = !code;
    } else if (e.compare(i, 2, "**") == 0) {
      out += bold ? "</strong>" : "<strong>";
      bold = !bold;
      ++i;
    } else {
      out += e[i];
    }
  }
  if (code) out += "</code>";
  if (bold) out += "</strong>";
  return out;
}

// Numbers are right-aligned, text left-aligned.
bool looks_numeric(const std::string& v) {
  if (v.empty()) return false;
  if (v == "—") return true;
  const size_t i = (v[0] == '-' || v[0] == '+') ? 1 : 0;
  return i < v.size() && std::isdigit(static_cast<unsigned char>(v[i])) &&
         v.find_first_of("abcdfghijklmnopqrstuvwxyzABCDFGHIJKLMNOPQRSTUVWXYZ") == std::string::npos;
}

std::string table_html(const Table& t) {
  std::string out = "<table>\n";
  if (!t.caption.empty()) out += "<caption>" + svg::escape(t.caption) + "</caption>\n";
  out += "<thead><tr>";
  for (const std::string& h : t.header) out += "<th>" + svg::escape(h) + "</th>";
  out += "</tr></thead>\n<tbody>\n";
  for (const auto& row : t.rows) {
    out += "<tr>";
    for (size_t i = 0; i < t.header.size(); ++i) {
      const std::string v = i < row.size() ? row[i] : std::string();
      std::string cls;
      if (v == "PASS" || v == "FAIL" || v == "WARN" || v == "SKIPPED" || v == "INFO") {
        cls = " class=\"status " + v + "\"";
      } else if (looks_numeric(v)) {
        cls = " class=\"num\"";
      }
      out += "<td" + cls + ">" + svg::escape(v) + "</td>";
    }
    out += "</tr>\n";
  }
  return out + "</tbody>\n</table>\n";
}

std::vector<std::string> logits_charts(const json& s) {
  svg::BarChart c;
  c.id = "kld-quantiles";
  c.title = "Per-token KLD quantiles";
  c.categories = {"median", "p90", "p99", "p99.9", "max"};
  c.y = {"KL divergence (nats, log)", true, {}, {}};
  size_t i = 0;
  for (const json& k : s["corpora"]) {
    svg::BarGroup g;
    g.name = std::filesystem::path(k.value("file", std::string())).filename().string();
    g.color = kPalette[i++ % 8];
    for (const char* q : {"median", "p90", "p99", "p99.9", "max"})
      g.values.push_back(num(k["kld"], q));
    c.groups.push_back(g);
  }
  return {svg::render(c)};
}

std::vector<std::string> drift_charts(const json& s) {
  svg::LineChart cos;
  cos.id = "drift-cosine";
  cos.title = "Cosine similarity per layer (candidate vs baseline)";
  cos.x = {"layer", false, {}, {}};
  cos.y = {"cosine similarity", false, {}, {}};
  cos.integer_x = true;
  svg::LineChart rel = cos;
  rel.id = "drift-rel-l2";
  rel.title = "Relative L2 error per layer (candidate vs baseline)";
  rel.y = {"relative L2 error (log)", true, {}, {}};
  svg::LineSeries hc{"hidden state", kBaseColor, {}, {}, false};
  svg::LineSeries ac{"attention output", kCandColor, {}, {}, true};
  svg::LineSeries hr = hc, ar = ac;
  for (const json& l : s["layers"]) {
    const double x = num(l, "layer");
    hc.x.push_back(x);
    hc.y.push_back(num(l, "hidden_cosine"));
    ac.x.push_back(x);
    ac.y.push_back(num(l, "attn_cosine"));
    hr.x.push_back(x);
    hr.y.push_back(num(l, "hidden_rel_l2"));
    ar.x.push_back(x);
    ar.y.push_back(num(l, "attn_rel_l2"));
  }
  cos.series = {hc, ac};
  rel.series = {hr, ar};
  return {svg::render(cos), svg::render(rel)};
}

std::vector<std::string> throughput_charts(const json& s) {
  std::vector<std::string> out;
  for (const char* phase : {"prefill", "decode"}) {
    svg::LineChart c;
    c.id = std::string("throughput-") + phase;
    c.title = fmt::format("{} tokens/s vs context",
                          phase == std::string("prefill") ? "Prefill" : "Decode");
    c.x = {"context length (tokens)", true, {}, {}};
    c.y = {"tokens/s (log)", true, {}, {}};
    std::map<std::pair<std::string, int>, svg::LineSeries> series;
    std::vector<int> batches;
    for (const json& cell : s["cells"]) {
      const int b = cell.value("batch", 0);
      if (std::find(batches.begin(), batches.end(), b) == batches.end()) batches.push_back(b);
    }
    for (const json& cell : s["cells"]) {
      const std::string role = cell.value("role", std::string());
      const int b = cell.value("batch", 0);
      auto key = std::make_pair(role, b);
      svg::LineSeries& ls = series[key];
      if (ls.name.empty()) {
        ls.name = fmt::format("{} b={}", cell.value("backend", std::string()), b);
        ls.color = role == "baseline" ? kBaseColor : kCandColor;
        ls.dashed = std::find(batches.begin(), batches.end(), b) != batches.begin();
      }
      ls.x.push_back(num(cell, "context"));
      ls.y.push_back(num(cell, (std::string(phase) + "_tokens_per_s").c_str()));
    }
    for (auto& [k, v] : series) c.series.push_back(v);
    out.push_back(svg::render(c));
  }
  return out;
}

std::vector<std::string> context_charts(const json& s, const json& report) {
  std::vector<std::string> out;
  svg::BarChart b;
  b.id = "kld-by-position";
  b.title = "KLD by token position";
  b.y = {"KL divergence (nats, log)", true, {}, {}};
  svg::BarGroup mean{"mean KLD", kBaseColor, {}}, p99{"p99 KLD", kCandColor, {}};
  for (const json& x : s["position_buckets"]["buckets"]) {
    b.categories.push_back(x.value("label", std::string()));
    mean.values.push_back(num(x, "mean_kld"));
    p99.values.push_back(num(x, "p99_kld"));
  }
  b.groups = {mean, p99};
  out.push_back(svg::render(b));
  const json& p = s["passkey"];
  for (const char* role : {"baseline", "candidate"}) {
    svg::HeatMap h;
    h.id = std::string("passkey-") + role;
    h.title = fmt::format("Passkey exact match: {}", report.value(role, std::string(role)));
    h.row_label = "prompt tokens";
    h.col_label = "needle depth";
    for (const json& d : p["depths"]) h.cols.push_back(fmt_pct(d, 0));
    for (const json& len : p["lengths"]) {
      h.rows.push_back(std::to_string(len.get<int64_t>()));
      std::vector<double> vals;
      std::vector<std::string> labels;
      for (const json& d : p["depths"]) {
        double v = NAN;
        std::string label;
        for (const json& c : p["cells"]) {
          if (c["length"] == len && c["depth"] == d) {
            v = num(c[role], "rate");
            label = fmt::format("{}/{}", c[role].value("matches", 0), c.value("trials", 0));
          }
        }
        vals.push_back(v);
        labels.push_back(label);
      }
      h.values.push_back(vals);
      h.labels.push_back(labels);
    }
    out.push_back(svg::render(h));
  }
  return out;
}

constexpr const char* kStyle = R"(
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
caption { text-align: left; font-style: italic; padding-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num, td.status { text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 .2em; }
.verdict { display: inline-block; padding: .1em .6em; border-radius: 4px; color: #fff;
           font-size: .8em; vertical-align: middle; }
.verdict.pass, td.PASS { background: #2e7d32; color: #fff; }
.verdict.warn, td.WARN { background: #ef8f00; color: #fff; }
.verdict.fail, td.FAIL { background: #c62828; color: #fff; }
.verdict.skipped, td.SKIPPED { background: #777; color: #fff; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
svg.chart { border: 1px solid #e5e5e5; max-width: 100%; height: auto; }
)";

}  // namespace

std::string render_html(const json& report) {
  std::string out =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>" +
      svg::escape(report_title(report)) + "</title>\n<style>" + kStyle +
      "</style>\n</head>\n<body>\n";
  out += "<h1>" + svg::escape(report_title(report)) + "</h1>\n";
  const json& checks = report["checks"];
  for (const Section& s : build_sections(report)) {
    out += "<section id=\"" + svg::escape(s.id) + "\">\n<h2>" + svg::escape(s.title);
    if (!s.verdict.empty() && s.id != "summary") {
      out += " <span class=\"verdict " + svg::escape(s.verdict) + "\">" + svg::escape(s.verdict) +
             "</span>";
    }
    out += "</h2>\n";
    for (const std::string& p : s.paragraphs) out += "<p>" + inline_markup(p) + "</p>\n";
    // Charts come before the criteria table (the last table).
    std::vector<std::string> charts;
    if (checks.contains(s.id) && !checks[s.id].contains("error") &&
        !checks[s.id].contains("skipped")) {
      try {
        const json& c = checks[s.id];
        if (s.id == "logits") charts = logits_charts(c);
        if (s.id == "drift") charts = drift_charts(c);
        if (s.id == "throughput") charts = throughput_charts(c);
        if (s.id == "context") charts = context_charts(c, report);
      } catch (const std::exception&) {
        charts.clear();  // an incomplete section keeps its tables
      }
    }
    for (size_t i = 0; i < s.tables.size(); ++i) {
      if (i + 1 == s.tables.size() && !charts.empty()) {
        out += "<div class=\"charts\">\n";
        for (const std::string& c : charts) out += c;
        out += "</div>\n";
        charts.clear();
      }
      out += table_html(s.tables[i]);
    }
    out += "</section>\n";
  }
  out += "<p>Every number: report.json.</p>\n</body>\n</html>\n";
  return out;
}

}  // namespace sagellm::eval::validate
