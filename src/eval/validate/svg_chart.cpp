#include "eval/validate/svg_chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace sagellm::eval::validate::svg {

namespace {

constexpr double kWidth = 680, kHeight = 360;
constexpr double kLeft = 72, kRight = 170, kTop = 40, kBottom = 52;
constexpr double kPlotW = kWidth - kLeft - kRight, kPlotH = kHeight - kTop - kBottom;

std::string num(double v) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.2g}", v);
  if (a >= 100) return fmt::format("{:.0f}", v);
  return fmt::format("{:.3g}", v);
}

std::string coord(double v) { return fmt::format("{:.1f}", v); }

// Labels for evenly spaced ticks: as many decimals as the spacing needs (a cosine axis from 0.9975
// to 1 must not print "0.998" twice).
std::vector<std::string> tick_labels(const std::vector<double>& t, bool log) {
  std::vector<std::string> out;
  const double step = t.size() >= 2 ? std::abs(t[1] - t[0]) : 0;
  for (double v : t) {
    if (log || step <= 0 || std::abs(v) >= 1e5) {
      out.push_back(num(v));
    } else {
      const int decimals = std::clamp(static_cast<int>(std::ceil(-std::log10(step) - 1e-9)), 0, 10);
      out.push_back(fmt::format("{:.{}f}", v, decimals));
    }
  }
  return out;
}

// A data range mapped onto pixels, linear or log10.
struct Scale {
  double lo = 0, hi = 1;
  bool log = false;
  double px0 = 0, px1 = 1;  // pixel positions of lo and hi

  double f(double v) const { return log ? std::log10(v) : v; }
  double operator()(double v) const { return px0 + (f(v) - f(lo)) / (f(hi) - f(lo)) * (px1 - px0); }
  bool valid(double v) const { return std::isfinite(v) && (!log || v > 0); }
};

Scale make_scale(const std::vector<double>& values, const Axis& axis, double px0, double px1,
                 bool pad_zero) {
  Scale s;
  s.log = axis.log;
  s.px0 = px0;
  s.px1 = px1;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values) {
    if (!s.valid(v)) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!std::isfinite(lo)) {
    lo = s.log ? 1e-6 : 0;
    hi = s.log ? 1 : 1;
  }
  if (pad_zero && !s.log) lo = std::min(lo, 0.0);
  if (axis.min) lo = *axis.min;
  if (axis.max) hi = *axis.max;
  if (s.log) {
    lo = std::pow(10.0, std::floor(std::log10(lo)));
    hi = std::pow(10.0, std::ceil(std::log10(hi)));
    if (hi <= lo) hi = lo * 10;
  } else if (hi <= lo) {
    const double d = lo == 0 ? 1 : std::abs(lo) * 0.01;
    lo -= d;
    hi += d;
  } else if (!axis.min && !axis.max) {
    // Room around the data so that no mark sits on an axis line (bars keep their zero).
    const double pad = 0.05 * (hi - lo);
    if (!(pad_zero && lo == 0)) lo -= pad;
    hi += pad;
  }
  s.lo = lo;
  s.hi = hi;
  return s;
}

std::vector<double> ticks(const Scale& s, bool integer) {
  std::vector<double> t;
  if (s.log) {
    for (double e = std::log10(s.lo); e <= std::log10(s.hi) + 1e-9; e += 1)
      t.push_back(std::pow(10.0, e));
    if (t.size() > 8) {  // every other decade
      std::vector<double> thin;
      for (size_t i = 0; i < t.size(); i += 2) thin.push_back(t[i]);
      t = thin;
    }
    return t;
  }
  const double span = s.hi - s.lo;
  const double raw = span / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  }
  if (integer) step = std::max(1.0, std::round(step));
  for (double v = std::ceil(s.lo / step) * step; v <= s.hi + step * 1e-9; v += step) {
    t.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  }
  return t;
}

std::string open_svg(const std::string& id, const std::string& title, const std::string& kind,
                     double height = kHeight) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"{0}\" data-kind=\"{1}\" "
      "viewBox=\"0 0 {2} {3}\" width=\"{2}\" height=\"{3}\" role=\"img\" aria-label=\"{4}\">\n"
      "<rect class=\"bg\" x=\"0\" y=\"0\" width=\"{2}\" height=\"{3}\" fill=\"#ffffff\"/>\n"
      "<text class=\"title\" x=\"{5}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" "
      "font-weight=\"bold\">{4}</text>\n",
      escape(id), kind, kWidth, height, escape(title), coord((kLeft + kWidth - kRight) / 2));
}

std::string y_axis(const Scale& y, const std::string& label, bool integer = false) {
  std::string out = "<g class=\"axis y\">\n";
  const std::vector<double> ts = ticks(y, integer);
  const std::vector<std::string> labels = tick_labels(ts, y.log);
  for (size_t i = 0; i < ts.size(); ++i) {
    const double py = y(ts[i]);
    out += fmt::format(
        "<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"#e3e3e3\"/>"
        "<text x=\"{3}\" y=\"{4}\" text-anchor=\"end\" font-size=\"11\">{5}</text>\n",
        coord(kLeft), coord(kLeft + kPlotW), coord(py), coord(kLeft - 6), coord(py + 4), labels[i]);
  }
  out += fmt::format(
      "<line x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#333\"/>"
      "<text x=\"16\" y=\"{3}\" text-anchor=\"middle\" font-size=\"12\" "
      "transform=\"rotate(-90 16 {3})\">{4}</text>\n</g>\n",
      coord(kLeft), coord(kTop), coord(kTop + kPlotH), coord(kTop + kPlotH / 2), escape(label));
  return out;
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& entries,
                   const std::vector<bool>& dashed) {
  std::string out = "<g class=\"legend\">\n";
  const double x = kWidth - kRight + 14;
  for (size_t i = 0; i < entries.size(); ++i) {
    const double y = kTop + 8 + 18 * static_cast<double>(i);
    out += fmt::format(
        "<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"{3}\" stroke-width=\"3\"{4}/>"
        "<text x=\"{5}\" y=\"{6}\" font-size=\"11\">{7}</text>\n",
        coord(x), coord(x + 22), coord(y), escape(entries[i].second),
        i < dashed.size() && dashed[i] ? " stroke-dasharray=\"5 3\"" : "", coord(x + 28),
        coord(y + 4), escape(entries[i].first));
  }
  return out + "</g>\n";
}

std::string no_data(const std::string& svg_head) {
  return svg_head + fmt::format(
                        "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" "
                        "font-size=\"13\" fill=\"#777\">no data</text>\n</svg>\n",
                        coord(kWidth / 2), coord(kHeight / 2));
}

// Red (0) through amber (0.5) to green (1).
std::string heat_color(double v) {
  v = std::clamp(v, 0.0, 1.0);
  const double r = v < 0.5 ? 220 : 220 - (v - 0.5) * 2 * (220 - 46);
  const double g = v < 0.5 ? 60 + v * 2 * (180 - 60) : 180 - (v - 0.5) * 2 * (180 - 160);
  const double b = v < 0.5 ? 50 : 50 + (v - 0.5) * 2 * (90 - 50);
  return fmt::format("#{:02x}{:02x}{:02x}", static_cast<int>(r), static_cast<int>(g),
                     static_cast<int>(b));
}

}  // namespace

std::string escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string render(const LineChart& c) {
  std::string out = open_svg(c.id, c.title, "line");
  std::vector<double> xs, ys;
  for (const LineSeries& s : c.series) {
    xs.insert(xs.end(), s.x.begin(), s.x.end());
    ys.insert(ys.end(), s.y.begin(), s.y.end());
  }
  if (xs.empty()) return no_data(out);
  const Scale x = make_scale(xs, c.x, kLeft + 10, kLeft + kPlotW - 10, false);
  const Scale y = make_scale(ys, c.y, kTop + kPlotH, kTop, false);
  out += y_axis(y, c.y.label);
  out += "<g class=\"axis x\">\n";
  std::vector<double> xt;
  if (c.x.log) {
    // Log x axis: label the data's own x values (context lengths), not decades.
    for (double v : xs) {
      if (x.valid(v) && std::find(xt.begin(), xt.end(), v) == xt.end()) xt.push_back(v);
    }
    std::sort(xt.begin(), xt.end());
  } else {
    xt = ticks(x, c.integer_x);
  }
  const std::vector<std::string> xlabels = tick_labels(xt, c.x.log);
  for (size_t i = 0; i < xt.size(); ++i) {
    const double t = xt[i];
    out += fmt::format(
        "<line x1=\"{0}\" x2=\"{0}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#333\"/>"
        "<text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\" font-size=\"11\">{4}</text>\n",
        coord(x(t)), coord(kTop + kPlotH), coord(kTop + kPlotH + 5), coord(kTop + kPlotH + 18),
        xlabels[i]);
  }
  out += fmt::format(
      "<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"#333\"/>"
      "<text x=\"{3}\" y=\"{4}\" text-anchor=\"middle\" font-size=\"12\">{5}</text>\n</g>\n",
      coord(kLeft), coord(kLeft + kPlotW), coord(kTop + kPlotH), coord(kLeft + kPlotW / 2),
      coord(kHeight - 12), escape(c.x.label));
  std::vector<std::pair<std::string, std::string>> entries;
  std::vector<bool> dashed;
  for (const LineSeries& s : c.series) {
    entries.emplace_back(s.name, s.color);
    dashed.push_back(s.dashed);
    std::string points, marks;
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!x.valid(s.x[i]) || !y.valid(s.y[i])) continue;
      const double px = x(s.x[i]), py = y(s.y[i]);
      points += coord(px) + "," + coord(py) + " ";
      marks += fmt::format(
          "<circle class=\"mark\" cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{}\" data-x=\"{}\" "
          "data-y=\"{}\"><title>{}: {} = {}</title></circle>\n",
          coord(px), coord(py), escape(s.color), s.x[i], s.y[i], escape(s.name), num(s.x[i]),
          num(s.y[i]));
    }
    out += fmt::format("<g class=\"series\" data-name=\"{}\">\n", escape(s.name));
    out +=
        fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"{}\"/>\n",
                    escape(s.color), s.dashed ? " stroke-dasharray=\"5 3\"" : "", points);
    out += marks + "</g>\n";
  }
  out += legend(entries, dashed);
  return out + "</svg>\n";
}

std::string render(const BarChart& c) {
  std::string out = open_svg(c.id, c.title, "bar");
  std::vector<double> values;
  for (const BarGroup& g : c.groups) values.insert(values.end(), g.values.begin(), g.values.end());
  if (c.categories.empty() || c.groups.empty()) return no_data(out);
  const Scale y = make_scale(values, c.y, kTop + kPlotH, kTop, true);
  out += y_axis(y, c.y.label);
  const double slot = kPlotW / static_cast<double>(c.categories.size());
  const double bar = std::min(40.0, slot * 0.8 / static_cast<double>(c.groups.size()));
  const double base_px = y.log ? kTop + kPlotH : y(std::max(0.0, y.lo));
  out += "<g class=\"axis x\">\n";
  for (size_t i = 0; i < c.categories.size(); ++i) {
    out +=
        fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n",
                    coord(kLeft + slot * (static_cast<double>(i) + 0.5)), coord(kTop + kPlotH + 18),
                    escape(c.categories[i]));
  }
  out += fmt::format("<line x1=\"{0}\" x2=\"{1}\" y1=\"{2}\" y2=\"{2}\" stroke=\"#333\"/>\n</g>\n",
                     coord(kLeft), coord(kLeft + kPlotW), coord(kTop + kPlotH));
  std::vector<std::pair<std::string, std::string>> entries;
  for (size_t gi = 0; gi < c.groups.size(); ++gi) {
    const BarGroup& g = c.groups[gi];
    entries.emplace_back(g.name, g.color);
    out += fmt::format("<g class=\"series\" data-name=\"{}\">\n", escape(g.name));
    for (size_t i = 0; i < c.categories.size() && i < g.values.size(); ++i) {
      const double x0 = kLeft + slot * (static_cast<double>(i) + 0.5) -
                        bar * static_cast<double>(c.groups.size()) / 2 +
                        bar * static_cast<double>(gi);
      const double v = g.values[i];
      if (!y.valid(v)) {
        out += fmt::format(
            "<text class=\"na\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"9\" "
            "fill=\"#999\">n/a</text>\n",
            coord(x0 + bar / 2), coord(kTop + kPlotH - 4));
        continue;
      }
      const double top = std::max(kTop, std::min(y(v), kTop + kPlotH));
      out += fmt::format(
          "<rect class=\"mark\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" "
          "data-category=\"{}\" data-value=\"{}\"><title>{} {}: {}</title></rect>\n",
          coord(x0), coord(std::min(top, base_px)), coord(bar * 0.92),
          coord(std::max(1.0, std::abs(base_px - top))), escape(g.color), escape(c.categories[i]),
          v, escape(g.name), escape(c.categories[i]), num(v));
    }
    out += "</g>\n";
  }
  out += legend(entries, {});
  return out + "</svg>\n";
}

std::string render(const HeatMap& c) {
  if (c.rows.empty() || c.cols.empty()) return no_data(open_svg(c.id, c.title, "heatmap"));
  const double cell_w = std::min(90.0, (kWidth - kLeft - 40) / static_cast<double>(c.cols.size()));
  const double cell_h = std::clamp(500.0 / static_cast<double>(c.rows.size()), 16.0, 40.0);
  std::string out = open_svg(c.id, c.title, "heatmap",
                             kTop + 10 + cell_h * static_cast<double>(c.rows.size()) + 50);
  const double x0 = kLeft + 20, y0 = kTop + 10;
  for (size_t j = 0; j < c.cols.size(); ++j) {
    out += fmt::format(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\n",
        coord(x0 + cell_w * (static_cast<double>(j) + 0.5)),
        coord(y0 + cell_h * static_cast<double>(c.rows.size()) + 16), escape(c.cols[j]));
  }
  out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">{}</text>\n",
                     coord(x0 + cell_w * static_cast<double>(c.cols.size()) / 2),
                     coord(y0 + cell_h * static_cast<double>(c.rows.size()) + 36),
                     escape(c.col_label));
  out += fmt::format(
      "<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" font-size=\"12\" "
      "transform=\"rotate(-90 16 {0})\">{1}</text>\n",
      coord(y0 + cell_h * static_cast<double>(c.rows.size()) / 2), escape(c.row_label));
  for (size_t i = 0; i < c.rows.size(); ++i) {
    const double py = y0 + cell_h * static_cast<double>(i);
    out += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"11\">{}</text>\n",
                       coord(x0 - 6), coord(py + cell_h / 2 + 4), escape(c.rows[i]));
    for (size_t j = 0; j < c.cols.size(); ++j) {
      const double v = i < c.values.size() && j < c.values[i].size() ? c.values[i][j] : NAN;
      const double px = x0 + cell_w * static_cast<double>(j);
      const std::string label =
          i < c.labels.size() && j < c.labels[i].size() ? c.labels[i][j] : std::string();
      if (!std::isfinite(v)) {
        out += fmt::format(
            "<rect class=\"cell empty\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" "
            "fill=\"#eeeeee\" stroke=\"#ffffff\"/>\n",
            coord(px), coord(py), coord(cell_w), coord(cell_h));
        continue;
      }
      out += fmt::format(
          "<rect class=\"mark cell\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" "
          "stroke=\"#ffffff\" data-row=\"{}\" data-col=\"{}\" data-value=\"{}\"><title>{} {}, {} "
          "{}: {}</title></rect>\n"
          "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" "
          "fill=\"#111\">{}</text>\n",
          coord(px), coord(py), coord(cell_w), coord(cell_h), heat_color(v), escape(c.rows[i]),
          escape(c.cols[j]), v, escape(c.row_label), escape(c.rows[i]), escape(c.col_label),
          escape(c.cols[j]), escape(label), coord(px + cell_w / 2), coord(py + cell_h / 2 + 4),
          escape(label));
    }
  }
  return out + "</svg>\n";
}

}  // namespace sagellm::eval::validate::svg
