// Asymmetric memory barriers: a fast side that runs often and pays only a
// compiler barrier, and a slow side that runs rarely and pays for a
// process-wide membarrier(2), which makes every thread's compiler barrier a
// full one (as liburcu's membarrier flavour and Linux's sys_membarrier users
// do).
//
//   const HeavyBarrier barrier = RegisterHeavyBarrier();   // once per owner
//   fast side:  flag.store(1, relaxed); LightBarrier(barrier); ...loads...
//   slow side:  ...stores...; IssueHeavyBarrier(barrier); ...load flag...
//
// Where membarrier is unavailable (old kernels, seccomp), both sides use
// sequentially consistent fences instead. ThreadSanitizer does not model
// fences (and GCC refuses atomic_thread_fence under it), so callers built
// with it use sequentially consistent atomics and never call these.
//
// Thread-safety: thread-safe; no state beyond the kernel's registration.
#ifndef IOMMU_BROKER_CORE_UTIL_HEAVY_BARRIER_H_
#define IOMMU_BROKER_CORE_UTIL_HEAVY_BARRIER_H_

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

#include "absl/base/optimization.h"

namespace iommu_broker {

// How the slow side's heavy barrier is made; chosen once per owner.
enum class HeavyBarrier {
  kMembarrier,  // membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
  kFence,       // both sides use std::atomic_thread_fence(seq_cst)
};

// Registers the process for expedited membarriers and returns kMembarrier,
// or kFence if the kernel refuses. Idempotent.
inline HeavyBarrier RegisterHeavyBarrier() {
#if defined(__SANITIZE_THREAD__)
  return HeavyBarrier::kFence;
#else
  return syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0
             ? HeavyBarrier::kMembarrier
             : HeavyBarrier::kFence;
#endif
}

#if !defined(__SANITIZE_THREAD__)
// The fast side: orders its earlier stores before its later loads once the
// slow side's IssueHeavyBarrier() has run.
inline void LightBarrier(HeavyBarrier barrier) {
  if (ABSL_PREDICT_TRUE(barrier == HeavyBarrier::kMembarrier)) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}

// The slow side: on return, every thread of the process has passed a full
// barrier since the call began (kMembarrier), or this thread has (kFence).
inline void IssueHeavyBarrier(HeavyBarrier barrier) {
  if (barrier == HeavyBarrier::kMembarrier) {
    syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}
#endif

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_HEAVY_BARRIER_H_
