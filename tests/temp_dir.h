// TempDir is a private directory under /tmp for one test, removed with
// everything in it when the TempDir is destroyed. Its path is short enough
// for a Unix socket in it (108 bytes at most).
//
//   TempDir dir("brokerd_test");
//   ASSERT_FALSE(dir.path().empty()) << "mkdtemp failed";
//   const std::string socket = absl::StrCat("unix:", dir.path(), "/broker.sock");
//
// Thread-safety: path() may be read from any thread.
#ifndef IOMMU_BROKER_TESTS_TEMP_DIR_H_
#define IOMMU_BROKER_TESTS_TEMP_DIR_H_

#include <string>

#include "absl/strings/string_view.h"

namespace iommu_broker::testing {

class TempDir final {
 public:
  // Creates /tmp/PREFIX.XXXXXX; path() is empty if that failed.
  explicit TempDir(absl::string_view prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace iommu_broker::testing

#endif  // IOMMU_BROKER_TESTS_TEMP_DIR_H_
