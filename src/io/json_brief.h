// Short, safe rendering of a JSON value for error messages.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace sagellm::io {

// Scalars as JSON text (cut to 80 characters), containers by kind and size: a hostile file can hold
// a huge or deeply nested value, and an error message must neither echo it all nor recurse into it.
inline std::string json_brief(const nlohmann::json& v) {
  if (v.is_array()) return "an array of " + std::to_string(v.size()) + " elements";
  if (v.is_object()) return "an object of " + std::to_string(v.size()) + " keys";
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

}  // namespace sagellm::io
