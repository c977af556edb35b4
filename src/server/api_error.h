// An error answered to an API client in OpenAI's shape:
// {"error": {"message": ..., "type": ..., "param": ..., "code": ...}} with an HTTP status.
#pragma once

#include <string>
#include <utility>

#include "core/error.h"

namespace sagellm::server {

class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string param = {},
           std::string type = "invalid_request_error", std::string code = {})
      : Error(message),
        status_(status),
        param_(std::move(param)),
        type_(std::move(type)),
        code_(std::move(code)) {}

  int status() const { return status_; }
  const std::string& param() const { return param_; }  // empty: null
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }  // empty: null

 private:
  int status_;
  std::string param_, type_, code_;
};

}  // namespace sagellm::server
