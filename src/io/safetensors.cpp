#include "io/safetensors.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "core/error.h"
#include "io/json_brief.h"

namespace sagellm::io {
namespace {

// A header this large would describe millions of tensors; refusing it early keeps a corrupt length
// field from making us parse (or allocate for) gigabytes of garbage. The Python package uses the
// same bound.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

std::optional<DType> parse_dtype(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "I8") return DType::kI8;
  if (s == "I32") return DType::kI32;
  if (s == "I64") return DType::kI64;
  if (s == "F8_E4M3") return DType::kFP8E4M3;
  return std::nullopt;
}

std::string shape_str(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// The length prefix is little-endian on disk whatever the host byte order.
uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint64_t>(p[i]);
  return v;
}

// Non-negative JSON integer that fits in int64 (nlohmann keeps large values as unsigned).
std::optional<uint64_t> as_index(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

struct Range {
  uint64_t begin;
  uint64_t end;
  size_t tensor;
};

// Builds every TensorEntry from the parsed header, checking each against the data area
// [data, data + data_size).
std::vector<TensorEntry> parse_entries(const nlohmann::json& header, const std::string& file,
                                       const std::byte* data, uint64_t data_size,
                                       std::map<std::string, std::string>& metadata) {
  std::vector<TensorEntry> tensors;
  std::vector<Range> ranges;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (info.is_null()) continue;
      if (!info.is_object())
        fail("invalid safetensors file {}: __metadata__ is not an object", file);
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) {
          fail("invalid safetensors file {}: __metadata__ value of '{}' is not a string", file,
               key);
        }
        metadata[key] = value.get<std::string>();
      }
      continue;
    }
    auto bad = [&](std::string_view why) {
      fail("invalid safetensors file {}: tensor '{}': {}", file, name, why);
    };
    if (!info.is_object()) bad("entry is not a JSON object");
    if (!info.contains("dtype") || !info["dtype"].is_string()) bad("missing or non-string 'dtype'");
    const auto& dtype_str = info["dtype"].get_ref<const std::string&>();
    const std::optional<DType> dtype = parse_dtype(dtype_str);
    if (!dtype) fail("unsupported dtype {} for tensor '{}' in {}", dtype_str, name, file);

    if (!info.contains("shape") || !info["shape"].is_array()) bad("missing or non-array 'shape'");
    TensorEntry t;
    t.name = name;
    t.dtype = *dtype;
    uint64_t numel = 1;
    for (const auto& d : info["shape"]) {
      const std::optional<uint64_t> dim = as_index(d);
      if (!dim || *dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        bad(fmt::format("shape entry {} is not a non-negative integer", json_brief(d)));
      }
      if (__builtin_mul_overflow(numel, *dim, &numel)) bad("shape size overflows 64 bits");
      t.shape.push_back(static_cast<int64_t>(*dim));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      bad("shape size overflows 64 bits");
    }

    const auto offsets = info.find("data_offsets");
    if (offsets == info.end() || !offsets->is_array() || offsets->size() != 2) {
      bad("'data_offsets' must be an array [begin, end]");
    }
    const std::optional<uint64_t> begin = as_index((*offsets)[0]);
    const std::optional<uint64_t> end = as_index((*offsets)[1]);
    if (!begin || !end) bad("'data_offsets' must be non-negative integers");
    if (*begin > *end) bad(fmt::format("data_offsets [{}, {}] have begin > end", *begin, *end));
    if (*end > data_size) {
      bad(fmt::format("data_offsets [{}, {}] run past the data area of {} bytes (file truncated?)",
                      *begin, *end, data_size));
    }
    if (*end - *begin != nbytes) {
      bad(fmt::format("data_offsets [{}, {}] span {} bytes but shape {} of {} needs {}", *begin,
                      *end, *end - *begin, shape_str(t.shape), dtype_str, nbytes));
    }
    t.data = data + *begin;
    t.nbytes = static_cast<size_t>(nbytes);
    ranges.push_back({*begin, *end, tensors.size()});
    tensors.push_back(std::move(t));
  }

  // Empty tensors occupy no bytes, so they can sit anywhere without overlapping anything.
  std::erase_if(ranges, [](const Range& r) { return r.begin == r.end; });
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      fail(
          "invalid safetensors file {}: byte ranges of tensors '{}' [{}, {}] and '{}' [{}, {}] "
          "overlap",
          file, tensors[ranges[i - 1].tensor].name, ranges[i - 1].begin, ranges[i - 1].end,
          tensors[ranges[i].tensor].name, ranges[i].begin, ranges[i].end);
    }
  }
  return tensors;
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
  const std::string file = path.string();
  FileDescriptor fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail("cannot open safetensors file {}: {}", file, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail("cannot stat {}: {}", file, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("safetensors path {} is not a regular file", file);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    fail("invalid safetensors file {}: {} bytes is shorter than the 8-byte header length", file,
         size);
  }

  map_ = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("cannot mmap {}: {}", file, std::strerror(errno));
  }
  map_size_ = size;
  // The destructor does not run when a constructor throws, so unmap here on any validation error.
  try {
    const auto* base = static_cast<const std::byte*>(map_);
    const uint64_t header_len = read_u64_le(base);
    if (header_len > kMaxHeaderBytes) {
      fail("invalid safetensors file {}: header length {} exceeds the limit of {} bytes", file,
           header_len, kMaxHeaderBytes);
    }
    if (header_len > size - 8) {
      fail("invalid safetensors file {}: header length {} runs past the end of the {}-byte file",
           file, header_len, size);
    }
    const auto* text = reinterpret_cast<const char*>(base + 8);
    nlohmann::json header =
        nlohmann::json::parse(text, text + header_len, nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded()) fail("invalid safetensors file {}: header is not valid JSON", file);
    if (!header.is_object()) fail("invalid safetensors file {}: header is not a JSON object", file);
    tensors_ = parse_entries(header, file, base + 8 + header_len, size - 8 - header_len, metadata_);
    std::sort(tensors_.begin(), tensors_.end(),
              [](const TensorEntry& a, const TensorEntry& b) { return a.name < b.name; });
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorEntry& t, std::string_view n) { return t.name < n; });
  return (it != tensors_.end() && it->name == name) ? &*it : nullptr;
}

}  // namespace sagellm::io
