#include "server/status.h"

#include <string>

namespace iommu_broker {

static_assert(static_cast<int>(absl::StatusCode::kResourceExhausted) ==
                  static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED),
              "absl and gRPC status codes must share numbers");
static_assert(static_cast<int>(absl::StatusCode::kUnauthenticated) ==
                  static_cast<int>(grpc::StatusCode::UNAUTHENTICATED),
              "absl and gRPC status codes must share numbers");

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

void ToOperationStatus(const absl::Status& status, v1::OperationStatus* out) {
  out->set_code(static_cast<int32_t>(status.code()));
  out->set_message(std::string(status.message()));
}

}  // namespace iommu_broker
