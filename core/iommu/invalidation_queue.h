// InvalidationQueue emulates one IOMMU unit's invalidation queue, shared by
// every domain on that unit. Software posts invalidation descriptors and
// waits for them to complete; the emulated hardware makes the CPU wait a
// configurable cost (fixed per batch plus per descriptor, busy-waiting as a
// driver spinning on a wait descriptor does), and executes one batch at a
// time, so concurrent flushes wait for each other as they do on hardware.
//
//   InvalidationQueue queue({.fixed = absl::Microseconds(1)});
//   queue.Invalidate({InvalidationDescriptor::Range(&iotlb, iova, size, kPage4K)});
//
// Flush combining: descriptors posted while a batch runs go into the next
// batch, which one of the waiting callers then executes for all of them.
// When callers take turns (each arriving just after the other's batch
// started), the next leader, if alone in its batch while others have been
// unmapping (they shared the last batch, or another thread led it), first
// waits up to half the fixed cost for another caller to join; the caller
// that joins starts the batch at once. A caller whose batch another thread
// ran leaves as soon as it sees the batch complete, without taking the
// queue's lock again.
//
// Every caller returns only after a batch that started after its call has
// completed, which is exactly what strict (paranoid) unmap needs. A batch
// holding more than `max_batch_descriptors` descriptors is executed as one
// whole-domain invalidation per domain it touches instead (hardware caches
// are cheaper to drop than to walk once churn is high). A batch applies its
// descriptors first and then waits its cost; a caller can hear of the first
// moment too (Invalidate's `applied` hook).
//
// Between CPUs a cache line takes 100-150 ns to move on the virtual machines
// this was tuned on (docs/PERFORMANCE.md), longer than a whole fast-policy
// map and unmap, and a batch's round between two callers is a chain of such
// moves: the state a caller touches under the lock shares the lock's lines,
// a batch lists its callers' descriptors where they lie instead of copying
// them, and waiters spin on lines of their own that only leaders store to.
//
// Thread-safety: thread-safe. The IOTLBs named by descriptors must outlive
// the Invalidate call that names them.
#ifndef IOMMU_BROKER_CORE_IOMMU_INVALIDATION_QUEUE_H_
#define IOMMU_BROKER_CORE_IOMMU_INVALIDATION_QUEUE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/iotlb.h"
#include "core/util/log2_histogram.h"
#include "core/util/per_thread.h"

namespace iommu_broker {

// What one invalidation batch costs the CPU that waits for it.
struct InvalidationCost {
  absl::Duration fixed = absl::ZeroDuration();           // per batch (queue round trip)
  absl::Duration per_descriptor = absl::ZeroDuration();  // per descriptor executed
};

struct InvalidationDescriptor {
  enum class Kind { kRange, kRequester, kDomain };

  static InvalidationDescriptor Range(Iotlb* iotlb, uint64_t iova, uint64_t size,
                                      uint64_t granule) {
    return {Kind::kRange, iotlb, iova, size, granule, 0};
  }
  static InvalidationDescriptor Requester(Iotlb* iotlb, uint32_t requester) {
    return {Kind::kRequester, iotlb, 0, 0, 0, requester};
  }
  static InvalidationDescriptor Domain(Iotlb* iotlb) { return {Kind::kDomain, iotlb, 0, 0, 0, 0}; }
  // A whole-domain invalidation posted in place of `ranges` range
  // descriptors, too many for the queue to execute one by one (more than
  // max_batch_descriptors): the caller skips building them, and the batch
  // records them as posted and itself as promoted, as if it had.
  static InvalidationDescriptor DomainForRanges(Iotlb* iotlb, uint64_t ranges) {
    return {Kind::kDomain, iotlb, 0, 0, 0, 0, ranges};
  }

  Kind kind = Kind::kDomain;
  Iotlb* iotlb = nullptr;  // the domain's IOTLB
  uint64_t iova = 0;       // kRange
  uint64_t size = 0;       // kRange
  uint64_t granule = 0;    // kRange: the leaf size that was mapped
  uint32_t requester = 0;  // kRequester
  uint64_t posted_as = 1;  // descriptors this one stands for (DomainForRanges)
};

struct InvalidationQueueOptions {
  InvalidationCost cost;
  // false: every Invalidate call runs its own batch, one after another
  // (naive strict invalidation; the benchmarks' baseline).
  bool combine = true;
  size_t max_batch_descriptors = 64;
};

struct InvalidationQueueStats {
  uint64_t calls = 0;             // Invalidate calls completed
  uint64_t batches = 0;           // batches executed
  uint64_t descriptors = 0;       // descriptors executed (after domain promotion)
  uint64_t promoted_batches = 0;  // batches turned into whole-domain invalidations
  uint64_t busy_nanos = 0;        // emulated hardware time, summed
  uint64_t wait_nanos = 0;        // callers' time in Invalidate, summed (flush latency)
};

class InvalidationQueue final {
 public:
  explicit InvalidationQueue(InvalidationQueueOptions options);
  InvalidationQueue(const InvalidationQueue&) = delete;
  InvalidationQueue& operator=(const InvalidationQueue&) = delete;

  // Executes `descriptors` (possibly with other callers') in a batch that
  // starts after this call, and returns when that batch has completed.
  // An empty span still waits for a batch (a pure completion barrier).
  // Returns how long the caller waited, in nanoseconds (flush latency).
  uint64_t Invalidate(absl::Span<const InvalidationDescriptor> descriptors) {
    return Invalidate(descriptors, [] {});
  }
  // The same, and runs `applied` on the calling thread, once, before
  // returning but no earlier than the batch applied the descriptors to their
  // IOTLBs (which from then on cache none of the ranges): usually while the
  // emulated hardware is still busy, so that bookkeeping which needs only
  // that (a domain's PendingInvalidations) overlaps the wait.
  uint64_t Invalidate(absl::Span<const InvalidationDescriptor> descriptors,
                      absl::FunctionRef<void()> applied);

  void SetCost(InvalidationCost cost);
  InvalidationCost cost() const;
  InvalidationQueueStats Stats() const;
  size_t max_batch_descriptors() const { return max_batch_descriptors_; }
  // Descriptors per batch as posted (before promotion): 1, 2, 4, ... 1024.
  Log2Histogram::Snapshot BatchSizes() const { return batch_sizes_.Read(); }

 private:
  // A batch: each caller's descriptors, where the caller holds them until
  // the batch completes. Inline room for the callers of a typical batch, so
  // posting writes to the lines the lock brought rather than to a heap block
  // another CPU wrote last.
  using Batch = absl::InlinedVector<absl::Span<const InvalidationDescriptor>, 4>;

  // One Invalidate call waiting: the batch holding its descriptors (none yet
  // for a naive strict call, which runs its own) and its `applied` hook.
  struct Waiter {
    static constexpr uint64_t kNoBatch = ~uint64_t{0};
    uint64_t batch = kNoBatch;
    absl::FunctionRef<void()> applied;
    bool notified = false;

    void NotifyApplied() {
      if (notified) return;
      notified = true;
      applied();
    }
  };

  // What executing one batch did, for the stats.
  struct BatchResult {
    uint64_t descriptors = 0;  // executed, after promotion
    bool promoted = false;
    uint64_t busy_nanos = 0;  // emulated cost
  };

  // Executes `batch` as the next batch (the caller saw no batch executing)
  // and records its completion; the lock is released meanwhile.
  // `waiter` is the caller's own, whose descriptors are in `batch`.
  void RunBatch(std::unique_lock<std::mutex>& lock, const Batch& batch, Waiter& waiter)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Whether a caller about to run a batch alone should first wait for others
  // (GatherOthers): batches cost something and other threads were unmapping
  // lately. A lone unmapping thread never waits.
  bool ExpectCompany() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Before starting the waiter's batch alone when threads take turns at the
  // queue: waits (lock released) up to half the batch's fixed cost for
  // another caller to join and start it, so that the two share a batch instead of
  // alternating. Group commit's delay, bounded by the cost it saves. Returns
  // true, with the lock released, if that batch completed meanwhile; false
  // with the lock held otherwise.
  bool GatherOthers(std::unique_lock<std::mutex>& lock, Waiter& waiter)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Spins (a batch takes microseconds, a futex wake-up on a virtual machine
  // can take longer) until a batch later than `seen` completes or the spin
  // budget runs out; returns the last completed batch number it saw.
  // Notifies `waiter` if its batch applied meanwhile.
  uint64_t SpinForCompletion(uint64_t seen, Waiter& waiter) const;
  // Waits for the batch now executing to end: spins briefly, then sleeps.
  // Returns true, with the lock released, if that completed the waiter's
  // batch; false with the lock held otherwise.
  // A caller whose batch another thread ran thus leaves without the lock.
  bool AwaitBatchEnd(std::unique_lock<std::mutex>& lock, Waiter& waiter)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Runs batch `number` without holding mutex_: applies the descriptors
  // (promoted to whole-domain ones if there are too many), announces that,
  // then busy-waits its cost.
  BatchResult Execute(const Batch& batch, uint64_t number, InvalidationCost cost, Waiter& waiter);
  // Each thread's calls, so that a caller leaves without the lock.
  struct alignas(64) CallStats {
    std::atomic<int64_t> calls{0};
    std::atomic<int64_t> wait_nanos{0};
  };

  // Adds one executed batch to stats_.
  void RecordBatch(const BatchResult& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const bool combine_;
  const size_t max_batch_descriptors_;
  // The lock and, right after it, what a caller touches while holding it.
  alignas(64) mutable std::mutex mutex_;
  // The next batch to start (whose descriptors are being posted) and the
  // last one completed.
  uint64_t open_batch_number_ ABSL_GUARDED_BY(mutex_) = 1;
  uint64_t completed_batch_number_ ABSL_GUARDED_BY(mutex_) = 0;
  bool executing_ ABSL_GUARDED_BY(mutex_) = false;
  // Invalidate calls in the last batch started, and the thread that started it.
  size_t last_batch_callers_ ABSL_GUARDED_BY(mutex_) = 0;
  std::thread::id last_leader_ ABSL_GUARDED_BY(mutex_);
  Batch open_batch_ ABSL_GUARDED_BY(mutex_);
  InvalidationCost cost_ ABSL_GUARDED_BY(mutex_);
  std::condition_variable batch_done_;
  InvalidationQueueStats stats_ ABSL_GUARDED_BY(mutex_);  // calls, wait_nanos: call_stats_
  // The last batch started (announced only when batches cost something),
  // completed, and applied (announced only before an emulated wait),
  // readable without the mutex for spinning, away from the lock's lines;
  // only leaders write them.
  alignas(64) std::atomic<uint64_t> started_batches_{0};
  alignas(64) std::atomic<uint64_t> completed_batches_{0};
  std::atomic<uint64_t> applied_batches_{0};
  PerThread<CallStats> call_stats_;
  Log2Histogram batch_sizes_{/*first_bound=*/1, /*bounded_buckets=*/11};
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_INVALIDATION_QUEUE_H_
