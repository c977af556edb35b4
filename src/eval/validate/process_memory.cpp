#include "eval/validate/process_memory.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "core/cuda_device.h"

namespace sagellm::eval::validate {

size_t current_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

size_t peak_rss_bytes() {
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<size_t>(u.ru_maxrss) * 1024;  // Linux reports kilobytes
}

size_t device_used_bytes() {
  if (cuda_device_count() == 0) return 0;
  const GpuMemoryInfo m = gpu_memory_info();
  return m.total - m.free;
}

}  // namespace sagellm::eval::validate
