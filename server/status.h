// The one place where the engine's errors become gRPC statuses. The core
// already chooses its absl::StatusCode by the API's conventions (see
// protos/iommu_broker/v1/iommu_broker.proto): INVALID_ARGUMENT for malformed
// input, NOT_FOUND for unknown ids, ALREADY_EXISTS for duplicates and
// overlaps, FAILED_PRECONDITION, OUT_OF_RANGE, PERMISSION_DENIED and
// RESOURCE_EXHAUSTED; absl and gRPC share code numbers, so the mapping keeps
// the code and the message.
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_SERVER_STATUS_H_
#define IOMMU_BROKER_SERVER_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker {

grpc::Status ToGrpcStatus(const absl::Status& status);
// The same status for one operation of a Batch.
void ToOperationStatus(const absl::Status& status, v1::OperationStatus* out);

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_STATUS_H_
