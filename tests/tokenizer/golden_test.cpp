// Ids equal to the reference tokenizers (HF tokenizers, tiktoken, sentencepiece) on the golden
// files in shared/golden, and decode(encode(x)) == x on WikiText-2.
#include <cstdio>
#include <ctime>
#include <thread>

#include "safetensors_reader.h"
#include "tokenizer_test_util.h"

namespace sagellm::testing {
namespace {

void expect_cases(const Tokenizer& tok, const std::string& file) {
  const nlohmann::json golden = read_json(shared_dir() / "golden" / "tokenizers" / file);
  ASSERT_FALSE(golden.at("add_special_tokens").get<bool>());
  const auto& cases = golden.at("cases");
  ASSERT_GE(cases.size(), 40u);
  for (const auto& c : cases) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok.encode(text), ids_of(c.at("ids"))) << "text: " << text;
  }
}

TEST(TokenizerGolden, Llama3TestVectors) { expect_cases(llama3(), "llama3_cases.json"); }

TEST(TokenizerGolden, Llama2TestVectors) { expect_cases(llama2(), "llama2_cases.json"); }

TEST(TokenizerGolden, Llama3WholeWikiText) {
  const nlohmann::json golden =
      read_json(shared_dir() / "golden" / "tokenizers" / "llama3_wiki_test_raw.json");
  const std::vector<int32_t> expected = ids_of(golden.at("ids"));
  ASSERT_EQ(expected.size(), 289076u);
  const std::vector<int32_t> ids = llama3().encode(wikitext());
  ASSERT_EQ(ids.size(), expected.size());
  size_t first_diff = 0;
  while (first_diff < ids.size() && ids[first_diff] == expected[first_diff]) ++first_diff;
  EXPECT_EQ(first_diff, ids.size()) << "first difference at token " << first_diff;
}

TEST(TokenizerGolden, Llama2EveryWikiTextLine) {
  const nlohmann::json golden =
      read_json(shared_dir() / "golden" / "tokenizers" / "llama2_wiki_test_raw_lines.json");
  const auto& expected = golden.at("line_ids");
  const std::vector<std::string> lines = wikitext_lines();
  ASSERT_EQ(lines.size(), expected.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (llama2().encode(lines[i]) != ids_of(expected[i])) {
      if (++mismatches <= 5) ADD_FAILURE() << "line " << i << ": " << lines[i];
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST(TokenizerGolden, Stories260KPrompts) {
  // golden.json's "text" is decode(input_ids) with special tokens: BOS (id 1) is "\n<s>\n" in
  // this vocabulary, then the prompt with the space sentencepiece puts in front.
  const nlohmann::json golden = read_json(shared_dir() / "golden" / "stories260K" / "golden.json");
  const SafetensorsFile tensors(shared_dir() / "golden" / "stories260K" / "golden.safetensors");
  const std::string bos_text = "\n<s>\n";
  int checked = 0;
  for (const auto& [name, prompt] : golden.at("prompts").items()) {
    const std::vector<int32_t> ids = tensors.int32_tensor(name + ".input_ids");
    ASSERT_EQ(ids.size(), prompt.at("n_tokens").get<size_t>()) << name;
    const std::string text = prompt.at("text").get<std::string>();
    EXPECT_EQ(stories().decode(ids), text) << name;
    ASSERT_EQ(text.compare(0, bos_text.size(), bos_text), 0) << name;
    const std::string body = text.size() > bos_text.size() ? text.substr(bos_text.size() + 1) : "";
    EXPECT_EQ(stories().encode(body, /*add_special_tokens=*/true), ids) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(TokenizerGolden, Stories260KSampleTextPrefix) {
  // The medium/long/full_context prompts are the first tokens of sample.txt with BOS.
  const SafetensorsFile tensors(shared_dir() / "golden" / "stories260K" / "golden.safetensors");
  const std::vector<int32_t> full =
      stories().encode(read_file_bytes(shared_dir() / "data" / "tinystories" / "sample.txt"), true);
  const std::vector<int32_t> expected = tensors.int32_tensor("full_context.input_ids");
  ASSERT_GE(full.size(), expected.size());
  EXPECT_EQ(std::vector<int32_t>(full.begin(), full.begin() + expected.size()), expected);
}

TEST(TokenizerGolden, DecodeInvertsEncodeOnWikiText) {
  const std::vector<int32_t> ids = llama3().encode(wikitext());
  EXPECT_TRUE(llama3().decode(ids) == wikitext());
  size_t bad3 = 0, bad2 = 0;
  for (const std::string& line : wikitext_lines()) {
    bad3 += llama3().decode(llama3().encode(line)) != line;
    bad2 += llama2().decode(llama2().encode(line)) != line;
  }
  EXPECT_EQ(bad3, 0u);
  EXPECT_EQ(bad2, 0u);
}

TEST(TokenizerGolden, ConcurrentEncodingGivesTheSameIds) {
  // A fresh tokenizer, so that the threads fill its word cache at the same time.
  const Tokenizer tok = Tokenizer::from_file(llama2_json());
  const std::vector<std::string> lines = wikitext_lines();
  std::vector<std::vector<std::vector<int32_t>>> results(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < lines.size(); i += 2) results[t].push_back(tok.encode(lines[i]));
    });
  }
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < results.size(); ++t) {
    size_t k = 0;
    for (size_t i = 0; i < lines.size(); i += 2, ++k) {
      ASSERT_EQ(results[t][k], llama2().encode(lines[i])) << "thread " << t << " line " << i;
    }
  }
}

TEST(TokenizerGolden, Llama3LoadsAndEncodesFast) {
  // CPU time, not wall time: the test machine is shared, and waiting for a core is not slowness.
  const auto cpu_seconds = [] { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; };
  const double t0 = cpu_seconds();
  const Tokenizer tok = Tokenizer::from_file(llama3_json());
  const double t1 = cpu_seconds();
  const std::vector<int32_t> ids = tok.encode(wikitext());
  const double t2 = cpu_seconds();
  std::printf(
      "llama3 tokenizer: load %.3f s CPU (280k merges), encode WikiText-2 test %.3f s CPU "
      "(%zu tokens)\n",
      t1 - t0, t2 - t1, ids.size());
  EXPECT_EQ(ids.size(), 289076u);
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
  // Optimized builds only: sanitizers and -O0 are several times slower.
  EXPECT_LT(t1 - t0, 1.0);
  EXPECT_LT(t2 - t1, 3.0);
#endif
}

}  // namespace
}  // namespace sagellm::testing
