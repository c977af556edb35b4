// The definition of one sampling draw as the GPU evaluates it (kernels/cuda/sampling.cu), in plain
// C++: this header is also read by code compiled without nvcc, so the CPU sampler shares its rank
// key and CPU tests run the kernel's own control flow (sample_row over a sequential Ops).
//
// What is drawn is defined by the CPU sampler (engine/sampling.cpp): candidates (NaN and -inf
// never; if any logit is +inf, exactly the +inf ones, in equal shares), ranked by one strict total
// order (rank_key: logit descending, id ascending), then temperature -> top-k -> top-p -> min-p,
// weights exp((logit - top) / T) in double relative to the top token, and an inverse-CDF draw
// with one uniform u in [0, 1). Each filter keeps the candidates ranked at or above some key, so
// every filter and the draw reduce to one question, answered without sorting: which is the first
// token in rank order at which the running count (top-k) or mass (top-p, draw) of the tokens still
// kept reaches a threshold? select_key answers it digit by digit (a radix select over the 64-bit
// key): a histogram of the count and mass per 8-bit digit, the bucket where the running measure
// reaches the threshold, then the next digit within that bucket, until one token is left.
//
// Masses are fixed point: a weight w in [0, 1] counts as floor(w * 2^63), and sums are exact
// 128-bit integers, so they do not depend on the order of additions (the kernel's integer atomics
// give the same bits on every run), and the thresholds are exact: ceil(top_p * total) and
// floor(u * total) + 1, from the float top_p and the double u as they are. Truncation moves a
// weight by less than 2^-63, so a running mass moves by less than vocab * 2^-63 <= 2^24 * 2^-63
// = 2^-39 (1.8e-12) of the top token's weight, and so of the total (which is at least that weight,
// 1). The CPU's double sums carry rounding errors of the same order (1e-16 of the total per
// addition, ~1e-13 in all for typical rows), and the device's exp may differ from the host's by an
// ulp (1.1e-16 relative). So the GPU draws the CPU's token unless u * total (or top_p * total)
// lies within about 1e-12 of the total of the running mass at a token boundary, or a weight lies
// within an ulp of min_p: for a uniform u, a chance of about (candidates) * 1e-12 per draw at
// most. (A u within ~1e-12 of 1 is such a case: the far tail's tokens are all that close to the
// end, and the two sides may pick different ones of them.)
#pragma once

#include <math.h>  // ::exp, which nvcc maps to the device's exp in device code

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SAGELLM_SAMPLING_HD __host__ __device__ __forceinline__
// Before templates over a type whose members are device-only (the kernel's Ops) or host-only (the
// tests'): each instantiation is compiled only for the side that calls it.
#define SAGELLM_SAMPLING_TEMPLATE _Pragma("nv_exec_check_disable")
#define SAGELLM_SAMPLING_HD_TEMPLATE __host__ __device__
#else
#define SAGELLM_SAMPLING_HD inline
#define SAGELLM_SAMPLING_TEMPLATE
#define SAGELLM_SAMPLING_HD_TEMPLATE
#endif

namespace sagellm::sampling {

using u128 = unsigned __int128;

// One draw's parameters: the request's filters and the uniform its Sampler drew
// (Sampler::next_uniform). gpu::sample_rows reads one per logits row from device memory.
struct DrawParams {
  float temperature = 0.0f;  // not > 0: greedy (the argmax), `uniform` unused
  int32_t top_k = 0;         // <= 0: off
  float top_p = 1.0f;        // not < 1: off
  float min_p = 0.0f;        // not > 0: off (values above 1 act as 1)
  double uniform = 0.0;      // in [0, 1); values outside are clamped into it
};

// Ids are below 2^24, so the top byte of ~id (bits 24..31 of a key) is all ones (see pass_shift).
inline constexpr int kMaxVocab = 1 << 24;

SAGELLM_SAMPLING_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

SAGELLM_SAMPLING_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

SAGELLM_SAMPLING_HD uint64_t double_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
#endif
}

// ---- The total order ----------------------------------------------------------------------

// A candidate's rank as one integer, larger ranks first: the float's bits mapped to an unsigned
// order-preserving form above the id inverted, so that the lower id wins ties. Ids are unique, so
// the order is strict.
SAGELLM_SAMPLING_HD uint64_t rank_key(float value, int32_t id) {
  const uint32_t bits = float_bits(value);
  const uint32_t ordered = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
  return (static_cast<uint64_t>(ordered) << 32) | ~static_cast<uint32_t>(id);
}

SAGELLM_SAMPLING_HD int32_t key_id(uint64_t key) {
  return static_cast<int32_t>(~static_cast<uint32_t>(key));
}

SAGELLM_SAMPLING_HD float key_value(uint64_t key) {
  const auto ordered = static_cast<uint32_t>(key >> 32);
  return bits_float((ordered & 0x80000000u) != 0 ? ordered & 0x7FFFFFFFu : ~ordered);
}

// Whether a logit can be drawn, and the value it is ranked and weighted by. In `inf_mode` (the row
// has a +inf logit) the candidates are exactly the +inf logits, each valued 0 so that they share
// the mass equally (the softmax's limit); otherwise every logit above -inf, with -0 made +0 so that
// both zeros tie. NaN is never a candidate.
SAGELLM_SAMPLING_HD bool candidate(float logit, bool inf_mode, float& value) {
  if (inf_mode) {
    value = 0.0f;
    return logit == INFINITY;
  }
  value = logit + 0.0f;
  return logit > -INFINITY;
}

// The unnormalized probability of a candidate: 1 for the top one; in double, so that a tiny
// temperature cannot overflow.
SAGELLM_SAMPLING_HD double weight(float value, double top, double temperature) {
  return ::exp((static_cast<double>(value) - top) / temperature);
}

// floor(w * 2^63) for a weight w in [0, 1].
SAGELLM_SAMPLING_HD uint64_t fixed_mass(double w) { return static_cast<uint64_t>(w * 0x1p63); }

// ---- Row statistics (one pass) ------------------------------------------------------------

// Merged with counts, min and max, so any split of the row and any merge order give the same.
struct RowStats {
  uint32_t inf_count = 0;             // +inf logits
  uint32_t inf_min_id = 0xFFFFFFFFu;  // the lowest id among them
  uint32_t finite_count = 0;          // logits above -inf and below +inf
  uint64_t finite_max_key = 0;        // the highest rank key among those
};

SAGELLM_SAMPLING_HD void observe(RowStats& s, float logit, int32_t id) {
  if (logit == INFINITY) {
    ++s.inf_count;
    if (static_cast<uint32_t>(id) < s.inf_min_id) s.inf_min_id = static_cast<uint32_t>(id);
  } else if (logit > -INFINITY) {
    ++s.finite_count;
    const uint64_t key = rank_key(logit + 0.0f, id);
    if (key > s.finite_max_key) s.finite_max_key = key;
  }
}

// ---- Thresholds ---------------------------------------------------------------------------

// floor(x * m / 2^s) and whether that division left a remainder. The product is formed in 192
// bits; the quotient must fit in 128 (callers have m / 2^s <= 1).
struct Quotient {
  u128 q = 0;
  bool inexact = false;
};

SAGELLM_SAMPLING_HD Quotient mul_shift(u128 x, uint64_t m, int s) {
  const u128 a = static_cast<u128>(static_cast<uint64_t>(x)) * m;
  const u128 b = static_cast<u128>(static_cast<uint64_t>(x >> 64)) * m;
  const u128 low = a + (b << 64);  // the product is high * 2^128 + low
  const uint64_t high = static_cast<uint64_t>(b >> 64) + (low < a ? 1 : 0);
  Quotient r;
  if (s == 0) {
    r.q = low;
  } else if (s < 128) {
    r.q = (low >> s) | (static_cast<u128>(high) << (128 - s));
    r.inexact = (low & ((static_cast<u128>(1) << s) - 1)) != 0;
  } else {
    const int t = s - 128;
    r.q = t < 64 ? high >> t : 0;
    const uint64_t dropped = t < 64 ? high & ((uint64_t{1} << t) - 1) : high;
    r.inexact = low != 0 || dropped != 0;
  }
  return r;
}

// The smallest running mass that is >= top_p * total, for top_p in (0, 1]: ceil(top_p * total),
// at least 1 (so a top_p at or below 0 keeps the top token).
SAGELLM_SAMPLING_HD u128 top_p_need(u128 total, float top_p) {
  if (!(top_p > 0.0f)) return 1;
  if (!(top_p < 1.0f)) return total;
  const uint32_t bits = float_bits(top_p);
  const int e = static_cast<int>((bits >> 23) & 0xFFu);
  const uint64_t frac = bits & 0x7FFFFFu;
  const Quotient r =
      e == 0 ? mul_shift(total, frac, 149) : mul_shift(total, frac | 0x800000u, 150 - e);
  const u128 need = r.q + (r.inexact ? 1 : 0);
  return need < 1 ? 1 : need;
}

// The smallest running mass that is > u * total: floor(u * total) + 1, with u clamped to [0, 1)
// (u >= 1 takes the last token with mass).
SAGELLM_SAMPLING_HD u128 draw_need(u128 total, double u) {
  if (!(u > 0.0)) return 1;
  if (!(u < 1.0)) return total;
  const uint64_t bits = double_bits(u);
  const int e = static_cast<int>((bits >> 52) & 0x7FFu);
  const uint64_t frac = bits & ((uint64_t{1} << 52) - 1);
  const Quotient r = e == 0 ? mul_shift(total, frac, 1074)
                            : mul_shift(total, frac | (uint64_t{1} << 52), 1075 - e);
  return r.q + 1;
}

// What a selection counts and the threshold it looks for: the k-th kept token (top-k), the first
// at which the kept mass reaches top_p of the total (top-p, inclusive), or the first at which it
// exceeds u times the total (the draw).
struct Target {
  enum Kind { kCount, kTopP, kDraw };
  Kind kind = kCount;
  uint32_t k = 1;
  float top_p = 1.0f;
  double u = 0.0;
};

SAGELLM_SAMPLING_HD u128 target_need(const Target& t, u128 total) {
  switch (t.kind) {
    case Target::kCount:
      return t.k;
    case Target::kTopP:
      return top_p_need(total, t.top_p);
    case Target::kDraw:
      break;
  }
  return draw_need(total, t.u);
}

// ---- The radix selection ------------------------------------------------------------------

inline constexpr int kBuckets = 256;  // 8-bit digits
inline constexpr int kPasses = 7;

// The key's bit offset of each pass's digit, most significant first: the value's four bytes,
// then the low three bytes of ~id (its top byte is all ones for ids below 2^24, kMaxVocab).
SAGELLM_SAMPLING_HD int pass_shift(int pass) { return pass < 4 ? 56 - 8 * pass : 48 - 8 * pass; }

// Buckets are numbered in rank order: the largest digit (the highest-ranked keys) first.
SAGELLM_SAMPLING_HD int bucket_of(uint64_t key, int shift) {
  return 255 - static_cast<int>((key >> shift) & 0xFFu);
}

// The leading `bits` bits of the keys a pass looks at (all keys when bits is 0).
struct KeyPrefix {
  uint64_t value = 0;
  int bits = 0;
};

SAGELLM_SAMPLING_HD bool has_prefix(uint64_t key, const KeyPrefix& p) {
  return p.bits == 0 || (key >> (64 - p.bits)) == p.value;
}

// The prefix once a pass at some shift chose `bucket`, for the pass at `next_shift` (bytes that
// no pass looks at are the all-ones top byte of ~id).
SAGELLM_SAMPLING_HD KeyPrefix extend(KeyPrefix p, int bucket, int next_shift) {
  p.value = (p.value << 8) | static_cast<uint64_t>(255 - bucket);
  p.bits += 8;
  while (64 - p.bits > next_shift + 8) {
    p.value = (p.value << 8) | 0xFFu;
    p.bits += 8;
  }
  return p;
}

// The first bucket j in [begin, end) at which `before` plus the measure of buckets [begin, j]
// reaches `need`; `before` grows by the buckets passed over. Returns end when none does.
SAGELLM_SAMPLING_TEMPLATE
template <typename Measure>
SAGELLM_SAMPLING_HD_TEMPLATE int first_reaching(const Measure& measure, int begin, int end,
                                                u128 need, u128& before) {
  for (int j = begin; j < end; ++j) {
    const u128 m = measure(j);
    if (before + m >= need) return j;
    before += m;
  }
  return end;
}

// Which tokens a selection counts: candidates ranked at or above min_key, and, when min_p > 0,
// with weight >= min_p.
struct Filter {
  bool inf_mode = false;
  uint64_t min_key = 0;
  double top = 0.0;  // the top candidate's value
  double temperature = 1.0;
  double min_p = 0.0;
};

// Evaluates one logit under `f`: whether it is kept and has the key prefix `prefix`, its key, and
// its measure (its fixed-point mass when `mass`, else 1). The weight is computed last, only for
// tokens in the pass's bucket range.
SAGELLM_SAMPLING_HD bool keep(const Filter& f, const KeyPrefix& prefix, float logit, int32_t id,
                              bool mass, uint64_t& key, uint64_t& measure) {
  float value;
  if (!candidate(logit, f.inf_mode, value)) return false;
  key = rank_key(value, id);
  if (key < f.min_key || !has_prefix(key, prefix)) return false;
  measure = 1;
  if (!mass && !(f.min_p > 0.0)) return true;
  const double w = weight(value, f.top, f.temperature);
  if (f.min_p > 0.0 && !(w >= f.min_p)) return false;
  if (mass) measure = fixed_mass(w);
  return true;
}

// One pass's outcome: the bucket where the running measure reaches the need.
struct Pick {
  int bucket = -1;       // -1: the total never reaches the need (cannot happen for valid rows)
  u128 need = 0;         // this pass's need (the first pass derives it from the total)
  u128 before = 0;       // the measure of the kept tokens in earlier buckets
  uint32_t count = 0;    // kept tokens in the bucket
  uint64_t max_key = 0;  // the highest-ranked of them
};

// The key of the first token in rank order, among those `f` keeps, at which the running measure
// reaches t's threshold; `found` false when there is none. Ops (one row) provides
//   void histogram(const Filter&, const KeyPrefix&, int shift, bool mass): per bucket of the
//       digit at `shift`, the count, measure and highest key of the tokens keep() accepts;
//   Pick pick(const Target&, bool first, u128 need): the bucket where the running measure reaches
//       `need` (on the first pass: target_need of the histogram's total).
// Every thread of the kernel's cluster runs this with the same values, so its control flow is
// uniform.
SAGELLM_SAMPLING_TEMPLATE
template <typename Ops>
SAGELLM_SAMPLING_HD_TEMPLATE uint64_t select_key(Ops& ops, const Filter& f, const Target& t,
                                                 bool& found) {
  KeyPrefix prefix;
  u128 need = 0;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = pass_shift(pass);
    ops.histogram(f, prefix, shift, t.kind != Target::kCount);
    const Pick pk = ops.pick(t, pass == 0, need);
    if (pk.bucket < 0) break;
    // Keys are unique, so after the last digit one token is left.
    if (pk.count == 1 || pass + 1 == kPasses) {
      found = true;
      return pk.max_key;
    }
    need = pk.need - pk.before;
    prefix = extend(prefix, pk.bucket, pass_shift(pass + 1));
  }
  found = false;
  return 0;
}

// The token one draw picks (as the CPU sampler), or -1 when no logit can be drawn (or, which
// cannot happen, a selection finds nothing). Ops also provides RowStats stats() (observe over the
// row).
SAGELLM_SAMPLING_TEMPLATE
template <typename Ops>
SAGELLM_SAMPLING_HD_TEMPLATE int32_t sample_row(Ops& ops, const DrawParams& p) {
  const RowStats s = ops.stats();
  const bool inf_mode = s.inf_count > 0;
  const uint32_t candidates = inf_mode ? s.inf_count : s.finite_count;
  if (candidates == 0) return -1;
  const uint64_t top_key =
      inf_mode ? rank_key(0.0f, static_cast<int32_t>(s.inf_min_id)) : s.finite_max_key;
  if (!(p.temperature > 0.0f)) return key_id(top_key);

  Filter f;
  f.inf_mode = inf_mode;
  f.top = key_value(top_key);
  f.temperature = p.temperature;
  bool found = true;
  if (p.top_k > 0 && static_cast<uint32_t>(p.top_k) < candidates) {
    Target t;
    t.kind = Target::kCount;
    t.k = static_cast<uint32_t>(p.top_k);
    f.min_key = select_key(ops, f, t, found);
    if (!found) return -1;
  }
  if (p.top_p < 1.0f) {
    Target t;
    t.kind = Target::kTopP;
    t.top_p = p.top_p;
    f.min_key = select_key(ops, f, t, found);
    if (!found) return -1;
  }
  if (p.min_p > 0.0f) f.min_p = p.min_p < 1.0f ? p.min_p : 1.0;
  Target t;
  t.kind = Target::kDraw;
  t.u = p.uniform;
  const uint64_t key = select_key(ops, f, t, found);
  return found ? key_id(key) : -1;
}

}  // namespace sagellm::sampling
