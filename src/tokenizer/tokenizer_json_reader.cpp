#include "tokenizer/tokenizer_json_reader.h"

#include <limits>

#include "core/error.h"

namespace sagellm {

namespace {

using nlohmann::json;

class Handler final : public nlohmann::json_sax<json> {
 public:
  Handler(TokenizerJson& out, const std::string& file) : out_(out), file_(file) {}

  bool null() override { return value(json()); }
  bool boolean(bool v) override { return value(json(v)); }
  bool number_integer(number_integer_t v) override {
    if (mode_ == Mode::kVocab) return vocab_id(v);
    return value(json(v));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == Mode::kVocab) {
      if (v > static_cast<number_unsigned_t>(std::numeric_limits<int64_t>::max())) {
        fail("{}: model.vocab.{}: id {} is out of range", file_, token_, v);
      }
      return vocab_id(static_cast<int64_t>(v));
    }
    return value(json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return value(json(v)); }
  bool binary(binary_t& v) override { return value(json(v)); }

  bool string(string_t& s) override {
    if (mode_ == Mode::kMerges) {
      if (!in_pair_) {
        out_.merges.push_back({std::move(s), {}, true});
      } else if (pair_size_ < 2) {
        (pair_size_ == 0 ? pair_.first : pair_.second) = std::move(s);
        ++pair_size_;
      } else {
        bad_merge();
      }
      return true;
    }
    return value(json(std::move(s)));
  }

  bool start_object(std::size_t) override {
    if (pending_ == Mode::kVocab) {
      pending_ = Mode::kDom;
      mode_ = Mode::kVocab;
      out_.vocab.clear();  // a repeated key replaces the earlier value, as in a DOM
      return true;
    }
    if (mode_ != Mode::kDom) return unexpected();
    const bool is_model = stack_.size() == 1 && keys_.back() == "model";
    push(value_ref(json::object()));
    if (is_model) model_depth_ = stack_.size();
    return true;
  }

  bool key(string_t& k) override {
    if (mode_ == Mode::kVocab) {
      token_ = std::move(k);
      return true;
    }
    if (mode_ != Mode::kDom) return unexpected();
    if (model_depth_ != 0 && stack_.size() == model_depth_) {
      pending_ = k == "vocab" ? Mode::kVocab : k == "merges" ? Mode::kMerges : Mode::kDom;
    }
    keys_.back() = std::move(k);
    return true;
  }

  bool end_object() override {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kDom;
      out_.has_vocab = true;
      return true;
    }
    if (mode_ != Mode::kDom) return unexpected();
    if (stack_.size() == model_depth_) model_depth_ = 0;
    pop();
    return true;
  }

  bool start_array(std::size_t) override {
    if (pending_ == Mode::kMerges) {
      pending_ = Mode::kDom;
      mode_ = Mode::kMerges;
      out_.merges.clear();
      return true;
    }
    if (mode_ == Mode::kMerges) {
      if (in_pair_) bad_merge();
      in_pair_ = true;
      pair_size_ = 0;
      pair_ = {};
      return true;
    }
    if (mode_ != Mode::kDom) return unexpected();
    push(value_ref(json::array()));
    return true;
  }

  bool end_array() override {
    if (mode_ == Mode::kMerges) {
      if (in_pair_) {
        if (pair_size_ != 2) bad_merge();
        out_.merges.push_back(std::move(pair_));
        in_pair_ = false;
      } else {
        mode_ = Mode::kDom;
        out_.has_merges = true;
      }
      return true;
    }
    pop();
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    fail("{}: malformed JSON: {}", file_, e.what());
  }

 private:
  enum class Mode { kDom, kVocab, kMerges };

  bool value(json v) {
    if (mode_ != Mode::kDom) return unexpected();
    value_ref(std::move(v));
    return true;
  }

  // Stores v where the parser is (root, array element or object member) and returns it.
  json* value_ref(json v) {
    pending_ = Mode::kDom;
    if (stack_.empty()) {
      out_.root = std::move(v);
      return &out_.root;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      top.push_back(std::move(v));
      return &top.back();
    }
    json& slot = top[keys_.back()];
    slot = std::move(v);
    return &slot;
  }

  // Containers on the stack stay put: only the innermost one grows while it is open.
  void push(json* container) {
    stack_.push_back(container);
    keys_.emplace_back();
  }
  void pop() {
    stack_.pop_back();
    keys_.pop_back();
  }

  bool vocab_id(int64_t id) {
    out_.vocab.emplace_back(std::move(token_), id);
    return true;
  }

  [[noreturn]] bool unexpected() {
    if (mode_ == Mode::kVocab) fail("{}: model.vocab.{}: expected an integer", file_, token_);
    bad_merge();
  }
  [[noreturn]] void bad_merge() {
    fail("{}: model.merges[{}]: expected \"a b\" or [\"a\", \"b\"]", file_, out_.merges.size());
  }

  TokenizerJson& out_;
  const std::string& file_;
  std::vector<json*> stack_;
  std::vector<std::string> keys_;  // the current member name of each open object
  size_t model_depth_ = 0;         // stack depth inside the top-level "model" object, 0 outside
  Mode pending_ = Mode::kDom;      // a "vocab"/"merges" key of the model was just read
  Mode mode_ = Mode::kDom;
  std::string token_;  // current vocab key
  bool in_pair_ = false;
  int pair_size_ = 0;
  TokenizerJson::Merge pair_;
};

}  // namespace

TokenizerJson read_tokenizer_json(const std::string& text, const std::string& file) {
  TokenizerJson out;
  Handler handler(out, file);
  json::sax_parse(text, &handler);
  return out;
}

}  // namespace sagellm
