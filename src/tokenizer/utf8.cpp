#include "tokenizer/utf8.h"

#include "tokenizer/tokenizer.h"

namespace sagellm {

namespace utf8 {

char32_t next_code_point(std::string_view text, size_t& pos) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  const size_t len = std::min(char_len(b0), text.size() - pos);
  char32_t cp;
  switch (len) {
    case 1:
      cp = b0;
      break;
    case 2:
      cp = (b0 & 0x1Fu) << 6 | (static_cast<unsigned char>(text[pos + 1]) & 0x3Fu);
      break;
    case 3:
      cp = (b0 & 0x0Fu) << 12 | (static_cast<unsigned char>(text[pos + 1]) & 0x3Fu) << 6 |
           (static_cast<unsigned char>(text[pos + 2]) & 0x3Fu);
      break;
    default:
      cp = (b0 & 0x07u) << 18 | (static_cast<unsigned char>(text[pos + 1]) & 0x3Fu) << 12 |
           (static_cast<unsigned char>(text[pos + 2]) & 0x3Fu) << 6 |
           (static_cast<unsigned char>(text[pos + 3]) & 0x3Fu);
      break;
  }
  pos += len;
  return cp;
}

char32_t previous_code_point(std::string_view text, size_t end, size_t* start) {
  size_t s = end - 1;
  while (s > 0 && (static_cast<unsigned char>(text[s]) & 0xC0) == 0x80) --s;
  if (start != nullptr) *start = s;
  size_t p = s;
  return next_code_point(text, p);
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t valid_char_at(std::string_view bytes, size_t pos, size_t* bad_len) {
  const auto at = [&](size_t i) { return static_cast<unsigned char>(bytes[pos + i]); };
  const size_t avail = bytes.size() - pos;
  const unsigned char b0 = at(0);
  if (b0 < 0x80) return 1;
  // Table 3-7 of the Unicode standard: the allowed range of the second byte depends on the first.
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *bad_len = 1;
    return 0;
  }
  size_t i = 1;
  for (; i < need && i < avail; ++i) {
    const unsigned char b = at(i);
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
  }
  if (i == need) return need;
  *bad_len = i;
  return 0;
}

std::string lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t bad = 0;
    const size_t len = valid_char_at(bytes, pos, &bad);
    if (len != 0) {
      out.append(bytes.substr(pos, len));
      pos += len;
    } else {
      out.append(kReplacementChar);
      pos += bad;
    }
  }
  return out;
}

size_t first_invalid(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    // Runs of ASCII are the common case.
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t bad = 0;
    const size_t len = valid_char_at(text, pos, &bad);
    if (len == 0) return pos;
    pos += len;
  }
  return std::string_view::npos;
}

bool is_python_space(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string_view python_strip(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t p = begin;
    if (!is_python_space(next_code_point(text, p))) break;
    begin = p;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t s = 0;
    if (!is_python_space(previous_code_point(text, end, &s))) break;
    end = s;
  }
  return text.substr(begin, end - begin);
}

}  // namespace utf8

bool is_valid_utf8(std::string_view text) {
  return utf8::first_invalid(text) == std::string_view::npos;
}

}  // namespace sagellm
