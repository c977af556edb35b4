// Paths to the shared fixtures and to the built CLI, for tests.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace sagellm::testing {

inline std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("SAGELLM_SHARED_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return SAGELLM_SHARED_DIR_DEFAULT;
}

inline std::filesystem::path model_dir(const std::string& name) {
  return shared_dir() / "models" / name;
}

inline std::string sagellm_binary() { return SAGELLM_BINARY; }

}  // namespace sagellm::testing
