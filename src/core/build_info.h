// What binary this is: the version and the commit it was configured from, for reports.
#pragma once

#include <string_view>

namespace sagellm {

std::string_view version();
std::string_view git_commit();  // "unknown" outside a git checkout

}  // namespace sagellm
