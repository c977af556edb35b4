// Chat templates against the strings transformers' apply_chat_template renders from Meta's
// Llama-3.1-Instruct and Llama-2-chat Jinja templates (the shared tokenizer_config.json files carry
// no chat_template, so the expected strings were rendered once and are written out here).
#include "tokenizer_test_util.h"

namespace sagellm::testing {
namespace {

using Msgs = std::vector<ChatMessage>;

const Msgs& conversation() {
  static const Msgs m = {{"system", "  You are a helpful assistant.\n"},
                         {"user", "Hello! \xE3\x80\x80"},  // ends with U+3000, which strip removes
                         {"assistant", " Hi there, how can I help?"},
                         {"user", "What is 2+2?\n\n"}};
  return m;
}

TEST(ChatTemplate, Llama3MatchesTransformers) {
  EXPECT_EQ(apply_chat_template(ChatTemplate::kLlama3, conversation(), true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            "You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Hello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "Hi there, how can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(apply_chat_template(ChatTemplate::kLlama3, Msgs{{"user", "Tell me a joke."}}, false),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            "Tell me a joke.<|eot_id|>");
}

TEST(ChatTemplate, Llama3TokenIds) {
  const std::string prompt = apply_chat_template(ChatTemplate::kLlama3, conversation(), true);
  const std::vector<int32_t> expected = {
      128000, 128006, 9125,   128007, 271,    38766,  1303,   33025,  2696,   25,  6790,   220,
      2366,   18,     198,    15724,  2696,   25,     220,    1627,   10263,  220, 2366,   19,
      271,    2675,   527,    264,    11190,  18328,  13,     128009, 128006, 882, 128007, 271,
      9906,   0,      128009, 128006, 78191,  128007, 271,    13347,  1070,   11,  1268,   649,
      358,    1520,   30,     128009, 128006, 882,    128007, 271,    3923,   374, 220,    17,
      10,     17,     30,     128009, 128006, 78191,  128007, 271};
  EXPECT_EQ(llama3().encode(prompt, /*add_special_tokens=*/false), expected);
}

TEST(ChatTemplate, Llama2MatchesTransformers) {
  const std::string expected =
      "<s>[INST] <<SYS>>\n  You are a helpful assistant.\n\n<</SYS>>\n\nHello! [/INST] Hi there, "
      "how can I help? </s><s>[INST] What is 2+2? [/INST]";
  EXPECT_EQ(apply_chat_template(ChatTemplate::kLlama2, conversation(), true), expected);
  EXPECT_EQ(apply_chat_template(ChatTemplate::kLlama2, conversation(), false), expected);
  EXPECT_EQ(apply_chat_template(ChatTemplate::kLlama2, Msgs{{"user", "Tell me a joke."}}),
            "<s>[INST] Tell me a joke. [/INST]");
  const std::vector<int32_t> ids = llama2().encode(expected);
  EXPECT_EQ(ids,
            (std::vector<int32_t>{
                1,     518,   25580, 29962, 3532,  14816, 29903, 6778,  13,    29871, 887,  526,
                263,   8444,  20255, 29889, 13,    13,    29966, 829,   14816, 29903, 6778, 13,
                13,    10994, 29991, 518,   29914, 25580, 29962, 6324,  727,   29892, 920,  508,
                306,   1371,  29973, 29871, 2,     1,     518,   25580, 29962, 1724,  338,  29871,
                29906, 29974, 29906, 29973, 518,   29914, 25580, 29962}));
}

TEST(ChatTemplate, Llama2RolesMustAlternate) {
  const Msgs bad = {{"user", "a"}, {"user", "b"}};
  try {
    apply_chat_template(ChatTemplate::kLlama2, bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("alternate"), std::string::npos);
  }
  EXPECT_THROW(apply_chat_template(ChatTemplate::kLlama2, Msgs{}), Error);
  EXPECT_THROW(apply_chat_template(ChatTemplate::kLlama3, Msgs{}), Error);
}

TEST(ChatTemplate, FamilyFromTokenizer) {
  EXPECT_EQ(chat_template_for(llama3()), ChatTemplate::kLlama3);
  EXPECT_EQ(chat_template_for(llama2()), ChatTemplate::kLlama2);
  EXPECT_EQ(chat_template_for(stories()), ChatTemplate::kLlama2);
}

}  // namespace
}  // namespace sagellm::testing
