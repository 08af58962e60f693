// CheckHealth asks the standard gRPC health service
// (grpc.health.v1.Health/Check) whether a service is serving; the broker
// answers for "" and "iommu_broker.v1.IommuBroker".
//
//   absl::StatusOr<ServingStatus> status = CheckHealth(channel, "", absl::Seconds(5));
//   if (status.ok() && *status == ServingStatus::kServing) ...
//
// WaitForServing asks again until the answer is SERVING, for a broker that is
// still starting.
//
// Debian's grpc++ ships the health service but no generated client stubs, so
// the call goes through a generic stub (see health.cc).
//
// Thread-safety: thread-safe; each call uses its own context.
#ifndef IOMMU_BROKER_CLIENT_CPP_HEALTH_H_
#define IOMMU_BROKER_CLIENT_CPP_HEALTH_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"

namespace iommu_broker::client {

// HealthCheckResponse.ServingStatus, by wire value.
enum class ServingStatus : int {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,  // Watch only; Check answers NOT_FOUND instead
};

// The protobuf enum name: "SERVING", "NOT_SERVING", ...
absl::string_view ServingStatusName(ServingStatus status);

// One Check call with `deadline`: the serving status, or the call's gRPC
// error (NOT_FOUND for an unknown service, UNAVAILABLE when nothing listens,
// DEADLINE_EXCEEDED past the deadline).
absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                          absl::string_view service, absl::Duration deadline);

// CheckHealth again and again until `service` is SERVING or `timeout` has
// passed: nothing listening yet and NOT_SERVING are waited out, not errors.
// SERVING, or the last answer or error.
absl::StatusOr<ServingStatus> WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                                             absl::string_view service, absl::Duration timeout);

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_HEALTH_H_
