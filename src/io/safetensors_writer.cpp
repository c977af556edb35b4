#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"

namespace sagellm::io {

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      fail("cannot write {}: invalid tensor name '{}'", file, t.name);
    }
    if (!seen.insert(t.name).second)
      fail("cannot write {}: duplicate tensor name '{}'", file, t.name);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) fail("cannot write {}: tensor '{}' has a negative dimension", file, t.name);
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
        fail("cannot write {}: tensor '{}' is too large", file, t.name);
      }
    }
    if (numel > t.bytes.size() || numel * dtype_size(t.dtype) != t.bytes.size()) {
      fail("cannot write {}: tensor '{}' has {} bytes but its shape and dtype {} need {}", file,
           t.name, t.bytes.size(), dtype_name(t.dtype), numel * dtype_size(t.dtype));
    }
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("cannot write {}: tensor names and metadata must be valid UTF-8 ({})", file, e.what());
  }
  // Pad with spaces so the data area starts 8-byte aligned, as the Python package does.
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(text.size() >> (8 * i));

  // Write beside the target and rename, so a reader never sees a half-written file.
  const std::filesystem::path tmp = file + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write {}: {}", tmp.string(), std::strerror(errno));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const TensorToWrite& t : tensors) {
      if (t.bytes.empty()) continue;
      out.write(reinterpret_cast<const char*>(t.bytes.data()),
                static_cast<std::streamsize>(t.bytes.size()));
    }
    out.close();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail("cannot write {}: write failed", file);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    fail("cannot write {}: {}", file, why);
  }
}

}  // namespace sagellm::io
