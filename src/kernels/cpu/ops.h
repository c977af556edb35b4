// CPU twins of the non-attention kernels (float32). The CUDA kernels are tested against these.
#pragma once

#include <cstdint>
#include <span>

namespace sagellm::cpu {

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, rows of `dim`.
void rmsnorm(const float* x, const float* weight, float* out, int rows, int dim, float eps);

// out[t][i] = silu(gate_up[t][i]) * gate_up[t][inter + i]; gate_up rows are [gate | up].
void silu_mul(const float* gate_up, float* out, int rows, int inter);

// C[m][n] = sum_k A[m][k] * W[n][k] (+ C when accumulate): a Linear layer with HF's [out, in]
// weight layout, through OpenBLAS sgemm.
void linear(const float* a, const float* w, float* c, int m, int n, int k, bool accumulate = false);

// Rows of embeddings for token ids; ids are validated by the caller.
void embedding(const float* table, std::span<const int32_t> ids, float* out, int dim);

}  // namespace sagellm::cpu
