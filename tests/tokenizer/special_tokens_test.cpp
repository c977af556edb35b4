// Added/special tokens, BOS/EOS and decode, with expected values taken from HF tokenizers 0.23.
#include "tokenizer_test_util.h"

namespace sagellm::testing {
namespace {

using Ids = std::vector<int32_t>;

TEST(TokenizerSpecialTokens, Llama3) {
  const Tokenizer& t = llama3();
  const std::string text = "<|begin_of_text|>Hello<|eot_id|>";
  EXPECT_EQ(t.encode(text), (Ids{128000, 9906, 128009}));
  EXPECT_EQ(t.decode(t.encode(text)), text);
  EXPECT_EQ(t.decode(t.encode(text), /*skip_special_tokens=*/true), "Hello");
  EXPECT_EQ(t.encode("Hello", /*add_special_tokens=*/true), (Ids{128000, 9906}));
  EXPECT_EQ(t.encode("", true), (Ids{128000}));
  EXPECT_EQ(t.encode("<|begin_of_text|><|begin_of_text|>", true), (Ids{128000, 128000, 128000}));
  // Text that only looks like a special token is ordinary text.
  EXPECT_EQ(t.encode("<|eot_id"), (Ids{27, 91, 68, 354, 851}));
  EXPECT_TRUE(t.is_special(128009));
  EXPECT_FALSE(t.is_special(9906));
  EXPECT_EQ(t.bos_id(), 128000);
  EXPECT_EQ(t.token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(t.id_to_token(128009), "<|eot_id|>");
  EXPECT_EQ(t.token_to_id("Hello"), 9906);
  EXPECT_FALSE(t.token_to_id("no such token"));
  EXPECT_EQ(t.vocab_size(), 128256);
}

TEST(TokenizerSpecialTokens, EveryLlama3AddedTokenRoundTrips) {
  const Tokenizer& t = llama3();
  const nlohmann::json file = read_json(llama3_json());
  const auto& added = file.at("added_tokens");
  ASSERT_EQ(added.size(), 256u);
  for (const auto& a : added) {
    const std::string content = a.at("content").get<std::string>();
    const int32_t id = a.at("id").get<int32_t>();
    EXPECT_EQ(t.encode(content), Ids{id}) << content;
    EXPECT_EQ(t.decode(Ids{id}), content);
    EXPECT_EQ(t.decode(Ids{id}, true), "");
    // Inside text, longest match first and without merging into the neighbours.
    EXPECT_EQ(t.encode("a" + content + "a"), (Ids{64, id, 64})) << content;
  }
}

TEST(TokenizerSpecialTokens, Llama2) {
  const Tokenizer& t = llama2();
  EXPECT_EQ(t.encode("<s>Hello</s>"), (Ids{1, 15043, 2}));
  // The "▁" prepended to the text between special tokens comes back as a space, as in HF.
  EXPECT_EQ(t.decode(Ids{1, 15043, 2}), "<s> Hello</s>");
  EXPECT_EQ(t.decode(Ids{1, 15043, 2}, true), "Hello");
  EXPECT_EQ(t.decode(Ids{15043, 1, 15043}), "Hello<s> Hello");
  // The normalizer (prepend "▁") runs on each piece between special tokens.
  EXPECT_EQ(t.encode("hi <s> there"), (Ids{7251, 29871, 1, 29871, 727}));
  EXPECT_EQ(t.encode("Hello", true), (Ids{1, 15043}));
  EXPECT_EQ(t.encode("", true), (Ids{1}));
  EXPECT_EQ(t.decode(Ids{0, 29871}), "<unk> ");
  EXPECT_EQ(t.decode(Ids{0, 29871}, true), "");
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_TRUE(t.is_special(2));
}

TEST(TokenizerSpecialTokens, Stories260KAddedTokensGetNewIds) {
  // In this vocabulary id 1 is "\n<s>\n" and id 2 "\n</s>\n"; the added tokens "<s>" and "</s>"
  // are not in it, so HF gives them the ids 512 and 513 whatever the file says.
  const Tokenizer& t = stories();
  EXPECT_EQ(t.encode("<s>Once</s>"), (Ids{512, 403, 513}));
  EXPECT_EQ(t.encode("Once", true), (Ids{1, 403}));
  EXPECT_EQ(t.vocab_size(), 514);
  EXPECT_EQ(t.decode(Ids{1, 2, 512, 513}), "\n<s>\n\n</s>\n<s></s>");
  EXPECT_EQ(t.decode(Ids{1, 2, 512, 513}, true), "\n<s>\n\n</s>\n");
  EXPECT_FALSE(t.is_special(1));
  EXPECT_TRUE(t.is_special(512));
  EXPECT_EQ(t.bos_id(), 1);          // what add_special_tokens inserts
  EXPECT_EQ(t.eos_ids(), (Ids{2}));  // generation_config.json
}

TEST(TokenizerSpecialTokens, ModelDirSettings) {
  const Tokenizer t = Tokenizer::from_model_dir(model_dir("llama-3.1-8b-shape"));
  EXPECT_EQ(t.bos_id(), 128000);
  EXPECT_EQ(t.eos_ids(), (Ids{128009}));  // tokenizer_config.json: <|eot_id|>
  // Without a configuration the usual end tokens are all stops.
  EXPECT_EQ(llama3().eos_ids(), (Ids{128009, 128001}));
  EXPECT_EQ(llama2().eos_ids(), (Ids{2}));
}

TEST(TokenizerDecode, ByteLevelKeepsInvalidBytesAsReplacementCharacters) {
  const Tokenizer& t = llama3();
  EXPECT_EQ(t.decode(Ids{11410}), " \xEF\xBF\xBD");  // first byte of 🦙 only
  EXPECT_EQ(t.decode(Ids{11410, 99}), " \xEF\xBF\xBD");
  EXPECT_EQ(t.decode(Ids{11410, 99, 247}), " \xF0\x9F\xA6\x99");
}

TEST(TokenizerDecode, ByteFallbackGroups) {
  const Tokenizer& t = llama2();
  EXPECT_EQ(t.decode(Ids{243, 162, 169, 156}), "\xF0\x9F\xA6\x99");
  // An unfinished group becomes one U+FFFD per byte (HF's ByteFallback rule).
  EXPECT_EQ(t.decode(Ids{243, 162, 169}), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(Ids{243}), "\xEF\xBF\xBD");
  EXPECT_EQ(t.decode(Ids{29871, 13, 29871}), "\n ");
}

TEST(TokenizerDecode, IdsOutsideTheVocabularyThrow) {
  try {
    llama3().decode(Ids{9906, 128256});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos);
  }
  EXPECT_THROW(llama2().decode(Ids{-1}), Error);
  EXPECT_THROW(llama2().id_to_token(32000), Error);
}

}  // namespace
}  // namespace sagellm::testing
