#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/decoders.h"
#include "tokenizer/json_fields.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/post_processors.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/tokenizer_json_reader.h"
#include "tokenizer/utf8.h"

namespace sagellm {

namespace fs = std::filesystem;
using nlohmann::json;

struct Tokenizer::Impl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  AddedVocabulary added;
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
};

namespace {

std::string read_file(const fs::path& path, std::string_view what) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    fail("{} {} does not exist or is not a file", what, path.string());
  }
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f.good() && !f.eof()) fail("cannot read {} {}", what, path.string());
  return ss.str();
}

json parse_json(const std::string& text, const fs::path& path) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: malformed JSON: {}", path.string(), e.what());
  }
}

AddedToken added_token_of(const json& j, const std::string& where) {
  using namespace tokjson;
  object(j, where);
  AddedToken t;
  t.content = required_string(j, "content", where);
  integer_of(required(j, "id", where), child(where, "id"));
  t.special = bool_or(j, "special", false, where);
  t.single_word = bool_or(j, "single_word", false, where);
  t.lstrip = bool_or(j, "lstrip", false, where);
  t.rstrip = bool_or(j, "rstrip", false, where);
  t.normalized = bool_or(j, "normalized", !t.special, where);
  return t;
}

// Special tokens in tokenizer_config.json are either "text" or {"content": "text", ...}.
std::optional<std::string> config_token(const json& config, std::string_view key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const fs::path& tokenizer_json) {
  using namespace tokjson;
  const std::string file = tokenizer_json.string();
  TokenizerJson tables = read_tokenizer_json(read_file(tokenizer_json, "tokenizer file"), file);
  const json& root = tables.root;
  if (!root.is_object()) fail("{}: expected a JSON object at the top level", file);
  const std::string where = file + ": ";

  if (const json* v = optional(root, "version")) {
    if (!v->is_string() || v->get<std::string>() != "1.0") {
      fail("{}: unknown tokenizer version {} (expected \"1.0\")", file, v->dump());
    }
  }
  // Truncation and padding change what encode returns; refuse rather than ignore them.
  for (const char* key : {"truncation", "padding"}) {
    if (optional(root, key) != nullptr) {
      fail("{}: '{}' is not supported; set it to null", file, key);
    }
  }

  auto impl = std::make_unique<Impl>();
  const json* model = optional(root, "model");
  if (model == nullptr) fail("{}: missing field 'model'", file);
  const std::string mw = child(where, "model");
  object(*model, mw);
  const std::string type = optional_string(*model, "type", mw).value_or("BPE");
  if (type != "BPE") {
    fail("{}: model type '{}' is not supported (supported: BPE)", child(mw, "type"), type);
  }
  impl->model = BpeModel::from_json(*model, tables, mw);

  auto component = [&](const char* key) -> const json& {
    static const json null_json;
    const json* j = optional(root, key);
    return j != nullptr ? *j : null_json;
  };
  impl->normalizer = make_normalizer(component("normalizer"), child(where, "normalizer"));
  impl->pre_tokenizer =
      make_pre_tokenizer(component("pre_tokenizer"), child(where, "pre_tokenizer"));
  impl->post_processor =
      make_post_processor(component("post_processor"), child(where, "post_processor"));
  impl->decoder = make_decoder(component("decoder"), child(where, "decoder"));

  std::vector<AddedToken> added;
  if (const json* list = optional(root, "added_tokens")) {
    const std::string aw = child(where, "added_tokens");
    array_of(*list, aw);
    for (size_t i = 0; i < list->size(); ++i) {
      added.push_back(added_token_of((*list)[i], index(aw, i)));
    }
  }
  impl->added.add_tokens(added, *impl->model, impl->normalizer.get());

  Tokenizer tok(std::move(impl));
  // BOS is what add_special_tokens puts first; EOS falls back to the usual names when no
  // configuration says otherwise (from_model_dir reads it).
  if (tok.impl_->post_processor) {
    const auto lead = tok.impl_->post_processor->leading_ids();
    if (!lead.empty()) tok.impl_->bos = lead.front();
  }
  for (const char* name : {"<|eot_id|>", "<|end_of_text|>", "</s>", "<|endoftext|>"}) {
    if (auto id = tok.token_to_id(name)) tok.impl_->eos.push_back(*id);
  }
  return tok;
}

Tokenizer Tokenizer::from_model_dir(const fs::path& model_dir) {
  Tokenizer tok = from_file(model_dir / "tokenizer.json");
  json config = json::object();
  if (fs::exists(model_dir / "tokenizer_config.json")) {
    const fs::path p = model_dir / "tokenizer_config.json";
    config = parse_json(read_file(p, "tokenizer config"), p);
    if (!config.is_object()) fail("{}: expected a JSON object", p.string());
  }
  if (!tok.impl_->bos) {
    if (auto name = config_token(config, "bos_token")) tok.impl_->bos = tok.token_to_id(*name);
  }
  std::vector<int32_t> eos;
  const fs::path gen_path = model_dir / "generation_config.json";
  if (fs::exists(gen_path)) {
    const json gen = parse_json(read_file(gen_path, "generation config"), gen_path);
    auto it = gen.is_object() ? gen.find("eos_token_id") : gen.end();
    if (it != gen.end()) {
      const json ids = it->is_array() ? *it : json::array({*it});
      for (const json& id : ids) {
        if (!id.is_number_integer()) fail("{}: eos_token_id must be integers", gen_path.string());
        eos.push_back(id.get<int32_t>());
      }
    }
  }
  if (eos.empty()) {
    if (auto name = config_token(config, "eos_token")) {
      if (auto id = tok.token_to_id(*name)) eos.push_back(*id);
    }
  }
  if (!eos.empty()) tok.impl_->eos = std::move(eos);
  return tok;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (const size_t bad = utf8::first_invalid(text); bad != std::string_view::npos) {
    fail("cannot tokenize: the text is not valid UTF-8 (byte 0x{:02X} at offset {})",
         static_cast<unsigned char>(text[bad]), bad);
  }
  const Impl& m = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<PreToken> splits;
  for (TextPiece& piece : m.added.extract_and_normalize(text, m.normalizer.get())) {
    if (piece.id) {
      ids.push_back(*piece.id);
      continue;
    }
    splits.clear();
    splits.push_back({std::move(piece.text), piece.at_input_start});
    if (m.pre_tokenizer) m.pre_tokenizer->pre_tokenize(splits);
    for (const PreToken& s : splits) m.model->tokenize(s.text, ids);
  }
  if (m.post_processor) m.post_processor->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = m.added.id_to_token(id);
    if (t == nullptr) t = m.model->id_to_token(id);
    if (t == nullptr) {
      fail("cannot decode: token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1);
    }
    if (skip_special_tokens && m.added.is_special_content(*t)) continue;
    tokens.push_back(*t);
  }
  std::string text;
  if (m.decoder) {
    m.decoder->decode_chain(tokens);
    for (const std::string& t : tokens) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
  }
  return text;
}

bool Tokenizer::decode_is_open(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  if (!m.decoder || !m.decoder->groups_bytes()) return false;
  for (auto it = ids.rbegin(); it != ids.rend(); ++it) {
    const std::string* t = m.added.id_to_token(*it);
    if (t == nullptr) t = m.model->id_to_token(*it);
    if (t == nullptr) return false;  // decode() reports it
    // A skipped special token vanishes before the decoder: the run may go on across it.
    if (skip_special_tokens && m.added.is_special_content(*t)) continue;
    return byte_fallback_value(*t) >= 0;
  }
  return false;
}

int32_t Tokenizer::vocab_size() const {
  return std::max(impl_->model->max_id(), impl_->added.max_id()) + 1;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = impl_->added.token_to_id(token)) return id;
  return impl_->model->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  const std::string* t = impl_->added.id_to_token(id);
  if (t == nullptr) t = impl_->model->id_to_token(id);
  if (t == nullptr) fail("token id {} is outside the vocabulary (0..{})", id, vocab_size() - 1);
  return *t;
}

bool Tokenizer::is_special(int32_t id) const {
  const std::string* t = impl_->added.id_to_token(id);
  if (t == nullptr) t = impl_->model->id_to_token(id);
  return t != nullptr && impl_->added.is_special_content(*t);
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }

std::vector<int32_t> Tokenizer::eos_ids() const { return impl_->eos; }

}  // namespace sagellm
