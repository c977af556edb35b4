// sagellm tokenize: text → token ids (or ids → text with --decode) with a model's tokenizer.json.
//   --text T | --file F        one text              → {"ids": [...]}
//   --jsonl F                  one JSON string a line → one JSON array of ids a line
//   --decode --ids 1,2,3       ids                    → {"text": "..."}
//   --decode --jsonl F         one JSON id array a line → one JSON string a line
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace sagellm::cli {

namespace {

struct TokenizeArgs {
  std::string model_dir;
  std::string tokenizer_file;
  std::string text;
  std::string file;
  std::string jsonl;
  std::vector<int64_t> ids;
  bool add_special_tokens = false;
  bool decode = false;
  bool skip_special_tokens = false;
  bool json = false;  // the output is JSON either way; accepted like every other subcommand
  CLI::Option* text_option = nullptr;
  CLI::Option* ids_option = nullptr;
};

std::string read_all(const std::string& path, std::string_view what) {
  std::ifstream f(path, std::ios::binary);
  SAGELLM_CHECK(f.good(), "cannot read {} {}", what, path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<int32_t> to_ids(const std::vector<int64_t>& values) {
  std::vector<int32_t> ids;
  ids.reserve(values.size());
  for (int64_t v : values) {
    SAGELLM_CHECK(v >= 0 && v <= INT32_MAX, "token id {} is out of range", v);
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

void write_line(const std::string& line) {
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
}

// Each non-empty line of `path` parsed as JSON and handed to `fn` with its 1-based number.
template <typename Fn>
void for_each_jsonl(const std::string& path, Fn fn) {
  const std::string data = read_all(path, "--jsonl file");
  size_t start = 0, line_no = 0;
  while (start < data.size()) {
    size_t end = data.find('\n', start);
    if (end == std::string::npos) end = data.size();
    ++line_no;
    const std::string_view line(data.data() + start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      fail("{} line {}: empty line", path, line_no);
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail("{} line {}: malformed JSON: {}", path, line_no, e.what());
    }
    fn(j, line_no);
  }
}

int run_tokenize(const TokenizeArgs& a) {
  SAGELLM_CHECK(a.model_dir.empty() != a.tokenizer_file.empty(),
                "give exactly one of --model DIR and --tokenizer FILE");
  const Tokenizer tok = a.model_dir.empty() ? Tokenizer::from_file(a.tokenizer_file)
                                            : Tokenizer::from_model_dir(a.model_dir);
  const bool has_text = a.text_option->count() > 0;
  const bool has_ids = a.ids_option->count() > 0;
  const int inputs = int{has_text} + int{!a.file.empty()} + int{!a.jsonl.empty()} + int{has_ids};
  SAGELLM_CHECK(inputs == 1, "give exactly one of --text, --file, --jsonl and --ids");

  if (a.decode) {
    SAGELLM_CHECK(has_ids || !a.jsonl.empty(), "--decode takes --ids 1,2,3 or --jsonl FILE");
    if (has_ids) {
      const std::string text = tok.decode(to_ids(a.ids), a.skip_special_tokens);
      write_line(nlohmann::json{{"text", text}}.dump());
      return 0;
    }
    std::string out;
    for_each_jsonl(a.jsonl, [&](const nlohmann::json& j, size_t line_no) {
      SAGELLM_CHECK(j.is_array(), "{} line {}: expected a JSON array of ids", a.jsonl, line_no);
      std::vector<int64_t> values;
      for (const auto& v : j) {
        SAGELLM_CHECK(v.is_number_integer(), "{} line {}: ids must be integers", a.jsonl, line_no);
        values.push_back(v.get<int64_t>());
      }
      out += nlohmann::json(tok.decode(to_ids(values), a.skip_special_tokens)).dump();
      out += '\n';
    });
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  }

  SAGELLM_CHECK(!has_ids, "--ids needs --decode");
  if (!a.jsonl.empty()) {
    std::string out;
    for_each_jsonl(a.jsonl, [&](const nlohmann::json& j, size_t line_no) {
      SAGELLM_CHECK(j.is_string(), "{} line {}: expected a JSON string", a.jsonl, line_no);
      out +=
          nlohmann::json(tok.encode(j.get_ref<const std::string&>(), a.add_special_tokens)).dump();
      out += '\n';
    });
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  }
  const std::string text = has_text ? a.text : read_all(a.file, "--file");
  write_line(nlohmann::json{{"ids", tok.encode(text, a.add_special_tokens)}}.dump());
  return 0;
}

}  // namespace

Action add_tokenize(CLI::App& root) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* app = root.add_subcommand(
      "tokenize",
      "Text to token ids as JSON (or ids to text with --decode), as HF tokenizers does");
  auto* model = app->add_option("--model", args->model_dir, "Model directory with tokenizer.json");
  app->add_option("--tokenizer", args->tokenizer_file, "A tokenizer.json file")->excludes(model);
  args->text_option = app->add_option("--text", args->text, "Text to tokenize");
  app->add_option("--file", args->file, "Tokenize the whole content of this file as one text");
  app->add_option("--jsonl", args->jsonl,
                  "Batch: each line a JSON string (or, with --decode, a JSON array of ids); "
                  "prints one JSON result per line");
  args->ids_option =
      app->add_option("--ids", args->ids, "Token ids to decode, comma separated")->delimiter(',');
  app->add_flag("--add-special-tokens", args->add_special_tokens,
                "Add the post-processor's tokens (BOS for Llama models)");
  app->add_flag("--decode", args->decode, "Decode ids to text instead");
  app->add_flag("--skip-special-tokens", args->skip_special_tokens,
                "With --decode: leave special tokens out of the text");
  app->add_flag("--json", args->json, "JSON output (always on)");
  return [args] { return run_tokenize(*args); };
}

}  // namespace sagellm::cli
