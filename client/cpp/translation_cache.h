// TranslationCache is the page store of a device-side IOTLB (DeviceIotlb):
// IOVA page -> physical page, with the accesses (read, write) the broker
// has granted for it. It knows nothing of RPCs, so its coherence protocol
// can be tested on its own.
//
//   const uint64_t token = cache.FillToken();          // before asking the broker
//   ... translation = broker.Translate(page) ...
//   cache.Insert(token, page, phys, DmaAccess::kRead);  // dropped if an invalidation intervened
//   std::optional<uint64_t> phys = cache.Lookup(page, DmaAccess::kRead);
//   cache.MarkUnmapped(iova, size);    // fast: unmapped, invalidation pending
//   cache.InvalidateRange(iova, size);                 // as the broker says
//
// Fill protocol: an invalidation counts itself before it removes entries,
// and an insert checks the count under the same shard lock, so a fill that
// raced with an invalidation is dropped rather than resurrecting what the
// invalidation removed (the answer it carries may predate the unmap).
// Marking a range unmapped counts as an invalidation for fills too, so a
// page cached after its mark is never an unmarked stale page.
//
// Thread-safety: thread-safe; entries are sharded by page, each shard under
// its own lock.
#ifndef IOMMU_BROKER_CLIENT_CPP_TRANSLATION_CACHE_H_
#define IOMMU_BROKER_CLIENT_CPP_TRANSLATION_CACHE_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"

namespace iommu_broker::client {

enum class DmaAccess { kRead, kWrite };

struct TranslationCacheStats {
  uint64_t hits = 0;
  uint64_t stale_hits = 0;  // hits on pages marked unmapped (fast's window)
  uint64_t misses = 0;
  uint64_t fills = 0;          // inserts kept
  uint64_t dropped_fills = 0;  // inserts that raced with an invalidation
  // Invalidations (and unmapped marks) fully applied: once this reaches n,
  // the n-th one's pages are gone (marked) for every later lookup.
  uint64_t invalidations = 0;
  uint64_t entries = 0;
};

class TranslationCache final {
 public:
  static constexpr uint64_t kPageSize = 4096;

  // Holds at most about `max_pages` pages; past that an insert evicts
  // another page of its shard.
  explicit TranslationCache(size_t max_pages);
  TranslationCache(const TranslationCache&) = delete;
  TranslationCache& operator=(const TranslationCache&) = delete;

  struct CachedPage {
    uint64_t phys_page = 0;
    bool stale = false;  // marked unmapped: its invalidation is pending
  };

  // The physical page of `iova_page` (page-aligned), if cached with `access`
  // granted; counts a hit (and a stale hit) or a miss.
  std::optional<CachedPage> Lookup(uint64_t iova_page, DmaAccess access);

  // Read before asking the broker for a translation that will be inserted.
  uint64_t FillToken() const { return invalidations_.load(std::memory_order_seq_cst); }
  // Caches `iova_page` -> `phys_page` with `access` granted, unless an
  // invalidation began since `token` was read.
  void Insert(uint64_t token, uint64_t iova_page, uint64_t phys_page, DmaAccess access);

  // Marks every cached page overlapping [iova, iova + size) stale: the broker
  // unmapped it under fast and its invalidation comes with the next flush.
  // Until then the page still translates (as the broker's own IOTLB does),
  // and each such hit is counted.
  void MarkUnmapped(uint64_t iova, uint64_t size);
  // Drops every page overlapping [iova, iova + size).
  void InvalidateRange(uint64_t iova, uint64_t size);
  void InvalidateAll();

  TranslationCacheStats Stats() const;

 private:
  static constexpr size_t kShards = 16;

  struct Entry {
    uint64_t phys_page = 0;
    bool read = false;
    bool write = false;
    bool unmapped = false;  // see MarkUnmapped
  };
  struct alignas(64) Shard {
    mutable std::mutex mutex;
    absl::flat_hash_map<uint64_t, Entry> pages ABSL_GUARDED_BY(mutex);
    uint64_t hits ABSL_GUARDED_BY(mutex) = 0;
    uint64_t stale_hits ABSL_GUARDED_BY(mutex) = 0;
    uint64_t misses ABSL_GUARDED_BY(mutex) = 0;
    uint64_t fills ABSL_GUARDED_BY(mutex) = 0;
    uint64_t dropped_fills ABSL_GUARDED_BY(mutex) = 0;
  };

  Shard& ShardOf(uint64_t iova_page) { return shards_[(iova_page / kPageSize) % kShards]; }
  // Counts an invalidation (voiding fill tokens), then calls `drop(entry)`
  // for each cached page overlapping [iova, iova + size) and removes the
  // pages it returns true for, then counts it applied.
  template <typename Drop>
  void ForEachCachedPage(uint64_t iova, uint64_t size, Drop drop);

  const size_t max_pages_per_shard_;
  std::array<Shard, kShards> shards_;
  std::atomic<uint64_t> invalidations_{0};          // begun (the fill token)
  std::atomic<uint64_t> applied_invalidations_{0};  // ended (the stats)
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_TRANSLATION_CACHE_H_
