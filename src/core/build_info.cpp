// The commit is defined for this file alone (CMakeLists.txt), so a new commit recompiles one file.
#include "core/build_info.h"

namespace sagellm {

std::string_view version() { return SAGELLM_VERSION; }
std::string_view git_commit() { return SAGELLM_GIT_COMMIT; }

}  // namespace sagellm
