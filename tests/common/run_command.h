// Runs a shell command for CLI tests and captures its exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace sagellm::testing {

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline CommandResult run_command(const std::string& cmd) {
  static int counter = 0;
  auto base = std::filesystem::temp_directory_path() /
              ("sagellm_cmd_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::string full = cmd + " >" + base.string() + ".out 2>" + base.string() + ".err </dev/null";
  int status = std::system(full.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(base.string() + ".out");
  r.err = read_text(base.string() + ".err");
  std::filesystem::remove(base.string() + ".out");
  std::filesystem::remove(base.string() + ".err");
  return r;
}

}  // namespace sagellm::testing
