#include "client/cpp/broker_client.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/clock.h"

namespace iommu_broker::client {

using Stub = v1::IommuBroker::StubInterface;

absl::StatusOr<std::unique_ptr<BrokerClient>> BrokerClient::Connect(ConnectionOptions options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(options);
  if (!channel.ok()) return channel.status();
  return std::make_unique<BrokerClient>(*std::move(channel), std::move(options));
}

BrokerClient::BrokerClient(std::shared_ptr<grpc::Channel> channel, ConnectionOptions options,
                           Sleep sleep)
    : channel_(std::move(channel)),
      stub_(v1::IommuBroker::NewStub(channel_)),
      options_(std::move(options)),
      sleep_(std::move(sleep)) {}

template <typename Request, typename Response>
absl::StatusOr<Response> BrokerClient::Call(Method<Request, Response> method,
                                            const Request& request, Retry retry) const {
  absl::Duration backoff = options_.initial_backoff;
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.deadline));
    Response response;
    const grpc::Status status = (stub_.get()->*method)(&context, request, &response);
    if (status.ok()) return response;
    const bool retryable = retry == Retry::kOnUnavailable &&
                           status.error_code() == grpc::StatusCode::UNAVAILABLE &&
                           attempt < options_.read_retries;
    if (!retryable) return FromGrpcStatus(status);
    sleep_(backoff);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::StatusOr<v1::Domain> BrokerClient::CreateDomain(
    const v1::CreateDomainRequest& request) const {
  return Call(&Stub::CreateDomain, request, Retry::kNever);
}

absl::StatusOr<v1::DestroyDomainResponse> BrokerClient::DestroyDomain(
    const v1::DestroyDomainRequest& request) const {
  return Call(&Stub::DestroyDomain, request, Retry::kNever);
}

absl::StatusOr<v1::Domain> BrokerClient::GetDomain(const v1::GetDomainRequest& request) const {
  return Call(&Stub::GetDomain, request, Retry::kOnUnavailable);
}

absl::StatusOr<v1::ListDomainsResponse> BrokerClient::ListDomains(
    const v1::ListDomainsRequest& request) const {
  return Call(&Stub::ListDomains, request, Retry::kOnUnavailable);
}

absl::StatusOr<v1::Domain> BrokerClient::SetDomainPolicy(
    const v1::SetDomainPolicyRequest& request) const {
  return Call(&Stub::SetDomainPolicy, request, Retry::kNever);
}

absl::StatusOr<v1::Device> BrokerClient::RegisterDevice(
    const v1::RegisterDeviceRequest& request) const {
  return Call(&Stub::RegisterDevice, request, Retry::kNever);
}

absl::StatusOr<v1::Device> BrokerClient::UpdateDevice(
    const v1::UpdateDeviceRequest& request) const {
  return Call(&Stub::UpdateDevice, request, Retry::kNever);
}

absl::StatusOr<v1::UnregisterDeviceResponse> BrokerClient::UnregisterDevice(
    const v1::UnregisterDeviceRequest& request) const {
  return Call(&Stub::UnregisterDevice, request, Retry::kNever);
}

absl::StatusOr<v1::AttachDeviceResponse> BrokerClient::AttachDevice(
    const v1::AttachDeviceRequest& request) const {
  return Call(&Stub::AttachDevice, request, Retry::kNever);
}

absl::StatusOr<v1::DetachDeviceResponse> BrokerClient::DetachDevice(
    const v1::DetachDeviceRequest& request) const {
  return Call(&Stub::DetachDevice, request, Retry::kNever);
}

absl::StatusOr<v1::Device> BrokerClient::GetDevice(const v1::GetDeviceRequest& request) const {
  return Call(&Stub::GetDevice, request, Retry::kOnUnavailable);
}

absl::StatusOr<v1::ListDevicesResponse> BrokerClient::ListDevices(
    const v1::ListDevicesRequest& request) const {
  return Call(&Stub::ListDevices, request, Retry::kOnUnavailable);
}

absl::StatusOr<v1::MapResponse> BrokerClient::Map(const v1::MapRequest& request) const {
  return Call(&Stub::Map, request, Retry::kNever);
}

absl::StatusOr<v1::UnmapResponse> BrokerClient::Unmap(const v1::UnmapRequest& request) const {
  return Call(&Stub::Unmap, request, Retry::kNever);
}

// A translation changes no mapping (its fault is recorded, but a repeated
// fault is just another observation), so it is safe to repeat.
absl::StatusOr<v1::TranslateResponse> BrokerClient::Translate(
    const v1::TranslateRequest& request) const {
  return Call(&Stub::Translate, request, Retry::kOnUnavailable);
}

absl::StatusOr<v1::FlushResponse> BrokerClient::Flush(const v1::FlushRequest& request) const {
  return Call(&Stub::Flush, request, Retry::kNever);
}

absl::StatusOr<v1::GetStatsResponse> BrokerClient::GetStats(
    const v1::GetStatsRequest& request) const {
  return Call(&Stub::GetStats, request, Retry::kOnUnavailable);
}

absl::StatusOr<std::unique_ptr<EventWatch>> BrokerClient::WatchEvents(
    const v1::WatchEventsRequest& request) const {
  return EventWatch::Open(channel_, *stub_, request, options_.deadline);
}

absl::StatusOr<ServingStatus> BrokerClient::CheckHealth(absl::string_view service) const {
  return client::CheckHealth(channel_, service, options_.deadline);
}

}  // namespace iommu_broker::client
