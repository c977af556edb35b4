#include "server/bench_serving.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <mutex>
#include <random>
#include <semaphore>
#include <thread>

#include "core/error.h"

namespace sagellm::server {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Prompt {
  json prompt;  // text or token ids
  int input_len = 0;
  int output_len = 0;
};

struct Record {
  bool ok = false;
  std::string error;
  int input_len = 0;
  int output_len = 0;
  double ttft = 0, e2e = 0;
  std::vector<double> itl;
};

httplib::Headers headers(const BenchServingOptions& o) {
  httplib::Headers h;
  if (!o.api_key.empty()) h.emplace("Authorization", "Bearer " + o.api_key);
  return h;
}

json server_model(const BenchServingOptions& o) {
  httplib::Client cli(o.host, o.port);
  cli.set_connection_timeout(10);
  auto res = cli.Get("/v1/models", headers(o));
  SAGELLM_CHECK(res, "cannot reach the server at {}:{} ({})", o.host, o.port,
                httplib::to_string(res.error()));
  SAGELLM_CHECK(res->status == 200, "GET /v1/models answered {}: {}", res->status, res->body);
  const json j = json::parse(res->body, nullptr, false);
  SAGELLM_CHECK(j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty(),
                "GET /v1/models returned no model");
  return j["data"][0];
}

std::vector<Prompt> make_prompts(const BenchServingOptions& o, int vocab, std::mt19937_64& rng) {
  auto length = [&](int len) {
    const int lo = std::max(1, static_cast<int>(std::floor(len * o.random_range_ratio)));
    return std::uniform_int_distribution<int>(std::min(lo, len), len)(rng);
  };
  std::vector<Prompt> prompts;
  if (!o.dataset_path.empty()) {
    std::ifstream f(o.dataset_path);
    SAGELLM_CHECK(f.good(), "cannot read --dataset-path {}", o.dataset_path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(f, line);) {
      if (!line.empty()) lines.push_back(line);
    }
    SAGELLM_CHECK(!lines.empty(), "--dataset-path {} holds no prompt", o.dataset_path);
    for (int i = 0; i < o.num_prompts; ++i) {
      prompts.push_back(
          {lines[static_cast<size_t>(i) % lines.size()], 0, length(o.random_output_len)});
    }
    return prompts;
  }
  SAGELLM_CHECK(vocab > 3, "random prompts need a vocabulary size (--vocab-size)");
  std::uniform_int_distribution<int> id(3, vocab - 1);
  for (int i = 0; i < o.num_prompts; ++i) {
    Prompt p;
    p.input_len = length(o.random_input_len);
    p.output_len = length(o.random_output_len);
    std::vector<int> ids(static_cast<size_t>(p.input_len));
    for (int& t : ids) t = id(rng);
    p.prompt = ids;
    prompts.push_back(std::move(p));
  }
  return prompts;
}

Record send_one(const BenchServingOptions& o, const std::string& model, const Prompt& p) {
  Record rec;
  rec.input_len = p.input_len;
  json body = {{"model", model},
               {"prompt", p.prompt},
               {"max_tokens", p.output_len},
               {"temperature", 0.0},
               {"stream", true},
               {"ignore_eos", true},
               {"stream_options", {{"include_usage", true}}}};
  httplib::Client cli(o.host, o.port);
  cli.set_connection_timeout(30);
  const auto timeout = static_cast<time_t>(o.timeout_seconds);
  cli.set_read_timeout(timeout);
  cli.set_write_timeout(timeout);

  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> last;
  std::string pending;
  bool done = false;
  std::string error;
  auto on_event = [&](std::string_view data) {
    if (data == "[DONE]") {
      done = true;
      return;
    }
    const json j = json::parse(data, nullptr, false);
    if (j.is_discarded()) {
      error = "malformed event: " + std::string(data.substr(0, 200));
      return;
    }
    if (j.contains("error")) {
      error = j["error"].value("message", "error event");
      return;
    }
    const Clock::time_point now = Clock::now();
    bool has_text = false;
    if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty()) {
      const json& c = j["choices"][0];
      has_text =
          c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty();
    }
    if (has_text) {
      if (!last) {
        rec.ttft = std::chrono::duration<double>(now - start).count();
      } else {
        rec.itl.push_back(std::chrono::duration<double>(now - *last).count());
      }
      last = now;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      rec.output_len = j["usage"].value("completion_tokens", 0);
      rec.input_len = j["usage"].value("prompt_tokens", rec.input_len);
    }
  };

  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = headers(o);
  req.headers.emplace("Content-Type", "application/json");
  req.body = body.dump();
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    pending.append(data, len);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos;) {
      std::string_view event(pending.data(), end);
      if (event.substr(0, 6) == "data: ") on_event(event.substr(6));
      pending.erase(0, end + 2);
    }
    return true;
  };
  auto res = cli.send(req);
  rec.e2e = std::chrono::duration<double>(Clock::now() - start).count();
  if (!res) {
    rec.error = "request failed: " + httplib::to_string(res.error());
  } else if (res->status != 200) {
    rec.error = fmt::format("HTTP {}: {}", res->status, pending.substr(0, 300));
  } else if (!error.empty()) {
    rec.error = error;
  } else if (!done) {
    rec.error = "the stream ended without [DONE]";
  } else {
    rec.ok = true;
  }
  return rec;
}

json summary(std::vector<double> v) {
  if (v.empty()) return {{"mean", 0.0}, {"median", 0.0}, {"p99", 0.0}};
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  auto quantile = [&](double q) {
    // Linear interpolation between closest ranks, as numpy.percentile does.
    const double pos = q * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
  };
  return {{"mean", sum / static_cast<double>(v.size())},
          {"median", quantile(0.5)},
          {"p99", quantile(0.99)}};
}

}  // namespace

json run_bench_serving(const BenchServingOptions& o,
                       const std::function<void(int, int)>& progress) {
  SAGELLM_CHECK(o.num_prompts >= 1, "--num-prompts must be >= 1 (got {})", o.num_prompts);
  SAGELLM_CHECK(o.request_rate > 0, "--request-rate must be > 0 (got {})", o.request_rate);
  SAGELLM_CHECK(o.max_concurrency >= 0, "--max-concurrency must be >= 0 (got {})",
                o.max_concurrency);
  SAGELLM_CHECK(o.random_input_len >= 1 && o.random_output_len >= 1,
                "--random-input-len and --random-output-len must be >= 1");
  SAGELLM_CHECK(o.random_range_ratio > 0 && o.random_range_ratio <= 1,
                "--random-range-ratio must be in (0, 1] (got {})", o.random_range_ratio);
  const json model_info = server_model(o);
  const std::string model = o.model.empty() ? model_info.value("id", "default") : o.model;
  const int vocab = o.vocab_size > 0 ? o.vocab_size : model_info.value("vocab_size", 0);
  std::mt19937_64 rng(o.seed);
  const std::vector<Prompt> prompts = make_prompts(o, vocab, rng);

  std::vector<Record> records(prompts.size());
  std::counting_semaphore<> slots(o.max_concurrency > 0 ? o.max_concurrency : 1 << 20);
  std::mutex progress_mu;
  int finished = 0;
  std::vector<std::thread> threads;
  std::exponential_distribution<double> gap(std::isfinite(o.request_rate) ? o.request_rate : 1.0);
  const Clock::time_point start = Clock::now();
  Clock::time_point next = start;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (std::isfinite(o.request_rate)) {
      std::this_thread::sleep_until(next);
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
    slots.acquire();
    threads.emplace_back([&, i] {
      records[i] = send_one(o, model, prompts[i]);
      slots.release();
      std::lock_guard lock(progress_mu);
      ++finished;
      if (progress) progress(finished, static_cast<int>(prompts.size()));
    });
  }
  for (std::thread& t : threads) t.join();
  const double duration = std::chrono::duration<double>(Clock::now() - start).count();

  int completed = 0;
  int64_t input_tokens = 0, output_tokens = 0;
  std::vector<double> ttft, tpot, itl, e2e;
  json errors = json::array();
  for (const Record& r : records) {
    if (!r.ok) {
      if (errors.size() < 10) errors.push_back(r.error);
      continue;
    }
    ++completed;
    input_tokens += r.input_len;
    output_tokens += r.output_len;
    ttft.push_back(r.ttft * 1e3);
    e2e.push_back(r.e2e * 1e3);
    if (r.output_len > 1) tpot.push_back((r.e2e - r.ttft) * 1e3 / (r.output_len - 1));
    for (double x : r.itl) itl.push_back(x * 1e3);
  }
  json out = {{"backend", "sagellm"},
              {"model", model},
              {"num_prompts", o.num_prompts},
              {"request_rate", std::isfinite(o.request_rate) ? json(o.request_rate) : json("inf")},
              {"max_concurrency", o.max_concurrency},
              {"dataset", o.dataset_path.empty() ? "random" : o.dataset_path},
              {"random_input_len", o.random_input_len},
              {"random_output_len", o.random_output_len},
              {"random_range_ratio", o.random_range_ratio},
              {"duration", duration},
              {"completed", completed},
              {"failed", static_cast<int>(records.size()) - completed},
              {"errors", errors},
              {"total_input_tokens", input_tokens},
              {"total_output_tokens", output_tokens},
              {"request_throughput", completed / duration},
              {"input_throughput", static_cast<double>(input_tokens) / duration},
              {"output_throughput", static_cast<double>(output_tokens) / duration}};
  for (const auto& [name, values] : {std::pair{"ttft", &ttft}, std::pair{"tpot", &tpot},
                                     std::pair{"itl", &itl}, std::pair{"e2e_latency", &e2e}}) {
    const json s = summary(*values);
    out[fmt::format("mean_{}_ms", name)] = s["mean"];
    out[fmt::format("median_{}_ms", name)] = s["median"];
    out[fmt::format("p99_{}_ms", name)] = s["p99"];
  }
  return out;
}

std::string format_bench_serving(const json& r) {
  std::string s;
  auto line = [&](const std::string& k, const json& v) {
    if (v.is_number_float()) {
      s += fmt::format("{:<40}{:>12.2f}\n", k, v.get<double>());
    } else {
      s += fmt::format("{:<40}{:>12}\n", k, v.dump());
    }
  };
  s += "============ Serving Benchmark Result ============\n";
  line("Successful requests:", r["completed"]);
  line("Failed requests:", r["failed"]);
  line("Benchmark duration (s):", r["duration"]);
  line("Total input tokens:", r["total_input_tokens"]);
  line("Total generated tokens:", r["total_output_tokens"]);
  line("Request throughput (req/s):", r["request_throughput"]);
  line("Input token throughput (tok/s):", r["input_throughput"]);
  line("Output token throughput (tok/s):", r["output_throughput"]);
  struct Section {
    const char *title, *key, *abbrev;
  };
  for (const Section& sec : {Section{"Time to First Token", "ttft", "TTFT"},
                             Section{"Time per Output Token (excl. 1st)", "tpot", "TPOT"},
                             Section{"Inter-token Latency", "itl", "ITL"},
                             Section{"End-to-End Latency", "e2e_latency", "E2E"}}) {
    s += fmt::format("{:-^50}\n", fmt::format(" {} ", sec.title));
    for (const auto& [stat, label] :
         {std::pair{"mean", "Mean"}, std::pair{"median", "Median"}, std::pair{"p99", "P99"}}) {
      line(fmt::format("{} {} (ms):", label, sec.abbrev),
           r[fmt::format("{}_{}_ms", stat, sec.key)]);
    }
  }
  if (!r["errors"].empty()) {
    s += "Errors (first ones):\n";
    for (const json& e : r["errors"]) s += "  " + e.get<std::string>() + "\n";
  }
  s += "==================================================\n";
  return s;
}

}  // namespace sagellm::server
