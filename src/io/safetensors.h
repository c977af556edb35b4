// safetensors reading (mmap, fully validated header) and writing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace sagellm::io {

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Points into the mapped file. Aligned only as far as the header length allows (writers pad it to
  // 8 bytes, but nothing forces them to), so read elements with memcpy or use load_f32.
  const std::byte* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const;
};

// One .safetensors file, memory-mapped. The constructor validates everything a malicious or
// truncated file can get wrong (header length within the file, JSON, dtypes, shape x dtype size ==
// byte range, ranges inside the data area, no overlaps) and throws sagellm::Error naming the file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* find(std::string_view name) const;  // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All weights of a model directory: model.safetensors, or model.safetensors.index.json with its
// shards, or (failing both) every *.safetensors file in the directory.
class WeightStore {
 public:
  explicit WeightStore(const std::filesystem::path& model_dir);

  bool contains(std::string_view name) const;
  // Throws "missing tensor NAME in DIR" when absent.
  const TensorEntry& get(std::string_view name) const;
  // Converts F32/F16/BF16 to float32; throws when the shape differs from `expected_shape`.
  std::vector<float> load_f32(std::string_view name, std::span<const int64_t> expected_shape) const;
  std::vector<std::string> names() const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorEntry*, std::less<>> index_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes a standard safetensors file (readable by the `safetensors` Python package).
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace sagellm::io
