// Shared fixtures for the tokenizer tests: the tokenizers (loaded once per process), WikiText-2
// and the golden files under shared/.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace sagellm::testing {

inline std::string read_file_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  return nlohmann::json::parse(read_file_bytes(p));
}

inline std::filesystem::path llama3_json() {
  return shared_dir() / "tokenizers" / "llama3" / "tokenizer.json";
}
inline std::filesystem::path llama2_json() {
  return shared_dir() / "tokenizers" / "llama2" / "tokenizer.json";
}

inline const Tokenizer& llama3() {
  static const Tokenizer t = Tokenizer::from_file(llama3_json());
  return t;
}
inline const Tokenizer& llama2() {
  static const Tokenizer t = Tokenizer::from_file(llama2_json());
  return t;
}
inline const Tokenizer& stories() {
  static const Tokenizer t = Tokenizer::from_model_dir(model_dir("stories260K"));
  return t;
}

inline const std::string& wikitext() {
  static const std::string text =
      read_file_bytes(shared_dir() / "data" / "wikitext-2-raw" / "wiki.test.raw");
  return text;
}

// WikiText-2 split on '\n' (the last, empty piece included), as the Llama-2 golden file was made.
inline std::vector<std::string> wikitext_lines() {
  std::vector<std::string> lines;
  const std::string& text = wikitext();
  size_t start = 0;
  while (true) {
    const size_t nl = text.find('\n', start);
    if (nl == std::string::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

inline std::vector<int32_t> ids_of(const nlohmann::json& j) {
  return j.get<std::vector<int32_t>>();
}

// A fresh directory under the system temp dir, removed at scope exit.
class ScratchDir {
 public:
  ScratchDir() {
    static int counter = 0;
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("sagellm_tok_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
             std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::filesystem::path write(const std::string& name, const std::string& content) const {
    const auto p = path_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace sagellm::testing
