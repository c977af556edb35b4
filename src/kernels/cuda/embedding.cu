// Embedding gather: rows of a bf16 table picked by token id.
#include <cstdint>

#include "kernels/cuda/kernel_util.cuh"
#include "kernels/cuda/ops.h"

namespace sagellm::gpu {

namespace {

constexpr int kThreads = 256;

// Work item = kVec consecutive elements of one output row; copies bits, no arithmetic. kShard:
// the table holds ids [first_id, first_id + vocab) of a larger vocabulary, and other ids get a row
// of zeros (another rank holds them).
template <int kVec, bool kShard>
__global__ void embedding_kernel(const bf16* __restrict__ table, int first_id, int vocab, int dim,
                                 const int32_t* __restrict__ ids, int num_ids,
                                 bf16* __restrict__ out) {
  const int chunks = dim / kVec;
  const int64_t total = static_cast<int64_t>(num_ids) * chunks;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / chunks;
    const int64_t c = e - t * chunks;
    const int32_t id = ids[t] - first_id;
    bf16* dst = out + t * dim + c * kVec;
    if (kShard && (id < 0 || id >= vocab)) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) dst[j] = __ushort_as_bfloat16(0);
      continue;
    }
    if (id < 0 || id >= vocab) {
      // Not validated by the caller: never read out of bounds, and make the row loudly wrong.
#pragma unroll
      for (int j = 0; j < kVec; ++j) dst[j] = __ushort_as_bfloat16(0x7FC0);
      continue;
    }
    const bf16* src = table + static_cast<int64_t>(id) * dim + c * kVec;
    if constexpr (kVec == 8) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      dst[0] = src[0];
    }
  }
}

}  // namespace

void validate_token_ids(std::span<const int32_t> ids, int vocab) {
  for (size_t t = 0; t < ids.size(); ++t) {
    SAGELLM_GPU_REQUIRE(ids[t] >= 0 && ids[t] < vocab, "token id ", ids[t], " at position ", t,
                        " is outside the vocabulary [0, ", vocab, ")");
  }
}

namespace {

void launch_embedding(const bf16* table, int first_id, int vocab, int dim, const int32_t* ids,
                      int num_ids, bf16* out, bool shard, cudaStream_t stream) {
  SAGELLM_GPU_REQUIRE(vocab > 0 && dim > 0 && num_ids >= 0 && first_id >= 0,
                      "embedding: bad shape vocab=", vocab, " dim=", dim, " num_ids=", num_ids,
                      " first_id=", first_id);
  if (num_ids == 0) return;
  SAGELLM_GPU_REQUIRE(table != nullptr && ids != nullptr && out != nullptr,
                      "embedding: null pointer");
  const bool vec = dim % 8 == 0 && detail::aligned16(table) && detail::aligned16(out);
  const int64_t items = static_cast<int64_t>(num_ids) * (vec ? dim / 8 : dim);
  const unsigned blocks = detail::blocks_for(items, kThreads);
  auto go = [&](auto kernel) {
    kernel<<<blocks, kThreads, 0, stream>>>(table, first_id, vocab, dim, ids, num_ids, out);
  };
  if (vec) {
    shard ? go(embedding_kernel<8, true>) : go(embedding_kernel<8, false>);
  } else {
    shard ? go(embedding_kernel<1, true>) : go(embedding_kernel<1, false>);
  }
  SAGELLM_CUDA_CHECK_LAUNCH();
}

}  // namespace

void embedding(const bf16* table, int vocab, int dim, const int32_t* ids, int num_ids, bf16* out,
               cudaStream_t stream) {
  launch_embedding(table, 0, vocab, dim, ids, num_ids, out, /*shard=*/false, stream);
}

void embedding_shard(const bf16* table, int first_id, int rows, int dim, const int32_t* ids,
                     int num_ids, bf16* out, cudaStream_t stream) {
  launch_embedding(table, first_id, rows, dim, ids, num_ids, out, /*shard=*/true, stream);
}

}  // namespace sagellm::gpu
