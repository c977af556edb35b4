// The two chat formats, written out in C++ rather than interpreted from Jinja. Each function
// follows the corresponding official template step by step (see tokenizer.h); the tests compare
// the output with transformers' apply_chat_template on those templates.
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

std::string render_llama3(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  SAGELLM_CHECK(!messages.empty(), "chat template: there are no messages");
  std::string out = "<|begin_of_text|>";
  size_t first = 0;
  std::string_view system;
  if (messages[0].role == "system") {
    system = utf8::python_strip(messages[0].content);
    first = 1;
  }
  out += "<|start_header_id|>system<|end_header_id|>\n\n";
  out += "Cutting Knowledge Date: December 2023\n";
  out += "Today Date: 26 Jul 2024\n\n";
  out += system;
  out += "<|eot_id|>";
  for (size_t i = first; i < messages.size(); ++i) {
    out += "<|start_header_id|>";
    out += messages[i].role;
    out += "<|end_header_id|>\n\n";
    out += utf8::python_strip(messages[i].content);
    out += "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// add_generation_prompt has no effect: the Llama-2 prompt always ends after " [/INST]".
std::string render_llama2(std::span<const ChatMessage> messages) {
  SAGELLM_CHECK(!messages.empty(), "chat template: there are no messages");
  size_t first = 0;
  std::optional<std::string> system;
  if (messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const size_t turn = i - first;
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (turn % 2 == 0)) {
      fail(
          "chat template: conversation roles must alternate user/assistant/user/assistant/... "
          "(message {} has role '{}')",
          i, m.role);
    }
    std::string content = m.content;
    if (turn == 0 && system) content = "<<SYS>>\n" + *system + "\n<</SYS>>\n\n" + m.content;
    if (m.role == "user") {
      out += "<s>[INST] ";
      out += utf8::python_strip(content);
      out += " [/INST]";
    } else if (m.role == "assistant") {
      out += " ";
      out += utf8::python_strip(content);
      out += " </s>";
    }
  }
  return out;
}

}  // namespace

ChatTemplate chat_template_for(const Tokenizer& tokenizer) {
  return tokenizer.token_to_id("<|start_header_id|>") && tokenizer.token_to_id("<|eot_id|>")
             ? ChatTemplate::kLlama3
             : ChatTemplate::kLlama2;
}

std::string apply_chat_template(ChatTemplate tmpl, std::span<const ChatMessage> messages,
                                bool add_generation_prompt) {
  switch (tmpl) {
    case ChatTemplate::kLlama3:
      return render_llama3(messages, add_generation_prompt);
    case ChatTemplate::kLlama2:
      return render_llama2(messages);
  }
  fail("chat template: unknown template");
}

}  // namespace sagellm
