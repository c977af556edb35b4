#include "model/llama_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/sage/sage_cuda.h"
#include "core/cuda_check.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cuda/ops.h"
#include "kv_cache/kv_cache_step.h"
#include "model/forward_rows.h"
#include "model/rope.h"
#include "parallel/nccl_group.h"
#include "parallel/tp_weights.h"

namespace sagellm {

namespace {

using gpu::bf16;

// lm_head rows per GEMM: bounds the fp32 logits buffer (rows x vocab) when every position's
// logits are wanted.
constexpr int kLogitsChunkRows = 256;

// Per-step metadata in meta_, per row: ids, positions, pages, slots, logits rows, tail slots; then
// the live seal-job count and up to `rows` seal jobs.
constexpr int kMetaPerRow = 6;
constexpr int kJobInts = static_cast<int>(sizeof(sage_cuda::SageQuantJob) / sizeof(int32_t));
static_assert(sizeof(sage_cuda::SageQuantJob) == kJobInts * sizeof(int32_t) &&
                  alignof(sage_cuda::SageQuantJob) <= alignof(int32_t),
              "seal jobs are uploaded as int32 words");

bf16* bf(DeviceBuffer<uint16_t>& b) { return reinterpret_cast<bf16*>(b.data()); }
const bf16* bf(const DeviceBuffer<uint16_t>& b) { return reinterpret_cast<const bf16*>(b.data()); }

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  const auto n = static_cast<int64_t>(v.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[static_cast<size_t>(i)] = float_to_bf16(v[static_cast<size_t>(i)]);
  }
  return out;
}

// Loads the named tensors (in order) into one device buffer: fused QKV and gate/up projections.
DeviceBuffer<uint16_t> upload(
    const WeightSource& src,
    std::initializer_list<std::pair<std::string, std::vector<int64_t>>> parts,
    size_t* total_bytes) {
  size_t elems = 0;
  for (const auto& [name, shape] : parts) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    elems += n;
  }
  DeviceBuffer<uint16_t> buf(elems);
  size_t offset = 0;
  for (const auto& [name, shape] : parts) {
    const std::vector<uint16_t> host = to_bf16(src.load(name, shape));
    buf.upload(host, offset);
    offset += host.size();
  }
  *total_bytes += buf.bytes();
  return buf;
}

}  // namespace

CudaStream::CudaStream() { SAGELLM_CUDA_CHECK(cudaStreamCreate(&stream_)); }
CudaStream::~CudaStream() {
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}
void CudaStream::synchronize() const { SAGELLM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

LlamaCudaModel::LlamaCudaModel(const WeightSource& source, int max_rows)
    : LlamaCudaModel(source, max_rows, tp_shard(source.config(), 0, 1), nullptr) {}

LlamaCudaModel::LlamaCudaModel(const WeightSource& source, int max_rows, const TpShard& shard,
                               NcclGroup* group)
    : config_(tp_shard_config(source.config(), shard)), shard_(shard), group_(group) {
  SAGELLM_CHECK(group != nullptr ? group->size() == shard.size : !shard.sharded(),
                "tensor-parallel rank {} of {} needs a group of {} ranks", shard.rank, shard.size,
                shard.size);
  const std::unique_ptr<WeightSource> rank_source = tp_shard_weights(source, shard);
  const WeightSource& src = *rank_source;
  const io::ModelConfig& c = config_;
  const int64_t h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t inter = c.intermediate_size, vocab = shard.vocab_rows;
  SAGELLM_CHECK(d % 2 == 0 && d <= 1024, "head_dim {} is not supported on the GPU", d);
  embed_ = upload(src, {{"model.embed_tokens.weight", {vocab, h}}}, &weight_bytes_);
  layers_.resize(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer& l = layers_[static_cast<size_t>(i)];
    l.input_norm = upload(src, {{p + "input_layernorm.weight", {h}}}, &weight_bytes_);
    l.qkv = upload(src,
                   {{p + "self_attn.q_proj.weight", {nh * d, h}},
                    {p + "self_attn.k_proj.weight", {nkv * d, h}},
                    {p + "self_attn.v_proj.weight", {nkv * d, h}}},
                   &weight_bytes_);
    l.o = upload(src, {{p + "self_attn.o_proj.weight", {h, nh * d}}}, &weight_bytes_);
    l.post_norm = upload(src, {{p + "post_attention_layernorm.weight", {h}}}, &weight_bytes_);
    l.gate_up = upload(
        src, {{p + "mlp.gate_proj.weight", {inter, h}}, {p + "mlp.up_proj.weight", {inter, h}}},
        &weight_bytes_);
    l.down = upload(src, {{p + "mlp.down_proj.weight", {h, inter}}}, &weight_bytes_);
  }
  final_norm_ = upload(src, {{"model.norm.weight", {h}}}, &weight_bytes_);
  if (src.contains("lm_head.weight")) {
    lm_head_ = upload(src, {{"lm_head.weight", {vocab, h}}}, &weight_bytes_);
  } else if (!c.tie_word_embeddings) {
    fail("missing tensor lm_head.weight (config.json says tie_word_embeddings is false)");
  }
  inv_freq_ = DeviceBuffer<float>::from_host(rope_inv_freq(c.rope, c.head_dim));
  ensure_rows(std::max(max_rows, 1));
}

AttentionShape LlamaCudaModel::attention_shape() const { return llama_attention_shape(config_); }

void LlamaCudaModel::ensure_rows(int rows) {
  if (rows <= rows_) return;
  const io::ModelConfig& c = config_;
  const auto r = static_cast<size_t>(rows);
  const auto h = static_cast<size_t>(c.hidden_size), d = static_cast<size_t>(c.head_dim);
  const auto nh = static_cast<size_t>(c.num_heads), nkv = static_cast<size_t>(c.num_kv_heads);
  const auto inter = static_cast<size_t>(c.intermediate_size);
  // Free first so that growing does not need old and new buffers at once.
  for (auto* b : {&resid_, &delta_, &xn_, &qkv_, &att_, &gate_up_, &act_, &sel_}) b->reset();
  logits_.reset();
  resid_ = DeviceBuffer<uint16_t>(r * h);
  delta_ = DeviceBuffer<uint16_t>(r * h);
  xn_ = DeviceBuffer<uint16_t>(r * h);
  sel_ = DeviceBuffer<uint16_t>(r * h);
  qkv_ = DeviceBuffer<uint16_t>(r * (nh + 2 * nkv) * d);
  att_ = DeviceBuffer<uint16_t>(r * nh * d);
  gate_up_ = DeviceBuffer<uint16_t>(r * 2 * inter);
  act_ = DeviceBuffer<uint16_t>(r * inter);
  const size_t logits =
      std::min<size_t>(r, kLogitsChunkRows) * static_cast<size_t>(shard_.vocab_rows);
  logits_ = DeviceBuffer<float>(logits);
  gathered_.reset();
  if (group_ != nullptr) gathered_ = DeviceBuffer<float>(logits * static_cast<size_t>(shard_.size));
  meta_.reset();
  meta_ = DeviceBuffer<int32_t>((kMetaPerRow + kJobInts) * r + 1);
  rows_ = rows;
  ++epoch_;
}

LlamaCudaModel::~LlamaCudaModel() {
  clear_graphs();
  for (cudaEvent_t e : attention_events_) (void)cudaEventDestroy(e);
}

void LlamaCudaModel::clear_graphs() {
  for (auto& [key, g] : graphs_) {
    if (g.exec != nullptr) (void)cudaGraphExecDestroy(g.exec);
  }
  graphs_.clear();
}

std::vector<float> LlamaCudaModel::forward(const ForwardBatch& batch, GpuKVCache& cache,
                                           CudaAttention& attention,
                                           const ActivationObserver& observer) {
  std::vector<float> logits;
  step(batch, cache, attention, observer, &logits, {}, nullptr);
  return logits;
}

std::vector<int32_t> LlamaCudaModel::forward_sample(const ForwardBatch& batch, GpuKVCache& cache,
                                                    CudaAttention& attention,
                                                    std::span<const sampling::DrawParams> draws) {
  std::vector<int32_t> ids;
  step(batch, cache, attention, {}, nullptr, draws, &ids);
  return ids;
}

void LlamaCudaModel::step(const ForwardBatch& batch, GpuKVCache& cache, CudaAttention& attention,
                          const ActivationObserver& observer, std::vector<float>* logits,
                          std::span<const sampling::DrawParams> draws, std::vector<int32_t>* ids) {
  const io::ModelConfig& c = config_;
  const int rows = static_cast<int>(batch.tokens.size());
  const int vocab = c.vocab_size;
  const KVCacheShape& ks = cache.shape();
  SAGELLM_CHECK(ks.num_layers == c.num_layers && ks.num_kv_heads == c.num_kv_heads &&
                    ks.head_dim == c.head_dim,
                "KV cache shape does not match the model");
  SAGELLM_CHECK(group_ == nullptr || !observer,
                "activations can be observed with --tp-size 1 only (a rank holds only its heads)");
  const ForwardRows fr = plan_forward_rows(batch, c, ks.page_size, ks.num_pages);
  const int n_out = static_cast<int>(fr.logits_rows.size());
  const bool sample = ids != nullptr;
  SAGELLM_CHECK(!sample || draws.size() == static_cast<size_t>(n_out),
                "forward_sample: {} draws for {} logits rows", draws.size(), n_out);
  const bool logits_out = shard_.rank == 0;
  if (sample) {
    ids->assign(logits_out ? static_cast<size_t>(n_out) : 0, -1);
  } else {
    logits->assign(logits_out ? static_cast<size_t>(n_out) * static_cast<size_t>(vocab) : 0, 0.0f);
  }
  if (rows == 0) return;
  const cudaStream_t s = stream_.get();
  ensure_rows(rows);
  if (sample && logits_out) {
    ensure_capacity(draw_params_, static_cast<size_t>(n_out));
    ensure_capacity(draw_ids_, static_cast<size_t>(n_out));
    draw_params_.upload_async(draws, s);
  }
  // What leaves the device of logits rows [r0, r0 + m), as enqueue_lm_head left them.
  auto emit = [&](int r0, int m) {
    if (!logits_out) return;
    if (sample) {
      enqueue_sample(r0, m);
    } else {
      download_logits(logits->data() + static_cast<size_t>(r0) * vocab, m);
    }
  };
  const bool int8 = cache.dtype() == KVCacheDType::kInt8;
  KVStepWrites kv_step;
  if (int8) kv_step = plan_kv_step(batch.attention, ks.page_size, cache.tails());
  const bool seals = !kv_step.seal_jobs.empty();

  // A decode step can be replayed from a graph keyed by its size, block-table width (a power of
  // two, so a growing context recaptures rarely) and whether it seals pages.
  bool decode = use_graphs_ && !observer && !time_attention_ && rows <= kMaxGraphBatch &&
                batch.logits_mode == LogitsMode::kLastPerSeq &&
                batch.attention.seqs.size() == static_cast<size_t>(rows);
  int width = 1;
  for (const AttentionSeq& q : batch.attention.seqs) {
    decode = decode && q.q_len == 1;
    while (static_cast<int64_t>(width) * ks.page_size < q.kv_len) width *= 2;
  }
  // Attention reads the cache as it is after the step (pages sealed by it are 8-bit, the tails it
  // starts are tails), so the step's bookkeeping is committed first, and taken back if planning
  // fails before anything was enqueued.
  if (int8) cache.tails().apply(kv_step);
  try {
    decode = decode && attention.plan_fixed_decode(attention_shape(), batch.attention, cache.view(),
                                                   width, s);
    if (!decode) attention.plan(attention_shape(), batch.attention, cache.view(), s);
  } catch (...) {
    if (int8) cache.tails().undo(kv_step);
    throw;
  }

  // One upload for the per-token metadata: ids, positions, pages, slots, logits rows (and for an
  // 8-bit cache the tail slots, the live seal-job count and the jobs).
  meta_host_.clear();
  meta_host_.insert(meta_host_.end(), batch.tokens.begin(), batch.tokens.end());
  for (const auto* v : {&fr.position, &fr.page, &fr.slot, &fr.logits_rows}) {
    meta_host_.insert(meta_host_.end(), v->begin(), v->end());
  }
  // Every segment takes `rows` entries (enqueue_step's offsets): pad the logits rows, of which
  // there are fewer when only each request's last row is wanted.
  meta_host_.resize(meta_host_.size() + static_cast<size_t>(rows - n_out), 0);
  if (int8) {
    meta_host_.insert(meta_host_.end(), kv_step.tail_slot.begin(), kv_step.tail_slot.end());
    meta_host_.push_back(static_cast<int32_t>(kv_step.seal_jobs.size()));
    const size_t at = meta_host_.size();
    meta_host_.resize(at + kv_step.seal_jobs.size() * kJobInts);
    if (seals) {
      std::memcpy(meta_host_.data() + at, kv_step.seal_jobs.data(),
                  kv_step.seal_jobs.size() * sizeof(sage_cuda::SageQuantJob));
    }
  }
  meta_.upload_async(meta_host_, s);

  if (decode) {
    // A graph's seal launches have one block per row (those past the live count return at once),
    // so one graph serves any number of seals; steps without any skip them.
    const int seal_grid = seals ? rows : 0;
    const GraphKey key{rows, width, seals};
    auto it = graphs_.find(key);
    if (it != graphs_.end() && (it->second.model_epoch != epoch_ ||
                                it->second.attention_epoch != attention.buffer_epoch())) {
      (void)cudaGraphExecDestroy(it->second.exec);
      graphs_.erase(it);
      it = graphs_.end();
    }
    if (it == graphs_.end() && seen_.count(key) > 0) {
      Graph g;
      cudaGraph_t graph = nullptr;
      SAGELLM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      try {
        enqueue_step(cache, attention, rows, n_out, seal_grid, observer);
      } catch (...) {
        (void)cudaStreamEndCapture(s, &graph);
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
        throw;
      }
      SAGELLM_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
      const cudaError_t err = cudaGraphInstantiate(&g.exec, graph, 0);
      (void)cudaGraphDestroy(graph);
      SAGELLM_CUDA_CHECK(err);
      g.model_epoch = epoch_;
      g.attention_epoch = attention.buffer_epoch();
      it = graphs_.emplace(key, g).first;
      ++graphs_captured_;
    }
    if (it != graphs_.end()) {
      SAGELLM_CUDA_CHECK(cudaGraphLaunch(it->second.exec, s));
    } else {
      seen_.insert(key);
      enqueue_step(cache, attention, rows, n_out, seal_grid, observer);
    }
    emit(0, n_out);
    if (sample && logits_out) draw_ids_.download_async(*ids, s);
    stream_.synchronize();
    return;
  }

  const size_t num_events = 2 * static_cast<size_t>(c.num_layers);
  if (time_attention_ && attention_events_.size() < num_events) {
    attention_events_.reserve(num_events);
    while (attention_events_.size() < num_events) {
      cudaEvent_t e = nullptr;
      SAGELLM_CUDA_CHECK(cudaEventCreate(&e));
      attention_events_.push_back(e);
    }
  }
  enqueue_step(cache, attention, rows, n_out, static_cast<int>(kv_step.seal_jobs.size()), observer);
  const bf16* normed = n_out != rows ? bf(sel_) : bf(xn_);  // as enqueue_step chose
  for (int r0 = 0; r0 < n_out; r0 += kLogitsChunkRows) {
    const int m = std::min(kLogitsChunkRows, n_out - r0);
    // The first chunk was computed by enqueue_step.
    if (r0 > 0) enqueue_lm_head(normed + static_cast<int64_t>(r0) * c.hidden_size, m);
    emit(r0, m);
  }
  if (sample && logits_out) draw_ids_.download_async(*ids, s);
  stream_.synchronize();
  if (time_attention_) {
    for (size_t li = 0; li < num_events / 2; ++li) {
      float ms = 0;
      SAGELLM_CUDA_CHECK(
          cudaEventElapsedTime(&ms, attention_events_[2 * li], attention_events_[2 * li + 1]));
      attention_seconds_ += ms * 1e-3;
    }
  }
}

void LlamaCudaModel::enqueue_lm_head(const void* normed, int m) {
  const bf16* head = lm_head_.empty() ? bf(embed_) : bf(lm_head_);
  const int part = shard_.vocab_rows;
  const cudaStream_t s = stream_.get();
  gemm_.linear(static_cast<const bf16*>(normed), head, logits_.data(), m, part, config_.hidden_size,
               s);
  if (group_ != nullptr) {
    group_->all_gather_f32(shard_.rank, logits_.data(), gathered_.data(),
                           static_cast<size_t>(m) * part, s);
  }
}

void LlamaCudaModel::download_logits(float* out, int m) {
  const cudaStream_t s = stream_.get();
  const int vocab = config_.vocab_size;
  if (group_ == nullptr) {
    logits_.download_async(std::span<float>(out, static_cast<size_t>(m) * vocab), s);
    return;
  }
  // Rank k's slice of every row lands in columns [k * part, k * part + valid) of the rows.
  const int part = shard_.vocab_rows;
  for (int k = 0; k < shard_.size; ++k) {
    const int begin = k * part;
    const int valid = std::min(part, vocab - begin);
    SAGELLM_CUDA_CHECK(cudaMemcpy2DAsync(
        out + begin, sizeof(float) * vocab, gathered_.data() + static_cast<size_t>(k) * m * part,
        sizeof(float) * part, sizeof(float) * valid, m, cudaMemcpyDeviceToHost, s));
  }
}

void LlamaCudaModel::enqueue_sample(int r0, int m) {
  const int part = shard_.vocab_rows;
  gpu::SampleRowsParams p;
  p.rows = m;
  p.vocab = config_.vocab_size;
  p.row_stride = part;
  if (group_ == nullptr) {
    p.logits = logits_.data();
  } else {
    // Rank k's slice of row t is at gathered_ + (k * m + t) * part (as download_logits reads it).
    p.logits = gathered_.data();
    p.segment = part;
    p.segment_stride = static_cast<int64_t>(m) * part;
  }
  p.params = draw_params_.data() + r0;
  p.ids = draw_ids_.data() + r0;
  gpu::sample_rows(p, stream_.get());
}

void LlamaCudaModel::all_reduce(DeviceBuffer<uint16_t>& buf, int rows) {
  if (group_ == nullptr) return;
  group_->all_reduce_sum_bf16(shard_.rank, buf.data(),
                              static_cast<size_t>(rows) * config_.hidden_size, stream_.get());
}

double LlamaCudaModel::take_attention_seconds() {
  const double t = attention_seconds_;
  attention_seconds_ = 0;
  return t;
}

void LlamaCudaModel::enqueue_step(GpuKVCache& cache, CudaAttention& attention, int rows, int n_out,
                                  int seal_grid, const ActivationObserver& observer) {
  const io::ModelConfig& c = config_;
  const int h = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int inter = c.intermediate_size, vocab = c.vocab_size;
  const int qkv_dim = (nh + 2 * nkv) * d;
  const KVCacheShape& ks = cache.shape();
  const cudaStream_t s = stream_.get();
  const int32_t* d_ids = meta_.data();
  const int32_t* d_pos = d_ids + rows;
  const int32_t* d_page = d_pos + rows;
  const int32_t* d_slot = d_page + rows;
  const int32_t* d_out_rows = d_slot + rows;
  const bool int8 = cache.dtype() == KVCacheDType::kInt8;
  const int32_t* d_tail = d_out_rows + rows;  // 8-bit cache only, as are the two below
  const int32_t* d_live_jobs = d_tail + rows;
  const auto* d_jobs = reinterpret_cast<const sage_cuda::SageQuantJob*>(d_live_jobs + 1);

  const float eps = static_cast<float>(c.rms_norm_eps);
  bf16* resid = bf(resid_);
  bf16* delta = bf(delta_);
  bf16* xn = bf(xn_);
  bf16* qkv = bf(qkv_);
  bf16* att = bf(att_);
  if (group_ != nullptr) {
    // Vocab-parallel: each token's row comes from the rank holding it, zeros from the others.
    gpu::embedding_shard(bf(embed_), shard_.vocab_begin, shard_.vocab_rows, h, d_ids, rows, resid,
                         s);
    all_reduce(resid_, rows);
  } else {
    gpu::embedding(bf(embed_), vocab, h, d_ids, rows, resid, s);
  }

  std::vector<uint16_t> host_a, host_b;  // observer downloads
  std::vector<float> obs_hidden, obs_attn;
  for (int li = 0; li < c.num_layers; ++li) {
    const Layer& l = layers_[static_cast<size_t>(li)];
    if (li == 0) {
      gpu::rmsnorm(resid, bf(l.input_norm), xn, rows, h, eps, s);
    } else {
      gpu::add_rmsnorm(resid, delta, bf(l.input_norm), xn, rows, h, eps, s);
    }
    gpu::RopeParams rp;
    rp.q = qkv;
    rp.q_heads = nh;
    rp.q_row_stride = qkv_dim;
    rp.k = qkv + static_cast<int64_t>(nh) * d;
    rp.k_heads = nkv;
    rp.k_row_stride = qkv_dim;
    rp.rows = rows;
    rp.head_dim = d;
    rp.inv_freq = inv_freq_.data();
    rp.positions = d_pos;
    const bool timed = time_attention_ && !attention_events_.empty();
    const size_t ev = 2 * static_cast<size_t>(li);
    gpu::KVCacheWriteParams kw;
    kw.k = qkv + static_cast<int64_t>(nh) * d;
    kw.k_row_stride = qkv_dim;
    kw.v = qkv + static_cast<int64_t>(nh + nkv) * d;
    kw.v_row_stride = qkv_dim;
    // The 8-bit cache's k_layer / v_layer are its bf16 tail pool, indexed by tail slot; rows of
    // pages sealed this step have tail slot -1 and are skipped.
    kw.k_cache = reinterpret_cast<bf16*>(cache.k_layer(li));
    kw.v_cache = reinterpret_cast<bf16*>(cache.v_layer(li));
    kw.pages = int8 ? d_tail : d_page;
    kw.slots = d_slot;
    kw.rows = rows;
    kw.kv_heads = nkv;
    kw.head_dim = d;
    kw.page_size = ks.page_size;
    kw.num_pages = int8 ? cache.num_tail_slots() : ks.num_pages;
    const bool seal = int8 && seal_grid > 0;
    if (!seal && !timed) {
      // RoPE and the cache write in the projection's epilogue on the GEMV path (decode), in one
      // launch after it otherwise.
      gemm_.linear_rope_kv_write(xn, bf(l.qkv), qkv, rows, h, rp, kw, s);
    } else {
      // Apart when timed, so that the timed span (bench --attention-share) starts after RoPE.
      gemm_.linear(xn, bf(l.qkv), qkv, rows, qkv_dim, h, s);
      gpu::rope(rp, s);
      if (timed) SAGELLM_CUDA_CHECK(cudaEventRecord(attention_events_[ev], s));
    }
    if (seal) {
      // Before the tail write: a tail slot a seal gives up may be written by this step (see
      // kv_cache_step.h).
      sage_cuda::SageQuantParams qp;
      qp.jobs = d_jobs;
      qp.num_jobs = seal_grid;
      qp.live_jobs = d_live_jobs;
      qp.k_src = cache.k_layer(li);
      qp.v_src = cache.v_layer(li);
      qp.src_page_stride = cache.page_stride();
      qp.src_head_stride = cache.kv_head_stride();
      qp.k_new = qkv + static_cast<int64_t>(nh) * d;
      qp.v_new = qkv + static_cast<int64_t>(nh + nkv) * d;
      qp.k_new_row_stride = qkv_dim;
      qp.v_new_row_stride = qkv_dim;
      qp.dst8 = cache.pages8_layer(li);
      qp.dst_page_stride = cache.page8_stride();
      qp.dst_head_stride = cache.head8_stride();
      qp.num_kv_heads = nkv;
      qp.head_dim = d;
      qp.head_dim_padded = cache.head_dim_padded();
      qp.v_int8 = attention.kv_value_codes() == KVValueCodes::kInt8;
      sage_cuda::sage_quantize_pages_cuda(qp, s);
    }
    if (seal || timed) gpu::kv_cache_write(kw, s);
    attention.run(cache.layer(li), qkv, qkv_dim, att, s);
    if (timed) SAGELLM_CUDA_CHECK(cudaEventRecord(attention_events_[ev + 1], s));
    gemm_.linear(att, bf(l.o), delta, rows, h, nh * d, s);
    all_reduce(delta_, rows);
    gpu::add_rmsnorm(resid, delta, bf(l.post_norm), xn, rows, h, eps, s);
    gemm_.linear_swiglu(xn, bf(l.gate_up), bf(gate_up_), bf(act_), rows, inter, h, s);
    gemm_.linear(bf(act_), bf(l.down), delta, rows, h, inter, s);
    all_reduce(delta_, rows);
    if (observer) {
      // The residual stream after the layer is resid + delta; its add is folded into the next
      // layer's norm, so the observer gets it summed here in fp32.
      host_a.resize(static_cast<size_t>(rows) * h);
      host_b.resize(host_a.size());
      resid_.download_async(host_a, s);
      delta_.download_async(host_b, s);
      std::vector<uint16_t> host_att(static_cast<size_t>(rows) * nh * d);
      att_.download_async(host_att, s);
      stream_.synchronize();
      obs_hidden.resize(host_a.size());
      for (size_t i = 0; i < host_a.size(); ++i) {
        obs_hidden[i] = bf16_to_float(host_a[i]) + bf16_to_float(host_b[i]);
      }
      obs_attn.resize(host_att.size());
      for (size_t i = 0; i < host_att.size(); ++i) obs_attn[i] = bf16_to_float(host_att[i]);
      observer(LayerActivations{li, rows, obs_hidden, obs_attn});
    }
  }
  gpu::add_rmsnorm(resid, delta, bf(final_norm_), xn, rows, h, eps, s);
  // Gather the rows whose logits are wanted (the embedding kernel is a row gather); with every
  // row wanted they are xn itself.
  const bf16* normed = xn;
  if (n_out != rows) {
    gpu::embedding(xn, rows, h, d_out_rows, n_out, bf(sel_), s);
    normed = bf(sel_);
  }
  enqueue_lm_head(normed, std::min(kLogitsChunkRows, n_out));
}

}  // namespace sagellm
