#include "core/iommu/epoch.h"

#include <thread>
#include <utility>

namespace iommu_broker {

EpochReclaimer::EpochReclaimer() : barrier_(RegisterHeavyBarrier()) {}

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
  // Guards that might see what was unlinked before the flip are counted in
  // the old phase; wait for them to end.
  const uint32_t old_parity = phase_.fetch_add(1, std::memory_order_seq_cst) & 1;
#if !defined(__SANITIZE_THREAD__)
  IssueHeavyBarrier(barrier_);
#endif
  readers_.ForEach([old_parity](const Reader& reader) {
    while (reader.active[old_parity].load(std::memory_order_seq_cst) != 0) {
      std::this_thread::yield();
    }
  });
}

size_t EpochReclaimer::retired() const {
  std::lock_guard<std::mutex> lock(retired_mutex_);
  return retired_.size();
}

}  // namespace iommu_broker
