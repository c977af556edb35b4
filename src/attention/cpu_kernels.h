// The inner loops of the CPU backends, written with GCC/Clang vector extensions so that they run
// at SIMD width with a result defined element by element: lane-wise vector arithmetic is IEEE
// per element, with no reassociation and no fused multiply-add (not enabled for the baseline
// ISA), so results are the same on every x86-64 and for every thread count.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace sagellm::attention_cpu {

using Vec4 = float __attribute__((vector_size(16)));
using Vec4i = int32_t __attribute__((vector_size(16)));
using Vec4u = uint32_t __attribute__((vector_size(16)));

inline constexpr int kTileRows = 4;  // rows of `a` (and c) per register block; callers pad to it
inline constexpr int kTileCols = 8;  // columns of `b` (and c) per register block; callers pad to it

inline Vec4 load4(const float* p) {
  Vec4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store4(float* p, Vec4 v) { std::memcpy(p, &v, sizeof v); }

inline Vec4 splat4(float x) { return Vec4{x, x, x, x}; }

// c[r][j] = (((0 + a[r][0] * b[0][j]) + a[r][1] * b[1][j]) + ...): every element summed in plain
// sequential order of `depth`. Serves both scores (a = Q tile [rows][head_dim], b = K page
// transposed [head_dim][keys]) and the per-page P.V partial (a = P [rows][keys],
// b = V page [keys][head_dim]). rows % kTileRows == 0, cols % kTileCols == 0.
inline void matmul_sequential(const float* __restrict a, int lda, const float* __restrict b,
                              int ldb, int depth, float* __restrict c, int ldc, int rows,
                              int cols) {
  for (int r = 0; r < rows; r += kTileRows) {
    const float* a0 = a + static_cast<long>(r) * lda;
    const float* a1 = a0 + lda;
    const float* a2 = a1 + lda;
    const float* a3 = a2 + lda;
    for (int j = 0; j < cols; j += kTileCols) {
      Vec4 c0 = {}, c1 = {}, c2 = {}, c3 = {}, c4 = {}, c5 = {}, c6 = {}, c7 = {};
      const float* bj = b + j;
      for (int d = 0; d < depth; ++d) {
        const Vec4 bl = load4(bj + static_cast<long>(d) * ldb);
        const Vec4 bh = load4(bj + static_cast<long>(d) * ldb + 4);
        const float x0 = a0[d], x1 = a1[d], x2 = a2[d], x3 = a3[d];
        c0 += x0 * bl;
        c1 += x0 * bh;
        c2 += x1 * bl;
        c3 += x1 * bh;
        c4 += x2 * bl;
        c5 += x2 * bh;
        c6 += x3 * bl;
        c7 += x3 * bh;
      }
      float* cr = c + static_cast<long>(r) * ldc + j;
      store4(cr, c0);
      store4(cr + 4, c1);
      store4(cr + ldc, c2);
      store4(cr + ldc + 4, c3);
      store4(cr + 2L * ldc, c4);
      store4(cr + 2L * ldc + 4, c5);
      store4(cr + 3L * ldc, c6);
      store4(cr + 3L * ldc + 4, c7);
    }
  }
}

// 2^x for x <= 0 (and -inf), lane-wise: x = n + f with n = round(x), f in [-1/2, 1/2];
// 2^f by its degree-7 Taylor polynomial (truncation error < 6e-9, below fp32's half ulp), times
// 2^n through the exponent bits. Results below 2^-126 are flushed to 0 (as the GPU's
// ex2.approx.ftz). Accurate to about 2 ulp; deterministic.
inline Vec4 exp2_nonpositive(Vec4 x) {
  const Vec4 lo = splat4(-127.0f), hi = {};
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Vec4 magic = splat4(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer (RNE)
  const Vec4 n = (x + magic) - magic;
  const Vec4 f = x - n;  // exact
  Vec4 p = splat4(1.525273380405984e-05f);
  p = p * f + 1.5403530393381606e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.618129107628477e-03f;
  p = p * f + 5.550410866482158e-02f;
  p = p * f + 2.402265069591007e-01f;
  p = p * f + 6.931471805599453e-01f;
  p = p * f + 1.0f;
  const Vec4i e = (__builtin_convertvector(n, Vec4i) + 127) << 23;  // n = -127 gives 0.0
  Vec4 scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

inline float exp2_nonpositive(float x) { return exp2_nonpositive(splat4(x))[0]; }

// Lane j of {j0, j0+1, j0+2, j0+3} < limit.
inline Vec4i lanes_below(int j0, int limit) {
  const Vec4i idx = Vec4i{0, 1, 2, 3} + j0;
  return idx < limit;
}

// One row, one page of the online softmax (scores already in base 2). Keys j < visible are
// visible (visible >= 1); columns visible .. n8-1 get p = 0. With m the running max and l the
// running denominator: m_new = max(m, max_j s_j), alpha = exp2(m - m_new), P_j = exp2(s_j -
// m_new), p_j = round_p(P_j) (the value that multiplies V), l = l * alpha + the page's sum of
// sum_term(P_j, p_j), summed in four interleaved lanes (j mod 4) combined as (l0 + l1) + (l2 + l3).
// Returns alpha.
template <class RoundP, class SumTerm>
inline float softmax_page_row(const float* s, int visible, int n8, float& m, float& l, float* p,
                              RoundP round_p, SumTerm sum_term) {
  const Vec4 neg_inf = splat4(-std::numeric_limits<float>::infinity());
  Vec4 mx = neg_inf;
  for (int j = 0; j < visible; j += 4) {
    const Vec4 sv = load4(s + j);
    const Vec4 masked = lanes_below(j, visible) ? sv : neg_inf;
    mx = masked > mx ? masked : mx;
  }
  float page_max = mx[0];
  for (int k = 1; k < 4; ++k) page_max = mx[k] > page_max ? mx[k] : page_max;
  const float m_new = m > page_max ? m : page_max;
  const float alpha = exp2_nonpositive(m - m_new);
  m = m_new;
  const Vec4 mv = splat4(m_new);
  const Vec4 zero = {};
  Vec4 sum = {};
  int j = 0;
  for (; j < visible; j += 4) {
    const Vec4i live = lanes_below(j, visible);
    const Vec4 pe = exp2_nonpositive(load4(s + j) - mv);
    const Vec4 pq = live ? round_p(pe) : zero;
    sum += live ? sum_term(pe, pq) : zero;
    store4(p + j, pq);
  }
  for (; j < n8; j += 4) store4(p + j, zero);
  l = l * alpha + ((sum[0] + sum[1]) + (sum[2] + sum[3]));
  return alpha;
}

}  // namespace sagellm::attention_cpu
