// FlushQueue is the fast policy's deferred invalidation (Linux's DMA-FQ):
// unmapped ranges wait here, their PTEs already cleared, until a batch
// invalidation covers them; only then are their IOVAs released for reuse.
// A batch runs when a queue fills, when its oldest entry has waited
// `timeout` (FlushExpired, driven by a timer), or on Flush(). Each batch's
// wait is recorded in `latencies` (fast policy, by what triggered it).
// A batch invalidates its ranges one by one, or, when they are more than the
// invalidation queue would walk (a full queue's are, by default), the whole
// IOTLB at once, as Linux's flush queue always does.
//
//   FlushQueue fq(options, iotlb, invalidation_queue, pending, &latencies,
//                 [&](absl::Span<const PageTable::Removed> done) { ...free IOVAs... });
//   {
//     FlushQueue::Unmapping unmapping(fq);   // before the unmap clears a PTE
//     ...clear PTEs...
//     unmapping.Enqueue(removed);            // may flush this thread's queue
//   }
//   fq.FlushExpired(absl::Now());  // from the timer
//   fq.Flush(FlushKind::kExplicit);  // everything queued before is invalidated and released
//
// Every thread that unmaps has a queue of its own (a stripe; Linux has one
// per CPU), holding up to `capacity` entries. Its owner uses it behind a
// ReclaimGate, with no lock and no atomic read-modify-write; Flush() and
// FlushExpired() take it over from any thread (its mutex, then the gate's
// reclaim, which waits for the owner to leave it), so Flush() returning means
// every entry queued before it has been invalidated. A thread's queue
// outlives the thread: the next thread to unmap takes it over, entries and
// all, and until then the timer or Flush() drains it.
//
// Pending invalidations: an unmap holds its stripe (Unmapping) from before
// it clears a PTE until its ranges are queued. A stripe is busy from the
// first Unmapping that finds it idle until a hold on it ends with nothing
// queued; each busy period is one Begin() and Complete(1) of `pending`, so
// translations know when an unmapped range may still be cached. An unmap
// into a busy stripe, the common case under load, touches no shared atomic.
//
// Thread-safety: thread-safe. `release` is called with a stripe held and
// must not call back into the queue; nor may a thread holding an Unmapping
// use the queue until it ends.
#ifndef IOMMU_BROKER_CORE_IOMMU_FLUSH_QUEUE_H_
#define IOMMU_BROKER_CORE_IOMMU_FLUSH_QUEUE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/flush_latencies.h"
#include "core/iommu/invalidation_queue.h"
#include "core/iommu/iotlb.h"
#include "core/iommu/page_table.h"
#include "core/iommu/pending_invalidations.h"
#include "core/util/heavy_barrier.h"
#include "core/util/per_thread.h"
#include "core/util/reclaim_gate.h"

namespace iommu_broker {

// The invalidations that cover a removed mapping: one range descriptor per
// leaf size it used, since hardware matches invalidations against the leaf
// size that was mapped. InvalidationsFor counts them; AppendInvalidations
// appends them.
size_t InvalidationsFor(const PageTable::Removed& removed);
void AppendInvalidations(const PageTable::Removed& removed, Iotlb& iotlb,
                         std::vector<InvalidationDescriptor>& descriptors);

struct FlushQueueOptions {
  size_t capacity = 256;                            // entries per queue
  absl::Duration timeout = absl::Milliseconds(10);  // longest wait before a batch
};

struct FlushQueueStats {
  uint64_t queued = 0;            // ranges ever queued
  uint64_t pending = 0;           // ranges waiting now
  uint64_t full_flushes = 0;      // batches because a queue filled
  uint64_t timeout_flushes = 0;   // batches because the oldest entry timed out
  uint64_t explicit_flushes = 0;  // batches from Flush(), of either kind
};

class FlushQueue final {
 private:
  struct Stripe;

 public:
  // Called once the ranges `done` are invalidated.
  using Release = absl::AnyInvocable<void(absl::Span<const PageTable::Removed> done)>;

  // One unmap's hold on this thread's stripe; see above.
  class Unmapping final {
   public:
    explicit Unmapping(FlushQueue& queue);
    ~Unmapping();
    Unmapping(const Unmapping&) = delete;
    Unmapping& operator=(const Unmapping&) = delete;

    // Queues ranges whose PTEs this unmap cleared.
    void Enqueue(absl::Span<const PageTable::Removed> removed);

   private:
    FlushQueue& queue_;
    Stripe& stripe_;
    const bool through_gate_;  // false: holds the stripe's mutex instead
  };

  // `latencies` may be null (nothing recorded).
  FlushQueue(FlushQueueOptions options, Iotlb& iotlb, InvalidationQueue& invalidation_queue,
             PendingInvalidations& pending, FlushLatencies* latencies, Release release);
  FlushQueue(const FlushQueue&) = delete;
  FlushQueue& operator=(const FlushQueue&) = delete;

  // `kind`: kExplicit or kDomainWide, for the latency record.
  void Flush(FlushKind kind);
  void FlushExpired(absl::Time now);

  FlushQueueStats Stats() const;

 private:
  // Who may touch `entries` and `busy`: the owner thread between a
  // successful gate.EnterFast() and ExitFast(), or a thread holding `mutex`
  // that is either the owner turned away by the gate or a reclaimer that
  // closed it (Seized). The atomics are written only by such a holder and
  // are read by anyone (Stats, FlushExpired's first look).
  struct alignas(64) Stripe {
    Stripe() : gate(RegisterHeavyBarrier()) {}

    std::mutex mutex;
    ReclaimGate gate;
    // The queued ranges are entries[0, used). Sized to the capacity on first
    // use, so that queuing one is a copy in place.
    std::vector<PageTable::Removed> entries;
    size_t used = 0;
    absl::Span<const PageTable::Removed> queued_entries() const { return {entries.data(), used}; }
    bool busy = false;                          // counted in `pending_`
    std::atomic<int64_t> oldest_unix_nanos{0};  // when the first queued entry arrived
    std::atomic<int64_t> waiting{0};            // used
    std::atomic<int64_t> queued{0};
    std::array<std::atomic<int64_t>, kFlushKinds> flushes{};
  };

  // A hold on a stripe from outside an Unmapping of it (any thread, its owner
  // included): the mutex, then the gate closed until the hold ends.
  class Seized final {
   public:
    explicit Seized(Stripe& stripe) : stripe_(stripe), lock_(stripe.mutex) {
      stripe_.gate.BeginReclaim();
    }
    ~Seized() { stripe_.gate.EndReclaim(); }
    Seized(const Seized&) = delete;
    Seized& operator=(const Seized&) = delete;

   private:
    Stripe& stripe_;
    std::lock_guard<std::mutex> lock_;
  };

  // Both with the stripe held.
  void FlushStripe(Stripe& stripe, FlushKind kind);
  // The invalidation that covers `entries`: their range descriptors, or one
  // whole-domain descriptor where the invalidation queue would promote them.
  std::vector<InvalidationDescriptor> DescriptorsFor(absl::Span<const PageTable::Removed> entries);
  // Ends the stripe's busy period if nothing is queued; before the hold ends.
  void SettleStripe(Stripe& stripe);

  const FlushQueueOptions options_;
  Iotlb& iotlb_;
  InvalidationQueue& invalidation_queue_;
  PendingInvalidations& pending_;
  FlushLatencies* const latencies_;
  Release release_;
  PerThread<Stripe> stripes_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_FLUSH_QUEUE_H_
