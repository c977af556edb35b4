// The process's resident memory, as the kernel counts it (Linux: /proc/self/statm, getrusage).
#pragma once

#include <cstddef>

namespace sagellm::eval::validate {

size_t current_rss_bytes();  // 0 when unavailable
size_t peak_rss_bytes();     // high-water mark of the whole process so far

}  // namespace sagellm::eval::validate
