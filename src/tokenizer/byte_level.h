// GPT-2's byte ↔ character table used by byte-level BPE (Llama-3): every byte maps to a printable
// character so that any byte string becomes a string of vocabulary symbols.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace sagellm {

class ByteLevelTable {
 public:
  static const ByteLevelTable& get();

  // The UTF-8 text of the character standing for byte b.
  const std::string& char_of(uint8_t b) const { return byte_to_text_[b]; }
  // The byte a character stands for, or -1 when it stands for none.
  int byte_of(char32_t cp) const { return cp < char_to_byte_.size() ? char_to_byte_[cp] : -1; }

 private:
  ByteLevelTable();
  std::array<std::string, 256> byte_to_text_;
  std::array<int16_t, 324> char_to_byte_;  // characters are below U+0144
};

}  // namespace sagellm
