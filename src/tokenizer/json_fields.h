// Field access for tokenizer.json with errors that name the file and the JSON path, so a user can
// find what is wrong ("…/tokenizer.json: model.merges[3]: expected a string").
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.h"

namespace sagellm::tokjson {

using nlohmann::json;

// `where` is "FILE: path.to.object".
inline std::string child(const std::string& where, std::string_view key) {
  return where.back() == ' ' ? where + std::string(key) : where + "." + std::string(key);
}
inline std::string index(const std::string& where, size_t i) {
  return where + "[" + std::to_string(i) + "]";
}

inline const json& object(const json& j, const std::string& where) {
  if (!j.is_object()) fail("{}: expected a JSON object, found {}", where, j.type_name());
  return j;
}

// The field, or nullptr when it is absent or null.
inline const json* optional(const json& obj, std::string_view key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

inline const json& required(const json& obj, std::string_view key, const std::string& where) {
  const json* v = optional(object(obj, where), key);
  if (v == nullptr) fail("{}: missing field '{}'", where, key);
  return *v;
}

inline std::string string_of(const json& v, const std::string& where) {
  if (!v.is_string()) fail("{}: expected a string, found {}", where, v.type_name());
  return v.get<std::string>();
}

inline std::string required_string(const json& obj, std::string_view key,
                                   const std::string& where) {
  return string_of(required(obj, key, where), child(where, key));
}

inline std::optional<std::string> optional_string(const json& obj, std::string_view key,
                                                  const std::string& where) {
  const json* v = optional(obj, key);
  if (v == nullptr) return std::nullopt;
  return string_of(*v, child(where, key));
}

inline bool bool_or(const json& obj, std::string_view key, bool fallback,
                    const std::string& where) {
  const json* v = optional(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) {
    fail("{}: expected true or false, found {}", child(where, key), v->type_name());
  }
  return v->get<bool>();
}

inline int64_t integer_of(const json& v, const std::string& where) {
  if (!v.is_number_integer()) fail("{}: expected an integer, found {}", where, v.type_name());
  return v.get<int64_t>();
}

inline int64_t integer_or(const json& obj, std::string_view key, int64_t fallback,
                          const std::string& where) {
  const json* v = optional(obj, key);
  if (v == nullptr) return fallback;
  return integer_of(*v, child(where, key));
}

inline const json& array_of(const json& v, const std::string& where) {
  if (!v.is_array()) fail("{}: expected an array, found {}", where, v.type_name());
  return v;
}

// The "type" field of a component, e.g. "BPE" or "Sequence".
inline std::string type_of(const json& obj, const std::string& where) {
  return required_string(obj, "type", where);
}

// A pattern written as {"String": "…"} or {"Regex": "…"}.
struct Pattern {
  std::string text;
  bool is_regex = false;
};
inline Pattern pattern_of(const json& obj, std::string_view key, const std::string& where) {
  const std::string w = child(where, key);
  const json& p = object(required(obj, key, where), w);
  if (const json* s = optional(p, "String")) return {string_of(*s, child(w, "String")), false};
  if (const json* r = optional(p, "Regex")) return {string_of(*r, child(w, "Regex")), true};
  fail("{}: expected {{\"String\": …}} or {{\"Regex\": …}}", w);
}

}  // namespace sagellm::tokjson
