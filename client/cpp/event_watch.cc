#include "client/cpp/event_watch.h"

#include <memory>

#include "absl/time/clock.h"
#include "client/cpp/connection.h"

namespace iommu_broker::client {
namespace {

// The stream's headers carry no status: a call that failed to connect would
// look subscribed until its first read. Connecting first tells the two
// apart, failing as fast as a unary call does when nothing listens.
absl::Status AwaitConnection(grpc::Channel& channel, absl::Time deadline) {
  for (grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
       state != GRPC_CHANNEL_READY; state = channel.GetState(/*try_to_connect=*/true)) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
      return absl::UnavailableError("failed to connect to the broker");
    }
    if (!channel.WaitForStateChange(state, absl::ToChronoTime(deadline))) {
      return absl::DeadlineExceededError("still connecting to the broker at the deadline");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventWatch>> EventWatch::Open(
    const std::shared_ptr<grpc::Channel>& channel, v1::IommuBroker::StubInterface& stub,
    const v1::WatchEventsRequest& request, absl::Duration connect_deadline) {
  if (absl::Status status = AwaitConnection(*channel, absl::Now() + connect_deadline);
      !status.ok()) {
    return status;
  }
  std::unique_ptr<EventWatch> watch(new EventWatch());
  watch->reader_ = stub.WatchEvents(&watch->context_, request);
  // The broker sends its headers once the subscription exists.
  watch->reader_->WaitForInitialMetadata();
  return watch;
}

EventWatch::~EventWatch() {
  if (finished_.has_value()) return;
  Cancel();
  Finish().IgnoreError();  // gRPC requires a finished call before its context goes
}

bool EventWatch::Next(v1::Event* event) { return !finished_.has_value() && reader_->Read(event); }

void EventWatch::Cancel() { context_.TryCancel(); }

absl::Status EventWatch::Finish() {
  if (finished_.has_value()) return *finished_;
  v1::Event unread;
  while (reader_->Read(&unread)) {
  }
  finished_ = FromGrpcStatus(reader_->Finish());
  return *finished_;
}

}  // namespace iommu_broker::client
