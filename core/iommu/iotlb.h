// Iotlb emulates one domain's IOTLB: a set-associative cache of leaf
// translations, each entry tagged with the requester (device) that filled it
// and the page size that was mapped, so a 2 MiB leaf is one entry and is
// invalidated by one probe.
//
//   std::unique_ptr<Iotlb> iotlb = *Iotlb::Create({.sets = 64, .ways = 8}, kPage4K | kPage2M);
//   uint64_t token = iotlb->FillToken();            // before walking the table
//   ... walk, find leaf ...
//   iotlb->Insert(token, requester, leaf);          // dropped if an invalidation ran since
//   std::optional<IotlbEntry> hit = iotlb->Lookup(requester, iova);
//   iotlb->InvalidateRange(iova, size, kPage4K);    // entries of that size in the range
//
// Fill versus invalidation: hardware finishes in-flight walks before an
// invalidation completes. Here a walk that started before an invalidation
// must not insert what it read afterwards, so Insert takes the token read
// before the walk and drops the entry if any invalidation began since.
//
// Thread-safety: thread-safe. Lookups are lock-free (a seqlock per set);
// inserts and invalidations take a per-set spin lock, never a shared one.
#ifndef IOMMU_BROKER_CORE_IOMMU_IOTLB_H_
#define IOMMU_BROKER_CORE_IOMMU_IOTLB_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "core/iommu/types.h"
#include "core/util/per_thread.h"

namespace iommu_broker {

struct IotlbGeometry {
  uint32_t sets = 64;  // a power of two, 1..65536
  uint32_t ways = 8;   // 1..64
};

// A cached leaf: [iova, iova + page_size) -> [phys, phys + page_size).
struct IotlbEntry {
  uint64_t iova = 0;  // aligned to page_size
  uint64_t phys = 0;  // aligned to page_size
  uint64_t page_size = kPage4K;
  Perms perms;
};

struct IotlbStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t inserts = 0;
  uint64_t dropped_fills = 0;        // inserts refused by a newer invalidation
  uint64_t invalidated_entries = 0;  // valid entries removed by invalidations
  uint64_t evictions = 0;            // valid entries replaced by inserts
};

class Iotlb final {
 public:
  // Requester ids are in [1, kMaxRequester]; 0 is never valid.
  static constexpr uint32_t kMaxRequester = 4095;

  // INVALID_ARGUMENT naming the field if the geometry is out of range or
  // `page_sizes` holds anything but 4 KiB, 2 MiB and 1 GiB (4 KiB required).
  static absl::StatusOr<std::unique_ptr<Iotlb>> Create(IotlbGeometry geometry,
                                                       PageSizeSet page_sizes);
  ~Iotlb();
  Iotlb(const Iotlb&) = delete;
  Iotlb& operator=(const Iotlb&) = delete;

  // The entry of `requester` covering `iova`, probing each page size the
  // domain supports that was ever inserted; counts a hit or a miss.
  std::optional<IotlbEntry> Lookup(uint32_t requester, uint64_t iova) {
    IotlbEntry entry;
    if (!Lookup(requester, iova, entry)) return std::nullopt;
    return entry;
  }
  // The same, writing a hit to `entry` field by field: for the translation
  // path, where copying a returned optional out of memory stalls on store
  // forwarding.
  bool Lookup(uint32_t requester, uint64_t iova, IotlbEntry& entry);

  // Read before a page walk whose result will be inserted.
  uint64_t FillToken() const;
  // Caches `entry` for `requester` unless an invalidation began after
  // `token` was read. Replaces an invalid way first, else round-robin.
  void Insert(uint64_t token, uint32_t requester, const IotlbEntry& entry);

  // Removes every entry of size `granule` (any requester) whose page lies in
  // [iova, iova + size): one probe per granule-sized page, or one sweep of
  // the whole cache when that is fewer entries to look at.
  void InvalidateRange(uint64_t iova, uint64_t size, uint64_t granule);
  // Removes every entry that `requester` filled.
  void InvalidateRequester(uint32_t requester);
  // Removes every entry.
  void InvalidateAll();

  IotlbGeometry geometry() const { return geometry_; }
  IotlbStats Stats() const;

 private:
  // A set is `words_per_set_` words starting on a cache line, so no two sets
  // share a line (see iotlb.cc for the layout); a set is named by its first
  // word.
  using SetWord = std::atomic<uint64_t>;
  // Statistics, one slot per thread (core/util/per_thread.h), so that
  // lookups count with plain stores.
  struct alignas(64) Counts {
    std::atomic<int64_t> hits{0};
    std::atomic<int64_t> misses{0};
    std::atomic<int64_t> inserts{0};
    std::atomic<int64_t> dropped_fills{0};
    std::atomic<int64_t> invalidated_entries{0};
    std::atomic<int64_t> evictions{0};
  };

  Iotlb(IotlbGeometry geometry, PageSizeSet page_sizes);

  // The set caching a page of size 1 << shift.
  SetWord* SetOf(uint64_t page_number, unsigned shift) const;
  // The way of `set` holding `tag`, or -1. Loads the tags with `order`.
  int FindWay(SetWord* set, uint64_t tag, std::memory_order order) const;
  // A seqlock read: true and the value word if `set` holds `tag`.
  bool Probe(SetWord* set, uint64_t tag, uint64_t* value) const;
  // The set's spin lock: returns the (even) sequence it was locked at.
  static uint64_t LockSet(SetWord* set);
  static void UnlockSet(SetWord* set, uint64_t locked_at, bool modified);
  // Under the set's lock, clears every valid way whose tag satisfies `match`
  // (a function of the tag word); returns how many.
  template <typename Match>
  uint64_t InvalidateInSet(SetWord* set, const Match& match);
  // True if `set` holds no valid way satisfying `match` and no insert can
  // still add one that an invalidation begun before this call must remove:
  // a seqlock read, taking no lock.
  template <typename Match>
  bool NothingToInvalidate(SetWord* set, const Match& match) const;
  template <typename Match>
  void InvalidateEverywhere(const Match& match);

  const IotlbGeometry geometry_;
  const PageSizeSet page_sizes_;
  const uint32_t words_per_set_;  // whole lines
  // Page shifts Lookup probes, smallest first; num_probe_shifts_ are used.
  std::array<uint8_t, 3> probe_shifts_{};
  int num_probe_shifts_ = 0;
  // The sets, one after another, from the first line boundary of storage_.
  std::unique_ptr<SetWord[]> storage_;
  SetWord* const sets_;
  // The page sizes ever inserted: Lookup skips probing the others (a miss
  // is always a correct answer), so a domain that allows huge pages but maps
  // none pays one probe per miss, not three. Set once per size, then only
  // read.
  std::atomic<PageSizeSet> sizes_inserted_{0};
  // Bumped when any invalidation begins (see FillToken). On a line of its
  // own: invalidations write it, while every lookup reads the fields above.
  alignas(64) std::atomic<uint64_t> invalidations_begun_{0};
  PerThread<Counts> counts_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_IOTLB_H_
