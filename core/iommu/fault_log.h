// FaultLog keeps the most recent translation faults of a domain (or of the
// whole IOMMU) in a bounded ring, and hands every new fault to subscribers,
// each through its own bounded queue (core/iommu/subscription.h) so that a
// slow subscriber loses faults (and is told how many) instead of slowing
// down DMA translation.
//
//   FaultLog log(/*capacity=*/1024);
//   std::shared_ptr<FaultSubscription> sub = log.Subscribe(/*queue_capacity=*/256);
//   log.Record(fault);                        // assigns fault.sequence and time
//   std::optional<Fault> next = sub->Next(absl::Seconds(1));
//
// A FaultLog may forward every fault it records to a parent log (a domain's
// log feeds the IOMMU-wide one). The root log numbers faults, so a sequence
// number names one fault broker-wide; a child's numbers increase but skip
// the other children's.
//
// Thread-safety: thread-safe. Record is on the fault path only (a mutex).
#ifndef IOMMU_BROKER_CORE_IOMMU_FAULT_LOG_H_
#define IOMMU_BROKER_CORE_IOMMU_FAULT_LOG_H_

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "core/iommu/publisher.h"
#include "core/iommu/subscription.h"
#include "core/iommu/types.h"

namespace iommu_broker {

using FaultSubscription = Subscription<Fault>;

class FaultLog final {
 public:
  // `capacity` >= 1 faults are kept; `parent` (optional) must outlive this.
  explicit FaultLog(size_t capacity, FaultLog* parent = nullptr);
  FaultLog(const FaultLog&) = delete;
  FaultLog& operator=(const FaultLog&) = delete;

  // Stamps `fault` with the root log's next sequence number and, if unset,
  // the current time; keeps it, delivers it, forwards it to the parent, and
  // returns its sequence number.
  uint64_t Record(Fault fault);

  // The kept faults, oldest first, with sequence > `after_sequence`.
  std::vector<Fault> Recent(uint64_t after_sequence = 0) const;
  uint64_t total() const;  // faults ever recorded here
  // Faults ever recorded here, indexed by FaultReason.
  std::array<uint64_t, kFaultReasonCount> TotalsByReason() const;

  std::shared_ptr<FaultSubscription> Subscribe(size_t queue_capacity);

 private:
  const size_t capacity_;
  FaultLog* const parent_;
  mutable std::mutex mutex_;
  std::deque<Fault> ring_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_) = 1;  // the root's numbering
  uint64_t recorded_ ABSL_GUARDED_BY(mutex_) = 0;
  std::array<uint64_t, kFaultReasonCount> by_reason_ ABSL_GUARDED_BY(mutex_) = {};
  Publisher<Fault> publisher_;  // taken after mutex_
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_FAULT_LOG_H_
