#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <cmath>
#include <cstring>

namespace sagellm::cpu {

void rmsnorm(const float* x, const float* weight, float* out, int rows, int dim, float eps) {
#pragma omp parallel for schedule(static) if (rows > 16)
  for (int t = 0; t < rows; ++t) {
    const float* xr = x + static_cast<size_t>(t) * dim;
    float* o = out + static_cast<size_t>(t) * dim;
    float ss = 0.0f;
    for (int i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int i = 0; i < dim; ++i) o[i] = weight[i] * (xr[i] * inv);
  }
}

void silu_mul(const float* gate_up, float* out, int rows, int inter) {
#pragma omp parallel for schedule(static) if (rows > 16)
  for (int t = 0; t < rows; ++t) {
    const float* g = gate_up + static_cast<size_t>(t) * 2 * inter;
    const float* u = g + inter;
    float* o = out + static_cast<size_t>(t) * inter;
    for (int i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void linear(const float* a, const float* w, float* c, int m, int n, int k, bool accumulate) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, w, k,
              accumulate ? 1.0f : 0.0f, c, n);
}

void embedding(const float* table, std::span<const int32_t> ids, float* out, int dim) {
  for (size_t t = 0; t < ids.size(); ++t) {
    std::memcpy(out + t * dim, table + static_cast<size_t>(ids[t]) * dim, sizeof(float) * dim);
  }
}

}  // namespace sagellm::cpu
