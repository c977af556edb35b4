// report.md: the sections as GitHub-flavoured Markdown tables, ready to paste into a pull request.
#include <fmt/format.h>

#include "eval/validate/report_sections.h"
#include "eval/validate/validate.h"

namespace sagellm::eval::validate {

namespace {

std::string cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n' || c == '\r') {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out.empty() ? " " : out;
}

std::string table(const Table& t) {
  std::string out;
  if (!t.caption.empty()) out += fmt::format("*{}*\n\n", cell(t.caption));
  out += "|";
  for (const std::string& h : t.header) out += fmt::format(" {} |", cell(h));
  out += "\n|";
  for (size_t i = 0; i < t.header.size(); ++i) out += i == 0 ? " --- |" : " ---: |";
  out += "\n";
  for (const auto& row : t.rows) {
    out += "|";
    for (size_t i = 0; i < t.header.size(); ++i) {
      out += fmt::format(" {} |", cell(i < row.size() ? row[i] : std::string()));
    }
    out += "\n";
  }
  return out + "\n";
}

}  // namespace

std::string render_markdown(const nlohmann::json& report) {
  std::string out = fmt::format("# {}\n\n", report_title(report));
  for (const Section& s : build_sections(report)) {
    out += fmt::format("## {}", s.title);
    if (!s.verdict.empty() && s.id != "summary") {
      std::string v = s.verdict;
      for (char& c : v) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      out += fmt::format(" — {}", v);
    }
    out += "\n\n";
    for (const std::string& p : s.paragraphs) out += p + "\n\n";
    for (const Table& t : s.tables) out += table(t);
  }
  out += "Charts: report.html. Every number: report.json.\n";
  return out;
}

}  // namespace sagellm::eval::validate
