// Request bodies of the OpenAI-compatible API, parsed and validated into typed structs. Every
// problem is an ApiError with a 4xx status that names the offending field; unknown fields are
// ignored and `null` counts as absent, as OpenAI's API does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampling.h"
#include "server/api_error.h"
#include "tokenizer/tokenizer.h"

namespace sagellm::server {

enum class ApiKind { kCompletion, kChat };

struct GenerateApiRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;
  // Completions: the prompt as text or as token ids (exactly one is set).
  std::optional<std::string> prompt_text;
  std::optional<std::vector<int32_t>> prompt_ids;
  std::vector<ChatMessage> messages;  // chat
  SamplingParams sampling;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int top_logprobs = -1;       // < 0: no logprobs; otherwise how many alternatives per token
};

// Defaults follow OpenAI: max_tokens 16 for completions; for chat, up to the context length.
GenerateApiRequest parse_completion_request(std::string_view body);
GenerateApiRequest parse_chat_request(std::string_view body);

// POST /tokenize: {"prompt": text} or {"messages": [...]}, optional "add_special_tokens"
// (default: true for a prompt, false for messages, whose template already holds BOS).
struct TokenizeApiRequest {
  std::optional<std::string> prompt;
  std::vector<ChatMessage> messages;
  bool add_special_tokens = true;
};
TokenizeApiRequest parse_tokenize_request(std::string_view body);

// POST /detokenize: {"tokens": [ids]}.
std::vector<int32_t> parse_detokenize_request(std::string_view body);

}  // namespace sagellm::server
