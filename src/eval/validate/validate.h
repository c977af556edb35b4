// `sagellm validate`: the seven checks of a candidate attention backend (sage_attn) against the
// baseline (flash) on one model, every number a measurement, written as report.json, report.md and
// report.html. The report's schema is built by the check_*.cpp files; judge() turns measurements
// into verdicts so that verdicts can be recomputed for other thresholds.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "eval/validate/validate_options.h"

namespace sagellm::eval::validate {

// Runs the selected checks and returns the judged report. Throws sagellm::Error for bad options
// or inputs (found before any check runs); a check that fails while running is recorded in the
// report as failed, with its error, and the others still run.
nlohmann::json run_validate(ValidateOptions options);

// Sets "verdict" (pass | warn | fail | skipped) and "reasons" of every check in report["checks"]
// and the overall report["verdict"] from the measurements and `thresholds`.
void judge(nlohmann::json& report, const Thresholds& thresholds);

struct ReportFiles {
  std::filesystem::path json, markdown, html;
};
// Creates `out_dir` (and checks it is writable) so that a bad --out fails before the checks run.
void prepare_output_dir(const std::filesystem::path& out_dir);
ReportFiles write_reports(const nlohmann::json& report, const std::filesystem::path& out_dir);

std::string render_markdown(const nlohmann::json& report);
std::string render_html(const nlohmann::json& report);  // self-contained: inline SVG and CSS only

}  // namespace sagellm::eval::validate
