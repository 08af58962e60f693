// DeviceIotlbReactor serves one LinkDeviceIotlb stream: a device-side
// IOTLB's link (core/iommu/device_tlb_port.h). The first message names the
// device; once linked, the reactor writes a first (empty) message to say
// so, then the engine's invalidations for the device as they arrive (several per message when they pile up) and the cache's
// acknowledgements are passed to the engine, which releases the unmaps
// waiting for them. If the engine cuts the cache off, the stream ends with
// the reason (DEADLINE_EXCEEDED: an acknowledgement was overdue;
// RESOURCE_EXHAUSTED: too many unread invalidations).
//
// Created by BrokerService::LinkDeviceIotlb; gRPC owns it until OnDone,
// which closes the link (releasing waits on it), runs `on_done` and deletes
// it.
//
// Thread-safety: thread-safe. Invalidations arrive on engine threads, reads,
// write completions and cancellation on gRPC's; mutex_ orders them. Lock
// order: the port's callback lock, then mutex_, then the port's own lock.
#ifndef IOMMU_BROKER_SERVER_DEVICE_IOTLB_REACTOR_H_
#define IOMMU_BROKER_SERVER_DEVICE_IOTLB_REACTOR_H_

#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "core/iommu/device_tlb_port.h"
#include "core/iommu/iommu.h"
#include "grpcpp/grpcpp.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "server/access_control.h"
#include "server/stoppable_stream.h"

namespace iommu_broker {

class DeviceIotlbReactor final
    : public grpc::ServerBidiReactor<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations>,
      public StoppableStream {
 public:
  // `queue_capacity`: unread invalidations the link may hold. `caller`
  // must be permitted the device the link names. `on_done` runs once in
  // OnDone, before the reactor is deleted.
  DeviceIotlbReactor(Iommu& iommu, size_t queue_capacity, Caller caller,
                     absl::AnyInvocable<void(StoppableStream*)> on_done);

  // Ends the stream with OK after the write in flight (broker shutdown).
  void Stop() override;

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // The first message: links the device's cache, or ends the stream.
  void Link();
  void Acknowledge(uint64_t sequence);
  // Writes what the port has queued unless a write is in flight; ends the
  // stream if the port was cut off or a finish is pending.
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Ends the stream once no write is in flight.
  void FinishWhenIdleLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  Iommu& iommu_;
  const size_t queue_capacity_;
  const Caller caller_;
  absl::AnyInvocable<void(StoppableStream*)> on_done_;
  v1::DeviceIotlbRequest request_;  // reads are serialized by gRPC

  std::mutex mutex_;
  std::shared_ptr<DeviceTlbPort> port_ ABSL_GUARDED_BY(mutex_);
  v1::DeviceIotlbInvalidations message_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool confirm_link_ ABSL_GUARDED_BY(mutex_) = false;  // the first message is due
  std::optional<grpc::Status> finish_with_ ABSL_GUARDED_BY(mutex_);  // once idle
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_DEVICE_IOTLB_REACTOR_H_
