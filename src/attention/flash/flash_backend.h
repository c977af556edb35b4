// `flash`: exact attention, the baseline the 8-bit backend is judged against.
#pragma once

#include <memory>

#include "attention/backend.h"

namespace sagellm {

std::unique_ptr<AttentionBackend> make_flash_backend(const AttentionOptions& options);

}  // namespace sagellm
