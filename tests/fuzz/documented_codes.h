// The status codes the API documents for a request's answer or a Batch
// operation's (the error list of protos/iommu_broker/v1/iommu_broker.proto).
// The fuzz targets fail an input that gets any other: an INTERNAL or
// UNKNOWN is a bug.
//
// Thread-safety: stateless.
#ifndef IOMMU_BROKER_TESTS_FUZZ_DOCUMENTED_CODES_H_
#define IOMMU_BROKER_TESTS_FUZZ_DOCUMENTED_CODES_H_

#include "absl/status/status.h"

namespace iommu_broker {

inline bool DocumentedCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_TESTS_FUZZ_DOCUMENTED_CODES_H_
