// Kernel-level accuracy of an attention backend: exact attention in fp64 on the same inputs the
// kernel saw, and DESIGN.md's metrics (cosine, relative L1, RMSE). The reference can be restricted
// to a sample of (request, token, head) rows, because fp64 attention over a long prefill costs as
// much as the kernel being measured, without its speed.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "attention/backend.h"

namespace sagellm::eval {

// One request as the reference reads it: dense K and V, [kv_len][num_kv_heads * head_dim], and
// its q rows starting at q_start of the batch's q ([rows][num_heads * head_dim]).
struct ReferenceRequest {
  int q_start = 0;
  int q_len = 0;
  int kv_len = 0;
  std::span<const float> k;
  std::span<const float> v;
};

// One output row of the reference: new token `token` of request `request`, query head `head`.
struct AttentionRow {
  int request = 0;
  int token = 0;
  int head = 0;
};

// All rows of the requests, or `max_rows` of them chosen uniformly at random (seeded, without
// repetition) when there are more; sorted in (request, token, head) order. max_rows <= 0: all.
std::vector<AttentionRow> select_attention_rows(std::span<const ReferenceRequest> requests,
                                                int num_heads, int64_t max_rows, uint64_t seed);

// softmax(q k^T * sm_scale) v in fp64 for each row, [rows.size()][head_dim]; causal masks aligned
// bottom-right as in attention/backend.h. Throws sagellm::Error on a row or shape the requests
// do not have.
std::vector<double> reference_attention(const AttentionShape& shape, bool causal,
                                        std::span<const float> q,
                                        std::span<const ReferenceRequest> requests,
                                        std::span<const AttentionRow> rows);

// The rows' values of a kernel output laid out like q ([rows][num_heads * head_dim]), in the
// order reference_attention returns them.
std::vector<float> gather_attention_rows(const AttentionShape& shape, std::span<const float> out,
                                         std::span<const ReferenceRequest> requests,
                                         std::span<const AttentionRow> rows);

struct AccuracyMetrics {
  double cosine = 0.0;  // sum(o o') / sqrt(sum(o^2) sum(o'^2))
  double rel_l1 = 0.0;  // sum|o - o'| / sum|o'|
  double rmse = 0.0;    // sqrt(mean (o - o')^2)
  double max_abs_error = 0.0;
  int64_t values = 0;
  int64_t non_finite = 0;  // outputs that are NaN or infinite (they poison the sums above)
};

// `out` against `reference`, element by element; the two must have the same length.
AccuracyMetrics compare_to_reference(std::span<const float> out, std::span<const double> reference);

}  // namespace sagellm::eval
