#include "core/iommu/epoch.h"

#include <thread>
#include <utility>

#include "core/util/striped_counter.h"

namespace iommu_broker {

EpochReclaimer::Guard::Guard(EpochReclaimer& reclaimer) {
  Stripe& stripe = reclaimer.stripes_[ThisThreadStripe(kStripes)];
  // Re-check the phase after announcing: a guard that announced in the old
  // phase after Reclaim() finished waiting for it would be invisible to that
  // grace period, so it moves to the current phase instead.
  uint32_t phase = reclaimer.phase_.load(std::memory_order_seq_cst);
  while (true) {
    counter_ = &stripe.active[phase & 1];
    counter_->fetch_add(1, std::memory_order_seq_cst);
    const uint32_t now = reclaimer.phase_.load(std::memory_order_seq_cst);
    if (now == phase) return;
    counter_->fetch_sub(1, std::memory_order_seq_cst);
    phase = now;
  }
}

EpochReclaimer::Guard::~Guard() { counter_->fetch_sub(1, std::memory_order_seq_cst); }

EpochReclaimer::~EpochReclaimer() {
  std::vector<absl::AnyInvocable<void() &&>> retired;
  {
    std::lock_guard<std::mutex> lock(retired_mutex_);
    retired.swap(retired_);
  }
  for (auto& release : retired) std::move(release)();
}

bool EpochReclaimer::Retire(absl::AnyInvocable<void() &&> release) {
  std::lock_guard<std::mutex> lock(retired_mutex_);
  retired_.push_back(std::move(release));
  return retired_.size() >= kAutoReclaimThreshold;
}

void EpochReclaimer::Reclaim() {
  std::lock_guard<std::mutex> reclaim_lock(reclaim_mutex_);
  std::vector<absl::AnyInvocable<void() &&>> batch;
  {
    std::lock_guard<std::mutex> lock(retired_mutex_);
    batch.swap(retired_);
  }
  if (batch.empty()) return;
  // Everything in `batch` was unlinked before this grace period began.
  WaitForGracePeriod();
  for (auto& release : batch) std::move(release)();
}

void EpochReclaimer::Synchronize() {
  std::lock_guard<std::mutex> reclaim_lock(reclaim_mutex_);
  WaitForGracePeriod();
}

void EpochReclaimer::WaitForGracePeriod() {
  // Guards that might see what was unlinked before the flip announced
  // themselves in the old phase; wait for them to end.
  const uint32_t old_phase = phase_.fetch_add(1, std::memory_order_seq_cst);
  for (Stripe& stripe : stripes_) {
    while (stripe.active[old_phase & 1].load(std::memory_order_seq_cst) != 0) {
      std::this_thread::yield();
    }
  }
}

size_t EpochReclaimer::retired() const {
  std::lock_guard<std::mutex> lock(retired_mutex_);
  return retired_.size();
}

}  // namespace iommu_broker
