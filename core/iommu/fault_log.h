// FaultLog keeps the most recent translation faults of a domain (or of the
// whole IOMMU) in a bounded ring, and hands every new fault to subscribers,
// each through its own bounded queue so that a slow subscriber loses faults
// (and is told how many) instead of slowing down DMA translation.
//
//   FaultLog log(/*capacity=*/1024);
//   std::shared_ptr<FaultSubscription> sub = log.Subscribe(/*queue_capacity=*/256);
//   log.Record(fault);                        // assigns fault.sequence and time
//   std::optional<Fault> next = sub->Next(absl::Seconds(1));
//
// A FaultLog may forward every fault it records to a parent log (a domain's
// log feeds the IOMMU-wide one), keeping the parent's own sequence numbers.
//
// Thread-safety: thread-safe. Record is on the fault path only (a mutex).
#ifndef IOMMU_BROKER_CORE_IOMMU_FAULT_LOG_H_
#define IOMMU_BROKER_CORE_IOMMU_FAULT_LOG_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "core/iommu/types.h"

namespace iommu_broker {

class FaultSubscription final {
 public:
  explicit FaultSubscription(size_t capacity) : capacity_(capacity) {}
  FaultSubscription(const FaultSubscription&) = delete;
  FaultSubscription& operator=(const FaultSubscription&) = delete;

  // The oldest undelivered fault, waiting up to `timeout` for one; nullopt
  // on timeout or once Close() was called and the queue is empty.
  std::optional<Fault> Next(absl::Duration timeout);
  // Faults dropped because the queue was full, since subscribing.
  uint64_t dropped() const;
  // Wakes Next() callers and stops delivery (the log forgets closed subscriptions).
  void Close();
  bool closed() const;

 private:
  friend class FaultLog;
  // Queues `fault`, or counts it dropped if the queue is full. Returns false
  // (and does nothing) once closed, so the log can forget this subscription.
  bool Deliver(const Fault& fault);

  const size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Fault> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t dropped_ ABSL_GUARDED_BY(mutex_) = 0;
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

class FaultLog final {
 public:
  // `capacity` >= 1 faults are kept; `parent` (optional) must outlive this.
  explicit FaultLog(size_t capacity, FaultLog* parent = nullptr);
  FaultLog(const FaultLog&) = delete;
  FaultLog& operator=(const FaultLog&) = delete;

  // Stamps `fault` with this log's next sequence number and, if unset, the
  // current time; keeps it, delivers it, and forwards it to the parent.
  void Record(Fault fault);

  // The kept faults, oldest first, with sequence > `after_sequence`.
  std::vector<Fault> Recent(uint64_t after_sequence = 0) const;
  uint64_t total() const;  // faults ever recorded

  std::shared_ptr<FaultSubscription> Subscribe(size_t queue_capacity);

 private:
  const size_t capacity_;
  FaultLog* const parent_;
  mutable std::mutex mutex_;
  std::deque<Fault> ring_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_) = 1;
  std::vector<std::weak_ptr<FaultSubscription>> subscribers_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_FAULT_LOG_H_
