#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <mutex>

#include "core/cuda_check.h"
#include "core/error.h"
#include "parallel/nccl_group.h"

namespace sagellm {

struct NcclApi {
  decltype(&::ncclGetVersion) get_version = nullptr;
  decltype(&::ncclGetErrorString) error_string = nullptr;
  decltype(&::ncclCommInitAll) comm_init_all = nullptr;
  decltype(&::ncclCommDestroy) comm_destroy = nullptr;
  decltype(&::ncclCommAbort) comm_abort = nullptr;
  decltype(&::ncclAllReduce) all_reduce = nullptr;
  decltype(&::ncclAllGather) all_gather = nullptr;
};

namespace {

template <typename F>
void resolve(void* lib, const char* name, F* out) {
  void* sym = dlsym(lib, name);
  SAGELLM_CHECK(sym != nullptr, "the NCCL library lacks {}: {}", name, dlerror());
  *out = reinterpret_cast<F>(sym);
}

// Loaded once per process and kept: NCCL keeps process-wide state.
const NcclApi& load_nccl() {
  static std::once_flag once;
  static NcclApi api;
  static std::string error;
  std::call_once(once, [] {
    const char* env = std::getenv("SAGELLM_NCCL_LIBRARY");
    const std::string path = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      error = fmt::format(
          "tensor parallelism needs NCCL, and {} could not be loaded ({}); install NCCL or set "
          "SAGELLM_NCCL_LIBRARY to the path of libnccl.so.2",
          path, dlerror());
      return;
    }
    try {
      resolve(lib, "ncclGetVersion", &api.get_version);
      resolve(lib, "ncclGetErrorString", &api.error_string);
      resolve(lib, "ncclCommInitAll", &api.comm_init_all);
      resolve(lib, "ncclCommDestroy", &api.comm_destroy);
      resolve(lib, "ncclCommAbort", &api.comm_abort);
      resolve(lib, "ncclAllReduce", &api.all_reduce);
      resolve(lib, "ncclAllGather", &api.all_gather);
    } catch (const Error& e) {
      error = e.what();
    }
  });
  SAGELLM_CHECK(error.empty(), "{}", error);
  return api;
}

}  // namespace

#define SAGELLM_NCCL_CHECK(expr)                                                            \
  do {                                                                                      \
    const ncclResult_t sagellm_nccl_rc_ = (expr);                                           \
    SAGELLM_CHECK(sagellm_nccl_rc_ == ncclSuccess, "NCCL error {} ({}) in {}",              \
                  static_cast<int>(sagellm_nccl_rc_), api_->error_string(sagellm_nccl_rc_), \
                  #expr);                                                                   \
  } while (0)

NcclGroup::NcclGroup(const std::vector<int>& devices) : api_(&load_nccl()) {
  SAGELLM_CHECK(!devices.empty(), "a tensor-parallel group needs at least one GPU");
  // NVLink multicast stays off: NCCL reads these when a communicator is made.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  setenv("NVSHMEM_DISABLE_NVLS", "1", 1);
  std::vector<ncclComm_t> comms(devices.size());
  SAGELLM_NCCL_CHECK(
      api_->comm_init_all(comms.data(), static_cast<int>(devices.size()), devices.data()));
  comms_.assign(comms.begin(), comms.end());
}

NcclGroup::~NcclGroup() {
  if (aborted_) return;
  for (void* c : comms_) (void)api_->comm_destroy(static_cast<ncclComm_t>(c));
}

std::string NcclGroup::version() const {
  int v = 0;
  if (api_->get_version(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z since 2.9.
  return fmt::format("{}.{}.{}", v / 10000, v / 100 % 100, v % 100);
}

void NcclGroup::all_reduce_sum_bf16(int rank, void* data, size_t count, cudaStream_t stream) {
  SAGELLM_CHECK(!aborted_, "the tensor-parallel group was aborted after an earlier error");
  SAGELLM_NCCL_CHECK(api_->all_reduce(data, data, count, ncclBfloat16, ncclSum,
                                      static_cast<ncclComm_t>(comms_.at(size_t(rank))), stream));
}

void NcclGroup::all_gather_f32(int rank, const float* in, float* out, size_t count,
                               cudaStream_t stream) {
  SAGELLM_CHECK(!aborted_, "the tensor-parallel group was aborted after an earlier error");
  SAGELLM_NCCL_CHECK(api_->all_gather(in, out, count, ncclFloat32,
                                      static_cast<ncclComm_t>(comms_.at(size_t(rank))), stream));
}

void NcclGroup::abort() {
  if (aborted_.exchange(true)) return;
  // ncclCommAbort also frees each communicator; the destructor leaves them alone after this.
  for (void* c : comms_) (void)api_->comm_abort(static_cast<ncclComm_t>(c));
}

}  // namespace sagellm
