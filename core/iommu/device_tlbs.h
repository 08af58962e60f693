// DeviceTlbs is the registry of device-side IOTLB links (DeviceTlbPort), one
// per device at most, and the way invalidations reach them: a domain's range
// invalidations go to the linked caches of the devices attached to it, and
// a device's own invalidations (attach, detach) to its cache.
//
//   DeviceTlbs tlbs({.ack_timeout = absl::Seconds(1)});
//   std::shared_ptr<DeviceTlbPort> port = *tlbs.Link(device, /*capacity=*/4096);
//   std::shared_ptr<Completion> acked =
//       tlbs.SendToDomain(domain, events, [] { ...free the IOVAs... });
//   if (acked == nullptr) ...nobody to wait for: the action did not run...
//   tlbs.CutOffOverdue(absl::Now());   // from the maintenance thread
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_CORE_IOMMU_DEVICE_TLBS_H_
#define IOMMU_BROKER_CORE_IOMMU_DEVICE_TLBS_H_

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/completion.h"
#include "core/iommu/device.h"
#include "core/iommu/device_tlb_port.h"
#include "core/iommu/types.h"

namespace iommu_broker {

class Domain;

struct DeviceTlbOptions {
  // How long a paranoid unmap waits for a cache's acknowledgement before
  // cutting the cache off.
  absl::Duration ack_timeout = absl::Seconds(1);
};

class DeviceTlbs final {
 public:
  explicit DeviceTlbs(DeviceTlbOptions options) : options_(options) {}
  DeviceTlbs(const DeviceTlbs&) = delete;
  DeviceTlbs& operator=(const DeviceTlbs&) = delete;

  // A new link for `device`'s cache. ALREADY_EXISTS while another is linked
  // (one cache per device: acknowledgements must speak for all of it).
  absl::StatusOr<std::shared_ptr<DeviceTlbPort>> Link(std::shared_ptr<Device> device,
                                                      size_t capacity);

  // A hint for hot paths: false while no cache is linked.
  bool any_linked() const { return linked_.load(std::memory_order_acquire) > 0; }

  // Sends `events` to the caches of devices attached to `domain`. With an
  // `after_acks` action, returns a completion that runs it once each of
  // them acknowledged (or was cut off); returns null, without running it,
  // if no cache was sent anything.
  std::shared_ptr<Completion> SendToDomain(const Domain* domain,
                                           absl::Span<const InvalidationEvent> events,
                                           absl::AnyInvocable<void()> after_acks);
  // Sends `event` to `device`'s cache, if linked; waits for nothing.
  void SendToDevice(const Device& device, const InvalidationEvent& event);

  // Cuts off caches with an overdue acknowledgement; forgets closed ones.
  void CutOffOverdue(absl::Time now);
  // Closes every link (the broker is going away), releasing their waits.
  void CloseAll();

 private:
  // The linked ports matching `wanted`, with the lock released after.
  template <typename Predicate>
  std::vector<std::shared_ptr<DeviceTlbPort>> LinkedPorts(Predicate wanted);

  const DeviceTlbOptions options_;
  std::mutex mutex_;
  std::vector<std::shared_ptr<DeviceTlbPort>> ports_ ABSL_GUARDED_BY(mutex_);
  std::atomic<size_t> linked_{0};  // ports_.size()
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_DEVICE_TLBS_H_
