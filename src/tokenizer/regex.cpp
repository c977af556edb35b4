#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof(buffer));
  return reinterpret_cast<const char*>(buffer);
}

// Per-thread scratch for matching: match data sized for the largest pattern seen and a JIT stack
// big enough for long runs of whitespace or letters (the default 32 KiB can overflow).
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(32, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (data == nullptr || context == nullptr || stack == nullptr) throw std::bad_alloc();
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& scratch() {
  thread_local MatchScratch s;
  return s;
}

}  // namespace

struct Regex::Code {
  pcre2_code* code = nullptr;
  std::string what;
  ~Code() { pcre2_code_free(code); }
};

Regex::Regex(std::unique_ptr<Code> code) : code_(std::move(code)) {}
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

namespace {

// Letters and numbers assigned in Unicode 15.0-16.0. HF's Oniguruma knows Unicode 16 while the
// PCRE2 of Debian 12 stops at Unicode 14, where these code points are unassigned; adding them to
// \p{L} and \p{N} makes both agree (harmless with a newer PCRE2, which has them already).
constexpr std::string_view kNewLetters =
    R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D4A}-\x{10D65})"
    R"(\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240}\x{11380}-\x{11389}\x{1138B})"
    R"(\x{1138E}\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{11BC0}-\x{11BE0}\x{11F02})"
    R"(\x{11F04}-\x{11F10}\x{11F12}-\x{11F33}\x{1342F}\x{13441}-\x{13446}\x{13460}-\x{143FA})"
    R"(\x{16100}-\x{1611D}\x{16D40}-\x{16D6C}\x{18CFF}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A})"
    R"(\x{1E030}-\x{1E06D}\x{1E4D0}-\x{1E4EB}\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739})"
    R"(\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";
constexpr std::string_view kNewNumbers =
    R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59})"
    R"(\x{16130}-\x{16139}\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3})"
    R"(\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";

}  // namespace

std::string Regex::translate_oniguruma(std::string_view pattern) {
  // Oniguruma (Ruby syntax, UTF-8) meanings that PCRE2 with UCP spells differently:
  //   \s  White_Space (PCRE2's \s misses U+0085)      \w  Letter|Mark|Decimal_Number|Connector
  //   \h  hexadecimal digit (PCRE2: horizontal space)  \p{L} \p{N}  Unicode 16 (see above)
  static constexpr std::string_view kWord = R"(\p{L}\p{M}\p{Nd}\p{Pc})";
  std::string out;
  out.reserve(pattern.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const bool in_class = class_depth > 0;
      // \p{L}, \p{N}, \P{L}, \P{N}
      if ((pattern[i + 1] == 'p' || pattern[i + 1] == 'P') && i + 4 < pattern.size() &&
          pattern[i + 2] == '{' && (pattern[i + 3] == 'L' || pattern[i + 3] == 'N') &&
          pattern[i + 4] == '}') {
        const bool negated = pattern[i + 1] == 'P';
        const char prop = pattern[i + 3];
        const std::string members =
            std::string("\\p{") + prop + "}" + std::string(prop == 'L' ? kNewLetters : kNewNumbers);
        if (in_class && negated) {
          fail("regex construct \\P{{{}}} inside a character class is not supported: {}", prop,
               pattern);
        }
        out += in_class ? members : (negated ? "[^" : "[") + members + "]";
        i += 4;
        continue;
      }
      const char e = pattern[++i];
      switch (e) {
        case 's':
          out += R"(\p{White_Space})";
          break;
        case 'S':
          out += R"(\P{White_Space})";
          break;
        case 'w':
          out += in_class ? std::string(kWord) : "[" + std::string(kWord) + "]";
          break;
        case 'h':
          out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
          break;
        case 'W':
        case 'H':
          if (in_class) {
            fail("regex construct \\{} inside a character class is not supported: {}", e, pattern);
          }
          out += e == 'W' ? "[^" + std::string(kWord) + "]" : "[^0-9a-fA-F]";
          break;
        default:
          out += c;
          out += e;
      }
      continue;
    }
    if (c == '[') {
      // "[" right after the opening "[" or "[^" is a literal, as is "]" there.
      ++class_depth;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

namespace {

std::unique_ptr<pcre2_code, void (*)(pcre2_code*)> compile_raw(std::string_view pattern,
                                                               uint32_t options,
                                                               std::string_view what) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(
      reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
      options | PCRE2_UTF | ((options & PCRE2_LITERAL) ? 0 : PCRE2_UCP), &error, &offset, nullptr);
  if (code == nullptr) {
    fail("{}: cannot compile regex '{}' at offset {}: {}", what, pattern, offset,
         pcre2_message(error));
  }
  // JIT is an optimization; without it (e.g. a platform PCRE2 lacks it) the interpreter is used.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return {code, pcre2_code_free};
}

}  // namespace

Regex Regex::compile(std::string_view pattern, std::string_view what) {
  auto code = std::make_unique<Code>();
  // Ruby syntax, which HF's Oniguruma uses, makes ^ and $ line anchors.
  code->code = compile_raw(translate_oniguruma(pattern), PCRE2_MULTILINE, what).release();
  code->what = what;
  return Regex(std::move(code));
}

Regex Regex::literal(std::string_view text, std::string_view what) {
  auto code = std::make_unique<Code>();
  code->code = compile_raw(text, PCRE2_LITERAL, what).release();
  code->what = what;
  return Regex(std::move(code));
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  MatchScratch& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (start <= text.size()) {
    const int rc = pcre2_match(code_->code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, s.data,
                               s.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) fail("{}: regex match failed: {}", code_->what, pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.data);
    const size_t b = ov[0], e = ov[1];
    if (b == e && have_last && last_end == e) {
      // An empty match where the previous one ended: step one character so the scan advances.
      start += start < text.size() ? utf8::char_len(static_cast<unsigned char>(text[start])) : 1;
      continue;
    }
    matches.emplace_back(b, e);
    have_last = true;
    last_end = e;
    start = e;
  }
  return matches;
}

bool Regex::search(std::string_view text) const {
  MatchScratch& s = scratch();
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                             PCRE2_NO_UTF_CHECK, s.data, s.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) fail("{}: regex match failed: {}", code_->what, pcre2_message(rc));
  return true;
}

}  // namespace sagellm
