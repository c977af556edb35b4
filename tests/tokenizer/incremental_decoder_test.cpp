// Streaming detokenization: the chunks concatenate to decode() of the whole sequence and each
// chunk is valid UTF-8 on its own.
#include "tokenizer_test_util.h"

namespace sagellm::testing {
namespace {

using Ids = std::vector<int32_t>;

struct Stream {
  std::vector<std::string> chunks;  // one per push, then the flush
  std::string text;
};

Stream stream(const Tokenizer& t, const Ids& ids, bool skip_special = true) {
  IncrementalDecoder d(t, skip_special);
  Stream s;
  for (int32_t id : ids) s.chunks.push_back(d.push(id));
  s.chunks.push_back(d.flush());
  for (const std::string& c : s.chunks) s.text += c;
  return s;
}

void expect_streams_like_decode(const Tokenizer& t, const std::string& name) {
  size_t lines = 0, bad_text = 0, bad_chunks = 0;
  for (const std::string& line : wikitext_lines()) {
    const Ids ids = t.encode(line);
    const Stream s = stream(t, ids);
    if (s.text != t.decode(ids, true) && ++bad_text <= 3) {
      ADD_FAILURE() << name << " line " << lines << ": streamed '" << s.text << "'";
    }
    for (const std::string& c : s.chunks) bad_chunks += !is_valid_utf8(c);
    ++lines;
  }
  EXPECT_EQ(bad_text, 0u) << name;
  EXPECT_EQ(bad_chunks, 0u) << name;
  EXPECT_GT(lines, 4000u);
}

TEST(IncrementalDecoder, Llama3EveryWikiTextLine) {
  expect_streams_like_decode(llama3(), "llama3");
}

TEST(IncrementalDecoder, Llama2EveryWikiTextLine) {
  expect_streams_like_decode(llama2(), "llama2");
}

TEST(IncrementalDecoder, Llama3WholeWikiTextAsOneStream) {
  const Ids ids = llama3().encode(wikitext());
  const Stream s = stream(llama3(), ids);
  EXPECT_TRUE(s.text == wikitext());
}

TEST(IncrementalDecoder, HoldsBackHalfCharactersByteLevel) {
  // " 🦙" is three byte-level tokens: " \xF0", "\x9F\xA6"-ish pieces; nothing shows until the
  // character is complete.
  const Stream s = stream(llama3(), Ids{11410, 99, 247, 13});
  EXPECT_EQ(s.chunks, (std::vector<std::string>{"", "", " \xF0\x9F\xA6\x99", ".", ""}));
}

TEST(IncrementalDecoder, HoldsBackByteFallbackRuns) {
  // A run of <0xNN> tokens is decoded as a whole, so nothing of it shows until the run ends.
  const Stream s = stream(llama2(), Ids{29871, 243, 162, 169, 156, 29889});
  EXPECT_EQ(s.chunks, (std::vector<std::string>{"", "", "", "", "", "\xF0\x9F\xA6\x99.", ""}));
  EXPECT_EQ(s.text, llama2().decode(Ids{29871, 243, 162, 169, 156, 29889}));
  // <0x79> alone is "y", but <0x79><0xE2><0x80> is invalid as a run: three U+FFFD, no "y".
  const Ids run = {124, 229, 131, 29889};
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(llama2().decode(run), r + r + r + ".");
  EXPECT_EQ(stream(llama2(), run).text, r + r + r + ".");
  EXPECT_EQ(stream(llama2(), Ids{124, 229, 131}).text, r + r + r);
}

TEST(IncrementalDecoder, SentencepieceLeadingSpace) {
  // "Hello world" → "▁Hello", "▁world": the first space is dropped, the second kept.
  const Stream s = stream(llama2(), Ids{15043, 3186});
  EXPECT_EQ(s.chunks, (std::vector<std::string>{"Hello", " world", ""}));
}

TEST(IncrementalDecoder, FlushReleasesUnfinishedBytes) {
  IncrementalDecoder d(llama3());
  EXPECT_EQ(d.push(11410), "");
  EXPECT_EQ(d.flush(), " \xEF\xBF\xBD");
  IncrementalDecoder d2(llama2());
  EXPECT_EQ(d2.push(243), "");
  EXPECT_EQ(d2.flush(), "\xEF\xBF\xBD");
}

TEST(IncrementalDecoder, SpecialTokens) {
  const Ids ids = {128000, 9906, 128009, 9906};
  EXPECT_EQ(stream(llama3(), ids).text, "HelloHello");
  EXPECT_EQ(stream(llama3(), ids, /*skip_special=*/false).text,
            "<|begin_of_text|>Hello<|eot_id|>Hello");
  const Ids ids2 = {1, 15043, 2, 15043};
  EXPECT_EQ(stream(llama2(), ids2).text, llama2().decode(ids2, true));
  EXPECT_EQ(stream(llama2(), ids2, false).text, llama2().decode(ids2, false));
}

TEST(IncrementalDecoder, RandomIdsNeverEmitInvalidUtf8) {
  // Random ids make arbitrary byte sequences; the chunks must stay valid and add up to decode().
  std::mt19937 rng(1234);
  for (const Tokenizer* t : {&llama3(), &llama2(), &stories()}) {
    std::uniform_int_distribution<int32_t> pick(0, t->vocab_size() - 1);
    for (int round = 0; round < 200; ++round) {
      Ids ids(1 + rng() % 40);
      for (int32_t& id : ids) id = pick(rng);
      const Stream s = stream(*t, ids, false);
      for (const std::string& c : s.chunks) ASSERT_TRUE(is_valid_utf8(c));
      ASSERT_EQ(s.text, t->decode(ids, false)) << "round " << round;
    }
  }
}

}  // namespace
}  // namespace sagellm::testing
