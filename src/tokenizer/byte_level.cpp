#include "tokenizer/byte_level.h"

#include "tokenizer/utf8.h"

namespace sagellm {

const ByteLevelTable& ByteLevelTable::get() {
  static const ByteLevelTable table;
  return table;
}

ByteLevelTable::ByteLevelTable() {
  char_to_byte_.fill(-1);
  // Printable Latin-1 bytes stand for themselves; the others take U+0100 onwards, in byte order.
  const auto keeps_itself = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const char32_t cp = keeps_itself(b) ? static_cast<char32_t>(b) : next++;
    utf8::append(byte_to_text_[b], cp);
    char_to_byte_[cp] = static_cast<int16_t>(b);
  }
}

}  // namespace sagellm
