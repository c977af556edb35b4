// Streaming detokenization in the manner of HF's DecodeStream: decode a small window of ids, emit
// what extends the window's previously emitted prefix, and hold everything back while the text
// ends in U+FFFD (an unfinished UTF-8 character from byte-level tokens) or while a run of
// byte-fallback tokens is still open (a later byte can turn the whole run into U+FFFDs).
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

bool ends_with_replacement(const std::string& text) {
  const std::string_view r = utf8::kReplacementChar;
  return text.size() >= r.size() && text.compare(text.size() - r.size(), r.size(), r) == 0;
}

}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(&tokenizer), skip_special_(skip_special_tokens) {}

std::string IncrementalDecoder::push(int32_t id) {
  ids_.push_back(id);
  if (tok_->decode_is_open(ids_, skip_special_)) return {};
  const std::string text = tok_->decode(ids_, skip_special_);
  if (text.size() <= emitted_bytes_ || ends_with_replacement(text)) return {};
  // The window's text extends its prefix; step to a character boundary should a decoder ever
  // rewrite the prefix, so that no partial character is emitted.
  size_t from = emitted_bytes_;
  while (from < text.size() && (static_cast<unsigned char>(text[from]) & 0xC0) == 0x80) ++from;
  std::string out = text.substr(from);
  // The new window starts at the ids of the chunk just emitted; its text is the new prefix.
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(prefix_ids_));
  prefix_ids_ = ids_.size();
  emitted_bytes_ = tok_->decode(ids_, skip_special_).size();
  return out;
}

std::string IncrementalDecoder::flush() {
  const std::string text = tok_->decode(ids_, skip_special_);
  std::string out;
  if (text.size() > emitted_bytes_) {
    size_t from = emitted_bytes_;
    while (from < text.size() && (static_cast<unsigned char>(text[from]) & 0xC0) == 0x80) ++from;
    out = text.substr(from);
  }
  // Everything is out; later pushes continue after these ids.
  prefix_ids_ = ids_.size();
  emitted_bytes_ = text.size();
  return out;
}

}  // namespace sagellm
