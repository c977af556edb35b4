// Tokenizer loaded from a Hugging Face tokenizer.json: byte-level BPE with a Split regex (Llama-3)
// or sentencepiece-style BPE with byte fallback (Llama-2, stories260K), plus added/special tokens.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sagellm {

// encode() and decode() may be called from several threads at once.
class Tokenizer {
 public:
  // Throws sagellm::Error for a missing, malformed or unsupported tokenizer.json.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  // MODEL_DIR/tokenizer.json (tokenizer_config.json is read too when present, for the chat template
  // family and the BOS/EOS settings).
  static Tokenizer from_model_dir(const std::filesystem::path& model_dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Throws sagellm::Error when `text` is not valid UTF-8. With add_special_tokens the
  // post-processor's tokens are added (BOS for Llama models), as HF's encode() does.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Byte-exact inverse of encode for valid text. Ids out of range throw.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // True when ids that come after `ids` can still change the decoded text of `ids`: a run of
  // <0xNN> byte-fallback tokens is decoded as a whole (invalid UTF-8 → one U+FFFD per byte), so
  // while the last (not skipped) id is one of them its text is not final. For streaming.
  bool decode_is_open(std::span<const int32_t> ids, bool skip_special_tokens) const;

  int32_t vocab_size() const;  // including added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // the raw vocabulary string
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_id() const;
  std::vector<int32_t> eos_ids() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streams text for generated ids one at a time and never emits half a UTF-8 character: bytes of an
// incomplete character are held back until the character completes. Handles the sentencepiece
// leading-space rule the same way decode() of the whole sequence does.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  std::string push(int32_t id);  // the newly completed text (possibly empty)
  std::string flush();           // whatever is held back, with invalid bytes as U+FFFD

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t emitted_bytes_ = 0;
  // ids_ is a window: its first prefix_ids_ ids produced the last emitted chunk (whose text,
  // emitted_bytes_ long, is the window's decoded prefix); the rest are not emitted yet. Decoding
  // the window instead of everything keeps each push O(window).
  size_t prefix_ids_ = 0;
};

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

enum class ChatTemplate { kLlama3, kLlama2 };

// Picks the template family from the tokenizer (Llama-3 special tokens present → kLlama3).
ChatTemplate chat_template_for(const Tokenizer& tokenizer);
// Renders messages to the prompt text; special tokens appear as their text (e.g.
// "<|begin_of_text|>") so encode() maps them to their ids. The text already starts with BOS, so
// encode it with add_special_tokens = false.
// kLlama3 renders Meta's Llama-3.1 Instruct template without tools: a system block that always
// carries "Cutting Knowledge Date: December 2023" and "Today Date: 26 Jul 2024" (the template's
// fixed default date_string), the system message (trimmed) inside it, then each message trimmed.
// kLlama2 renders Meta's Llama-2-chat template ([INST] … [/INST], <<SYS>> in the first user turn);
// roles must alternate user/assistant after an optional system message, else sagellm::Error.
std::string apply_chat_template(ChatTemplate tmpl, std::span<const ChatMessage> messages,
                                bool add_generation_prompt = true);

// True when `text` is valid UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view text);

}  // namespace sagellm
