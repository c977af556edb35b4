// Sampling on the GPU: a cluster of CTAs per row (8 on sm_90, one elsewhere) runs
// sampling::sample_row (sampling_select.h), the CPU sampler's definition. Each CTA of the cluster
// owns a contiguous slice of the row, read from global memory once into shared memory (when it
// fits) and histogrammed from there in every pass; the CTAs' digit histograms are merged through
// distributed shared memory after one cluster barrier per pass. Counts, fixed-point masses and
// keys are merged with integer sums, min and max, which give the same bits in any order, and
// every CTA scans the merged buckets in a fixed order, so a row's token depends only on the row
// and its parameters, and all CTAs of the cluster take the same control flow.
//
// Expected cost (H200, 1 x 128256, T 0.8, top_p 0.95), from the passes: each of the 8 CTAs
// (1024 threads) holds 16032 logits (64 KB of shared memory); reading them is one 64 KB load per
// SM (~1 us). The stats pass (the greedy path ends there) then touches shared memory only. Each
// mass selection's first pass computes exp in double for all 16 tokens of every thread (about
// 16032 x ~25 FP64 instructions / 64 per clock = ~3 us per SM) and its second pass for the tokens
// of the chosen bucket; later passes only evaluate tokens sharing the chosen prefix (a few
// integer instructions per token, ~0.5 us). With top-p and the draw that is about 2 x (3 + 2 + 3
// x 0.7) us of passes plus ~0.5 us of barrier and merge per pass: roughly 20-30 us per call, and
// for 64 rows (512 CTAs, two per SM, two waves) roughly 60-100 us. Without clusters (sm_80) one
// CTA per row streams the row from L2 in every pass: several times slower, but still free of
// the per-token serial merges that dominated before (warp reductions with redux.sync instead).
#include <cooperative_groups.h>

#include <atomic>
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/sampling_select.h"

namespace sagellm::gpu {

namespace {

using sampling::KeyPrefix;
using sampling::Pick;
using sampling::RowStats;
using sampling::Target;
using sampling::u128;

constexpr int kMaxThreads = 1024;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kClusterSm90 = 8;  // the portable maximum
// A CTA caches its slice of the row in shared memory up to this many logits (160 KB).
constexpr int kMaxCached = 40 * 1024;

// One CTA's histogram of one pass, by bucket (rank order): mass as two 64-bit words, count, max
// key. Read by every CTA of the cluster.
struct Histogram {
  unsigned long long mass_lo[sampling::kBuckets];
  unsigned long long mass_hi[sampling::kBuckets];
  unsigned long long max_key[sampling::kBuckets];
  unsigned int count[sampling::kBuckets];
};

struct StatsWords {
  unsigned int inf_count, inf_min_id, finite_count;
  unsigned long long finite_max_key;
};

struct SharedState {
  // Double-buffered: a pass clears the buffer whose last readers (the pick two passes back) are
  // past the cluster barrier of the pass in between.
  Histogram local[2];
  Histogram merged;  // the cluster's sums, this CTA's copy
  StatsWords local_stats;
  StatsWords stats;
  // The last pick.
  int bucket;
  unsigned int pick_count;
  unsigned long long pick_max_key;
  unsigned long long need_lo, need_hi, before_lo, before_hi;
};

__device__ __forceinline__ u128 join(unsigned long long lo, unsigned long long hi) {
  return (static_cast<u128>(hi) << 64) | lo;
}

// The cluster of CTAs that share a row; one CTA without sm_90 clusters.
struct Cluster {
  __device__ static unsigned rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().block_rank();
#else
    return 0;
#endif
  }
  __device__ static unsigned size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().num_blocks();
#else
    return 1;
#endif
  }
  // A barrier of all threads of the cluster, which also makes shared-memory writes before it
  // visible to the cluster's readers after it.
  __device__ static void sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#else
    __syncthreads();
#endif
  }
  template <typename T>
  __device__ static T* at(T* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
    (void)rank;
    return p;
#endif
  }
};

// Where a row's logits are: column j at base + (j / segment) * segment_stride + j % segment.
struct RowView {
  const float* base;
  int vocab;
  int segment;
  int64_t segment_stride;

  __device__ float at(int j) const {
    return base[static_cast<int64_t>(j / segment) * segment_stride + j % segment];
  }
};

// This CTA's slice of the row: columns [begin, begin + n), cached in `cache` when it is not null.
struct Slice {
  RowView row;
  int begin;
  int n;
  float* cache;
};

// fn(logit, id) for every logit of the slice, called by every thread of the CTA the same number
// of times (so fn may use warp-wide intrinsics); threads past the slice's end pass NaN, which no
// filter keeps.
template <typename Fn>
__device__ __forceinline__ void for_each_logit(const Slice& s, Fn&& fn) {
  for (int b = 0; b < s.n; b += static_cast<int>(blockDim.x)) {
    const int i = b + static_cast<int>(threadIdx.x);
    float v = __int_as_float(0x7FC00000);
    if (i < s.n) v = s.cache != nullptr ? s.cache[i] : s.row.at(s.begin + i);
    fn(v, s.begin + i);
  }
}

// The Ops of sampling::sample_row for one row, over the cluster. Every member is called by all
// threads of all CTAs of the cluster and returns the same values to all of them.
class ClusterRowOps {
 public:
  __device__ ClusterRowOps(SharedState& sh, const Slice& slice) : sh_(sh), slice_(slice) {}

  // Also fills the slice's cache.
  __device__ RowStats stats() {
    Cluster::sync();  // the previous row's readers of this CTA's shared memory are done
    if (threadIdx.x == 0) {
      sh_.local_stats.inf_count = 0;
      sh_.local_stats.inf_min_id = 0xFFFFFFFFu;
      sh_.local_stats.finite_count = 0;
      sh_.local_stats.finite_max_key = 0;
    }
    __syncthreads();
    RowStats mine;
    Slice from_global = slice_;
    from_global.cache = nullptr;
    for_each_logit(from_global, [&](float logit, int id) {
      const int i = id - slice_.begin;
      if (slice_.cache != nullptr && i < slice_.n) slice_.cache[i] = logit;
      sampling::observe(mine, logit, id);
    });
    if (mine.inf_count > 0) {
      atomicAdd(&sh_.local_stats.inf_count, mine.inf_count);
      atomicMin(&sh_.local_stats.inf_min_id, mine.inf_min_id);
    }
    if (mine.finite_count > 0) {
      atomicAdd(&sh_.local_stats.finite_count, mine.finite_count);
      atomicMax(&sh_.local_stats.finite_max_key,
                static_cast<unsigned long long>(mine.finite_max_key));
    }
    Cluster::sync();  // every CTA's statistics (and its cache) are complete
    if (threadIdx.x == 0) {
      StatsWords m{0, 0xFFFFFFFFu, 0, 0};
      for (unsigned r = 0; r < Cluster::size(); ++r) {
        const StatsWords* o = Cluster::at(&sh_.local_stats, r);
        m.inf_count += o->inf_count;
        m.inf_min_id = min(m.inf_min_id, o->inf_min_id);
        m.finite_count += o->finite_count;
        m.finite_max_key = max(m.finite_max_key, o->finite_max_key);
      }
      sh_.stats = m;
    }
    __syncthreads();
    RowStats s;
    s.inf_count = sh_.stats.inf_count;
    s.inf_min_id = sh_.stats.inf_min_id;
    s.finite_count = sh_.stats.finite_count;
    s.finite_max_key = sh_.stats.finite_max_key;
    return s;
  }

  __device__ void histogram(const sampling::Filter& f, const KeyPrefix& prefix, int shift,
                            bool mass) {
    buffer_ ^= 1;
    Histogram& h = sh_.local[buffer_];
    for (int j = static_cast<int>(threadIdx.x); j < sampling::kBuckets;
         j += static_cast<int>(blockDim.x)) {
      h.mass_lo[j] = 0;
      h.mass_hi[j] = 0;
      h.max_key[j] = 0;
      h.count[j] = 0;
    }
    __syncthreads();
    const int lane = static_cast<int>(threadIdx.x & 31);
    for_each_logit(slice_, [&](float logit, int id) {
      uint64_t key = 0, measure = 0;
      const bool kept = sampling::keep(f, prefix, logit, id, mass, key, measure);
      if (__ballot_sync(kFullMask, kept) == 0) return;
      // Lanes with the same bucket (most tokens share the first digits) merge with warp
      // reductions first, so a bucket takes one shared atomic per warp, not one per token. The
      // mass (at most 2^63) is summed in pieces of 22, 21 and 21 bits, which cannot overflow.
      const int bucket = kept ? sampling::bucket_of(key, shift) : -1;
      const unsigned peers = __match_any_sync(kFullMask, bucket);
      if (!kept) return;
      const unsigned s0 = __reduce_add_sync(peers, static_cast<unsigned>(measure & 0x3FFFFFu));
      const unsigned s1 =
          __reduce_add_sync(peers, static_cast<unsigned>((measure >> 22) & 0x1FFFFFu));
      const unsigned s2 = __reduce_add_sync(peers, static_cast<unsigned>(measure >> 43));
      const auto key_hi = static_cast<unsigned>(key >> 32);
      const unsigned best_hi = __reduce_max_sync(peers, key_hi);
      const unsigned best_lo =
          __reduce_max_sync(peers, key_hi == best_hi ? static_cast<unsigned>(key) : 0u);
      if (lane == __ffs(static_cast<int>(peers)) - 1) {
        const u128 sum =
            static_cast<u128>(s0) + (static_cast<u128>(s1) << 22) + (static_cast<u128>(s2) << 43);
        const auto lo = static_cast<unsigned long long>(sum);
        const unsigned long long old = atomicAdd(&h.mass_lo[bucket], lo);
        // The low words wrap exactly once per carry, and each adder sees its own wrap.
        const unsigned long long hi =
            static_cast<unsigned long long>(sum >> 64) + (old + lo < old ? 1 : 0);
        if (hi != 0) atomicAdd(&h.mass_hi[bucket], hi);
        atomicAdd(&h.count[bucket], static_cast<unsigned>(__popc(peers)));
        atomicMax(&h.max_key[bucket], (static_cast<unsigned long long>(best_hi) << 32) | best_lo);
      }
    });
    Cluster::sync();  // every CTA's histogram is complete
    // The cluster's histogram: one thread per bucket adds the CTAs' in rank order.
    for (int j = static_cast<int>(threadIdx.x); j < sampling::kBuckets;
         j += static_cast<int>(blockDim.x)) {
      u128 m = 0;
      unsigned count = 0;
      unsigned long long best = 0;
      for (unsigned r = 0; r < Cluster::size(); ++r) {
        const Histogram* o = Cluster::at(&h, r);
        m += join(o->mass_lo[j], o->mass_hi[j]);
        count += o->count[j];
        best = max(best, o->max_key[j]);
      }
      sh_.merged.mass_lo[j] = static_cast<unsigned long long>(m);
      sh_.merged.mass_hi[j] = static_cast<unsigned long long>(m >> 64);
      sh_.merged.count[j] = count;
      sh_.merged.max_key[j] = best;
    }
    __syncthreads();
  }

  // Warp 0 scans the merged buckets: each lane sums 8 consecutive ones, a warp scan of those sums
  // finds the lane in whose range the running measure reaches the need, and that lane walks its
  // range.
  __device__ Pick pick(const Target& t, bool first, u128 need) {
    const Histogram& h = sh_.merged;
    if (threadIdx.x < 32) {
      const int lane = static_cast<int>(threadIdx.x);
      const auto measure = [&](int j) { return join(h.mass_lo[j], h.mass_hi[j]); };
      constexpr int kPerLane = sampling::kBuckets / 32;
      const int begin = lane * kPerLane;
      u128 local = 0;
      for (int j = begin; j < begin + kPerLane; ++j) local += measure(j);
      u128 inclusive = local;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned long long lo =
            __shfl_up_sync(kFullMask, static_cast<unsigned long long>(inclusive), offset);
        const unsigned long long hi =
            __shfl_up_sync(kFullMask, static_cast<unsigned long long>(inclusive >> 64), offset);
        if (lane >= offset) inclusive += join(lo, hi);
      }
      const u128 total =
          join(__shfl_sync(kFullMask, static_cast<unsigned long long>(inclusive), 31),
               __shfl_sync(kFullMask, static_cast<unsigned long long>(inclusive >> 64), 31));
      const u128 n = first ? sampling::target_need(t, total) : need;
      u128 before = inclusive - local;
      if (before < n && n <= inclusive) {
        const int j = sampling::first_reaching(measure, begin, begin + kPerLane, n, before);
        sh_.bucket = j;
        sh_.pick_count = h.count[j];
        sh_.pick_max_key = h.max_key[j];
        sh_.need_lo = static_cast<unsigned long long>(n);
        sh_.need_hi = static_cast<unsigned long long>(n >> 64);
        sh_.before_lo = static_cast<unsigned long long>(before);
        sh_.before_hi = static_cast<unsigned long long>(before >> 64);
      }
      if (lane == 0 && !(n >= 1 && n <= total)) sh_.bucket = -1;
    }
    __syncthreads();
    Pick p;
    p.bucket = sh_.bucket;
    p.count = sh_.pick_count;
    p.max_key = sh_.pick_max_key;
    p.need = join(sh_.need_lo, sh_.need_hi);
    p.before = join(sh_.before_lo, sh_.before_hi);
    return p;
  }

 private:
  SharedState& sh_;
  Slice slice_;
  int buffer_ = 0;
};

// Launched as clusters along x (gridDim.x CTAs per row, one cluster) and rows along y.
// `cache_logits`: each CTA's slice fits the dynamic shared memory.
__global__ void __launch_bounds__(kMaxThreads)
    sample_rows_kernel(SampleRowsParams p, bool cache_logits) {
  __shared__ SharedState sh;
  extern __shared__ float cache[];
  const int ctas = static_cast<int>(Cluster::size());
  const int per_cta = (p.vocab + ctas - 1) / ctas;
  const int begin = min(p.vocab, static_cast<int>(Cluster::rank()) * per_cta);
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const RowView view{p.logits + row * p.row_stride, p.vocab, p.segment, p.segment_stride};
    const Slice slice{view, begin, min(per_cta, p.vocab - begin), cache_logits ? cache : nullptr};
    ClusterRowOps ops(sh, slice);
    const sampling::DrawParams dp = p.params[row];
    const int32_t id = sampling::sample_row(ops, dp);
    if (threadIdx.x == 0 && Cluster::rank() == 0) p.ids[row] = id;
  }
  Cluster::sync();  // no CTA exits while others may still read its shared memory
}

// The cluster size this device supports (clusters need sm_90), per device.
int cluster_size_for_device() {
  static std::atomic<uint64_t> known{0}, sm90{0};
  int device = 0;
  SAGELLM_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (known.load(std::memory_order_acquire) & bit) != 0) {
    return (sm90.load(std::memory_order_acquire) & bit) != 0 ? kClusterSm90 : 1;
  }
  int major = 0, cluster_launch = 0;
  SAGELLM_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  SAGELLM_CUDA_CHECK(cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device));
  const bool clusters = major >= 9 && cluster_launch != 0;
  if (clusters) {
    // Raises the dynamic shared-memory limit for the cache (harmless if two threads race).
    SAGELLM_CUDA_CHECK(cudaFuncSetAttribute(sample_rows_kernel,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(kMaxCached * sizeof(float))));
    if (bit != 0) sm90.fetch_or(bit, std::memory_order_acq_rel);
  }
  if (bit != 0) known.fetch_or(bit, std::memory_order_acq_rel);
  return clusters ? kClusterSm90 : 1;
}

}  // namespace

void sample_rows(const SampleRowsParams& params, cudaStream_t stream) {
  SampleRowsParams p = params;
  SAGELLM_GPU_REQUIRE(p.rows >= 0 && p.vocab > 0 && p.vocab <= sampling::kMaxVocab,
                      "sample_rows: bad shape rows=", p.rows, " vocab=", p.vocab,
                      " (the vocabulary must be in [1, 2^24])");
  SAGELLM_GPU_REQUIRE(p.segment >= 0, "sample_rows: negative segment ", p.segment);
  if (p.segment == 0 || p.segment >= p.vocab) {
    p.segment = p.vocab;
    p.segment_stride = 0;
    if (p.row_stride == 0) p.row_stride = p.vocab;
    SAGELLM_GPU_REQUIRE(p.row_stride >= p.vocab, "sample_rows: row stride ", p.row_stride,
                        " is smaller than the vocabulary ", p.vocab);
  } else {
    if (p.row_stride == 0) p.row_stride = p.segment;
    SAGELLM_GPU_REQUIRE(p.row_stride >= p.segment, "sample_rows: row stride ", p.row_stride,
                        " is smaller than the segment ", p.segment);
    SAGELLM_GPU_REQUIRE(p.segment_stride >= p.row_stride * p.rows, "sample_rows: segment stride ",
                        p.segment_stride, " is smaller than rows x row stride ",
                        p.row_stride * p.rows);
  }
  if (p.rows == 0) return;
  SAGELLM_GPU_REQUIRE(p.logits != nullptr && p.params != nullptr && p.ids != nullptr,
                      "sample_rows: null pointer");
  // Small vocabularies gain nothing from more CTAs than one per 4096 logits.
  const int cluster = std::min(cluster_size_for_device(), std::max(1, (p.vocab + 4095) / 4096));
  const int per_cta = (p.vocab + cluster - 1) / cluster;
  const bool cache = cluster > 1 && per_cta <= kMaxCached;
  const int threads = std::min(detail::threads_for(per_cta), kMaxThreads);

  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(cluster),
                        static_cast<unsigned>(std::min<int64_t>(p.rows, 65535)), 1);
  config.blockDim = dim3(static_cast<unsigned>(threads), 1, 1);
  config.dynamicSmemBytes = cache ? sizeof(float) * static_cast<size_t>(per_cta) : 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = cluster > 1 ? 1 : 0;
  SAGELLM_CUDA_CHECK(cudaLaunchKernelEx(&config, sample_rows_kernel, p, cache));
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace sagellm::gpu
