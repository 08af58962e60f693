// WatchReactor serves one WatchEvents stream: faults and/or invalidations
// (of one domain or all, optionally narrowed to one device) from bounded
// engine subscriptions, written as they arrive without blocking any thread.
// A watcher that reads too slowly loses events, and the next event says how
// many (dropped_before).
//
// Created by BrokerService::WatchEvents; gRPC owns it until OnDone, which
// closes its subscriptions, runs `on_done` and deletes it.
//
// Thread-safety: thread-safe. Events arrive on engine threads, write
// completions and cancellation on gRPC's; mutex_ orders them.
#ifndef IOMMU_BROKER_SERVER_WATCH_REACTOR_H_
#define IOMMU_BROKER_SERVER_WATCH_REACTOR_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "core/iommu/fault_log.h"
#include "core/iommu/subscription.h"
#include "core/iommu/types.h"
#include "grpcpp/support/server_callback.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "server/stoppable_stream.h"

namespace iommu_broker {

class WatchReactor final : public grpc::ServerWriteReactor<v1::Event>, public StoppableStream {
 public:
  using Invalidations = Subscription<InvalidationEvent>;

  // Either subscription may be null (not watched); `faults` holds only the
  // watched domain's faults already, `invalidations` every domain's. Empty
  // filters pass everything. With a device filter, `device_domain` is the
  // device's domain (empty: detached) as of after `invalidations` was
  // subscribed. `on_done` runs once in OnDone, before the reactor is
  // deleted.
  WatchReactor(std::shared_ptr<FaultSubscription> faults,
               std::shared_ptr<Invalidations> invalidations, std::string domain_filter,
               std::string device_filter, std::string device_domain,
               absl::AnyInvocable<void(StoppableStream*)> on_done);

  // Starts delivering; call once, after the reactor is registered.
  void Start();
  // Ends the stream with OK after the write in flight (broker shutdown).
  void Stop() override;

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Writes the next wanted event unless a write is in flight.
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The next wanted event into event_; false if none is queued.
  bool TakeFaultLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool TakeInvalidationLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Whether the filters pass `invalidation`; follows the watched device
  // from domain to domain as its own invalidations tell.
  bool WantedLocked(const InvalidationEvent& invalidation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::shared_ptr<FaultSubscription> faults_;
  const std::shared_ptr<Invalidations> invalidations_;
  const std::string domain_filter_;  // empty: every domain
  const std::string device_filter_;  // empty: every device
  absl::AnyInvocable<void(StoppableStream*)> on_done_;

  std::mutex mutex_;
  v1::Event event_ ABSL_GUARDED_BY(mutex_);
  // The watched device's domain: set at attach and move by the device's own
  // invalidation, which comes before any range invalidation of its new
  // domain. After a detach it stays the domain the device left, whose range
  // invalidations keep coming: harmless to a cache, which holds nothing of
  // a detached device.
  std::string device_domain_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  // Drops already reported, per subscription.
  uint64_t reported_fault_drops_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t reported_invalidation_drops_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_WATCH_REACTOR_H_
