// Small inline-SVG charts for report.html (line chart, grouped bar chart, heat map): plain SVG
// elements with no script, so the report opens offline in any browser. Every data mark carries
// class "mark" and its value in data-* attributes, so tests can check what was drawn.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace sagellm::eval::validate::svg {

struct Axis {
  std::string label;
  bool log = false;
  std::optional<double> min, max;  // default: the data's range
};

struct LineSeries {
  std::string name;
  std::string color;
  std::vector<double> x, y;  // non-finite (or, on a log axis, non-positive) points are skipped
  bool dashed = false;
};

struct LineChart {
  std::string id, title;
  Axis x, y;
  std::vector<LineSeries> series;
  bool integer_x = false;  // ticks only at whole numbers (layers)
};

struct BarGroup {
  std::string name;
  std::string color;
  std::vector<double> values;  // one per category; non-finite: no bar ("n/a")
};

struct BarChart {
  std::string id, title;
  std::vector<std::string> categories;
  Axis y;
  std::vector<BarGroup> groups;
};

struct HeatMap {
  std::string id, title;
  std::string row_label, col_label;
  std::vector<std::string> rows, cols;
  std::vector<std::vector<double>> values;       // [row][col] in [0, 1]; non-finite: empty cell
  std::vector<std::vector<std::string>> labels;  // text drawn in each cell
};

std::string render(const LineChart& c);
std::string render(const BarChart& c);
std::string render(const HeatMap& c);

std::string escape(const std::string& s);  // for XML/HTML text and attributes

}  // namespace sagellm::eval::validate::svg
