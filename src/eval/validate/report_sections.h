// The report's content as titled sections of paragraphs and tables, built once from report.json
// and rendered by both report.md and report.html, so the two always say the same thing.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sagellm::eval::validate {

struct Table {
  std::string caption;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

struct Section {
  std::string id;  // the check's name ("runtime", ...) or "summary", "setup", "thresholds"
  std::string title;
  std::string verdict;  // empty for sections that are not checks
  std::vector<std::string> paragraphs;
  std::vector<Table> tables;
};

std::string report_title(const nlohmann::json& report);
std::vector<Section> build_sections(const nlohmann::json& report);

// Number formatting shared by the renderers.
std::string fmt_g(const nlohmann::json& v, int digits = 4);  // "—" for null/missing
std::string fmt_sci(const nlohmann::json& v);
std::string fmt_pct(const nlohmann::json& fraction, int decimals = 2);
std::string fmt_bytes(const nlohmann::json& bytes);

}  // namespace sagellm::eval::validate
