// FlushQueue is the fast policy's deferred invalidation (Linux's DMA-FQ):
// unmapped ranges wait here, their PTEs already cleared, until a batch
// invalidation covers them; only then are their IOVAs released for reuse.
// A batch runs when a queue fills, when its oldest entry has waited
// `timeout` (FlushExpired, driven by a timer), or on Flush(). Each batch's
// wait is recorded in `latencies` (fast policy, by what triggered it).
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
// There is one queue per stripe of threads (as Linux has one per CPU), each
// holding up to `capacity` entries, so unmapping threads do not share a lock.
// A stripe is invalidated and released under its own lock, so Flush()
// returning means every entry queued before it has been invalidated.
//
// Pending invalidations: an unmap holds its stripe (Unmapping) from before
// it clears a PTE until its ranges are queued. A stripe is busy from the
// first Unmapping that finds it idle until its lock is released with nothing
// queued; each busy period is one Begin() and Complete(1) of `pending`, so
// translations know when an unmapped range may still be cached. An unmap
// into a busy stripe, the common case under load, touches no shared atomic.
//
// Thread-safety: thread-safe. `release` is called with a stripe lock held
// and must not call back into the queue; nor may a thread holding an
// Unmapping use the queue until it ends.
#ifndef IOMMU_BROKER_CORE_IOMMU_FLUSH_QUEUE_H_
#define IOMMU_BROKER_CORE_IOMMU_FLUSH_QUEUE_H_

#include <array>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/flush_latencies.h"
#include "core/iommu/invalidation_queue.h"
#include "core/iommu/iotlb.h"
#include "core/iommu/page_table.h"
#include "core/iommu/pending_invalidations.h"

namespace iommu_broker {

// Appends the invalidations that cover a removed mapping: one range
// descriptor per leaf size it used, since hardware matches invalidations
// against the leaf size that was mapped.
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
    std::lock_guard<std::mutex> lock_;
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
  static constexpr size_t kStripes = 8;

  struct alignas(64) Stripe {
    mutable std::mutex mutex;
    std::vector<PageTable::Removed> entries ABSL_GUARDED_BY(mutex);
    absl::Time oldest ABSL_GUARDED_BY(mutex);  // when the first entry arrived
    bool busy ABSL_GUARDED_BY(mutex) = false;  // counted in `pending_`
    uint64_t queued ABSL_GUARDED_BY(mutex) = 0;
    std::array<uint64_t, kFlushKinds> flushes ABSL_GUARDED_BY(mutex) = {};
  };

  void FlushStripe(Stripe& stripe, FlushKind kind) ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mutex);
  // Ends the stripe's busy period if nothing is queued; before its lock is
  // released.
  void SettleStripe(Stripe& stripe) ABSL_EXCLUSIVE_LOCKS_REQUIRED(stripe.mutex);

  const FlushQueueOptions options_;
  Iotlb& iotlb_;
  InvalidationQueue& invalidation_queue_;
  PendingInvalidations& pending_;
  FlushLatencies* const latencies_;
  Release release_;
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_FLUSH_QUEUE_H_
