// OpenAI response shapes: completions and chat completions (whole and as Server-Sent Event
// chunks), usage, logprobs and errors.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/request.h"
#include "server/api_error.h"
#include "server/request_parser.h"
#include "tokenizer/tokenizer.h"

namespace sagellm::server {

// What every response and chunk of one request shares.
struct ResponseContext {
  ApiKind kind = ApiKind::kCompletion;
  std::string id;  // cmpl-... / chatcmpl-...
  int64_t created = 0;
  std::string model;
  int top_logprobs = -1;
  const Tokenizer* tokenizer = nullptr;
};

// A request's outputs gathered for a non-streamed response.
struct GenerationTotals {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;
  std::string finish_reason;
  std::string error;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
  void add(const RequestOutput& out);
};

std::string new_response_id(ApiKind kind);

nlohmann::json error_json(const ApiError& e);
nlohmann::json error_json(int status, const std::string& message,
                          const std::string& type = "invalid_request_error");

nlohmann::json usage_json(int prompt_tokens, int completion_tokens, int cached_tokens);
nlohmann::json response_json(const ResponseContext& ctx, const GenerationTotals& totals);

// SSE payloads: the chat role chunk that opens a chat stream, one chunk per output with text or
// logprobs, and the last chunk (finish_reason and usage).
nlohmann::json role_chunk_json(const ResponseContext& ctx);
nlohmann::json delta_chunk_json(const ResponseContext& ctx, const RequestOutput& out);
nlohmann::json final_chunk_json(const ResponseContext& ctx, const RequestOutput& last);
std::string sse_event(const nlohmann::json& payload);  // "data: {...}\n\n"
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

}  // namespace sagellm::server
