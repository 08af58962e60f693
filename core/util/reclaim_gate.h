// ReclaimGate lets one owner thread use private state with no lock and no
// atomic read-modify-write, while other threads can still, rarely, take that
// state away from it (an asymmetric Dekker handshake).
//
// Owner, for each operation:
//   if (gate.EnterFast()) { ...use state...; gate.ExitFast(); }
//   else { ...take the mutex that reclaimers hold, use state... }
// Reclaimer, with that mutex held:
//   gate.BeginReclaim(); ...drain state...; gate.EndReclaim();
//
// The owner's side is a relaxed store, a compiler barrier and a load; the
// reclaimer's side pays for a process-wide membarrier(2) that makes the
// owner's barrier a full one. Where membarrier is unavailable (old kernels,
// seccomp), both sides use sequentially consistent fences instead. Under
// ThreadSanitizer, which does not model fences, the two flags are
// sequentially consistent atomics.
//
// Thread-safety: EnterFast/ExitFast only from the owner thread; BeginReclaim
// and EndReclaim from one reclaimer at a time (the caller's mutex).
#ifndef IOMMU_BROKER_CORE_UTIL_RECLAIM_GATE_H_
#define IOMMU_BROKER_CORE_UTIL_RECLAIM_GATE_H_

#include <atomic>
#include <cstdint>
#include <thread>

#include "absl/base/optimization.h"
#include "core/util/heavy_barrier.h"

namespace iommu_broker {

class ReclaimGate final {
 public:
  explicit ReclaimGate(HeavyBarrier barrier) : barrier_(barrier) {}
  ReclaimGate(const ReclaimGate&) = delete;
  ReclaimGate& operator=(const ReclaimGate&) = delete;

  // Owner: returns true if the owner may use its state until ExitFast();
  // false if a reclaim is pending or running (then use the locked path).
  bool EnterFast() {
#if defined(__SANITIZE_THREAD__)
    busy_.store(1, std::memory_order_seq_cst);
    if (reclaiming_.load(std::memory_order_seq_cst) == 0) return true;
#else
    busy_.store(1, std::memory_order_relaxed);
    LightBarrier(barrier_);
    if (ABSL_PREDICT_TRUE(reclaiming_.load(std::memory_order_acquire) == 0)) return true;
#endif
    busy_.store(0, std::memory_order_release);
    return false;
  }
  void ExitFast() { busy_.store(0, std::memory_order_release); }

  // Reclaimer: returns once the owner is outside its fast path and will stay
  // out of it until EndReclaim().
  void BeginReclaim() {
#if defined(__SANITIZE_THREAD__)
    reclaiming_.store(1, std::memory_order_seq_cst);
    while (busy_.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
#else
    reclaiming_.store(1, std::memory_order_relaxed);
    IssueHeavyBarrier(barrier_);
    // The owner's fast path is bounded, so this waits at most until the
    // owner thread is scheduled again and finishes it.
    while (busy_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
#endif
  }
  void EndReclaim() { reclaiming_.store(0, std::memory_order_release); }

 private:
  const HeavyBarrier barrier_;
  std::atomic<uint32_t> busy_{0};        // written by the owner only
  std::atomic<uint32_t> reclaiming_{0};  // written by reclaimers only
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_RECLAIM_GATE_H_
