// The measuring instruments of validate: the timing decorator changes nothing it wraps, the step
// driver computes what the engine computes, the charts draw what they are given, and report.html
// renders in a real browser.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "common/fixtures.h"
#include "common/run_command.h"
#include "engine/engine.h"
#include "eval/validate/step_runner.h"
#include "eval/validate/svg_chart.h"
#include "attention/timed_attention.h"
#include "eval/validate/validate.h"

namespace sagellm {
namespace {

namespace fs = std::filesystem;
namespace v = eval::validate;

EngineOptions stories(const std::string& backend) {
  EngineOptions e;
  e.model_dir = testing::model_dir("stories260K");
  e.attention_backend = backend;
  return e;
}

std::vector<int32_t> seeded_ids(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids = {1};
  while (ids.size() < n) ids.push_back(static_cast<int32_t>(3 + rng() % 509));
  return ids;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

// Through the step driver, with and without the timing decorator, the logits are bitwise those
// of Engine::score, and the decorator saw one call per layer per step.
TEST(StepRunner, TimedStepsEqualEngineScore) {
  for (const std::string backend : {"flash", "sage_attn"}) {
    Engine e(stories(backend));
    const std::vector<int32_t> ids = seeded_ids(200, 5);
    const std::vector<float> want = e.score(ids);
    TimedAttention timed(e.attention());
    EXPECT_EQ(timed.name(), backend);
    v::StepRunner runner(e.model(), timed, e.cache().dtype(), 64, 256);
    const int r = runner.add_request();
    const std::vector<float> got = runner.step({{r, ids}}, LogitsMode::kAll);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << backend;
    EXPECT_EQ(timed.calls(), 5);  // layers
    EXPECT_GT(timed.seconds(), 0.0);
    EXPECT_EQ(runner.kv_len(r), 200);
  }
}

TEST(StepRunner, RandomFillThenDecodeRuns) {
  Engine e(stories("sage_attn"));
  v::StepRunner runner(e.model(), e.attention(), e.cache().dtype(), 64, 1024);
  const int a = runner.add_request(), b = runner.add_request();
  runner.fill_random(a, 300, 1);
  runner.fill_random(b, 130, 2);
  const std::vector<int32_t> t1 = {5}, t2 = {9};
  const std::vector<float> logits = runner.step({{a, t1}, {b, t2}}, LogitsMode::kLastPerSeq);
  ASSERT_EQ(logits.size(), 2u * 512);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_EQ(runner.kv_len(a), 301);
  EXPECT_EQ(runner.kv_len(b), 131);
}

TEST(SvgChart, LineChartDrawsEveryFinitePoint) {
  v::svg::LineChart c;
  c.id = "t";
  c.title = "A <title> & more";
  c.x = {"x", true, {}, {}};
  c.y = {"y", true, {}, {}};
  c.series.push_back({"one", "#123456", {128, 512, 2048}, {10, 100, 1000}, false});
  c.series.push_back({"two", "#654321", {128, 512, 2048}, {20, NAN, -1}, true});  // 1 drawable
  const std::string svg = v::svg::render(c);
  EXPECT_EQ(count(svg, "class=\"mark\""), 4u);
  EXPECT_NE(svg.find("A &lt;title&gt; &amp; more"), std::string::npos);
  EXPECT_NE(svg.find("data-y=\"1000\""), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.rfind("</svg>"), svg.size() - 7);
}

TEST(SvgChart, HeatMapHasOneCellPerValue) {
  v::svg::HeatMap h;
  h.id = "h";
  h.title = "grid";
  h.rows = {"1024", "2048"};
  h.cols = {"0%", "50%", "100%"};
  h.values = {{1, 0.5, 0}, {1, NAN, 0.2}};
  h.labels = {{"5/5", "3/5", "0/5"}, {"5/5", "", "1/5"}};
  const std::string svg = v::svg::render(h);
  EXPECT_EQ(count(svg, "class=\"mark cell\""), 5u);
  EXPECT_EQ(count(svg, "class=\"cell empty\""), 1u);
  EXPECT_NE(svg.find("data-value=\"0.5\""), std::string::npos);
}

TEST(SvgChart, BarChartMarksMissingValues) {
  v::svg::BarChart b;
  b.id = "b";
  b.title = "bars";
  b.categories = {"a", "b", "c"};
  b.y = {"v", true, {}, {}};
  b.groups.push_back({"g", "#000000", {1e-3, NAN, 2e-2}});
  const std::string svg = v::svg::render(b);
  EXPECT_EQ(count(svg, "class=\"mark\""), 2u);
  EXPECT_EQ(count(svg, "class=\"na\""), 1u);
}

std::string find_chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome", "chrome"}) {
    const testing::CommandResult r = testing::run_command(std::string("command -v ") + name);
    if (r.exit_code == 0 && !r.out.empty()) return r.out.substr(0, r.out.find('\n'));
  }
  return "";
}

// report.html opened by a real browser: the DOM it builds holds every chart with its marks.
TEST(ReportHtml, RendersInHeadlessChromium) {
  const std::string chromium = find_chromium();
  if (chromium.empty()) {
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") {
      FAIL() << "chromium is not installed (scripts/install-deps.sh installs it); CI must run "
                "this test";
    }
    GTEST_SKIP() << "chromium is not installed: report.html was not rendered in a browser";
  }
  const fs::path out =
      fs::temp_directory_path() / ("sagellm_validate_html_" + std::to_string(::getpid()));
  v::ValidateOptions o;
  o.engine.model_dir = testing::model_dir("stories260K");
  o.quick = true;
  o.corpora = {testing::shared_dir() / "data" / "tinystories" / "sample.txt"};
  o.haystack_dir = testing::shared_dir() / "data" / "haystack";
  o.passkey_trials = 1;
  const v::ReportFiles files = v::write_reports(v::run_validate(o), out);
  const std::string flags =
      " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --user-data-dir=" +
      (out / "profile").string();
  const testing::CommandResult dom = testing::run_command(
      "'" + chromium + "'" + flags + " --dump-dom 'file://" + files.html.string() + "'");
  ASSERT_EQ(dom.exit_code, 0) << dom.err;
  for (const char* chart :
       {"kld-quantiles", "throughput-prefill", "throughput-decode", "drift-cosine", "drift-rel-l2",
        "kld-by-position", "passkey-baseline", "passkey-candidate"}) {
    const std::regex svg_open(std::string("<svg[^>]*id=\"") + chart + "\"");
    EXPECT_TRUE(std::regex_search(dom.out, svg_open)) << chart;
  }
  EXPECT_GE(count(dom.out, "</svg>"), 8u);
  EXPECT_EQ(count(dom.out, "class=\"mark cell\""), 20u);     // 2 heat maps x 2 lengths x 5 depths
  EXPECT_GE(count(dom.out, "<circle class=\"mark\""), 20u);  // drift (4 x 5) + throughput
  const testing::CommandResult shot = testing::run_command(
      "'" + chromium + "'" + flags + " --window-size=1200,6000 --screenshot='" +
      (out / "report.png").string() + "' 'file://" + files.html.string() + "'");
  EXPECT_EQ(shot.exit_code, 0) << shot.err;
  EXPECT_GT(fs::exists(out / "report.png") ? fs::file_size(out / "report.png") : 0u, 20000u);
  fs::remove_all(out);
}

}  // namespace
}  // namespace sagellm
