// Logging to stderr through spdlog, and a progress line for long runs on a terminal.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstddef>
#include <string>

namespace sagellm {

// Level from SAGELLM_LOG_LEVEL (trace, debug, info, warn, error, off); default warn so that
// commands print only their results.
void init_logging();

// Draws "label [#####.....] 41/100 12.3/s" on stderr, only when stderr is a terminal.
class Progress {
 public:
  Progress(std::string label, size_t total);
  ~Progress();
  void advance(size_t n = 1);
  void finish();

 private:
  std::string label_;
  size_t total_;
  size_t done_ = 0;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  void draw();
};

}  // namespace sagellm
