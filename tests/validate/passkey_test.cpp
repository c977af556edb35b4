// Passkey prompts follow shared/models/passkey-4k's format exactly, and answers are matched on the
// key's five digits.
#include "eval/validate/passkey.h"

#include <gtest/gtest.h>

#include <set>

#include "common/fixtures.h"
#include "core/error.h"

namespace sagellm {
namespace {

namespace v = eval::validate;

const std::string kNeedle12345 = " The pass key is 12345. Remember it. 12345 is the pass key.";
const std::string kQuestion = " What is the pass key? The pass key is";

class PasskeyPrompt : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = new Tokenizer(Tokenizer::from_model_dir(testing::model_dir("stories260K")));
    hay_ = new std::string(v::read_haystack(testing::shared_dir() / "data" / "haystack"));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete hay_;
  }
  static Tokenizer* tok_;
  static std::string* hay_;
};
Tokenizer* PasskeyPrompt::tok_ = nullptr;
std::string* PasskeyPrompt::hay_ = nullptr;

TEST_F(PasskeyPrompt, HaystackIsTheSortedFilesConcatenated) {
  EXPECT_EQ(hay_->rfind("July 2010What hard liquor", 0), 0u);  // addiction.txt comes first
  EXPECT_GT(hay_->size(), 600000u);
  EXPECT_THROW(v::read_haystack("/nonexistent"), Error);
}

TEST_F(PasskeyPrompt, NeedleAndQuestionAreExactlyTheDocumentedText) {
  EXPECT_EQ(v::passkey_needle(12345), kNeedle12345);
  EXPECT_EQ(std::string(v::kPasskeyQuestion), kQuestion);
}

// Rebuild the text independently: decode the prompt, take out the needle and the question, and
// what is left must be the start of the haystack, cut after a sentence at about the depth.
TEST_F(PasskeyPrompt, PromptIsHaystackWithNeedleAtDepthThenQuestion) {
  const v::PasskeyPromptBuilder b(*tok_, *hay_, /*bos_id=*/1, 512);
  for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    for (int len : {256, 504}) {
      const v::PasskeyPrompt p = b.build(len, depth, 12345);
      ASSERT_LE(static_cast<int>(p.ids.size()), len);
      EXPECT_GE(static_cast<int>(p.ids.size()), len - 3) << "depth " << depth;
      EXPECT_EQ(p.ids[0], 1);
      const std::string text =
          tok_->decode(std::span<const int32_t>(p.ids.data() + 1, p.ids.size() - 1));
      // The prompt text tokenizes back to the same ids (it was tokenized as one string).
      EXPECT_EQ(tok_->encode(text, false), std::vector<int32_t>(p.ids.begin() + 1, p.ids.end()));
      ASSERT_GE(text.size(), kQuestion.size());
      EXPECT_EQ(text.substr(text.size() - kQuestion.size()), kQuestion);
      const size_t at = text.find(kNeedle12345);
      ASSERT_NE(at, std::string::npos);
      EXPECT_EQ(text.find(kNeedle12345, at + 1), std::string::npos);
      const std::string before = text.substr(0, at);
      const std::string after = text.substr(
          at + kNeedle12345.size(), text.size() - kQuestion.size() - at - kNeedle12345.size());
      const std::string hay = before + after;
      EXPECT_EQ(hay_->compare(0, hay.size(), hay), 0) << "depth " << depth;
      if (depth == 0.0) EXPECT_TRUE(before.empty());
      if (depth == 1.0) EXPECT_TRUE(after.empty());
      if (depth > 0.0 && depth < 1.0) {
        // After the end of a sentence, or at least between two words.
        EXPECT_TRUE(before.back() == '.' || after.front() == ' ' || after.front() == '\n')
            << "depth " << depth << ": ..." << before.substr(before.size() - 20) << "|"
            << after.substr(0, 20);
        EXPECT_NEAR(static_cast<double>(before.size()) / static_cast<double>(hay.size()), depth,
                    0.051);
        EXPECT_NEAR(p.depth, depth, 0.051);
      }
    }
  }
}

TEST_F(PasskeyPrompt, KeysAreSeededFiveDigitNumbers) {
  const std::vector<int> a = v::passkey_keys(7, 50), b = v::passkey_keys(7, 50);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, v::passkey_keys(8, 50));
  EXPECT_GT(std::set<int>(a.begin(), a.end()).size(), 45u);
  for (int k : a) {
    EXPECT_GE(k, 10000);
    EXPECT_LE(k, 99999);
  }
}

TEST(PasskeyMatch, ExactFiveDigits) {
  EXPECT_TRUE(v::passkey_matches(" 12345.", 12345));
  EXPECT_TRUE(v::passkey_matches("12345", 12345));
  EXPECT_TRUE(v::passkey_matches("\n 12345. Remember", 12345));
  EXPECT_FALSE(v::passkey_matches(" 123456.", 12345));
  EXPECT_FALSE(v::passkey_matches(" 12354.", 12345));
  EXPECT_FALSE(v::passkey_matches(" the 12345.", 12345));
  EXPECT_FALSE(v::passkey_matches("", 12345));
  EXPECT_FALSE(v::passkey_matches(" 1234", 12345));
}

}  // namespace
}  // namespace sagellm
