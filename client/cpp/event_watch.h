// EventWatch is an open WatchEvents stream: the broker's faults and
// invalidations as they happen (see docs/API.md, "WatchEvents").
//
//   v1::WatchEventsRequest request;
//   request.set_faults(true);
//   absl::StatusOr<std::unique_ptr<EventWatch>> watch = client->WatchEvents(request);
//   v1::Event event;
//   while ((*watch)->Next(&event)) ...
//   absl::Status ended = (*watch)->Finish();  // OK when the broker shut down
//
// Open returns once the broker has answered: with its headers, sent once it
// has the subscription, so that no later event is missed; or with a refusal
// (an unknown domain or device), which the first Next and Finish report,
// since gRPC's headers do not tell the two apart. The stream has no
// deadline; Cancel ends it from another thread (e.g. on Ctrl-C), after which
// Next returns false and Finish CANCELLED.
//
// Thread-safety: Next and Finish belong to one thread; Cancel may be called
// from any thread, any number of times.
#ifndef IOMMU_BROKER_CLIENT_CPP_EVENT_WATCH_H_
#define IOMMU_BROKER_CLIENT_CPP_EVENT_WATCH_H_

#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"

namespace iommu_broker::client {

class EventWatch final {
 public:
  // Subscribes. Fails with UNAVAILABLE if the channel cannot connect, or
  // DEADLINE_EXCEEDED if it is still connecting after `connect_deadline`.
  static absl::StatusOr<std::unique_ptr<EventWatch>> Open(
      const std::shared_ptr<grpc::Channel>& channel, v1::IommuBroker::StubInterface& stub,
      const v1::WatchEventsRequest& request, absl::Duration connect_deadline);
  // Cancels the stream if it is still open.
  ~EventWatch();
  EventWatch(const EventWatch&) = delete;
  EventWatch& operator=(const EventWatch&) = delete;

  // The next event; false once the stream has ended (Finish says why).
  bool Next(v1::Event* event);
  // Ends the stream: a blocked Next returns false.
  void Cancel();
  // How the stream ended: OK when the broker shut down, CANCELLED after
  // Cancel, or the broker's error. Reads what is left first.
  absl::Status Finish();

 private:
  EventWatch() = default;

  grpc::ClientContext context_;  // outlives reader_
  std::unique_ptr<grpc::ClientReaderInterface<v1::Event>> reader_;
  std::optional<absl::Status> finished_;
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_EVENT_WATCH_H_
