// sagellm serve: the OpenAI-compatible HTTP server (continuous batching, prefix caching, SSE).
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "cli/engine_flags.h"
#include "core/error.h"
#include "server/server.h"

namespace sagellm::cli {

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

struct ServeArgs {
  EngineOptions engine;
  server::ServerOptions server;
  bool disable_prefix_cache = false;
  double shutdown_timeout = 30.0;
};

int run_serve(ServeArgs& a) {
  a.server.scheduler.enable_prefix_cache = !a.disable_prefix_cache;
  a.server.model_path = a.engine.model_dir.string();
  if (a.server.served_model_name.empty()) {
    a.server.served_model_name = a.engine.model_dir.filename().string();
    if (a.server.served_model_name.empty()) {
      a.server.served_model_name = a.engine.model_dir.parent_path().filename().string();
    }
  }
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);

  // The engine outlives the server, whose scheduler steps it.
  std::unique_ptr<Engine> engine;
  server::ApiServer srv(a.server);
  const int port = srv.listen();
  std::fprintf(stderr, "sagellm serve: listening on http://%s:%d, loading %s\n",
               a.server.host.c_str(), port, a.engine.model_dir.string().c_str());
  a.engine.max_running_requests = a.server.scheduler.max_running_requests;
  engine = std::make_unique<Engine>(a.engine);
  srv.attach(*engine);
  std::fprintf(stderr,
               "sagellm serve: ready (model '%s', attention %s, %d KV pages of %d tokens)\n",
               a.server.served_model_name.c_str(), std::string(engine->attention().name()).c_str(),
               engine->num_pages(), engine->page_size());
  while (g_stop_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "sagellm serve: stopping; in-flight requests get up to %.0f s to finish\n",
               a.shutdown_timeout);
  srv.shutdown(std::chrono::milliseconds(static_cast<int64_t>(a.shutdown_timeout * 1000)));
  std::fprintf(stderr, "sagellm serve: stopped\n");
  return 0;
}

}  // namespace

Action add_serve(CLI::App& root) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* app =
      root.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  add_engine_flags(*app, args->engine);
  server::ServerOptions& s = args->server;
  app->add_option("--host", s.host, "Address to listen on")->capture_default_str();
  app->add_option("--port", s.port, "Port to listen on (0: any free port)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  app->add_option("--api-key", s.api_key, "Require 'Authorization: Bearer KEY' on /v1/*");
  app->add_option("--served-model-name", s.served_model_name,
                  "Model id in the API (default: the model directory's name)");
  app->add_option("--max-running-requests", s.scheduler.max_running_requests,
                  "Requests in the running batch at most (a GPU 8-bit KV cache reserves a bf16 "
                  "page of every layer for each)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app->add_option("--chunked-prefill-size", s.scheduler.chunked_prefill_size,
                  "Prefill tokens per scheduler step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app->add_option("--max-total-tokens", args->engine.kv_cache_tokens,
                  "Tokens the KV cache holds (same as --kv-cache-tokens)");
  app->add_flag("--disable-prefix-cache", args->disable_prefix_cache,
                "Do not share KV pages of common prompt prefixes across requests");
  app->add_option("--max-request-bytes", s.max_request_bytes, "Largest request body accepted")
      ->capture_default_str();
  app->add_option("--shutdown-timeout", args->shutdown_timeout,
                  "Seconds in-flight requests get to finish on SIGINT/SIGTERM")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  return [args] { return run_serve(*args); };
}

}  // namespace sagellm::cli
