#include "core/iommu/page_table.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/container/inlined_vector.h"

namespace iommu_broker {
namespace {

constexpr int kLevels = 4;  // level 3 (root, 512 GiB entries) ... level 0 (4 KiB leaves)
constexpr int kRootLevel = kLevels - 1;
constexpr int kEntries = 512;

// Entry layout. Bits 12-51 hold a physical frame (leaves) or a table page's
// address (tables); the requester that mapped a leaf sits in bits 52-63.
constexpr uint64_t kPresent = uint64_t{1} << 0;  // a leaf that translates
constexpr uint64_t kRead = uint64_t{1} << 1;
constexpr uint64_t kWrite = uint64_t{1} << 2;
constexpr uint64_t kTable = uint64_t{1} << 3;    // points to the next level
constexpr uint64_t kClaimed = uint64_t{1} << 4;  // owned, does not translate
constexpr uint64_t kFirst = uint64_t{1} << 5;
constexpr uint64_t kLast = uint64_t{1} << 6;
constexpr int kOriginShift = 7;  // 2 bits
// A translating first leaf whose mapping a Remove is measuring: it still
// translates, and no other Remove can take it.
constexpr uint64_t kRemoving = uint64_t{1} << 9;
constexpr uint64_t kAddressMask = 0x000f'ffff'ffff'f000;
constexpr int kOwnerShift = 52;

constexpr int Shift(int level) { return 12 + 9 * level; }
constexpr uint64_t Span(int level) { return uint64_t{1} << Shift(level); }
constexpr int Index(uint64_t iova, int level) {
  return static_cast<int>((iova >> Shift(level)) & (kEntries - 1));
}

uint64_t OwnershipBits(IovaOrigin origin, uint32_t owner) {
  return (static_cast<uint64_t>(origin) << kOriginShift) |
         (static_cast<uint64_t>(owner & PageTable::kMaxOwner) << kOwnerShift);
}

}  // namespace

struct alignas(4096) PageTable::TablePage {
  std::array<std::atomic<uint64_t>, kEntries> entries{};
};

namespace {

using TablePage = PageTable::TablePage;

TablePage* TableOf(uint64_t entry) { return reinterpret_cast<TablePage*>(entry & kAddressMask); }

uint64_t TableEntry(TablePage* page) {
  const uint64_t address = reinterpret_cast<uint64_t>(page);
  // Table pages are 4 KiB-aligned heap objects; user-space addresses fit in
  // the 40 address bits with room to spare.
  if ((address & ~kAddressMask) != 0) std::abort();
  return address | kTable;
}

// Frees a table page and everything below it.
void DestroySubtree(std::unique_ptr<TablePage> page, int level) {
  if (level == 0) return;
  for (std::atomic<uint64_t>& slot : page->entries) {
    const uint64_t entry = slot.load(std::memory_order_relaxed);
    if (entry & kTable) DestroySubtree(std::unique_ptr<TablePage>(TableOf(entry)), level - 1);
  }
}

uint64_t CountPages(const TablePage* page, int level) {
  uint64_t pages = 1;
  if (level == 0) return pages;
  for (const std::atomic<uint64_t>& slot : page->entries) {
    const uint64_t entry = slot.load(std::memory_order_relaxed);
    if (entry & kTable) pages += CountPages(TableOf(entry), level - 1);
  }
  return pages;
}

// Stores 0 over every leaf below `page` (its tables stay linked to it).
void EmptyLeaves(TablePage* page, int level) {
  for (std::atomic<uint64_t>& slot : page->entries) {
    const uint64_t entry = slot.load(std::memory_order_relaxed);
    if ((entry & kTable) && level > 0) {
      EmptyLeaves(TableOf(entry), level - 1);
    } else if (entry != 0) {
      slot.store(0, std::memory_order_release);
    }
  }
}

bool SubtreeIsEmpty(const TablePage* page, int level) {
  for (const std::atomic<uint64_t>& slot : page->entries) {
    const uint64_t entry = slot.load(std::memory_order_seq_cst);
    if (entry == 0) continue;
    if (!(entry & kTable) || level == 0 || !SubtreeIsEmpty(TableOf(entry), level - 1)) return false;
  }
  return true;
}

void DecodeLeafInto(uint64_t entry, uint64_t iova, int level, PageTable::Leaf& leaf) {
  leaf.size = Span(level);
  leaf.iova = iova & ~(leaf.size - 1);
  leaf.phys = entry & kAddressMask;
  leaf.perms = {(entry & kRead) != 0, (entry & kWrite) != 0};
  leaf.first = (entry & kFirst) != 0;
  leaf.last = (entry & kLast) != 0;
  leaf.origin = static_cast<IovaOrigin>((entry >> kOriginShift) & 3);
  leaf.owner = static_cast<uint32_t>(entry >> kOwnerShift);
}

PageTable::Leaf DecodeLeaf(uint64_t entry, uint64_t iova, int level) {
  PageTable::Leaf leaf;
  DecodeLeafInto(entry, iova, level, leaf);
  return leaf;
}

void CountLeaf(uint64_t size, PageTable::LeafCounts& counts) {
  counts.leaves_4k += size == kPage4K;
  counts.leaves_2m += size == kPage2M;
  counts.leaves_1g += size == kPage1G;
}

// A leaf of `level` can map [cur, cur + span) of `mapping` (whose range ends
// at `end`): the span is aligned, inside the range, allowed, and its
// physical address is aligned too.
bool LeafFits(const PageTable::Mapping& mapping, uint64_t cur, int level, uint64_t end) {
  const uint64_t span = Span(level);
  if (level == 0) return true;
  if (level >= kRootLevel || (mapping.page_sizes & span) == 0) return false;
  const uint64_t phys = mapping.phys + (cur - mapping.iova);
  return (cur & (span - 1)) == 0 && end - cur >= span && (phys & (span - 1)) == 0;
}

// The leaf of `level` that maps `cur` for `mapping`, with its first and last
// marks. Always inlined: a few instructions, on every install's path.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline uint64_t LeafEntry(const PageTable::Mapping& mapping,
                                                       uint64_t cur, int level) {
  const uint64_t end = mapping.iova + mapping.size;
  uint64_t entry = ((mapping.phys + (cur - mapping.iova)) & kAddressMask) | kPresent |
                   OwnershipBits(mapping.origin, mapping.owner);
  entry |= (mapping.perms.read ? kRead : 0) | (mapping.perms.write ? kWrite : 0);
  if (cur == mapping.iova) entry |= kFirst;
  if (cur + Span(level) == end) entry |= kLast;
  return entry;
}

}  // namespace

// Installs one mapping in two phases: claim every leaf slot (or fail and
// undo), then publish the leaves, the first one last.
class PageTable::Installer final {
 public:
  Installer(PageTable& table, const Mapping& mapping)
      : table_(table),
        mapping_(mapping),
        claimed_(OwnershipBits(mapping.origin, mapping.owner) | kClaimed) {}

  // Out of line: Install's one-leaf path, which comes first, stays lean.
  ABSL_ATTRIBUTE_NOINLINE std::optional<LeafCounts> Run() {
    if (!Claim(table_.root_.get(), kRootLevel, mapping_.iova, mapping_.iova + mapping_.size)) {
      Undo();
      return std::nullopt;
    }
    LeafCounts counts;
    for (size_t i = 1; i < claims_.size(); ++i) Publish(claims_[i], counts);
    Publish(claims_[0], counts);  // last: Remove finds a mapping by its first leaf
    // The replaced tables stay sealed: a thread that loaded one before it was
    // replaced can install nothing in it.
    for (Replaced& replaced : replaced_) table_.Unlink(TableOf(replaced.table), replaced.level);
    return counts;
  }

 private:
  struct ClaimedSlot {
    std::atomic<uint64_t>* slot;
    uint64_t leaf;  // the value to publish
    uint64_t size;
    uint64_t undo = 0;  // the value to restore on failure: 0, or a replaced table
    bool published = false;
  };
  struct Replaced {
    uint64_t table;  // the empty table entry the leaf replaces
    int level;       // of the table page
  };

  static void Publish(const ClaimedSlot& claim, LeafCounts& counts) {
    if (!claim.published) claim.slot->store(claim.leaf, std::memory_order_release);
    CountLeaf(claim.size, counts);
  }

  bool Claim(TablePage* page, int level, uint64_t begin, uint64_t end) {
    for (uint64_t cur = begin; cur < end;) {
      std::atomic<uint64_t>& slot = page->entries[Index(cur, level)];
      const uint64_t entry_end = (cur & ~(Span(level) - 1)) + Span(level);
      if (LeafFits(mapping_, cur, level, end)) {
        if (!ClaimLeaf(slot, cur, level)) return false;
      } else {
        TablePage* child = table_.EnsureTable(slot);
        if (child == nullptr || !Claim(child, level - 1, cur, std::min(end, entry_end)))
          return false;
      }
      cur = entry_end;
    }
    return true;
  }

  // Always inlined into Claim's loop, one call per leaf otherwise (link-time
  // optimization outlined it); the replacement of a table stays out of line.
  ABSL_ATTRIBUTE_ALWAYS_INLINE bool ClaimLeaf(std::atomic<uint64_t>& slot, uint64_t cur,
                                              int level) {
    uint64_t expected = 0;
    const uint64_t leaf = LeafEntry(mapping_, cur, level);
    // A single-leaf mapping has nothing to publish in order: claim it with
    // its final value, one write instead of two.
    const bool whole = cur == mapping_.iova && Span(level) == mapping_.size;
    if (slot.compare_exchange_strong(expected, whole ? leaf : claimed_,
                                     std::memory_order_seq_cst)) {
      claims_.push_back({&slot, leaf, Span(level), 0, whole});
      return true;
    }
    if (!(expected & kTable)) return false;
    return ClaimOverTable(slot, cur, level, expected);
  }

  // A table where the leaf belongs: left behind by smaller mappings. In an
  // owned range it can only be empty; replace it. Where claims share tables,
  // or if it is not empty after all, map inside it instead.
  ABSL_ATTRIBUTE_NOINLINE bool ClaimOverTable(std::atomic<uint64_t>& slot, uint64_t cur, int level,
                                              uint64_t table_entry) {
    uint64_t expected = table_entry;
    TablePage* table = TableOf(table_entry);
    if (mapping_.tables_may_be_shared || !SubtreeIsEmpty(table, level - 1)) {
      return Claim(table, level - 1, cur, cur + Span(level));
    }
    // Seal it first (claim every empty slot below it), so that a thread that
    // already holds a pointer to it cannot install there once it is replaced.
    const size_t unsealed = sealed_.size();
    if (!Seal(table, level - 1)) {
      Unseal(unsealed);
      return Claim(table, level - 1, cur, cur + Span(level));
    }
    if (!slot.compare_exchange_strong(expected, claimed_, std::memory_order_seq_cst)) {
      Unseal(unsealed);
      return false;  // replaced by someone else: taken
    }
    replaced_.push_back({table_entry, level - 1});
    claims_.push_back({&slot, LeafEntry(mapping_, cur, level), Span(level), table_entry});
    return true;
  }

  // Claims every empty slot of `page` and of the tables below it; false at
  // the first slot that is taken (the caller unseals).
  bool Seal(TablePage* page, int level) {
    for (std::atomic<uint64_t>& slot : page->entries) {
      uint64_t expected = 0;
      if (slot.compare_exchange_strong(expected, claimed_, std::memory_order_seq_cst)) {
        sealed_.push_back(&slot);
      } else if (level == 0 || !(expected & kTable) || !Seal(TableOf(expected), level - 1)) {
        return false;
      }
    }
    return true;
  }

  // Empties the slots sealed since sealed_ held `keep` of them, last first:
  // a competing sealer, which starts at the first slot, then does not chase
  // this unseal and fail on a slot still sealed.
  void Unseal(size_t keep) {
    while (sealed_.size() > keep) {
      sealed_.back()->store(0, std::memory_order_release);
      sealed_.pop_back();
    }
  }

  void Undo() {
    // A replaced table goes straight back into its slot: emptying the slot
    // first would let another thread install there, and the table put back
    // would then hide that install. It is linked again before it is unsealed,
    // so nothing is installed in it while it is detached.
    for (ClaimedSlot& claim : claims_) claim.slot->store(claim.undo, std::memory_order_seq_cst);
    Unseal(0);
  }

  PageTable& table_;
  const Mapping& mapping_;
  const uint64_t claimed_;
  absl::InlinedVector<ClaimedSlot, 4> claims_;
  absl::InlinedVector<Replaced, 1> replaced_;
  std::vector<std::atomic<uint64_t>*> sealed_;  // empty slots of replaced tables
};

PageTable::PageTable(EpochReclaimer& reclaimer)
    : reclaimer_(reclaimer), root_(std::make_unique<TablePage>()) {}

PageTable::~PageTable() { DestroySubtree(std::move(root_), kRootLevel); }

std::optional<PageTable::LeafCounts> PageTable::Install(const Mapping& mapping) {
  // One leaf (the DMA-API case: a page, or an aligned huge page) needs no
  // claim phase: one walk and one compare-and-swap publish it, as the
  // installer would. A table where it belongs goes to the installer, which
  // knows how to replace one.
  const uint64_t end = mapping.iova + mapping.size;
  for (int level = 0; level < kRootLevel && Span(level) <= mapping.size; ++level) {
    if (Span(level) != mapping.size || !LeafFits(mapping, mapping.iova, level, end)) continue;
    TablePage* page = level == 0 && mapping.exclusive ? HintedLeafTable(mapping.iova) : nullptr;
    if (ABSL_PREDICT_FALSE(page == nullptr)) {
      const uint64_t unlinks = unlinks_.load(std::memory_order_acquire);  // before the walk
      page = root_.get();
      for (int at = kRootLevel; at > level && page != nullptr; --at) {
        page = EnsureTable(page->entries[Index(mapping.iova, at)]);
      }
      if (page == nullptr) return std::nullopt;  // a leaf or claim above: taken
      if (level == 0) RememberLeafTable(mapping.iova, page, unlinks);
    }
    uint64_t found = 0;
    if (PublishLeaf(page->entries[Index(mapping.iova, level)],
                    LeafEntry(mapping, mapping.iova, level), mapping.exclusive, found)) {
      LeafCounts counts;
      CountLeaf(Span(level), counts);
      return counts;
    }
    if (!(found & kTable)) return std::nullopt;
    break;
  }
  return Installer(*this, mapping).Run();
}

bool PageTable::PublishLeaf(std::atomic<uint64_t>& slot, uint64_t leaf, bool exclusive,
                            uint64_t& found) {
  if (ABSL_PREDICT_FALSE(!exclusive)) {
    return slot.compare_exchange_strong(found, leaf, std::memory_order_seq_cst);
  }
  // Nobody else writes the slot (Mapping::exclusive): the load only catches
  // a slot that is not empty.
  found = slot.load(std::memory_order_relaxed);
  if (ABSL_PREDICT_FALSE(found != 0)) return false;
  slot.store(leaf, std::memory_order_release);
  return true;
}

PageTable::TablePage* PageTable::HintedLeafTable(uint64_t iova) {
  const LeafTableHint& hint = hints_.Local();
  if (hint.span.load(std::memory_order_relaxed) != iova >> Shift(1) ||
      hint.unlinks.load(std::memory_order_relaxed) != unlinks_.load(std::memory_order_acquire)) {
    return nullptr;
  }
  return hint.table.load(std::memory_order_relaxed);
}

void PageTable::RememberLeafTable(uint64_t iova, TablePage* table, uint64_t unlinks) {
  LeafTableHint& hint = hints_.Local();
  hint.span.store(iova >> Shift(1), std::memory_order_relaxed);
  hint.table.store(table, std::memory_order_relaxed);
  hint.unlinks.store(unlinks, std::memory_order_relaxed);
}

PageTable::TablePage* PageTable::EnsureTable(std::atomic<uint64_t>& slot) {
  uint64_t entry = slot.load(std::memory_order_seq_cst);
  if (entry & kTable) return TableOf(entry);
  if (entry != 0) return nullptr;
  auto fresh = std::make_unique<TablePage>();
  const uint64_t desired = TableEntry(fresh.get());
  if (slot.compare_exchange_strong(entry, desired, std::memory_order_seq_cst)) {
    table_pages_.fetch_add(1, std::memory_order_relaxed);
    return fresh.release();  // now owned by the tree
  }
  return (entry & kTable) ? TableOf(entry) : nullptr;
}

bool PageTable::Unlink(TablePage* page, int level) {
  // After the slot that held it was emptied: a walk that read this count
  // before the unlink may have found the table, so its hint is stale.
  unlinks_.fetch_add(1, std::memory_order_acq_rel);
  table_pages_.fetch_sub(CountPages(page, level), std::memory_order_relaxed);
  return reclaimer_.Retire([owned = std::unique_ptr<TablePage>(page), level]() mutable {
    DestroySubtree(std::move(owned), level);
  });
}

std::atomic<uint64_t>* PageTable::FindSlot(uint64_t iova, int* level) const {
  TablePage* page = root_.get();
  for (int at = kRootLevel;; --at) {
    std::atomic<uint64_t>& slot = page->entries[Index(iova, at)];
    const uint64_t entry = slot.load(std::memory_order_seq_cst);
    if (!(entry & kTable) || at == 0) {
      *level = at;
      return &slot;
    }
    page = TableOf(entry);
  }
}

std::optional<PageTable::Leaf> PageTable::Lookup(uint64_t iova) const {
  // Decoded in place and returned by name: a decoded Leaf copied into the
  // optional makes the caller's reads of it stall on store forwarding.
  std::optional<Leaf> leaf;
  if (iova < (uint64_t{1} << kIovaBits)) {  // above, a walk would wrap onto a lower slot
    int level;
    const uint64_t entry = FindSlot(iova, &level)->load(std::memory_order_acquire);
    if (entry & kPresent) DecodeLeafInto(entry, iova, level, leaf.emplace());
  }
  return leaf;
}

std::optional<PageTable::Leaf> PageTable::FindIn(const TablePage* page, int level, uint64_t from,
                                                 uint64_t end) const {
  for (uint64_t cur = from; cur < end;) {
    const uint64_t entry = page->entries[Index(cur, level)].load(std::memory_order_seq_cst);
    const uint64_t entry_end = (cur & ~(Span(level) - 1)) + Span(level);
    if (entry & kTable) {
      if (auto leaf = FindIn(TableOf(entry), level - 1, cur, std::min(end, entry_end))) return leaf;
    } else if (entry & kPresent) {
      return DecodeLeaf(entry, cur, level);
    }
    cur = entry_end;
  }
  return std::nullopt;
}

std::optional<PageTable::Leaf> PageTable::FindLeaf(uint64_t from, uint64_t end) const {
  return FindIn(root_.get(), kRootLevel, from, std::min(end, uint64_t{1} << kIovaBits));
}

std::optional<PageTable::Removed> PageTable::Remove(uint64_t first_iova, uint64_t limit) {
  return RemoveEndingIn(first_iova, first_iova + 1, limit);
}

std::optional<PageTable::Removed> PageTable::RemoveExactly(uint64_t iova, uint64_t end) {
  return RemoveEndingIn(iova, end, end);
}

std::optional<PageTable::Removed> PageTable::RemoveEndingIn(uint64_t first_iova, uint64_t min_end,
                                                            uint64_t limit) {
  // Nothing is mapped at or above 2^48, and a walk of such an address would
  // alias it onto a lower one.
  if (ABSL_PREDICT_FALSE(first_iova >= (uint64_t{1} << kIovaBits))) return std::nullopt;
  // Mark the first leaf, which keeps it translating: if the mapping ends
  // outside [min_end, limit], it is put back untouched, and translations
  // never miss it.
  // A leaf another remover is measuring is waited for (a bounded walk): it
  // may be put back, and then it is ours to remove. The walk starts again
  // from the root each time, since that remover may unlink the table.
  int level;
  std::atomic<uint64_t>* first;
  uint64_t entry;
  while (true) {
    if (TablePage* table = HintedLeafTable(first_iova)) {
      level = 0;
      first = &table->entries[Index(first_iova, 0)];
    } else {
      first = FindSlot(first_iova, &level);
    }
    entry = first->load(std::memory_order_acquire);
    if (ABSL_PREDICT_FALSE(!(entry & kPresent) || !(entry & kFirst) ||
                           (first_iova & (Span(level) - 1)) != 0)) {
      return std::nullopt;
    }
    if (ABSL_PREDICT_FALSE(entry & kRemoving)) {
      std::this_thread::yield();
      continue;
    }
    if (first->compare_exchange_strong(entry, entry | kRemoving, std::memory_order_seq_cst)) break;
  }
  const uint64_t claimed =
      (entry & ~(kAddressMask | kPresent | kRead | kWrite | kFirst | kLast)) | kClaimed;
  // The mapping is ours now: measure it.
  Removed removed;
  removed.iova = first_iova;
  removed.origin = static_cast<IovaOrigin>((entry >> kOriginShift) & 3);
  removed.owner = static_cast<uint32_t>(entry >> kOwnerShift);
  uint64_t leaf_entry = entry;
  uint64_t leaf_size = Span(level);
  while (true) {
    removed.size += leaf_size;
    removed.leaf_sizes |= leaf_size;
    if (ABSL_PREDICT_FALSE(removed.iova + removed.size > limit)) {
      first->store(entry, std::memory_order_release);  // extends past the range: untouched
      return std::nullopt;
    }
    if (ABSL_PREDICT_TRUE(leaf_entry & kLast)) break;
    std::optional<Leaf> next = Lookup(removed.iova + removed.size);
    if (!next.has_value()) {  // cannot happen: a mapping's leaves are contiguous
      first->store(entry, std::memory_order_release);
      return std::nullopt;
    }
    leaf_size = next->size;
    leaf_entry = next->last ? kLast : 0;
  }
  if (ABSL_PREDICT_FALSE(removed.iova + removed.size < min_end)) {
    first->store(entry, std::memory_order_release);  // ends short of the range: untouched
    return std::nullopt;
  }
  if (ABSL_PREDICT_FALSE(removed.origin == IovaOrigin::kClaimed)) {
    // Keep every slot claimed until Release(): the IOVA must not be reused
    // before its invalidation.
    ClaimRange(removed.iova, removed.iova + removed.size, claimed);
  } else if (ABSL_PREDICT_TRUE(removed.size == Span(level))) {
    // One leaf: no table lies inside its span, so clearing is this store.
    first->store(0, std::memory_order_release);
  } else {
    // Leaves of unlinked tables are emptied too: a walk that fetched the
    // table before the unlink may read them after the invalidation began,
    // and must not cache the old translation then.
    removed.reclaim_due = Clear(root_.get(), kRootLevel, removed.iova, removed.iova + removed.size,
                                /*empty_unlinked=*/true);
  }
  return removed;
}

void PageTable::ClaimRange(uint64_t begin, uint64_t end, uint64_t claimed) {
  for (uint64_t cur = begin; cur < end;) {
    int level;
    std::atomic<uint64_t>* slot = FindSlot(cur, &level);
    slot->store(claimed, std::memory_order_release);
    cur = (cur & ~(Span(level) - 1)) + Span(level);
  }
}

bool PageTable::Clear(TablePage* page, int level, uint64_t begin, uint64_t end,
                      bool empty_unlinked) {
  bool reclaim_due = false;
  for (uint64_t cur = begin; cur < end;) {
    std::atomic<uint64_t>& slot = page->entries[Index(cur, level)];
    const uint64_t entry = slot.load(std::memory_order_seq_cst);
    const uint64_t entry_end = (cur & ~(Span(level) - 1)) + Span(level);
    const bool covered = (cur & (Span(level) - 1)) == 0 && entry_end <= end;
    if (entry & kTable) {
      if (covered) {
        if (empty_unlinked) EmptyLeaves(TableOf(entry), level - 1);
        slot.store(0, std::memory_order_seq_cst);
        reclaim_due |= Unlink(TableOf(entry), level - 1);
      } else {
        reclaim_due |=
            Clear(TableOf(entry), level - 1, cur, std::min(end, entry_end), empty_unlinked);
      }
    } else if (entry != 0) {
      slot.store(0, std::memory_order_release);
    }
    cur = entry_end;
  }
  return reclaim_due;
}

bool PageTable::Release(uint64_t iova, uint64_t size) {
  // Claimed slots already stopped translating at Remove; emptying them
  // before the unlink would let a concurrent claim land in a doomed table.
  return Clear(root_.get(), kRootLevel, iova, iova + size, /*empty_unlinked=*/false);
}

void PageTable::Visit(
    const TablePage* page, int level, uint64_t base,
    absl::FunctionRef<void(uint64_t entry, uint64_t iova, int level)> visit) const {
  for (int index = 0; index < kEntries; ++index) {
    const uint64_t entry = page->entries[index].load(std::memory_order_seq_cst);
    const uint64_t iova = base + static_cast<uint64_t>(index) * Span(level);
    if (entry & kTable) {
      visit(entry, iova, level);
      Visit(TableOf(entry), level - 1, iova, visit);
    } else if (entry != 0) {
      visit(entry, iova, level);
    }
  }
}

void PageTable::ForEachLeaf(absl::FunctionRef<void(const Leaf&)> visit) const {
  Visit(root_.get(), kRootLevel, 0, [&](uint64_t entry, uint64_t iova, int level) {
    if (entry & kPresent) visit(DecodeLeaf(entry, iova, level));
  });
}

PageTable::Census PageTable::TakeCensus() const {
  Census census;
  census.table_pages = 1;
  Visit(root_.get(), kRootLevel, 0, [&](uint64_t entry, uint64_t iova, int level) {
    if (entry & kTable) {
      ++census.table_pages;
    } else if (entry & kPresent) {
      CountLeaf(Span(level), census.leaves);
      if (entry & kFirst) ++census.mappings;
    } else if (entry & kClaimed) {
      ++census.claimed_slots;
    }
    (void)iova;
  });
  return census;
}

}  // namespace iommu_broker
