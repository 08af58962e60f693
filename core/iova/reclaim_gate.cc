#include "core/iova/reclaim_gate.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <thread>

namespace iommu_broker {
#if !defined(__SANITIZE_THREAD__)
namespace {

long Membarrier(int command) { return syscall(__NR_membarrier, command, 0, 0); }

}  // namespace
#endif

HeavyBarrier RegisterHeavyBarrier() {
#if defined(__SANITIZE_THREAD__)
  return HeavyBarrier::kFence;
#else
  return Membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0 ? HeavyBarrier::kMembarrier
                                                                    : HeavyBarrier::kFence;
#endif
}

void ReclaimGate::BeginReclaim() {
#if defined(__SANITIZE_THREAD__)
  reclaiming_.store(1, std::memory_order_seq_cst);
  while (busy_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
#else
  reclaiming_.store(1, std::memory_order_relaxed);
  if (barrier_ == HeavyBarrier::kMembarrier) {
    Membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  // The owner's fast path is a bounded handful of instructions, so this waits
  // at most until the owner thread is scheduled again.
  while (busy_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
#endif
}

}  // namespace iommu_broker
