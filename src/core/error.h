// The one exception type of the engine: every user-facing failure (bad file, bad flag, bad
// request, out of memory) is raised as sagellm::Error with a message that says what and where.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace sagellm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

#define SAGELLM_CHECK(cond, ...)    \
  do {                              \
    if (!(cond)) {                  \
      ::sagellm::fail(__VA_ARGS__); \
    }                               \
  } while (0)

}  // namespace sagellm
