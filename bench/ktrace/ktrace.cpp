// Kernel tracer for in-graph timings: a CUPTI injection library that writes one CSV row per
// kernel (start and end in ns, graph and graph node ids, grid, block, mangled name), kernels
// replayed from CUDA graphs included, without serializing them (CUPTI's concurrent-kernel
// records). For machines without Nsight Systems; decode_step.py turns a trace into a per-kernel
// breakdown of a decode step.
//
//   KTRACE_OUT=trace.csv CUDA_INJECTION64_PATH=build/gpu/libsagellm_ktrace.so sagellm bench ...
#include <cupti.h>

#include <cstdio>
#include <cstdlib>

namespace {

FILE* g_out = nullptr;
constexpr size_t kBufferBytes = size_t{8} << 20;

void report(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* msg = nullptr;
  cuptiGetResultString(r, &msg);
  std::fprintf(stderr, "ktrace: %s failed: %s\n", what, msg != nullptr ? msg : "?");
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    std::fprintf(g_out, "%llu,%llu,%u,%llu,%d,%d,%d,%d,%s\n",
                 static_cast<unsigned long long>(k->start), static_cast<unsigned long long>(k->end),
                 k->graphId, static_cast<unsigned long long>(k->graphNodeId), k->gridX, k->gridY,
                 k->gridZ, k->blockX, k->name);
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0) {
    std::fprintf(stderr, "ktrace: %zu records dropped\n", dropped);
  }
  std::free(buffer);
}

void finish() {
  report(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
  if (g_out != nullptr) std::fclose(g_out);
}

}  // namespace

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection() {
  const char* path = std::getenv("KTRACE_OUT");
  g_out = std::fopen(path != nullptr ? path : "ktrace.csv", "w");
  if (g_out == nullptr) {
    std::perror("ktrace: cannot open the output");
    return 0;
  }
  std::fprintf(g_out, "start_ns,end_ns,graph_id,graph_node_id,grid_x,grid_y,grid_z,block_x,name\n");
  report(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed),
         "cuptiActivityRegisterCallbacks");
  report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
  std::atexit(finish);
  return 1;
}
