// UTF-8 helpers shared by the tokenizer stages. Inputs to the tokenizer are validated once at the
// door (is_valid_utf8 in tokenizer.h), so the decoding helpers here assume well-formed text unless
// they say otherwise.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace sagellm::utf8 {

// Offset of the first byte that is not part of a well-formed character, or npos.
size_t first_invalid(std::string_view text);

// Length in bytes of the character starting with `lead` (1 for bytes that cannot start one).
inline size_t char_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the character at `pos` of well-formed text and advances `pos` past it.
char32_t next_code_point(std::string_view text, size_t& pos);

// The code point just before byte offset `end` of well-formed text (end > 0).
char32_t previous_code_point(std::string_view text, size_t end, size_t* start = nullptr);

void append(std::string& out, char32_t cp);

// Bytes to text as Rust's String::from_utf8_lossy does it: every maximal ill-formed subpart
// becomes one U+FFFD (Unicode's "substitution of maximal subparts").
std::string lossy(std::string_view bytes);

// Number of bytes of the valid character at the start of `bytes`, or 0 when the sequence there is
// ill-formed or incomplete. `*bad_len` receives the length of the maximal ill-formed subpart.
size_t valid_char_at(std::string_view bytes, size_t pos, size_t* bad_len);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Python's str.isspace() for one code point (what jinja's trim and str.strip remove).
bool is_python_space(char32_t cp);

// Python's str.strip() with no argument.
std::string_view python_strip(std::string_view text);

}  // namespace sagellm::utf8
