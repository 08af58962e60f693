#include "tests/temp_dir.h"

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace iommu_broker::testing {

TempDir::TempDir(absl::string_view prefix) {
  std::string pattern = absl::StrCat("/tmp/", prefix, ".XXXXXX");
  if (mkdtemp(pattern.data()) != nullptr) path_ = std::move(pattern);
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;  // a leftover directory in /tmp fails no test
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace iommu_broker::testing
