// SafetensorsFile and write_safetensors: the real fixtures (values checked against the Python
// `safetensors` package), round trips, and every kind of malformed file we refuse.
#include "io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "common/fixtures.h"
#include "common/run_command.h"
#include "io/io_test_util.h"

namespace sagellm::io {
namespace {

using ::sagellm::testing::error_of;
using ::sagellm::testing::model_dir;
using ::sagellm::testing::TempDir;
using ::sagellm::testing::write_raw_safetensors;
using ::testing::HasSubstr;

float f32_at(const TensorEntry& t, size_t i) {
  float v;
  std::memcpy(&v, t.data + 4 * i, 4);
  return v;
}

float bf16_at(const TensorEntry& t, size_t i) {
  uint16_t h;
  std::memcpy(&h, t.data + 2 * i, 2);
  return bf16_to_float(h);
}

TEST(SafetensorsFile, ReadsStories260KAsPythonDoes) {
  SafetensorsFile f(model_dir("stories260K") / "model.safetensors");
  EXPECT_EQ(f.tensors().size(), 47u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("source"), "llama2.c stories260K (tinyllamas), converted");
  EXPECT_EQ(f.find("lm_head.weight"), nullptr);  // tied embeddings

  const TensorEntry* emb = f.find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::kF32);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(emb->numel(), 512 * 64);
  EXPECT_EQ(emb->nbytes, 512u * 64 * 4);
  EXPECT_FLOAT_EQ(f32_at(*emb, 0), -0.29474878311157227f);
  EXPECT_FLOAT_EQ(f32_at(*emb, 1), 0.5618956089019775f);
  EXPECT_FLOAT_EQ(f32_at(*emb, 512 * 64 - 1), -0.424032598733902f);
  double sum = 0;
  for (int64_t i = 0; i < emb->numel(); ++i) sum += f32_at(*emb, i);
  EXPECT_NEAR(sum, -752.367745, 1e-5);

  const TensorEntry* k = f.find("model.layers.4.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_FLOAT_EQ(f32_at(*k, 0), -0.025860849767923355f);
  EXPECT_FLOAT_EQ(f32_at(*k, 32 * 64 - 1), -0.2651301622390747f);
}

TEST(SafetensorsFile, ReadsLlama31TinyRandom) {
  SafetensorsFile f(model_dir("llama31-tiny-random") / "model.safetensors");
  EXPECT_EQ(f.tensors().size(), 21u);
  const TensorEntry* head = f.find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->shape, (std::vector<int64_t>{512, 256}));
  EXPECT_FLOAT_EQ(f32_at(*head, 0), -0.08480512350797653f);
  EXPECT_FLOAT_EQ(f32_at(*head, 2), 0.0016404623165726662f);
  const TensorEntry* down = f.find("model.layers.1.mlp.down_proj.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{256, 688}));
  double abs_sum = 0;
  for (int64_t i = 0; i < down->numel(); ++i) abs_sum += std::fabs(f32_at(*down, i));
  EXPECT_NEAR(abs_sum, 7032.45309, 1e-4);
}

TEST(SafetensorsFile, ReadsBf16Passkey) {
  SafetensorsFile f(model_dir("passkey-4k") / "model.safetensors");
  EXPECT_EQ(f.tensors().size(), 39u);
  const TensorEntry* norm = f.find("model.norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->dtype, DType::kBF16);
  EXPECT_EQ(norm->shape, (std::vector<int64_t>{384}));
  EXPECT_EQ(bf16_at(*norm, 0), 1.28125f);
  EXPECT_EQ(bf16_at(*norm, 1), 1.390625f);
  EXPECT_EQ(bf16_at(*norm, 383), 1.5546875f);
  double sum = 0;
  for (int64_t i = 0; i < 384; ++i) sum += bf16_at(*norm, i);
  EXPECT_NEAR(sum, 533.210938, 1e-5);
  const TensorEntry* k = f.find("model.layers.3.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{128, 384}));
  EXPECT_EQ(bf16_at(*k, 2), 0.06640625f);
}

TEST(SafetensorsFile, TensorsAreSortedAndFindable) {
  SafetensorsFile f(model_dir("passkey-4k") / "model.safetensors");
  for (size_t i = 1; i < f.tensors().size(); ++i) {
    EXPECT_LT(f.tensors()[i - 1].name, f.tensors()[i].name);
  }
  for (const TensorEntry& t : f.tensors()) EXPECT_EQ(f.find(t.name), &t);
  EXPECT_EQ(f.find("model.norm"), nullptr);
  EXPECT_EQ(f.find(""), nullptr);
}

// Writes every dtype (including an empty tensor) and reads the bytes back unchanged.
TEST(SafetensorsWrite, RoundTripsEveryDtype) {
  TempDir dir;
  std::mt19937 rng(1234);
  std::vector<std::vector<std::byte>> buffers;
  std::vector<TensorToWrite> tensors;
  const std::vector<std::pair<DType, std::vector<int64_t>>> specs = {
      {DType::kF32, {3, 5}}, {DType::kF16, {7}},        {DType::kBF16, {2, 3, 4}},
      {DType::kI8, {9}},     {DType::kFP8E4M3, {4, 4}}, {DType::kI32, {1, 3}},
      {DType::kI64, {2}},    {DType::kF32, {0, 4}},
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& [dtype, shape] = specs[i];
    const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
    std::vector<std::byte> b(static_cast<size_t>(n) * dtype_size(dtype));
    for (auto& x : b) x = static_cast<std::byte>(rng() % 255 + 1);
    buffers.push_back(std::move(b));
    tensors.push_back({"t" + std::to_string(i) + "." + std::string(dtype_name(dtype)), dtype, shape,
                       buffers.back()});
  }
  const auto path = dir / "rt.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip ünïcode"}});

  SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), tensors.size());
  EXPECT_EQ(f.metadata().at("note"), "round trip ünïcode");
  for (const TensorToWrite& w : tensors) {
    const TensorEntry* t = f.find(w.name);
    ASSERT_NE(t, nullptr) << w.name;
    EXPECT_EQ(t->dtype, w.dtype);
    EXPECT_EQ(t->shape, w.shape);
    ASSERT_EQ(t->nbytes, w.bytes.size());
    if (t->nbytes > 0) EXPECT_EQ(std::memcmp(t->data, w.bytes.data(), t->nbytes), 0) << w.name;
  }

  // The header is padded to a multiple of 8 bytes, so the data area starts aligned.
  const std::string raw = ::sagellm::testing::read_text(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(raw[i]);
  EXPECT_EQ(header_len % 8, 0u);
  size_t total = 0;
  for (const auto& b : buffers) total += b.size();
  EXPECT_EQ(raw.size(), 8 + header_len + total);
}

TEST(SafetensorsWrite, RewritesARealModelIdentically) {
  TempDir dir;
  SafetensorsFile src(model_dir("stories260K") / "model.safetensors");
  std::vector<TensorToWrite> tensors;
  for (const TensorEntry& t : src.tensors()) {
    tensors.push_back({t.name, t.dtype, t.shape, {t.data, t.nbytes}});
  }
  write_safetensors(dir / "copy.safetensors", tensors, src.metadata());
  SafetensorsFile copy(dir / "copy.safetensors");
  ASSERT_EQ(copy.tensors().size(), src.tensors().size());
  EXPECT_EQ(copy.metadata(), src.metadata());
  for (const TensorEntry& t : src.tensors()) {
    const TensorEntry* c = copy.find(t.name);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->shape, t.shape);
    EXPECT_EQ(std::memcmp(c->data, t.data, t.nbytes), 0);
  }
}

// The Python package is the reference reader; skipped where it is not installed.
TEST(SafetensorsWrite, ReadableByPythonSafetensors) {
  if (::sagellm::testing::run_command("python3 -c 'import safetensors, numpy'").exit_code != 0) {
    GTEST_SKIP() << "python3 with safetensors and numpy is not available";
  }
  TempDir dir;
  const std::vector<float> a = {1.5f, -2.25f, 3.0f, 0.125f, -7.0f, 100.0f};
  std::vector<uint16_t> b(5);
  for (size_t i = 0; i < b.size(); ++i) b[i] = float_to_bf16(0.5f * static_cast<float>(i) - 1.0f);
  const std::vector<int64_t> c = {-3, 1LL << 40};
  const auto path = dir / "py.safetensors";
  write_safetensors(path,
                    {{"a", DType::kF32, {2, 3}, std::as_bytes(std::span(a))},
                     {"b.bf16", DType::kBF16, {5}, std::as_bytes(std::span(b))},
                     {"c", DType::kI64, {2}, std::as_bytes(std::span(c))}},
                    {{"format", "pt"}});
  const std::string script =
      "from safetensors import safe_open\n"
      "f = safe_open('" +
      path.string() +
      "', 'np')\n"
      "print(sorted(f.keys()), f.metadata())\n"
      "a = f.get_tensor('a'); print(a.dtype, a.shape, a.tolist())\n"
      "c = f.get_tensor('c'); print(c.dtype, c.tolist())\n"
      "f = safe_open('" +
      path.string() +
      "', 'pt')\n"
      "print(f.get_tensor('b.bf16').float().tolist())\n";
  ::sagellm::testing::write_bytes(dir / "read.py", script);
  const auto r = ::sagellm::testing::run_command("python3 " + (dir / "read.py").string());
  if (r.err.find("No module named 'torch'") != std::string::npos) GTEST_SKIP() << "no torch";
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("['a', 'b.bf16', 'c'] {'format': 'pt'}"));
  EXPECT_THAT(r.out, HasSubstr("float32 (2, 3) [[1.5, -2.25, 3.0], [0.125, -7.0, 100.0]]"));
  EXPECT_THAT(r.out, HasSubstr("int64 [-3, 1099511627776]"));
  EXPECT_THAT(r.out, HasSubstr("[-1.0, -0.5, 0.0, 0.5, 1.0]"));
}

TEST(SafetensorsWrite, RejectsInconsistentTensors) {
  TempDir dir;
  const std::vector<float> a = {1, 2, 3};
  const auto bytes = std::as_bytes(std::span(a));
  EXPECT_THAT(error_of([&] {
                write_safetensors(dir / "x", {{"a", DType::kF32, {4}, bytes}});
              }),
              HasSubstr("tensor 'a' has 12 bytes but its shape and dtype F32 need 16"));
  EXPECT_THAT(error_of([&] {
                write_safetensors(dir / "x",
                                  {{"a", DType::kF32, {3}, bytes}, {"a", DType::kF32, {3}, bytes}});
              }),
              HasSubstr("duplicate tensor name 'a'"));
  EXPECT_THAT(error_of([&] {
                write_safetensors(dir / "x", {{"", DType::kF32, {3}, bytes}});
              }),
              HasSubstr("invalid tensor name"));
  EXPECT_THAT(error_of([&] {
                write_safetensors(dir / "no_such_dir" / "x", {{"a", DType::kF32, {3}, bytes}});
              }),
              HasSubstr("cannot write"));
  EXPECT_FALSE(std::filesystem::exists(dir / "x"));
}

// ---- malformed files ----

class BadSafetensors : public ::testing::Test {
 protected:
  // Opens `header` + `data_bytes` bytes of data and returns the error message.
  std::string open_error(std::string_view header, size_t data_bytes) {
    write_raw_safetensors(path_, header, data_bytes);
    return error_of([&] { SafetensorsFile f(path_); });
  }
  TempDir dir_;
  std::filesystem::path path_ = dir_ / "bad.safetensors";
};

TEST_F(BadSafetensors, AcceptsAWellFormedHandWrittenFile) {
  write_raw_safetensors(
      path_,
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],)"
      R"("data_offsets":[0,8]},"e":{"dtype":"BF16","shape":[0,3],)"
      R"("data_offsets":[8,8]},"b":{"dtype":"I8","shape":[],"data_offsets":[8,9]}})",
      9);
  SafetensorsFile f(path_);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.find("b")->numel(), 1);  // a scalar
  EXPECT_EQ(f.find("e")->numel(), 0);
  EXPECT_EQ(f.metadata().at("k"), "v");
}

TEST_F(BadSafetensors, FileShorterThanEightBytes) {
  ::sagellm::testing::write_bytes(path_, "abcde");
  const std::string e = error_of([&] { SafetensorsFile f(path_); });
  EXPECT_THAT(e, HasSubstr(path_.string()));
  EXPECT_THAT(e, HasSubstr("5 bytes is shorter than the 8-byte header length"));
  ::sagellm::testing::write_bytes(path_, "");
  EXPECT_THAT(error_of([&] { SafetensorsFile f(path_); }), HasSubstr("0 bytes is shorter"));
}

TEST_F(BadSafetensors, MissingFileOrDirectory) {
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir_ / "nope.safetensors"); }),
              HasSubstr("cannot open safetensors file"));
  EXPECT_THAT(error_of([&] { SafetensorsFile f(dir_.path()); }), HasSubstr("not a regular file"));
}

TEST_F(BadSafetensors, HeaderLengthBeyondFile) {
  ::sagellm::testing::write_bytes(path_, ::sagellm::testing::le64(1000) + R"({"a":1})");
  EXPECT_THAT(error_of([&] { SafetensorsFile f(path_); }),
              HasSubstr("header length 1000 runs past the end of the 15-byte file"));
  ::sagellm::testing::write_bytes(path_, ::sagellm::testing::le64(~0ull) + "{}");
  EXPECT_THAT(error_of([&] { SafetensorsFile f(path_); }), HasSubstr("exceeds the limit"));
}

TEST_F(BadSafetensors, HeaderNotJson) {
  EXPECT_THAT(open_error(R"({"a": {"dtype": "F32", )", 0), HasSubstr("header is not valid JSON"));
  EXPECT_THAT(open_error("\xff\xfe garbage", 0), HasSubstr("header is not valid JSON"));
  EXPECT_THAT(open_error("[1, 2, 3]", 0), HasSubstr("header is not a JSON object"));
}

TEST_F(BadSafetensors, TruncatedDataArea) {
  // The real stories260K file with its last 100 bytes cut off.
  const std::string full =
      ::sagellm::testing::read_text(model_dir("stories260K") / "model.safetensors");
  ASSERT_GT(full.size(), 1000u);
  ::sagellm::testing::write_bytes(path_, std::string_view(full).substr(0, full.size() - 100));
  const std::string e = error_of([&] { SafetensorsFile f(path_); });
  EXPECT_THAT(e, HasSubstr(path_.string()));
  EXPECT_THAT(e, HasSubstr("run past the data area"));
  EXPECT_THAT(e, HasSubstr("file truncated?"));
  EXPECT_THAT(e, HasSubstr("tensor '"));
}

TEST_F(BadSafetensors, OverlappingRanges) {
  const std::string e = open_error(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                   16);
  EXPECT_THAT(e, HasSubstr("'a' [0, 16] and 'b' [8, 16] overlap"));
}

TEST_F(BadSafetensors, OffsetsNotMatchingShapeTimesDtype) {
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", 16),
              HasSubstr("tensor 'w': data_offsets [0, 12] span 12 bytes but shape [4] of F32 "
                        "needs 16"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16),
              HasSubstr("shape [2, 2] of BF16 needs 8"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 16),
              HasSubstr("begin > end"));
}

TEST_F(BadSafetensors, UnsupportedDtype) {
  const std::string e =
      open_error(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", 16);
  EXPECT_THAT(e, HasSubstr("unsupported dtype F64 for tensor 'w' in " + path_.string()));
  EXPECT_THAT(open_error(R"({"q":{"dtype":"Q4","shape":[2],"data_offsets":[0,1]}})", 16),
              HasSubstr("unsupported dtype Q4 for tensor 'q'"));
}

TEST_F(BadSafetensors, MalformedEntries) {
  EXPECT_THAT(open_error(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8),
              HasSubstr("tensor 'w': missing or non-string 'dtype'"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8),
              HasSubstr("missing or non-array 'shape'"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
              HasSubstr("shape entry -2 is not a non-negative integer"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
              HasSubstr("not a non-negative integer"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
              HasSubstr("'data_offsets' must be an array [begin, end]"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
              HasSubstr("non-negative integers"));
  EXPECT_THAT(open_error(R"({"w":[1,2]})", 8), HasSubstr("entry is not a JSON object"));
  // Deep nesting must neither overflow the stack nor be echoed back in full.
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const std::string e =
      open_error(R"({"w":{"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,4]}})", 8);
  EXPECT_THAT(e, HasSubstr("shape entry an array of 1 elements is not a non-negative integer"));
  EXPECT_LT(e.size(), 400u);
  EXPECT_THAT(open_error(R"({"__metadata__":{"k":1}})", 0),
              HasSubstr("__metadata__ value of 'k' is not a string"));
  // 2^40 * 2^40 elements overflow 64 bits; a naive product would wrap to a small number.
  EXPECT_THAT(
      open_error(
          R"({"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})", 8),
      HasSubstr("overflows 64 bits"));
  EXPECT_THAT(open_error(R"({"w":{"dtype":"F32","shape":[4611686018427387904],)"
                         R"("data_offsets":[0,0]}})",
                         8),
              HasSubstr("overflows 64 bits"));
}

// Seeded random damage to a valid file (byte flips in the header and length prefix, truncation):
// every outcome must be either a valid file or a sagellm::Error, never a crash or another
// exception; under AddressSanitizer this also checks that no read leaves the mapping.
TEST_F(BadSafetensors, RandomCorruptionIsRejectedCleanly) {
  std::mt19937 rng(20251125);
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  for (int i = 0; i < 12; ++i) {
    values.emplace_back(static_cast<size_t>(i * 3 + 1));
    for (float& v : values.back()) v = static_cast<float>(rng() % 1000) / 7.0f + 1.0f;
  }
  for (int i = 0; i < 12; ++i) {
    tensors.push_back({"layer." + std::to_string(i) + ".w",
                       DType::kF32,
                       {i * 3 + 1},
                       std::as_bytes(std::span(values[i]))});
  }
  const auto good = dir_ / "good.safetensors";
  write_safetensors(good, tensors, {{"format", "pt"}});
  const std::string original = ::sagellm::testing::read_text(good);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<unsigned char>(original[i]);
  }
  const char specials[] = {'"', '{', '}', '[', ']', ',', ':', '0', '9', '-', 'e', ' ', '\\', '\0'};
  int rejected = 0;
  for (int round = 0; round < 400; ++round) {
    std::string bytes = original;
    if (round % 4 == 3) {
      bytes.resize(rng() % bytes.size());
    } else {
      for (int k = 0; k < 1 + round % 3; ++k) {
        const size_t pos = rng() % (8 + header_len);
        bytes[pos] = (rng() % 2) ? specials[rng() % sizeof(specials)] : static_cast<char>(rng());
      }
    }
    ::sagellm::testing::write_bytes(path_, bytes);
    try {
      SafetensorsFile f(path_);
      for (const TensorEntry& t : f.tensors()) {
        ASSERT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * dtype_size(t.dtype));
      }
    } catch (const Error& e) {
      ++rejected;
      EXPECT_THAT(e.what(), HasSubstr(path_.string()));
    } catch (const std::exception& e) {
      FAIL() << "round " << round << ": not a sagellm::Error: " << e.what();
    }
  }
  EXPECT_GT(rejected, 200) << rejected;  // most damage must be noticed
}

}  // namespace
}  // namespace sagellm::io
