#include "core/iommu/fault_log.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/iommu/types.h"

namespace iommu_broker {
namespace {

// Timeouts at least this long wait without a deadline (avoids overflowing
// the clock arithmetic for absl::InfiniteDuration()).
constexpr absl::Duration kForever = absl::Hours(24 * 365);

}  // namespace

std::optional<Fault> FaultSubscription::Next(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return !queue_.empty() || closed_;
  };
  if (timeout >= kForever) {
    ready_.wait(lock, ready);
  } else if (timeout > absl::ZeroDuration()) {
    ready_.wait_for(lock, absl::ToChronoNanoseconds(timeout), ready);
  }
  if (queue_.empty()) return std::nullopt;
  Fault fault = std::move(queue_.front());
  queue_.pop_front();
  return fault;
}

uint64_t FaultSubscription::dropped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return dropped_;
}

void FaultSubscription::Close() {
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  ready_.notify_all();
}

bool FaultSubscription::closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_;
}

bool FaultSubscription::Deliver(const Fault& fault) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return false;
  if (queue_.size() >= capacity_) {
    // Keep the oldest: the reader sees an unbroken prefix and a count of
    // what followed it.
    ++dropped_;
    return true;
  }
  queue_.push_back(fault);
  ready_.notify_one();
  return true;
}

FaultLog::FaultLog(size_t capacity, FaultLog* parent)
    : capacity_(std::max<size_t>(capacity, 1)), parent_(parent) {}

void FaultLog::Record(Fault fault) {
  if (fault.time == absl::Time()) fault.time = absl::Now();
  // The parent numbers the fault itself; it gets what we were given.
  std::optional<Fault> forwarded;
  if (parent_ != nullptr) forwarded = fault;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fault.sequence = next_sequence_++;
    ring_.push_back(fault);
    while (ring_.size() > capacity_) ring_.pop_front();
    // Delivered under mutex_ so that every subscriber sees faults in sequence
    // order even when several threads record at once. Lock order is always
    // FaultLog::mutex_, then FaultSubscription::mutex_: a subscription never
    // calls into its log.
    std::erase_if(subscribers_, [&fault](const std::weak_ptr<FaultSubscription>& weak) {
      std::shared_ptr<FaultSubscription> subscription = weak.lock();
      return subscription == nullptr || !subscription->Deliver(fault);
    });
  }
  // Outside mutex_: the parent's lock is never taken while ours is held.
  if (forwarded.has_value()) parent_->Record(*std::move(forwarded));
}

std::vector<Fault> FaultLog::Recent(uint64_t after_sequence) const {
  std::lock_guard<std::mutex> lock(mutex_);
  // The ring is in sequence order.
  const auto first = std::upper_bound(
      ring_.begin(), ring_.end(), after_sequence,
      [](uint64_t sequence, const Fault& fault) { return sequence < fault.sequence; });
  return std::vector<Fault>(first, ring_.end());
}

uint64_t FaultLog::total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return next_sequence_ - 1;
}

std::shared_ptr<FaultSubscription> FaultLog::Subscribe(size_t queue_capacity) {
  auto subscription = std::make_shared<FaultSubscription>(queue_capacity);
  std::lock_guard<std::mutex> lock(mutex_);
  subscribers_.push_back(subscription);
  return subscription;
}

}  // namespace iommu_broker
