// The table of attention backends with GPU kernels (CUDA builds only); the CPU twins are in
// registry.cpp.
#include <array>

#include "attention/cuda_attention.h"
#include "attention/flash/flash_backend.h"
#include "attention/sage/sage_backend.h"
#include "core/error.h"

namespace sagellm {

namespace {

struct CudaBackendEntry {
  std::string_view name;
  std::unique_ptr<CudaAttention> (*make)(const AttentionOptions&);
};

std::unique_ptr<CudaAttention> make_flash(const AttentionOptions&) {
  return make_flash_cuda_attention();
}

constexpr std::array<CudaBackendEntry, 2> kCudaBackends = {{
    {"flash", &make_flash},
    {"sage_attn", &make_sage_cuda_attention},
}};

}  // namespace

std::unique_ptr<CudaAttention> make_cuda_attention(std::string_view name,
                                                   const AttentionOptions& options) {
  // Validates the name and the options exactly as the CPU registry does.
  (void)make_attention_backend(name, options);
  for (const CudaBackendEntry& e : kCudaBackends) {
    if (e.name == name) return e.make(options);
  }
  fail(
      "attention backend '{}' has no GPU kernels yet (use --device cpu, or --attention-backend "
      "flash on the GPU)",
      name);
}

}  // namespace sagellm
