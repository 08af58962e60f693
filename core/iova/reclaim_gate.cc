#include "core/iova/reclaim_gate.h"

#include <thread>

namespace iommu_broker {

void ReclaimGate::BeginReclaim() {
#if defined(__SANITIZE_THREAD__)
  reclaiming_.store(1, std::memory_order_seq_cst);
  while (busy_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
#else
  reclaiming_.store(1, std::memory_order_relaxed);
  IssueHeavyBarrier(barrier_);
  // The owner's fast path is a bounded handful of instructions, so this waits
  // at most until the owner thread is scheduled again.
  while (busy_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
#endif
}

}  // namespace iommu_broker
