// EpochReclaimer defers freeing memory that lock-free readers may still be
// looking at: page-table pages unlinked by an unmap while a translation walks
// them, or a destroyed domain that a concurrent map reached through its
// device. Readers wrap each access in a Guard; writers unlink the object
// first, then Retire() it; Reclaim() frees what no guard can still see.
//
//   {
//     EpochReclaimer::Guard guard(reclaimer);
//     ... load pointers published with seq_cst, dereference them ...
//   }
//   parent->store(nullptr, std::memory_order_seq_cst);   // unlink
//   reclaimer.Retire([page = std::move(page)] {});       // freed later
//   reclaimer.Reclaim();        // never while holding a Guard (it waits for guards)
//
// Mechanism (a two-phase grace period, as SRCU, with asymmetric barriers as
// liburcu's membarrier flavour). Every thread that takes a guard gets a
// Reader slot of its own (core/util/per_thread.h) holding a count of its
// guards per phase parity, which only that thread writes. A guard reads the phase, bumps its count
// with a plain store, issues a compiler barrier and re-reads the phase (if
// it changed meanwhile, the guard moves to the new phase); leaving, it
// stores the count back down. No atomic read-modify-write and no fence.
// Reclaim() flips the phase, issues a process-wide membarrier(2), which
// turns every reader's compiler barrier into a full one, waits until every
// slot's count of the old phase is zero, and frees everything retired before
// the flip. A guard whose bump the wait missed passed the membarrier's
// barrier before that bump, so its re-read sees the flip and moves it, and
// its loads see every unlink made before Reclaim() began. Guards counted per
// parity (not per thread) let a thread hold overlapping guards without
// starving Reclaim(). Loads of published pointers must be seq_cst (a plain
// load on x86) for the argument to hold under ThreadSanitizer, which does not
// model fences: there the slots are sequentially consistent atomics. Where
// membarrier is unavailable, both sides use sequentially consistent fences
// (core/util/heavy_barrier.h).
//
// Thread-safety: thread-safe. Guards nest and may overlap; a guard is
// destroyed on the thread that created it. Reclaim() and Synchronize() must
// not be called by a thread holding a Guard of the same reclaimer (it would
// wait for itself), and each issues a membarrier: a few microseconds.
#ifndef IOMMU_BROKER_CORE_IOMMU_EPOCH_H_
#define IOMMU_BROKER_CORE_IOMMU_EPOCH_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "core/util/heavy_barrier.h"
#include "core/util/per_thread.h"

namespace iommu_broker {

class EpochReclaimer final {
 private:
  struct Reader;

 public:
  // Retire() asks its caller to Reclaim() once this many objects wait.
  static constexpr size_t kAutoReclaimThreshold = 256;

  class Guard final {
   public:
    ABSL_ATTRIBUTE_ALWAYS_INLINE explicit Guard(EpochReclaimer& reclaimer)
        : reader_(reclaimer.ReaderForThisThread()), parity_(reclaimer.Enter(*reader_)) {}
    ABSL_ATTRIBUTE_ALWAYS_INLINE ~Guard() { Exit(*reader_, parity_); }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    Reader* const reader_;
    const uint32_t parity_;  // the phase parity it is counted in
  };

  EpochReclaimer();
  // Frees everything still retired; no guard may be alive.
  ~EpochReclaimer();
  EpochReclaimer(const EpochReclaimer&) = delete;
  EpochReclaimer& operator=(const EpochReclaimer&) = delete;

  // `release` runs (freeing the object it owns) once no guard that existed
  // before this call remains. Returns true when the caller should call
  // Reclaim() soon (many objects wait); Retire itself never waits.
  bool Retire(absl::AnyInvocable<void() &&> release);

  // Waits for a grace period and frees what was retired before it.
  void Reclaim();
  // Waits until every guard that exists now has ended (a grace period).
  // Used to make a change visible to all (e.g. a policy switch): every
  // operation that could have seen the old value has finished on return.
  void Synchronize();

  size_t retired() const;  // objects waiting to be freed

 private:
  // One thread's slot. Its counts are written by its thread only.
  struct alignas(64) Reader {
    std::array<std::atomic<uint64_t>, 2> active{};  // guards by phase parity
  };

  Reader* ReaderForThisThread() { return &readers_.Local(); }

  // Counts a guard in the current phase; returns its parity.
  uint32_t Enter(Reader& reader) {
    uint32_t phase = phase_.load(std::memory_order_acquire);
    while (true) {
      std::atomic<uint64_t>& count = reader.active[phase & 1];
#if defined(__SANITIZE_THREAD__)
      count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);
      const uint32_t now = phase_.load(std::memory_order_seq_cst);
#else
      count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      LightBarrier(barrier_);
      const uint32_t now = phase_.load(std::memory_order_acquire);
#endif
      // A flip since the first read may have missed this count: move to the
      // new phase, which the next grace period waits for.
      if (now == phase) return phase & 1;
      count.store(count.load(std::memory_order_relaxed) - 1, std::memory_order_release);
      phase = now;
    }
  }
  // Release: everything the guard read happens before a reclaimer sees the
  // count drop.
  static void Exit(Reader& reader, uint32_t parity) {
    std::atomic<uint64_t>& count = reader.active[parity];
    count.store(count.load(std::memory_order_relaxed) - 1, std::memory_order_release);
  }

  void WaitForGracePeriod();  // with reclaim_mutex_ held

  const HeavyBarrier barrier_;
  PerThread<Reader> readers_;
  alignas(64) std::atomic<uint32_t> phase_{0};
  std::mutex reclaim_mutex_;  // one grace period at a time
  mutable std::mutex retired_mutex_;
  std::vector<absl::AnyInvocable<void() &&>> retired_ ABSL_GUARDED_BY(retired_mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_EPOCH_H_
