#include "client/iommuctl/exit_code.h"

namespace iommu_broker::iommuctl {

ExitCode ExitCodeForCallError(const absl::Status& status, bool connected) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return ExitCode::kOk;
    case absl::StatusCode::kUnavailable:
      return ExitCode::kUnreachable;
    case absl::StatusCode::kDeadlineExceeded:
      return connected ? ExitCode::kRefused : ExitCode::kUnreachable;
    default:
      return ExitCode::kRefused;
  }
}

}  // namespace iommu_broker::iommuctl
