// Loopback helpers for the server tests: a server on an ephemeral port over a stories260K engine,
// plain and streaming HTTP calls, and a chat-capable copy of stories260K.
#pragma once

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fixtures.h"
#include "engine/engine.h"
#include "server/server.h"

namespace sagellm::testing {

using json = nlohmann::json;

inline EngineOptions engine_options(const std::filesystem::path& model, int page_size = 16,
                                    int64_t kv_tokens = 0) {
  EngineOptions o;
  o.model_dir = model;
  o.page_size = page_size;
  o.kv_cache_tokens = kv_tokens;
  return o;
}

// An engine and a server attached to it, listening on 127.0.0.1 at a free port.
struct LiveServer {
  explicit LiveServer(const EngineOptions& eo, server::ServerOptions so = {})
      : engine(std::make_unique<Engine>(eo)) {
    so.host = "127.0.0.1";
    so.port = 0;
    if (so.served_model_name.empty()) so.served_model_name = "stories";
    so.model_path = eo.model_dir.string();
    srv = std::make_unique<server::ApiServer>(so);
    port = srv->listen();
    srv->attach(*engine);
  }
  ~LiveServer() { srv->shutdown(std::chrono::milliseconds(0)); }
  std::unique_ptr<Engine> engine;
  std::unique_ptr<server::ApiServer> srv;
  int port = 0;
};

struct HttpReply {
  int status = -1;  // -1: no response
  std::string body;
  json j;  // parsed body (discarded when not JSON)
};

inline HttpReply to_reply(const httplib::Result& r) {
  HttpReply out;
  if (!r) return out;
  out.status = r->status;
  out.body = r->body;
  out.j = json::parse(r->body, nullptr, false);
  return out;
}

inline HttpReply http_post(int port, const std::string& path, const std::string& body,
                           const httplib::Headers& headers = {}) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120);
  return to_reply(cli.Post(path.c_str(), headers, body, "application/json"));
}

inline HttpReply http_get(int port, const std::string& path, const httplib::Headers& headers = {}) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120);
  return to_reply(cli.Get(path.c_str(), headers));
}

// A streamed response split into its SSE events.
struct SseReply {
  int status = -1;
  std::string error;         // the client's error when there was no response
  std::vector<json> events;  // the data: payloads before [DONE]
  bool done = false;         // data: [DONE] arrived last
  bool malformed = false;    // a line that is neither data:, a comment nor blank
  std::string raw;

  std::string text() const {
    std::string t;
    for (const json& e : events) {
      if (!e.contains("choices") || e["choices"].empty()) continue;
      const json& c = e["choices"][0];
      if (c.contains("text")) t += c["text"].get<std::string>();
      if (c.contains("delta") && c["delta"].contains("content")) {
        t += c["delta"]["content"].get<std::string>();
      }
    }
    return t;
  }
  const json& last() const { return events.back(); }
};

inline SseReply http_stream(int port, const std::string& path, const json& body) {
  SseReply out;
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120);
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.headers = {{"Content-Type", "application/json"}};
  req.body = body.dump();
  std::string pending;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    out.raw.append(data, len);
    pending.append(data, len);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind(":", 0) == 0) continue;  // comment (keep-alive)
      if (event.rfind("data: ", 0) != 0 || out.done) {
        out.malformed = true;
        continue;
      }
      const std::string data = event.substr(6);
      if (data == "[DONE]") {
        out.done = true;
        continue;
      }
      json j = json::parse(data, nullptr, false);
      if (j.is_discarded()) out.malformed = true;
      out.events.push_back(std::move(j));
    }
    return true;
  };
  auto r = cli.send(req);
  if (r) {
    out.status = r->status;
  } else {
    out.error = httplib::to_string(r.error());
  }
  if (!pending.empty()) out.malformed = true;
  return out;
}

// A raw connection, for clients that go away mid-response.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawClient() { close(); }
  bool connected() const { return connected_; }
  void send_post(const std::string& path, const std::string& body) {
    const std::string req =
        "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\n\r\n" + body;
    (void)!::send(fd_, req.data(), req.size(), MSG_NOSIGNAL);
  }
  // Reads until `needle` has been seen `count` times or the peer closes.
  std::string read_until(const std::string& needle, int count) {
    std::string got;
    char buf[4096];
    while (true) {
      int seen = 0;
      for (size_t p = got.find(needle); p != std::string::npos; p = got.find(needle, p + 1)) ++seen;
      if (seen >= count) break;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

// stories260K with a tokenizer.json whose BOS/EOS vocabulary entries are spelled "<s>"/"</s>"
// (the original spells them "\n<s>\n", so its chat template's "<s>" becomes a new added id that
// the model does not have). Weights and config are linked, not copied.
inline std::filesystem::path chat_model_dir() {
  namespace fs = std::filesystem;
  const fs::path src = model_dir("stories260K");
  const fs::path dir =
      fs::temp_directory_path() / ("sagellm_chat_model_" + std::to_string(getpid()));
  if (fs::exists(dir / "tokenizer.json")) return dir;
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer_config.json"}) {
    fs::create_symlink(src / f, dir / f);
  }
  std::ifstream in(src / "tokenizer.json");
  json t = json::parse(in);
  json& vocab = t["model"]["vocab"];
  vocab["<s>"] = vocab["\n<s>\n"];
  vocab["</s>"] = vocab["\n</s>\n"];
  vocab.erase("\n<s>\n");
  vocab.erase("\n</s>\n");
  std::ofstream(dir / "tokenizer.json") << t.dump();
  return dir;
}

// Polls `cond` for up to `seconds`.
template <typename F>
bool eventually(F cond, double seconds = 10.0) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

}  // namespace sagellm::testing
