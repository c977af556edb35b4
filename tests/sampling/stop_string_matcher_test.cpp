// StopStringMatcher: stop strings found across token boundaries, held-back text released when it
// cannot complete, earliest of several stop strings wins.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/sampling.h"

namespace sagellm {
namespace {

TEST(StopStringMatcherTest, WithoutStopsEverythingPassesThrough) {
  StopStringMatcher m({});
  EXPECT_EQ(m.feed("Hello"), "Hello");
  EXPECT_EQ(m.feed(", world"), ", world");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopStringMatcherTest, StopInsideOneToken) {
  StopStringMatcher m({"\n\n"});
  EXPECT_EQ(m.feed("Once upon a time.\n\nThe end"), "Once upon a time.");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.feed("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStringMatcherTest, StopSpanningThreeTokens) {
  StopStringMatcher m({"###"});
  EXPECT_EQ(m.feed("Hello #"), "Hello ");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.feed("#"), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.feed("# world"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStringMatcherTest, HeldBackTextIsReleasedWhenTheStopDoesNotComplete) {
  StopStringMatcher m({"</s>"});
  EXPECT_EQ(m.feed("a<"), "a");
  EXPECT_EQ(m.feed("/"), "");
  EXPECT_EQ(m.feed("x"), "</x");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.feed("b</"), "b");
  EXPECT_EQ(m.flush(), "</");  // generation ended: the held text is real output
  EXPECT_FALSE(m.stopped());
}

TEST(StopStringMatcherTest, FailedPartialMatchCanRestartInsideItself) {
  StopStringMatcher m({"abab"});
  EXPECT_EQ(m.feed("aba"), "");   // could become "abab"
  EXPECT_EQ(m.feed("a"), "aba");  // "abaa": only the trailing "a" can still start a match
  EXPECT_EQ(m.feed("bab"), "");   // "abab" completes
  EXPECT_TRUE(m.stopped());
}

TEST(StopStringMatcherTest, HoldsBackOnlyTheLongestPossiblePrefix) {
  StopStringMatcher m({"xyz", "yq"});
  EXPECT_EQ(m.feed("abcxy"), "abc");  // "xy" could grow into "xyz"
  EXPECT_EQ(m.feed("w"), "xyw");
  EXPECT_EQ(m.feed("y"), "");  // "y" could start either
  EXPECT_EQ(m.feed("q!"), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopStringMatcherTest, EarliestOfSeveralStopsWins) {
  for (const std::vector<std::string>& stops :
       {std::vector<std::string>{"world", "lo w"}, std::vector<std::string>{"lo w", "world"}}) {
    StopStringMatcher m(stops);
    EXPECT_EQ(m.feed("hello world"), "hel");
    EXPECT_TRUE(m.stopped());
  }
  StopStringMatcher m({"END", "STOP"});
  EXPECT_EQ(m.feed("xx ST"), "xx ");
  EXPECT_EQ(m.feed("EN"), "ST");  // "STEN": no longer "STOP", but "EN" may become "END"
  EXPECT_EQ(m.feed("D STOP"), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopStringMatcherTest, StopAtTheVeryBeginning) {
  StopStringMatcher m({"STOP"});
  EXPECT_EQ(m.feed("STOP and more"), "");
  EXPECT_TRUE(m.stopped());
  StopStringMatcher split({"STOP"});
  EXPECT_EQ(split.feed("S"), "");
  EXPECT_EQ(split.feed("TOP"), "");
  EXPECT_TRUE(split.stopped());
}

TEST(StopStringMatcherTest, EmptyFeedsAndEmptyStopStrings) {
  StopStringMatcher m({"", "ab"});  // the empty stop string is ignored
  EXPECT_EQ(m.feed(""), "");
  EXPECT_EQ(m.feed("xa"), "x");
  EXPECT_EQ(m.feed(""), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.flush(), "a");
  EXPECT_EQ(m.flush(), "");
}

// Property: however the text is cut into pieces, the concatenated output is the text up to the
// earliest stop occurrence (or all of it), and stopped() says whether there was one.
TEST(StopStringMatcherTest, OutputDoesNotDependOnHowTextIsSplit) {
  std::mt19937_64 rng(31337);
  const std::vector<std::string> stops = {"abc", "cab", "bb", "acca"};
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int len = static_cast<int>(rng() % 40) + 1;
    for (int i = 0; i < len; ++i) text += "abc"[rng() % 3];
    size_t cut = std::string::npos;
    for (const std::string& s : stops) cut = std::min(cut, text.find(s));
    const std::string want = cut == std::string::npos ? text : text.substr(0, cut);

    StopStringMatcher m(stops);
    std::string got;
    for (size_t pos = 0; pos < text.size();) {
      const size_t n = std::min<size_t>(rng() % 5, text.size() - pos);
      got += m.feed(std::string_view(text).substr(pos, n));
      pos += n;
    }
    got += m.flush();
    ASSERT_EQ(got, want) << "text " << text;
    ASSERT_EQ(m.stopped(), cut != std::string::npos) << "text " << text;
  }
}

}  // namespace
}  // namespace sagellm
