// The one table of attention backends: a new backend is one folder and one line here.
#include <array>

#include "attention/backend.h"
#include "attention/flash/flash_backend.h"
#include "attention/sage/sage_backend.h"
#include "core/error.h"

namespace sagellm {

namespace {

struct BackendEntry {
  std::string_view name;
  std::unique_ptr<AttentionBackend> (*make)(const AttentionOptions&);
};

std::unique_ptr<AttentionBackend> make_sage_default(const AttentionOptions& options) {
  return make_sage_backend(options);
}

// The default backend first.
constexpr std::array<BackendEntry, 2> kBackends = {{
    {"flash", &make_flash_backend},
    {"sage_attn", &make_sage_default},
}};

}  // namespace

std::vector<std::string> attention_backend_names() {
  std::vector<std::string> names;
  names.reserve(std::size(kBackends));
  for (const BackendEntry& e : kBackends) names.emplace_back(e.name);
  return names;
}

std::unique_ptr<AttentionBackend> make_attention_backend(std::string_view name,
                                                         const AttentionOptions& options) {
  // Checked for every backend so that a typo is reported even where the option is unused.
  SAGELLM_CHECK(options.sage_pv_dtype == "fp8" || options.sage_pv_dtype == "int8" ||
                    options.sage_pv_dtype == "fp16",
                "unknown --sage-pv-dtype '{}' (choose one of: fp8, int8, fp16)",
                options.sage_pv_dtype);
  for (const BackendEntry& e : kBackends) {
    if (e.name == name) return e.make(options);
  }
  std::string choices;
  for (const BackendEntry& e : kBackends) {
    if (!choices.empty()) choices += ", ";
    choices += e.name;
  }
  fail("unknown attention backend '{}' (choose one of: {})", name, choices);
}

}  // namespace sagellm
