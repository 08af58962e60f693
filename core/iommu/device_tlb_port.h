// DeviceTlbPort is one device-side IOTLB's link to the broker: the
// translation cache of a device back-end (vhost-iotlb's model, or a PCIe
// device TLB under ATS). The broker sends it numbered invalidations; the
// cache applies them in order and acknowledges the highest number applied.
// A paranoid unmap waits (through a Completion) until every linked cache of
// its domain has acknowledged, so once the unmap returns no cache still
// translates what it removed, and only then are its IOVAs reused.
//
// A cache that leaves an acknowledgement overdue past the ack timeout, or
// lets `capacity` invalidations pile up unread, is cut off: its waits are
// released, its reader sees why (status()), and it must link again,
// starting empty. A slow cache thus costs an unmap at most the timeout.
//
//   // the cache's stream:
//   port->SetReadyCallback([&] { ...schedule a read... });
//   while (std::optional<DeviceTlbInvalidation> next = port->Next()) { ...send... }
//   port->Acknowledge(applied);         // as the cache reports
//   if (!port->status().ok()) { ...end the stream... }
//   port->Close();                      // the cache left
//
// Thread-safety: thread-safe. The ready callback runs on the sending
// thread, after the invalidations are queued and with no port lock held.
#ifndef IOMMU_BROKER_CORE_IOMMU_DEVICE_TLB_PORT_H_
#define IOMMU_BROKER_CORE_IOMMU_DEVICE_TLB_PORT_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/completion.h"
#include "core/iommu/device.h"
#include "core/iommu/types.h"

namespace iommu_broker {

// One invalidation for a device-side IOTLB, numbered from 1 per port.
struct DeviceTlbInvalidation {
  uint64_t sequence = 0;
  InvalidationEvent event;
};

class DeviceTlbPort final {
 public:
  DeviceTlbPort(std::shared_ptr<Device> device, size_t capacity, absl::Duration ack_timeout);
  DeviceTlbPort(const DeviceTlbPort&) = delete;
  DeviceTlbPort& operator=(const DeviceTlbPort&) = delete;

  const Device& device() const { return *device_; }

  // ---- The cache's side
  // The oldest unread invalidation, if any (never blocks).
  std::optional<DeviceTlbInvalidation> Next();
  // `on_ready` runs after invalidations are queued and when the port is
  // cut off; it must be quick and may call Next().
  void SetReadyCallback(absl::AnyInvocable<void()> on_ready);
  // The cache applied every invalidation up to `sequence`. INVALID_ARGUMENT
  // for a number not sent yet; acknowledging an old number is harmless.
  absl::Status Acknowledge(uint64_t sequence);
  // OK while linked; why the broker cut the port off, or CANCELLED once
  // closed.
  absl::Status status() const;
  // The cache leaves: releases its waits and stops deliveries. Waits for a
  // running ready callback, so it may refer to state freed after Close().
  void Close();

  // ---- The broker's side
  // Queues `events`. If `wait` is set it gets one Arrive() once the cache
  // acknowledged the last of them, or the port is cut off or closed.
  // Returns false, queueing and counting nothing, if the port is not linked.
  bool Send(absl::Span<const InvalidationEvent> events, const std::shared_ptr<Completion>& wait,
            absl::Time now);
  // Cuts the port off (DEADLINE_EXCEEDED) if an acknowledgement is overdue.
  void CutOffIfOverdue(absl::Time now);

 private:
  struct Wait {
    uint64_t sequence;  // released once this is acknowledged
    absl::Time deadline;
    std::shared_ptr<Completion> completion;
  };

  // Marks the port unlinked with `why` and hands back its waits, to be
  // released (Arrive) once the lock is dropped.
  std::vector<Wait> UnlinkLocked(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  static void Release(std::vector<Wait>& waits);
  void NotifyReady();

  const std::shared_ptr<Device> device_;
  const size_t capacity_;
  const absl::Duration ack_timeout_;

  mutable std::mutex mutex_;
  std::deque<DeviceTlbInvalidation> unread_ ABSL_GUARDED_BY(mutex_);
  std::deque<Wait> waits_ ABSL_GUARDED_BY(mutex_);  // by sequence
  uint64_t sent_ ABSL_GUARDED_BY(mutex_) = 0;       // highest sequence queued
  uint64_t acknowledged_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mutex_);

  // Held while on_ready_ runs; never taken inside mutex_.
  std::mutex callback_mutex_;
  absl::AnyInvocable<void()> on_ready_ ABSL_GUARDED_BY(callback_mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_DEVICE_TLB_PORT_H_
