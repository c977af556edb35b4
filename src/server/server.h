// The OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions (both streamable as
// Server-Sent Events), /v1/models, /health, /metrics, /tokenize, /detokenize, over a
// continuous-batching Scheduler.
//
// Lifecycle: listen() serves at once (/health answers 503 while the model loads), attach()
// hands over the loaded engine (/health turns 200), shutdown() refuses new work, lets in-flight
// requests finish for a grace period, ends the rest cleanly and stops listening.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "engine/engine.h"
#include "engine/scheduler.h"
#include "server/metrics.h"
#include "server/open_streams.h"

namespace httplib {
class Server;
}

namespace sagellm::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 30000;               // 0: any free port (see port())
  std::string api_key;            // when set, /v1/*, /tokenize and /detokenize need it
  std::string served_model_name;  // the model's id in /v1/models (default: "default")
  std::string model_path;         // reported as the model's root in /v1/models
  size_t max_request_bytes = size_t{8} << 20;
  int http_threads = 0;  // 0: max_running_requests + 32 (a streaming request holds one)
  SchedulerOptions scheduler;
};

class ApiServer {
 public:
  explicit ApiServer(ServerOptions options);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Binds and serves on a background thread; throws sagellm::Error when the address is taken.
  // Returns the bound port.
  int listen();
  int port() const { return port_; }

  // Starts serving generation with `engine` (which must outlive this server or its shutdown).
  void attach(Engine& engine);
  bool ready() const { return state_.load() == State::kReady; }

  void shutdown(std::chrono::milliseconds grace);

  Scheduler* scheduler() { return scheduler_.get(); }
  const ServerMetrics& metrics() const { return metrics_; }

 private:
  enum class State { kLoading, kReady, kStopping };
  struct Handlers;

  ServerOptions options_;
  OpenStreams open_streams_;  // declared before http_: outlives every response
  std::unique_ptr<httplib::Server> http_;
  std::thread listener_;
  int port_ = 0;
  std::atomic<State> state_{State::kLoading};
  Engine* engine_ = nullptr;
  std::unique_ptr<Scheduler> scheduler_;
  ServerMetrics metrics_;
};

}  // namespace sagellm::server
