#include "core/iommu/fault_log.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/iommu/types.h"

namespace iommu_broker {

FaultLog::FaultLog(size_t capacity, FaultLog* parent)
    : capacity_(std::max<size_t>(capacity, 1)), parent_(parent) {}

uint64_t FaultLog::Record(Fault fault) {
  if (fault.time == absl::Time()) fault.time = absl::Now();
  std::lock_guard<std::mutex> lock(mutex_);
  // The root log numbers every fault, so a sequence names one fault
  // broker-wide. Taking the parent's lock under ours keeps this log's ring
  // (and its subscribers) in sequence order; a parent never calls a child.
  fault.sequence = parent_ != nullptr ? parent_->Record(fault) : next_sequence_++;
  ++recorded_;
  ++by_reason_[static_cast<size_t>(fault.reason)];
  ring_.push_back(fault);
  while (ring_.size() > capacity_) ring_.pop_front();
  // Published under mutex_ so that every subscriber sees faults in
  // sequence order even when several threads record at once.
  publisher_.Publish(fault);
  return fault.sequence;
}

std::vector<Fault> FaultLog::Recent(uint64_t after_sequence) const {
  std::lock_guard<std::mutex> lock(mutex_);
  // The ring is in sequence order.
  const auto first = std::upper_bound(
      ring_.begin(), ring_.end(), after_sequence,
      [](uint64_t sequence, const Fault& fault) { return sequence < fault.sequence; });
  return std::vector<Fault>(first, ring_.end());
}

std::array<uint64_t, kFaultReasonCount> FaultLog::TotalsByReason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return by_reason_;
}

uint64_t FaultLog::total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return recorded_;
}

std::shared_ptr<FaultSubscription> FaultLog::Subscribe(size_t queue_capacity) {
  return publisher_.Subscribe(queue_capacity);
}

}  // namespace iommu_broker
