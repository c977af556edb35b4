// Scratch directories and hand-made (often malformed) safetensors files for the io tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>

#include "core/error.h"

namespace sagellm::testing {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("sagellm_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
             std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// A safetensors file with the given header text and `data_bytes` bytes of (nonzero) data.
inline void write_raw_safetensors(const std::filesystem::path& p, std::string_view header,
                                  size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i * 37 + 11);
  write_bytes(p, le64(header.size()) + std::string(header) + data);
}

// The message of the sagellm::Error that `f` throws; a test failure when it throws nothing or
// something else (a crash-prone std::exception would be a bug, not a clear user error).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const sagellm::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected sagellm::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected sagellm::Error, nothing was thrown";
  return "";
}

}  // namespace sagellm::testing
