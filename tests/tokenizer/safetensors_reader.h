// Reads int32 tensors from a small safetensors file (8-byte little-endian header length, JSON
// header, raw data), enough for the golden input ids.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer_test_util.h"

namespace sagellm::testing {

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path) : bytes_(read_file_bytes(path)) {
    if (bytes_.size() < 8) throw std::runtime_error(path.string() + ": too short");
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) {
      header_len = header_len << 8 | static_cast<unsigned char>(bytes_[i]);
    }
    if (header_len > bytes_.size() - 8) throw std::runtime_error(path.string() + ": bad header");
    header_ = nlohmann::json::parse(bytes_.substr(8, header_len));
    data_start_ = 8 + header_len;
  }

  std::vector<int32_t> int32_tensor(const std::string& name) const {
    const auto& t = header_.at(name);
    if (t.at("dtype") != "I32") throw std::runtime_error(name + " is not I32");
    const auto begin = t.at("data_offsets")[0].get<size_t>();
    const auto end = t.at("data_offsets")[1].get<size_t>();
    if (end < begin || data_start_ + end > bytes_.size() || (end - begin) % 4 != 0) {
      throw std::runtime_error(name + ": bad data_offsets");
    }
    std::vector<int32_t> out((end - begin) / 4);
    for (size_t i = 0; i < out.size(); ++i) {
      uint32_t v = 0;
      for (int b = 3; b >= 0; --b) {
        v = v << 8 | static_cast<unsigned char>(bytes_[data_start_ + begin + 4 * i + b]);
      }
      out[i] = static_cast<int32_t>(v);
    }
    return out;
  }

 private:
  std::string bytes_;
  nlohmann::json header_;
  size_t data_start_ = 0;
};

}  // namespace sagellm::testing
