// PendingInvalidations tells a translation whether an IOTLB hit can be
// stale: it counts a domain's unmaps from before they clear any PTE until
// the invalidation covering everything they cleared has been applied to the
// IOTLB (a flush-queue stripe counts once for all the unmaps it holds; see
// flush_queue.h). While it counts none, every IOTLB entry matches the page
// table (the IOTLB's fill protocol and the page table's unlink rules
// guarantee it), so a hit needs no check against the page table.
//
//   pending.Begin();                    // unmap, before clearing PTEs
//   ... clear PTEs, invalidate ...
//   pending.Complete(1);                // once the invalidation was applied
//
//   const uint64_t quiet = pending.QuietSince();   // translation
//   std::optional<IotlbEntry> hit = iotlb.Lookup(requester, iova);
//   if (hit && !pending.StillQuiet(quiet)) { ...check the hit... }
//
// Two monotonic counters, so no wrap-around can fake a quiet window:
// QuietSince() reads `begun`, then `completed`; StillQuiet() reads `begun`
// again. If both reads of `begun` agree and `completed` matched it, no unmap
// was between its PTE clear and its completed invalidation at any moment
// from the `completed` read to the second `begun` read, which is when the
// lookup ran. Every access is sequentially consistent: the argument relies
// on one total order of the counters' updates and these loads, and on
// Complete() releasing the invalidation to the `completed` read (a plain
// load on x86; the cost is in Begin and Complete, one locked add each).
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_CORE_IOMMU_PENDING_INVALIDATIONS_H_
#define IOMMU_BROKER_CORE_IOMMU_PENDING_INVALIDATIONS_H_

#include <atomic>
#include <cstdint>

namespace iommu_broker {

class PendingInvalidations final {
 public:
  // What QuietSince() returns when an invalidation is pending: StillQuiet()
  // is false for it. Never a count (2^64 unmaps do not happen).
  static constexpr uint64_t kPending = ~uint64_t{0};

  PendingInvalidations() = default;
  PendingInvalidations(const PendingInvalidations&) = delete;
  PendingInvalidations& operator=(const PendingInvalidations&) = delete;

  // An unmap is about to clear PTEs.
  void Begin() { begun_.fetch_add(1, std::memory_order_seq_cst); }
  // The invalidations covering `unmaps` earlier Begin() calls have been
  // applied: the IOTLB caches none of their ranges (or their unmaps removed
  // nothing). The emulated hardware may still be finishing them.
  void Complete(uint64_t unmaps) { completed_.fetch_add(unmaps, std::memory_order_seq_cst); }

  // Read before an IOTLB lookup: kPending if some unmap's invalidation is
  // pending now, otherwise a token for StillQuiet().
  uint64_t QuietSince() const {
    const uint64_t begun = begun_.load(std::memory_order_seq_cst);
    return completed_.load(std::memory_order_seq_cst) == begun ? begun : kPending;
  }
  // Read after the lookup: true if nothing was pending at any moment since
  // QuietSince() returned `token`.
  bool StillQuiet(uint64_t token) const {
    return token != kPending && begun_.load(std::memory_order_seq_cst) == token;
  }

 private:
  // One line for both: a translation reads them together.
  alignas(64) std::atomic<uint64_t> begun_{0};
  std::atomic<uint64_t> completed_{0};
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_PENDING_INVALIDATIONS_H_
