// The process's resident memory, as the kernel counts it (Linux: /proc/self/statm, getrusage), and
// the GPU's memory in use (cudaMemGetInfo).
#pragma once

#include <cstddef>

namespace sagellm::eval::validate {

size_t current_rss_bytes();  // 0 when unavailable
size_t peak_rss_bytes();     // high-water mark of the whole process so far
size_t device_used_bytes();  // total - free of the current GPU; 0 without one

}  // namespace sagellm::eval::validate
