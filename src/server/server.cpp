#include "server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <condition_variable>
#include <csignal>
#include <ctime>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/logging.h"
#include "server/api_error.h"
#include "server/openai_json.h"
#include "server/request_parser.h"

namespace sagellm::server {

namespace {

// How long shutdown waits for ended streams to flush their last events.
constexpr std::chrono::seconds kStreamDrainTimeout{5};

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// Outputs of one request, handed from the scheduler's thread to the connection's thread.
class OutputChannel {
 public:
  void push(const RequestOutput& out) {
    std::lock_guard lock(mu_);
    queue_.push_back(out);
    cv_.notify_one();
  }

  std::vector<RequestOutput> wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
    std::vector<RequestOutput> out(std::make_move_iterator(queue_.begin()),
                                   std::make_move_iterator(queue_.end()));
    queue_.clear();
    return out;
  }

  GenerationTotals wait_finished() {
    GenerationTotals totals;
    while (true) {
      for (const RequestOutput& out : wait(std::chrono::milliseconds(1000))) {
        totals.add(out);
        if (out.finished) return totals;
      }
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> queue_;
};

// One streamed response: turns the request's outputs into SSE events as they arrive.
class EventStream {
 public:
  EventStream(ResponseContext ctx, std::shared_ptr<OutputChannel> channel)
      : ctx_(std::move(ctx)), channel_(std::move(channel)) {}

  bool finished() const { return finished_.load(); }

  // Called by httplib until sink.done(); returning false (or a failed write: the client went
  // away) ends the response and the releaser cancels the request.
  bool pump(httplib::DataSink& sink) {
    std::string buf;
    if (!role_sent_ && ctx_.kind == ApiKind::kChat) {
      buf += sse_event(role_chunk_json(ctx_));
      role_sent_ = true;
    }
    bool done = false;
    for (const RequestOutput& out : channel_->wait(std::chrono::milliseconds(500))) {
      if (!out.text.empty() || !out.logprobs.empty()) buf += sse_event(delta_chunk_json(ctx_, out));
      if (out.finished) {
        if (out.finish_reason == "error") {
          buf += sse_event(error_json(500, "generation failed: " + out.error, "internal_error"));
        }
        buf += sse_event(final_chunk_json(ctx_, out));
        buf += kSseDone;
        done = true;
        break;
      }
    }
    // A comment line while nothing happens: SSE clients skip it, and writing it is how a closed
    // connection is noticed while a request waits or prefills.
    if (buf.empty()) buf = ": keep-alive\n\n";
    if (!sink.write(buf.data(), buf.size())) return false;
    if (done) {
      finished_ = true;
      sink.done();
    }
    return true;
  }

 private:
  ResponseContext ctx_;
  std::shared_ptr<OutputChannel> channel_;
  bool role_sent_ = false;
  std::atomic<bool> finished_{false};
};

// httplib listens with a backlog of 5 (a compile-time constant of the shared library), which
// drops connections when many clients connect at once; Linux lets a listening socket's backlog be
// raised by calling listen() again.
class HttpServer : public httplib::Server {
 public:
  void widen_backlog() { ::listen(svr_sock_, SOMAXCONN); }
};

// Timing of one request's tokens, for the latency histograms. Used on the scheduler's thread.
struct TokenClock {
  Clock::time_point arrival;
  std::optional<Clock::time_point> last_token;
};

}  // namespace

struct ApiServer::Handlers {
  static std::string model_name(const ApiServer& s) {
    if (!s.options_.served_model_name.empty()) return s.options_.served_model_name;
    return "default";
  }

  static void require_ready(const ApiServer& s) {
    const State st = s.state_.load();
    if (st == State::kLoading) {
      throw ApiError(503, "the model is still loading", "", "service_unavailable");
    }
    if (st == State::kStopping) {
      throw ApiError(503, "the server is shutting down", "", "service_unavailable");
    }
  }

  static std::vector<int32_t> chat_prompt(const Tokenizer& tok,
                                          const std::vector<ChatMessage>& messages) {
    std::string text;
    try {
      text = apply_chat_template(chat_template_for(tok), messages);
    } catch (const ApiError&) {
      throw;
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "messages");
    }
    return tok.encode(text, /*add_special_tokens=*/false);  // the template holds BOS
  }

  static void generate(ApiServer& s, const httplib::Request& req, httplib::Response& res,
                       ApiKind kind) {
    const Clock::time_point arrival = Clock::now();
    GenerateApiRequest api =
        kind == ApiKind::kChat ? parse_chat_request(req.body) : parse_completion_request(req.body);
    require_ready(s);
    Engine& engine = *s.engine_;
    const Tokenizer& tok = engine.tokenizer();
    std::vector<int32_t> prompt;
    if (kind == ApiKind::kChat) {
      prompt = chat_prompt(tok, api.messages);
    } else if (api.prompt_text) {
      prompt = tok.encode(*api.prompt_text, /*add_special_tokens=*/true);
    } else {
      prompt = *api.prompt_ids;
    }
    const char* prompt_param = kind == ApiKind::kChat ? "messages" : "prompt";
    if (static_cast<int64_t>(prompt.size()) >= engine.context_length()) {
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens, and the "
                                 "prompt has {} tokens; at least one must remain for the "
                                 "completion.",
                                 engine.context_length(), prompt.size()),
                     prompt_param, "invalid_request_error", "context_length_exceeded");
    }

    ResponseContext ctx;
    ctx.kind = kind;
    ctx.id = new_response_id(kind);
    ctx.created = static_cast<int64_t>(std::time(nullptr));
    ctx.model = api.model.empty() ? model_name(s) : api.model;
    ctx.top_logprobs = api.top_logprobs;
    ctx.tokenizer = &tok;

    auto channel = std::make_shared<OutputChannel>();
    auto clock = std::make_shared<TokenClock>(TokenClock{arrival, std::nullopt});
    RequestSpec spec;
    spec.prompt = std::move(prompt);
    spec.sampling = api.sampling;
    spec.top_logprobs = api.top_logprobs;
    ServerMetrics* metrics = &s.metrics_;
    spec.on_output = [channel, clock, metrics](const RequestOutput& out) {
      const Clock::time_point now = Clock::now();
      if (!out.tokens.empty()) {
        if (!clock->last_token) {
          metrics->observe_time_to_first_token(seconds(now - clock->arrival));
        } else {
          metrics->observe_inter_token_latency(seconds(now - *clock->last_token));
        }
        clock->last_token = now;
      }
      if (out.finished) {
        metrics->observe_finished(out.finish_reason, seconds(now - clock->arrival),
                                  out.queue_seconds, out.prompt_tokens, out.completion_tokens);
      }
      channel->push(out);
    };

    uint64_t id = 0;
    try {
      id = s.scheduler_->submit(std::move(spec));
    } catch (const SchedulerClosed& e) {
      throw ApiError(503, e.what(), "", "service_unavailable");
    } catch (const ApiError&) {
      throw;
    } catch (const Error& e) {
      throw ApiError(400, e.what(), prompt_param);
    }

    if (!api.stream) {
      const GenerationTotals totals = channel->wait_finished();
      if (totals.finish_reason == "error") {
        send_json(res, 500,
                  error_json(500, "generation failed: " + totals.error, "internal_error"));
        return;
      }
      send_json(res, 200, response_json(ctx, totals));
      return;
    }
    auto stream = std::make_shared<EventStream>(std::move(ctx), channel);
    Scheduler* scheduler = s.scheduler_.get();
    std::shared_ptr<void> counted = s.open_streams_.open();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t, httplib::DataSink& sink) { return stream->pump(sink); },
        // `counted` lives as long as the response: shutdown waits for it.
        [stream, scheduler, id, counted](bool) {
          // The client went away before the end: stop generating and free the pages now.
          if (!stream->finished()) scheduler->cancel(id);
        });
  }

  static void models(ApiServer& s, httplib::Response& res) {
    require_ready(s);
    json model = {{"id", model_name(s)},
                  {"object", "model"},
                  {"created", static_cast<int64_t>(std::time(nullptr))},
                  {"owned_by", "sagellm"},
                  {"root", s.options_.model_path},
                  {"parent", nullptr},
                  {"max_model_len", s.engine_->context_length()},
                  {"vocab_size", s.engine_->config().vocab_size}};
    send_json(res, 200, {{"object", "list"}, {"data", json::array({std::move(model)})}});
  }

  static void tokenize(ApiServer& s, const httplib::Request& req, httplib::Response& res) {
    const TokenizeApiRequest r = parse_tokenize_request(req.body);
    require_ready(s);
    const Tokenizer& tok = s.engine_->tokenizer();
    std::vector<int32_t> ids;
    if (r.prompt) {
      ids = tok.encode(*r.prompt, r.add_special_tokens);
    } else {
      ids = chat_prompt(tok, r.messages);
    }
    send_json(
        res, 200,
        {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", s.engine_->context_length()}});
  }

  static void detokenize(ApiServer& s, const httplib::Request& req, httplib::Response& res) {
    const std::vector<int32_t> ids = parse_detokenize_request(req.body);
    require_ready(s);
    const int vocab = s.engine_->tokenizer().vocab_size();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] >= vocab) {
        throw ApiError(
            400, fmt::format("tokens[{}] = {} is outside the vocabulary [0, {})", i, ids[i], vocab),
            "tokens");
      }
    }
    send_json(res, 200, {{"prompt", s.engine_->tokenizer().decode(ids)}});
  }

  // Runs a handler, answering every failure as an OpenAI error.
  template <typename F>
  static httplib::Server::Handler guarded(F f) {
    return [f](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const ApiError& e) {
        send_json(res, e.status(), error_json(e));
      } catch (const Error& e) {
        send_json(res, 400, error_json(ApiError(400, e.what())));
      } catch (const std::exception& e) {
        spdlog::error("server: {} {}: {}", req.method, req.path, e.what());
        send_json(res, 500, error_json(500, e.what(), "internal_error"));
      }
    };
  }

  static void install(ApiServer& s, httplib::Server& http) {
    http.set_pre_routing_handler([&s](const httplib::Request& req, httplib::Response& res) {
      if (s.options_.api_key.empty() || req.path == "/health" || req.path == "/metrics") {
        return httplib::Server::HandlerResponse::Unhandled;
      }
      if (req.get_header_value("Authorization") != "Bearer " + s.options_.api_key) {
        send_json(res, 401,
                  error_json(ApiError(401, "invalid or missing API key (Authorization: Bearer ...)",
                                      "", "invalid_request_error", "invalid_api_key")));
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.Post("/v1/completions", guarded([&s](const httplib::Request& q, httplib::Response& r) {
                generate(s, q, r, ApiKind::kCompletion);
              }));
    http.Post("/v1/chat/completions",
              guarded([&s](const httplib::Request& q, httplib::Response& r) {
                generate(s, q, r, ApiKind::kChat);
              }));
    http.Get("/v1/models",
             guarded([&s](const httplib::Request&, httplib::Response& r) { models(s, r); }));
    http.Post("/tokenize", guarded([&s](const httplib::Request& q, httplib::Response& r) {
                tokenize(s, q, r);
              }));
    http.Post("/detokenize", guarded([&s](const httplib::Request& q, httplib::Response& r) {
                detokenize(s, q, r);
              }));
    http.Get("/health", [&s](const httplib::Request&, httplib::Response& res) {
      if (s.ready()) {
        send_json(res, 200, json::object());
      } else {
        send_json(res, 503,
                  error_json(503,
                             s.state_.load() == State::kLoading ? "the model is still loading"
                                                                : "the server is shutting down",
                             "service_unavailable"));
      }
    });
    http.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
      std::optional<SchedulerStats> stats;
      if (s.state_.load() != State::kLoading) stats = s.scheduler_->stats();
      res.set_content(s.metrics_.render(stats ? &*stats : nullptr),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    // Statuses httplib sets itself (unknown path, body too large, bad request line) get an
    // OpenAI-shaped body too.
    http.set_error_handler([&s](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string message;
      switch (res.status) {
        case 404:
          message = fmt::format("no route for {} {}", req.method, req.path);
          break;
        case 413:
          message =
              fmt::format("the request body is larger than {} bytes", s.options_.max_request_bytes);
          break;
        default:
          message = fmt::format("HTTP {}", res.status);
      }
      const char* type = res.status == 404 ? "not_found_error" : "invalid_request_error";
      send_json(res, res.status, error_json(res.status, message, type));
    });
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, const std::exception_ptr& ep) {
          std::string what = "internal error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          send_json(res, 500, error_json(500, what, "internal_error"));
        });
    http.set_logger([&s](const httplib::Request& req, const httplib::Response& res) {
      if (res.status >= 400) s.metrics_.count_rejected();
      spdlog::debug("server: {} {} -> {}", req.method, req.path, res.status);
    });
  }
};

ApiServer::ApiServer(ServerOptions options) : options_(std::move(options)) {}

ApiServer::~ApiServer() { shutdown(std::chrono::milliseconds(0)); }

int ApiServer::listen() {
  SAGELLM_CHECK(http_ == nullptr, "the server is already listening");
  // A client that disconnects mid-response must not kill the process with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  auto http = std::make_unique<HttpServer>();
  HttpServer* raw = http.get();
  http_ = std::move(http);
  const int threads = options_.http_threads > 0 ? options_.http_threads
                                                : options_.scheduler.max_running_requests + 32;
  http_->new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  http_->set_payload_max_length(options_.max_request_bytes);
  http_->set_keep_alive_max_count(1000);
  http_->set_read_timeout(30);
  http_->set_write_timeout(30);
  Handlers::install(*this, *http_);
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
  } else {
    port_ = http_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0) {
    http_.reset();
    fail("cannot listen on {}:{} (is the address valid and the port free?)", options_.host,
         options_.port);
  }
  raw->widen_backlog();
  listener_ = std::thread([this] { http_->listen_after_bind(); });
  return port_;
}

void ApiServer::attach(Engine& engine) {
  SAGELLM_CHECK(engine.has_tokenizer(), "serving needs the model's tokenizer.json");
  engine_ = &engine;
  scheduler_ = std::make_unique<Scheduler>(engine, options_.scheduler);
  scheduler_->start();
  state_ = State::kReady;
}

void ApiServer::shutdown(std::chrono::milliseconds grace) {
  state_ = State::kStopping;
  if (scheduler_) scheduler_->shutdown(grace);
  // Every request has ended; give the streams a moment to write their final events (a client
  // that stopped reading is cut off after it).
  open_streams_.wait_closed(std::chrono::steady_clock::now() + kStreamDrainTimeout);
  if (http_) http_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace sagellm::server
