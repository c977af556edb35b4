#include "server/openai_json.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <random>

namespace sagellm::server {

namespace {

using nlohmann::json;

// JSON has no -inf; OpenAI-compatible servers report impossible tokens as -9999.
double finite_logprob(float lp) { return std::isfinite(lp) ? lp : -9999.0; }

std::string token_text(const ResponseContext& ctx, int32_t id) {
  if (ctx.tokenizer == nullptr) return std::to_string(id);
  const int32_t ids[1] = {id};
  return ctx.tokenizer->decode(ids, /*skip_special_tokens=*/false);
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

json completion_logprobs(const ResponseContext& ctx, const std::vector<int32_t>& tokens,
                         const std::vector<TokenLogprobs>& lps) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  size_t offset = 0;
  for (size_t i = 0; i < lps.size() && i < tokens.size(); ++i) {
    const std::string text = token_text(ctx, lps[i].chosen.id);
    out["tokens"].push_back(text);
    out["token_logprobs"].push_back(finite_logprob(lps[i].chosen.logprob));
    json top = json::object();
    for (const TokenLogprob& t : lps[i].top) {
      top[token_text(ctx, t.id)] = finite_logprob(t.logprob);
    }
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(offset);
    offset += text.size();
  }
  return out;
}

json chat_logprobs(const ResponseContext& ctx, const std::vector<TokenLogprobs>& lps) {
  json content = json::array();
  for (const TokenLogprobs& lp : lps) {
    const std::string text = token_text(ctx, lp.chosen.id);
    json top = json::array();
    for (const TokenLogprob& t : lp.top) {
      const std::string tt = token_text(ctx, t.id);
      top.push_back(
          {{"token", tt}, {"logprob", finite_logprob(t.logprob)}, {"bytes", bytes_of(tt)}});
    }
    content.push_back({{"token", text},
                       {"logprob", finite_logprob(lp.chosen.logprob)},
                       {"bytes", bytes_of(text)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

json logprobs_json(const ResponseContext& ctx, const std::vector<int32_t>& tokens,
                   const std::vector<TokenLogprobs>& lps) {
  if (ctx.top_logprobs < 0) return nullptr;
  return ctx.kind == ApiKind::kChat ? chat_logprobs(ctx, lps)
                                    : completion_logprobs(ctx, tokens, lps);
}

json chunk_base(const ResponseContext& ctx) {
  return {{"id", ctx.id},
          {"object", ctx.kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
          {"created", ctx.created},
          {"model", ctx.model}};
}

json finish_reason_json(const std::string& r) { return r.empty() ? json(nullptr) : json(r); }

}  // namespace

void GenerationTotals::add(const RequestOutput& out) {
  text += out.text;
  tokens.insert(tokens.end(), out.tokens.begin(), out.tokens.end());
  logprobs.insert(logprobs.end(), out.logprobs.begin(), out.logprobs.end());
  prompt_tokens = out.prompt_tokens;
  completion_tokens = out.completion_tokens;
  cached_tokens = out.cached_tokens;
  if (out.finished) {
    finish_reason = out.finish_reason;
    error = out.error;
  }
}

std::string new_response_id(ApiKind kind) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  const uint64_t n = counter.fetch_add(1) ^ (salt << 20);
  return fmt::format("{}-{:016x}", kind == ApiKind::kChat ? "chatcmpl" : "cmpl", n);
}

json error_json(int status, const std::string& message, const std::string& type) {
  return {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", status}}}};
}

json error_json(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type()},
              {"param", e.param().empty() ? json(nullptr) : json(e.param())},
              {"code", e.code().empty() ? json(e.status()) : json(e.code())}};
  return {{"error", std::move(err)}};
}

json usage_json(int prompt_tokens, int completion_tokens, int cached_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

json response_json(const ResponseContext& ctx, const GenerationTotals& t) {
  json choice = {{"index", 0},
                 {"logprobs", logprobs_json(ctx, t.tokens, t.logprobs)},
                 {"finish_reason", finish_reason_json(t.finish_reason)}};
  if (ctx.kind == ApiKind::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", t.text}};
  } else {
    choice["text"] = t.text;
  }
  return {{"id", ctx.id},
          {"object", ctx.kind == ApiKind::kChat ? "chat.completion" : "text_completion"},
          {"created", ctx.created},
          {"model", ctx.model},
          {"choices", json::array({std::move(choice)})},
          {"usage", usage_json(t.prompt_tokens, t.completion_tokens, t.cached_tokens)}};
}

json role_chunk_json(const ResponseContext& ctx) {
  json j = chunk_base(ctx);
  j["choices"] = json::array({{{"index", 0},
                               {"delta", {{"role", "assistant"}, {"content", ""}}},
                               {"logprobs", nullptr},
                               {"finish_reason", nullptr}}});
  return j;
}

json delta_chunk_json(const ResponseContext& ctx, const RequestOutput& out) {
  json j = chunk_base(ctx);
  json choice = {{"index", 0},
                 {"logprobs", logprobs_json(ctx, out.tokens, out.logprobs)},
                 {"finish_reason", nullptr}};
  if (ctx.kind == ApiKind::kChat) {
    choice["delta"] = {{"content", out.text}};
  } else {
    choice["text"] = out.text;
  }
  j["choices"] = json::array({std::move(choice)});
  return j;
}

json final_chunk_json(const ResponseContext& ctx, const RequestOutput& last) {
  json j = chunk_base(ctx);
  json choice = {{"index", 0},
                 {"logprobs", nullptr},
                 {"finish_reason", finish_reason_json(last.finish_reason)}};
  if (ctx.kind == ApiKind::kChat) {
    choice["delta"] = json::object();
  } else {
    choice["text"] = "";
  }
  j["choices"] = json::array({std::move(choice)});
  j["usage"] = usage_json(last.prompt_tokens, last.completion_tokens, last.cached_tokens);
  return j;
}

std::string sse_event(const json& payload) {
  return "data: " + payload.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace sagellm::server
