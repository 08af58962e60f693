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
// Mechanism (a two-phase grace period, as in SRCU): a guard increments a
// counter of the current phase on its thread's stripe and decrements it on
// exit. Reclaim() flips the phase, waits until every stripe's counter of the
// old phase is zero, and then frees everything retired before the flip: any
// guard that could have seen it entered in the old phase. Loads of published
// pointers must be seq_cst (a plain load on x86) for the argument to hold.
//
// Thread-safety: thread-safe. Guards nest. Reclaim() must not be called by a
// thread holding a Guard of the same reclaimer (it would wait for itself).
#ifndef IOMMU_BROKER_CORE_IOMMU_EPOCH_H_
#define IOMMU_BROKER_CORE_IOMMU_EPOCH_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"

namespace iommu_broker {

class EpochReclaimer final {
 public:
  // Retire() asks its caller to Reclaim() once this many objects wait.
  static constexpr size_t kAutoReclaimThreshold = 256;

  class Guard final {
   public:
    explicit Guard(EpochReclaimer& reclaimer);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    std::atomic<int64_t>* counter_;
  };

  EpochReclaimer() = default;
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
  static constexpr size_t kStripes = 16;
  struct alignas(64) Stripe {
    std::array<std::atomic<int64_t>, 2> active{};  // guards by phase
  };

  void WaitForGracePeriod();  // with reclaim_mutex_ held

  std::array<Stripe, kStripes> stripes_;
  std::atomic<uint32_t> phase_{0};
  std::mutex reclaim_mutex_;  // one grace period at a time
  mutable std::mutex retired_mutex_;
  std::vector<absl::AnyInvocable<void() &&>> retired_ ABSL_GUARDED_BY(retired_mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_EPOCH_H_
