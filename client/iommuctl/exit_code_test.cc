#include "client/iommuctl/exit_code.h"

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace iommu_broker::iommuctl {
namespace {

TEST(ExitCodeTest, UnavailableIsUnreachable) {
  EXPECT_EQ(ExitCodeForCallError(absl::UnavailableError("x"), false), ExitCode::kUnreachable);
  EXPECT_EQ(ExitCodeForCallError(absl::UnavailableError("x"), true), ExitCode::kUnreachable);
}

TEST(ExitCodeTest, DeadlineIsUnreachableOnlyWithoutAConnection) {
  EXPECT_EQ(ExitCodeForCallError(absl::DeadlineExceededError("x"), false),
            ExitCode::kUnreachable);
  EXPECT_EQ(ExitCodeForCallError(absl::DeadlineExceededError("x"), true), ExitCode::kRefused);
}

TEST(ExitCodeTest, TheBrokersRefusalsAreOne) {
  for (const absl::Status& status :
       {absl::NotFoundError("x"), absl::AlreadyExistsError("x"), absl::InvalidArgumentError("x"),
        absl::FailedPreconditionError("x"), absl::OutOfRangeError("x"),
        absl::PermissionDeniedError("x"), absl::ResourceExhaustedError("x")}) {
    EXPECT_EQ(ExitCodeForCallError(status, true), ExitCode::kRefused) << status;
  }
}

}  // namespace
}  // namespace iommu_broker::iommuctl
