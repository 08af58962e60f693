#include "client/cpp/health.h"

#include <algorithm>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/cpp/connection.h"
#include "google/protobuf/wrappers.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/impl/codegen/proto_utils.h"  // SerializationTraits of protobuf messages

namespace iommu_broker::client {
namespace {

constexpr char kCheckMethod[] = "/grpc.health.v1.Health/Check";
// Between WaitForServing's checks. A channel with nothing to connect to fails
// calls at once (and reconnects at its own pace); this keeps the loop from
// spinning on it.
constexpr absl::Duration kRecheckInterval = absl::Milliseconds(100);

// The health messages have one field each, numbered 1, so on the wire they
// are the well-known wrappers (an enum is a varint, as an int32 is):
//   HealthCheckRequest  { string service = 1; }        = StringValue
//   HealthCheckResponse { ServingStatus status = 1; }  = Int32Value
using HealthCheckRequest = google::protobuf::StringValue;
using HealthCheckResponse = google::protobuf::Int32Value;
using HealthStub = grpc::TemplatedGenericStub<HealthCheckRequest, HealthCheckResponse>;

}  // namespace

absl::string_view ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kUnknown:
      return "UNKNOWN";
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                          absl::string_view service, absl::Duration deadline) {
  HealthCheckRequest request;
  request.set_value(std::string(service));
  HealthCheckResponse response;
  grpc::ClientContext context;
  // The deadline bounds the wait below: the callback always runs.
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  // Shared with the callback, which may still be returning from set_value
  // when get() wakes this thread.
  auto done = std::make_shared<std::promise<grpc::Status>>();
  std::future<grpc::Status> result = done->get_future();
  HealthStub stub(channel);
  stub.UnaryCall(&context, kCheckMethod, grpc::StubOptions(), &request, &response,
                 [done](grpc::Status status) { done->set_value(std::move(status)); });
  const absl::Status status = FromGrpcStatus(result.get());
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("health check: ", status.message()));
  }
  return static_cast<ServingStatus>(response.value());
}

absl::StatusOr<ServingStatus> WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                                             absl::string_view service, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<ServingStatus> status =
        CheckHealth(channel, service, std::max(give_up - absl::Now(), absl::ZeroDuration()));
    if ((status.ok() && *status == ServingStatus::kServing) ||
        absl::Now() + kRecheckInterval > give_up) {
      return status;
    }
    absl::SleepFor(kRecheckInterval);
  }
}

}  // namespace iommu_broker::client
