#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"

namespace sagellm::io {
namespace {

namespace fs = std::filesystem;

// safetensors data is little-endian and is read here without byte swapping.
static_assert(std::endian::native == std::endian::little);

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail("{} is not valid JSON", path.string());
  return j;
}

// Shard names come from a file we do not control; keep them inside the model directory.
void check_shard_name(const std::string& shard, const fs::path& index_path) {
  const fs::path p(shard);
  const bool escapes = std::any_of(p.begin(), p.end(), [](const fs::path& c) { return c == ".."; });
  if (shard.empty() || p.is_absolute() || escapes) {
    fail("{}: shard file name '{}' must be a relative path inside the model directory",
         index_path.string(), shard);
  }
}

std::string shape_str(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

WeightStore::WeightStore(const fs::path& model_dir) : dir_(model_dir) {
  std::error_code ec;
  if (!fs::exists(model_dir, ec)) fail("model directory {} does not exist", model_dir.string());
  if (!fs::is_directory(model_dir, ec))
    fail("model path {} is not a directory", model_dir.string());

  // Same preference order as Hugging Face: the single file, then the sharded index.
  if (fs::is_regular_file(model_dir / kSingleFile, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(model_dir / kSingleFile));
    for (const TensorEntry& t : files_.back()->tensors()) index_.emplace(t.name, &t);
    return;
  }

  if (fs::exists(model_dir / kIndexFile, ec)) {
    const fs::path index_path = model_dir / kIndexFile;
    const nlohmann::json index = read_json_file(index_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      fail("{} has no 'weight_map' object", index_path.string());
    }
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [name, shard_json] : index["weight_map"].items()) {
      if (!shard_json.is_string()) {
        fail("{}: weight_map entry for tensor '{}' is not a file name", index_path.string(), name);
      }
      const auto& shard = shard_json.get_ref<const std::string&>();
      auto it = shards.find(shard);
      if (it == shards.end()) {
        check_shard_name(shard, index_path);
        const fs::path shard_path = model_dir / shard;
        if (!fs::is_regular_file(shard_path, ec)) {
          fail("shard {} listed in {} does not exist", shard_path.string(), index_path.string());
        }
        files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
        it = shards.emplace(shard, files_.back().get()).first;
      }
      const TensorEntry* entry = it->second->find(name);
      if (entry == nullptr) {
        fail("tensor '{}' is mapped to shard {} by {} but that shard does not contain it", name,
             it->second->path().string(), index_path.string());
      }
      index_.emplace(name, entry);
    }
    if (index_.empty()) fail("{} maps no tensors", index_path.string());
    return;
  }

  std::vector<fs::path> paths;
  for (const auto& e : fs::directory_iterator(model_dir, ec)) {
    if (e.path().extension() == ".safetensors" && e.is_regular_file(ec)) paths.push_back(e.path());
  }
  if (ec) fail("cannot list model directory {}: {}", model_dir.string(), ec.message());
  if (paths.empty()) {
    fail("no weights in model directory {}: expected {}, {} or *.safetensors files",
         model_dir.string(), kSingleFile, kIndexFile);
  }
  std::sort(paths.begin(), paths.end());
  for (const fs::path& p : paths) {
    files_.push_back(std::make_unique<SafetensorsFile>(p));
    for (const TensorEntry& t : files_.back()->tensors()) {
      auto [it, inserted] = index_.emplace(t.name, &t);
      if (!inserted) {
        fail("tensor '{}' appears in more than one file of {} (found again in {})", t.name,
             model_dir.string(), p.string());
      }
    }
  }
}

bool WeightStore::contains(std::string_view name) const {
  return index_.find(name) != index_.end();
}

const TensorEntry& WeightStore::get(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("missing tensor {} in {}", name, dir_.string());
  return *it->second;
}

std::vector<float> WeightStore::load_f32(std::string_view name,
                                         std::span<const int64_t> expected_shape) const {
  const TensorEntry& t = get(name);
  // Only for the error message: the file whose tensor list holds this entry.
  std::string file = dir_.string();
  for (const auto& f : files_) {
    const auto& ts = f->tensors();
    if (!ts.empty() && &t >= ts.data() && &t < ts.data() + ts.size()) file = f->path().string();
  }
  if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end())) {
    fail("tensor {} in {} has shape {}, expected {}", name, file, shape_str(t.shape),
         shape_str(expected_shape));
  }
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  switch (t.dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), t.data, n * sizeof(float));
      break;
    case DType::kF16:
    case DType::kBF16: {
      // The mapped data is not necessarily 2-byte aligned, so read each element with memcpy.
      const bool bf16 = t.dtype == DType::kBF16;
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        out[i] = bf16 ? bf16_to_float(h) : fp16_to_float(h);
      }
      break;
    }
    default:
      fail("tensor {} in {} has dtype {}; only F32, F16 and BF16 can be loaded as float32", name,
           file, dtype_name(t.dtype));
  }
  return out;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, entry] : index_) out.push_back(name);
  return out;
}

}  // namespace sagellm::io
