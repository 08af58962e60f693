// PageTable is one domain's I/O page table: a 4-level radix tree with a
// 4 KiB granule and 9 bits a level (x86-64 / Arm LPAE style, 48-bit IOVA),
// whose 64-bit entries are read and written atomically, so that walks,
// maps and unmaps of disjoint ranges run concurrently without a lock.
//
//   EpochReclaimer reclaimer;
//   PageTable table(reclaimer);
//   EpochReclaimer::Guard guard(reclaimer);        // around every call
//   table.Install({.iova = 0x200000, .phys = 0x40000000, .size = 0x200000,
//                  .perms = {true, true}, .page_sizes = kPage4K | kPage2M});  // one 2 MiB leaf
//   std::optional<PageTable::Leaf> leaf = table.Lookup(0x201234);
//   std::optional<PageTable::Removed> gone = table.Remove(0x200000, /*limit=*/0x400000);
//
// A mapping is a run of leaves, each as large as alignment and the allowed
// page sizes permit. Its first and last leaves are marked, so the table
// itself records where mappings begin and end (virtio-iommu's "unmap must not
// split a mapping") with no side structure; every leaf also carries the
// requester that mapped it and where its IOVA came from.
//
// Ownership rules, which make the lock-free updates safe:
//  - Install claims every leaf slot with a compare-and-swap (a non-translating
//    "claimed" entry) before publishing any of them, so it fails with no
//    effect if any part of the range is taken; it publishes the first leaf
//    last, so a mapping is visible to Remove only once complete. A one-leaf
//    mapping is published directly: with a compare-and-swap, or with a plain
//    store where the caller owns the range exclusively (Mapping::exclusive).
//  - Remove claims the mapping's first leaf with a compare-and-swap, so one
//    remover wins; it then owns the whole mapping and clears it, unlinking
//    every table whose span lies inside the mapping.
//  - Unlinked table pages go to the EpochReclaimer and are freed only when no
//    guard that could have seen them remains.
//  - Each thread remembers the last 4 KiB leaf table its installs walked to,
//    and uses it without a walk while no table has been unlinked since (a
//    table never moves, and every unlink is counted): for an exclusive
//    Install, and for Remove.
// Leaves of kClaimed origin (identity claims, outside the IOVA allocator)
// stay claimed after Remove, so nobody can reuse their IOVA until Release(),
// which the domain calls once the IOTLB invalidation covering them is done.
//
// Thread-safety: thread-safe, with every call made inside an
// EpochReclaimer::Guard of the reclaimer given at construction.
#ifndef IOMMU_BROKER_CORE_IOMMU_PAGE_TABLE_H_
#define IOMMU_BROKER_CORE_IOMMU_PAGE_TABLE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/functional/function_ref.h"
#include "core/iommu/epoch.h"
#include "core/iommu/types.h"
#include "core/util/per_thread.h"

namespace iommu_broker {

// Where a mapping's IOVA came from, hence how it is given back.
enum class IovaOrigin : uint8_t {
  kAllocated = 0,  // IovaAllocator::Allocate
  kReserved = 1,   // IovaAllocator::Reserve (caller-chosen IOVA)
  kClaimed = 2,    // claimed on the page table itself (identity region)
};

class PageTable final {
 public:
  // The largest requester id a leaf can record.
  static constexpr uint32_t kMaxOwner = 4095;

  struct Mapping {
    uint64_t iova = 0;
    uint64_t phys = 0;
    uint64_t size = 0;  // granule multiple; iova + size <= 2^48
    Perms perms;
    IovaOrigin origin = IovaOrigin::kAllocated;
    uint32_t owner = 0;  // requester id, <= kMaxOwner
    PageSizeSet page_sizes = kPage4K;
    // false: a table found where a huge leaf belongs (left empty by earlier
    // smaller mappings) is replaced by the leaf; true: descend into it
    // (claim regions, where the table may hold other claims).
    bool tables_may_be_shared = false;
    // true: the caller alone owns [iova, iova + size), as an IOVA from the
    // IOVA allocator is owned, so no other Install or table replacement can
    // target its slots. A one-leaf mapping is then published with a plain
    // store instead of a compare-and-swap (docs/PERFORMANCE.md).
    bool exclusive = false;
  };

  struct Leaf {
    uint64_t iova = 0;  // the leaf's base, aligned to size
    uint64_t phys = 0;
    uint64_t size = 0;  // kPage4K, kPage2M or kPage1G
    Perms perms;
    bool first = false;  // the mapping's first leaf
    bool last = false;   // the mapping's last leaf
    IovaOrigin origin = IovaOrigin::kAllocated;
    uint32_t owner = 0;
  };

  struct LeafCounts {
    uint64_t leaves_4k = 0;
    uint64_t leaves_2m = 0;
    uint64_t leaves_1g = 0;
  };

  struct Removed {
    uint64_t iova = 0;
    uint64_t size = 0;
    IovaOrigin origin = IovaOrigin::kAllocated;
    uint32_t owner = 0;
    PageSizeSet leaf_sizes = 0;  // the sizes of the leaves it used
    // Unlinked table pages are waiting: call EpochReclaimer::Reclaim() soon,
    // outside any guard.
    bool reclaim_due = false;
  };

  // Copies a Removed field by field. A Removed is written field by field
  // (scalar stores) and then copied along (into the domain's list, into a
  // flush queue); the compiler's default copy loads 16 bytes at a time across
  // those stores, which stalls on store forwarding on every unmap.
  static void CopyRemoved(const Removed& from, Removed& to) {
    to.iova = from.iova;
    std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps the copies apart
    to.size = from.size;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    to.origin = from.origin;
    to.owner = from.owner;
    to.leaf_sizes = from.leaf_sizes;
    to.reclaim_due = from.reclaim_due;
  }

  struct Census {
    LeafCounts leaves;           // translating leaves
    uint64_t claimed_slots = 0;  // claimed, non-translating entries
    uint64_t mappings = 0;       // translating first leaves
    uint64_t table_pages = 0;    // including the root
  };

  explicit PageTable(EpochReclaimer& reclaimer);
  // Frees every table page; no call may be running.
  ~PageTable();
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  // Maps [iova, iova + size) -> phys, or returns nullopt and changes nothing
  // if any slot of the range is taken (mapped, claimed, or where a leaf must
  // go, a table that cannot be replaced).
  std::optional<LeafCounts> Install(const Mapping& mapping);

  // The translating leaf covering `iova`, if any (none at or above 2^48).
  std::optional<Leaf> Lookup(uint64_t iova) const;
  // The first translating leaf intersecting [from, end), in address order.
  std::optional<Leaf> FindLeaf(uint64_t from, uint64_t end) const;

  // Removes the mapping whose first leaf is at `first_iova` if it ends at or
  // below `limit`. nullopt: no complete mapping starts there, it extends past
  // `limit` (left untouched), or a concurrent Remove won it.
  std::optional<Removed> Remove(uint64_t first_iova, uint64_t limit);
  // Removes the mapping covering exactly [iova, end), if there is one;
  // nullopt (nothing touched) if none starts at `iova` or it ends elsewhere.
  std::optional<Removed> RemoveExactly(uint64_t iova, uint64_t end);
  // Empties a kClaimed range kept claimed by Remove. Returns reclaim_due.
  bool Release(uint64_t iova, uint64_t size);

  // Visits every translating leaf in address order.
  void ForEachLeaf(absl::FunctionRef<void(const Leaf&)> visit) const;
  // Counts by walking the whole table: for tests and diagnostics.
  Census TakeCensus() const;
  uint64_t table_pages() const { return table_pages_.load(std::memory_order_relaxed); }

  struct TablePage;

 private:
  class Installer;

  // Publishes the leaf of a one-leaf mapping in `slot` if the slot is
  // empty; otherwise leaves it and sets `found` to what it holds. `found`
  // must be 0 on entry. `exclusive` as in Mapping.
  static bool PublishLeaf(std::atomic<uint64_t>& slot, uint64_t leaf, bool exclusive,
                          uint64_t& found);

  // This thread's last leaf table (level 0: the 4 KiB slots of one 2 MiB
  // span), kept across calls so that the DMA-API case, pages mapped and
  // unmapped near the last one, skips the walk from the root. Tables never
  // move, so one found by a walk stays where it was until it is unlinked:
  // the hint is good only while unlinks_ is what it was before that walk.
  struct alignas(64) LeafTableHint {
    std::atomic<uint64_t> span{~uint64_t{0}};  // `table`'s 2 MiB span: iova >> 21
    std::atomic<TablePage*> table{nullptr};
    std::atomic<uint64_t> unlinks{0};
  };
  // `iova`'s leaf table from this thread's hint, or nullptr. Safe to use
  // (a table no thread can unlink meanwhile) only for a range the caller
  // owns (an exclusive Install) and for Remove, which only acts on a
  // mapping it finds and wins: a table an unlink could take away holds
  // no leaf for either.
  TablePage* HintedLeafTable(uint64_t iova);
  // Makes `table`, which a walk that began when unlinks_ was `unlinks` found
  // for `iova`, this thread's hint.
  void RememberLeafTable(uint64_t iova, TablePage* table, uint64_t unlinks);
  // The table below `slot`, created if the slot is empty; nullptr if the
  // slot holds a leaf or a claim.
  TablePage* EnsureTable(std::atomic<uint64_t>& slot);
  // Hands an unlinked subtree to the reclaimer; returns reclaim_due.
  bool Unlink(TablePage* page, int level);
  // Removes the mapping whose first leaf is at `first_iova` if it ends in
  // [min_end, limit].
  std::optional<Removed> RemoveEndingIn(uint64_t first_iova, uint64_t min_end, uint64_t limit);
  // The slot that holds `iova`'s leaf (or the empty slot where a walk stops).
  std::atomic<uint64_t>* FindSlot(uint64_t iova, int* level) const;
  std::optional<Leaf> FindIn(const TablePage* page, int level, uint64_t from, uint64_t end) const;
  // Overwrites every leaf slot of an owned range with `claimed`.
  void ClaimRange(uint64_t begin, uint64_t end, uint64_t claimed);
  // Empties an owned range, unlinking the tables whose span it covers
  // (emptying their leaves first when `empty_unlinked`).
  bool Clear(TablePage* page, int level, uint64_t begin, uint64_t end, bool empty_unlinked);
  void Visit(const TablePage* page, int level, uint64_t base,
             absl::FunctionRef<void(uint64_t entry, uint64_t iova, int level)> visit) const;

  EpochReclaimer& reclaimer_;
  std::unique_ptr<TablePage> root_;
  std::atomic<uint64_t> table_pages_{1};
  std::atomic<uint64_t> unlinks_{0};  // tables ever unlinked
  PerThread<LeafTableHint> hints_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_PAGE_TABLE_H_
