// BrokerClient is the typed C++ client of iommu-brokerd: one method per
// unary RPC of iommu_broker.v1.IommuBroker, plus WatchEvents and the gRPC
// health check.
//
//   ConnectionOptions options;  // target: IOMMU_BROKER_TARGET or 127.0.0.1:50051
//   absl::StatusOr<std::unique_ptr<BrokerClient>> client = BrokerClient::Connect(options);
//   v1::CreateDomainRequest request;
//   request.mutable_domain()->set_id("vm1");
//   request.mutable_domain()->set_policy(v1::POLICY_FAST);
//   absl::StatusOr<v1::Domain> domain = (*client)->CreateDomain(request);
//
// Errors keep the broker's gRPC code and message (NOT_FOUND, ALREADY_EXISTS,
// ...; see docs/API.md). Every call carries options.deadline. Read-only calls
// (Get*, List*, Translate, GetStats) are retried on UNAVAILABLE up to
// options.read_retries times with exponential backoff; calls that change
// state never are, since a lost reply does not mean the change was lost.
//
// Thread-safety: thread-safe; share one client between threads.
#ifndef IOMMU_BROKER_CLIENT_CPP_BROKER_CLIENT_H_
#define IOMMU_BROKER_CLIENT_CPP_BROKER_CLIENT_H_

#include <memory>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/cpp/connection.h"
#include "client/cpp/event_watch.h"
#include "client/cpp/health.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::client {

class BrokerClient final {
 public:
  // Waits between retries; absl::SleepFor unless a test counts attempts.
  using Sleep = absl::AnyInvocable<void(absl::Duration) const>;

  // A client of options.target. Connecting is lazy: an unreachable broker
  // shows up as UNAVAILABLE on the first call.
  static absl::StatusOr<std::unique_ptr<BrokerClient>> Connect(ConnectionOptions options);
  // A client on an existing channel; options.target and TLS are ignored.
  BrokerClient(std::shared_ptr<grpc::Channel> channel, ConnectionOptions options,
               Sleep sleep = absl::SleepFor);
  BrokerClient(const BrokerClient&) = delete;
  BrokerClient& operator=(const BrokerClient&) = delete;

  // Domains.
  absl::StatusOr<v1::Domain> CreateDomain(const v1::CreateDomainRequest& request) const;
  absl::StatusOr<v1::DestroyDomainResponse> DestroyDomain(
      const v1::DestroyDomainRequest& request) const;
  absl::StatusOr<v1::Domain> GetDomain(const v1::GetDomainRequest& request) const;
  absl::StatusOr<v1::ListDomainsResponse> ListDomains(
      const v1::ListDomainsRequest& request) const;
  absl::StatusOr<v1::Domain> SetDomainPolicy(const v1::SetDomainPolicyRequest& request) const;

  // Devices.
  absl::StatusOr<v1::Device> RegisterDevice(const v1::RegisterDeviceRequest& request) const;
  absl::StatusOr<v1::Device> UpdateDevice(const v1::UpdateDeviceRequest& request) const;
  absl::StatusOr<v1::UnregisterDeviceResponse> UnregisterDevice(
      const v1::UnregisterDeviceRequest& request) const;
  absl::StatusOr<v1::AttachDeviceResponse> AttachDevice(
      const v1::AttachDeviceRequest& request) const;
  absl::StatusOr<v1::DetachDeviceResponse> DetachDevice(
      const v1::DetachDeviceRequest& request) const;
  absl::StatusOr<v1::Device> GetDevice(const v1::GetDeviceRequest& request) const;
  absl::StatusOr<v1::ListDevicesResponse> ListDevices(
      const v1::ListDevicesRequest& request) const;

  // Data path.
  absl::StatusOr<v1::MapResponse> Map(const v1::MapRequest& request) const;
  absl::StatusOr<v1::UnmapResponse> Unmap(const v1::UnmapRequest& request) const;
  absl::StatusOr<v1::TranslateResponse> Translate(const v1::TranslateRequest& request) const;
  absl::StatusOr<v1::FlushResponse> Flush(const v1::FlushRequest& request) const;

  // Counters.
  absl::StatusOr<v1::GetStatsResponse> GetStats(const v1::GetStatsRequest& request) const;

  // Subscribes to events (see event_watch.h); connecting is bounded by the
  // deadline, the stream itself is not.
  absl::StatusOr<std::unique_ptr<EventWatch>> WatchEvents(
      const v1::WatchEventsRequest& request) const;

  // grpc.health.v1 Check of `service` ("" is the broker as a whole).
  absl::StatusOr<ServingStatus> CheckHealth(absl::string_view service = "") const;

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  const ConnectionOptions& options() const { return options_; }

 private:
  template <typename Request, typename Response>
  using Method = grpc::Status (v1::IommuBroker::StubInterface::*)(grpc::ClientContext*,
                                                                  const Request&, Response*);
  enum class Retry { kNever, kOnUnavailable };

  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(Method<Request, Response> method, const Request& request,
                                Retry retry) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::IommuBroker::StubInterface> stub_;
  ConnectionOptions options_;
  Sleep sleep_;
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_BROKER_CLIENT_H_
