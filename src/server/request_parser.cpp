#include "server/request_parser.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace sagellm::server {

namespace {

using nlohmann::json;

constexpr int kMaxNesting = 64;   // deeper bodies are no request of this API
constexpr int kMaxLogprobs = 20;  // OpenAI's limit for top_logprobs / logprobs

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, message, param);
}

// Rejects nesting deeper than kMaxNesting before the JSON parser sees it, so no input can make
// parsing or destruction recurse without bound.
void check_nesting(std::string_view body) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting) {
        throw bad("", fmt::format("the request body nests deeper than {} levels", kMaxNesting));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

json parse_object(std::string_view body) {
  if (!is_valid_utf8(body)) throw bad("", "the request body is not valid UTF-8");
  check_nesting(body);
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw bad("", "the request body is not valid JSON");
  if (!j.is_object()) throw bad("", "the request body must be a JSON object");
  return j;
}

// Typed access to the fields of a request object; `null` reads as absent.
class Fields {
 public:
  explicit Fields(const json& j) : j_(j) {}

  const json* get(const char* name) const {
    auto it = j_.find(name);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  std::optional<bool> boolean(const char* name) const {
    const json* v = get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) throw bad(name, fmt::format("'{}' must be a boolean", name));
    return v->get<bool>();
  }

  std::optional<double> number(const char* name) const {
    const json* v = get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) throw bad(name, fmt::format("'{}' must be a number", name));
    const double d = v->get<double>();
    if (!std::isfinite(d)) throw bad(name, fmt::format("'{}' must be finite", name));
    return d;
  }

  std::optional<int64_t> integer(const char* name, int64_t lo, int64_t hi) const {
    const json* v = get(name);
    if (v == nullptr) return std::nullopt;
    return to_integer(*v, name, lo, hi);
  }

  std::optional<std::string> string(const char* name) const {
    const json* v = get(name);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) throw bad(name, fmt::format("'{}' must be a string", name));
    return v->get<std::string>();
  }

  static int64_t to_integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
    int64_t x = 0;
    if (v.is_number_unsigned()) {
      const auto u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(hi)) {
        throw bad(name, fmt::format("'{}' must be at most {}", name, hi));
      }
      x = static_cast<int64_t>(u);
    } else if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else if (v.is_number_float()) {
      // 16.0 is an integer; 16.5 is not.
      const double d = v.get<double>();
      if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) {
        throw bad(name, fmt::format("'{}' must be an integer", name));
      }
      x = static_cast<int64_t>(d);
    } else {
      throw bad(name, fmt::format("'{}' must be an integer", name));
    }
    if (x < lo) throw bad(name, fmt::format("'{}' must be at least {} (got {})", name, lo, x));
    if (x > hi) throw bad(name, fmt::format("'{}' must be at most {} (got {})", name, hi, x));
    return x;
  }

 private:
  const json& j_;
};

std::vector<int32_t> token_ids(const json& v, const std::string& name) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    ids.push_back(static_cast<int32_t>(Fields::to_integer(v[i], fmt::format("{}[{}]", name, i), 0,
                                                          std::numeric_limits<int32_t>::max())));
  }
  return ids;
}

std::vector<ChatMessage> parse_messages(const json& v) {
  if (!v.is_array()) throw bad("messages", "'messages' must be an array of messages");
  if (v.empty()) throw bad("messages", "'messages' must hold at least one message");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string where = fmt::format("messages[{}]", i);
    const json& m = v[i];
    if (!m.is_object()) throw bad(where, fmt::format("'{}' must be an object", where));
    Fields f(m);
    std::optional<std::string> role = f.string("role");
    if (!role) throw bad(where + ".role", fmt::format("'{}.role' is required", where));
    if (*role != "system" && *role != "user" && *role != "assistant") {
      throw bad(
          where + ".role",
          fmt::format("'{}.role' must be system, user or assistant (got '{}')", where, *role));
    }
    ChatMessage msg{*role, ""};
    const json* content = f.get("content");
    if (content == nullptr) {
      if (*role != "assistant") {
        throw bad(where + ".content", fmt::format("'{}.content' is required", where));
      }
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Content parts: only text parts exist for a text model; they are joined by newlines.
      for (size_t k = 0; k < content->size(); ++k) {
        const std::string part = fmt::format("{}.content[{}]", where, k);
        const json& p = (*content)[k];
        if (!p.is_object()) throw bad(part, fmt::format("'{}' must be an object", part));
        Fields pf(p);
        if (pf.string("type").value_or("") != "text") {
          throw bad(part + ".type", fmt::format("'{}.type' must be 'text'", part));
        }
        std::optional<std::string> text = pf.string("text");
        if (!text) throw bad(part + ".text", fmt::format("'{}.text' is required", part));
        if (k > 0) msg.content += "\n";
        msg.content += *text;
      }
    } else {
      throw bad(where + ".content",
                fmt::format("'{}.content' must be a string or an array of text parts", where));
    }
    out.push_back(std::move(msg));
  }
  return out;
}

// The fields completions and chat share.
void parse_common(const Fields& f, GenerateApiRequest& r) {
  r.model = f.string("model").value_or("");
  SamplingParams& s = r.sampling;
  if (auto v = f.number("temperature")) s.temperature = static_cast<float>(*v);
  if (auto v = f.number("top_p")) s.top_p = static_cast<float>(*v);
  if (auto v = f.integer("top_k", -1, std::numeric_limits<int32_t>::max())) {
    s.top_k = static_cast<int>(*v);
  }
  if (auto v = f.number("min_p")) s.min_p = static_cast<float>(*v);
  if (const json* v = f.get("seed")) {
    // Any 64-bit integer is a seed; negative ones wrap as they would in C.
    if (v->is_number_unsigned()) {
      s.seed = v->get<uint64_t>();
    } else {
      s.seed = static_cast<uint64_t>(Fields::to_integer(
          *v, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
    }
  }
  if (const json* v = f.get("stop")) {
    if (v->is_string()) {
      s.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (size_t i = 0; i < v->size(); ++i) {
        if (!(*v)[i].is_string()) {
          throw bad("stop", fmt::format("'stop[{}]' must be a string", i));
        }
        s.stop.push_back((*v)[i].get<std::string>());
      }
    } else {
      throw bad("stop", "'stop' must be a string or an array of strings");
    }
    for (size_t i = 0; i < s.stop.size(); ++i) {
      if (s.stop[i].empty()) throw bad("stop", fmt::format("'stop[{}]' must not be empty", i));
    }
  }
  if (const json* v = f.get("stop_token_ids")) {
    if (!v->is_array()) throw bad("stop_token_ids", "'stop_token_ids' must be an array of ids");
    s.stop_token_ids = token_ids(*v, "stop_token_ids");
  }
  if (auto v = f.boolean("ignore_eos")) s.ignore_eos = *v;
  if (auto n =
          f.integer("n", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
      n && *n != 1) {
    throw bad("n", fmt::format("only n=1 is supported (got {})", *n));
  }
  if (auto v = f.boolean("stream")) r.stream = *v;
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    if (auto v = Fields(*so).boolean("include_usage")) r.include_usage = *v;
  }
  try {
    s.validate();
  } catch (const Error& e) {
    throw bad("", e.what());
  }
}

int parse_max_tokens(const Fields& f, const char* name, int fallback) {
  if (auto v = f.integer(name, 0, std::numeric_limits<int32_t>::max())) return static_cast<int>(*v);
  return fallback;
}

}  // namespace

GenerateApiRequest parse_completion_request(std::string_view body) {
  const json j = parse_object(body);
  Fields f(j);
  GenerateApiRequest r;
  r.kind = ApiKind::kCompletion;
  const json* prompt = f.get("prompt");
  if (prompt == nullptr) throw bad("prompt", "'prompt' is required");
  // One prompt per request: a string, token ids, or a list holding exactly one of those.
  const json* p = prompt;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
  } else if (p->is_array() && !p->empty() && !(*p)[0].is_string() && !(*p)[0].is_array()) {
    r.prompt_ids = token_ids(*p, "prompt");
  } else if (p->is_array() && p->size() > 1) {
    throw bad("prompt", "only one prompt per request is supported");
  } else {
    throw bad("prompt", "'prompt' must be a non-empty string or a non-empty array of token ids");
  }
  if (r.prompt_text && r.prompt_text->empty()) throw bad("prompt", "'prompt' must not be empty");
  r.sampling.max_tokens = parse_max_tokens(f, "max_tokens", 16);
  if (auto lp = f.integer("logprobs", 0, kMaxLogprobs)) r.top_logprobs = static_cast<int>(*lp);
  if (auto echo = f.boolean("echo"); echo && *echo) {
    throw bad("echo", "'echo' is not supported");
  }
  parse_common(f, r);
  return r;
}

GenerateApiRequest parse_chat_request(std::string_view body) {
  const json j = parse_object(body);
  Fields f(j);
  GenerateApiRequest r;
  r.kind = ApiKind::kChat;
  const json* messages = f.get("messages");
  if (messages == nullptr) throw bad("messages", "'messages' is required");
  r.messages = parse_messages(*messages);
  // No limit but the context length unless the client sets one.
  const int fallback = parse_max_tokens(f, "max_tokens", std::numeric_limits<int32_t>::max());
  r.sampling.max_tokens = parse_max_tokens(f, "max_completion_tokens", fallback);
  const bool logprobs = f.boolean("logprobs").value_or(false);
  const auto top = f.integer("top_logprobs", 0, kMaxLogprobs);
  if (top && !logprobs) throw bad("top_logprobs", "'top_logprobs' requires 'logprobs': true");
  if (logprobs) r.top_logprobs = static_cast<int>(top.value_or(0));
  parse_common(f, r);
  return r;
}

TokenizeApiRequest parse_tokenize_request(std::string_view body) {
  const json j = parse_object(body);
  Fields f(j);
  TokenizeApiRequest r;
  if (const json* m = f.get("messages")) {
    r.messages = parse_messages(*m);
    r.add_special_tokens = false;
  } else {
    r.prompt = f.string("prompt");
    if (!r.prompt) throw bad("prompt", "'prompt' (a string) or 'messages' is required");
  }
  if (auto v = f.boolean("add_special_tokens")) r.add_special_tokens = *v;
  return r;
}

std::vector<int32_t> parse_detokenize_request(std::string_view body) {
  const json j = parse_object(body);
  const json* t = Fields(j).get("tokens");
  if (t == nullptr || !t->is_array()) throw bad("tokens", "'tokens' (an array of ids) is required");
  return token_ids(*t, "tokens");
}

}  // namespace sagellm::server
