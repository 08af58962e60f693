// PageTable: leaf sizes, first/last markers, ownership bits, overlap refusal,
// Remove and its limit, kClaimed ranges and Release, huge leaves over leftover
// tables, FindLeaf and ForEachLeaf, and lock-free use from many threads.
// EpochReclaimer: grace periods, nested and overlapping guards, the retire
// threshold, and readers racing with frees.
#include "core/iommu/page_table.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/iommu/epoch.h"
#include "core/iommu/types.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using Leaf = PageTable::Leaf;
using Mapping = PageTable::Mapping;

constexpr uint64_t k4K = kPage4K;
constexpr uint64_t k2M = kPage2M;
constexpr uint64_t k1G = kPage1G;
constexpr uint64_t k512G = uint64_t{1} << 39;
constexpr uint64_t kIovaEnd = uint64_t{1} << kIovaBits;
constexpr PageSizeSet kAllSizes = kPage4K | kPage2M | kPage1G;

// Test IOVAs sit inside the first 512 GiB root entry, 1 GiB-aligned; physical
// addresses are IOVA + kPhysOffset (1 GiB-aligned, so huge leaves fit).
constexpr uint64_t kBase = 3 * k1G;
constexpr uint64_t kPhysOffset = uint64_t{1} << 44;

Mapping MakeMapping(uint64_t iova, uint64_t size, PageSizeSet page_sizes = kPage4K) {
  Mapping mapping;
  mapping.iova = iova;
  mapping.phys = iova + kPhysOffset;
  mapping.size = size;
  mapping.perms = {true, true};
  mapping.origin = IovaOrigin::kAllocated;
  mapping.owner = 1;
  mapping.page_sizes = page_sizes;
  return mapping;
}

// What a domain installs for an IOVA the allocator gave it.
Mapping Exclusive(Mapping mapping) {
  mapping.exclusive = true;
  return mapping;
}

Mapping MakeClaim(uint64_t iova, uint64_t size, PageSizeSet page_sizes = kPage4K) {
  Mapping mapping = MakeMapping(iova, size, page_sizes);
  mapping.phys = iova;  // identity
  mapping.origin = IovaOrigin::kClaimed;
  mapping.tables_may_be_shared = true;
  return mapping;
}

std::string Describe(const PageTable::Census& census) {
  return absl::StrFormat("4k=%d 2m=%d 1g=%d claimed=%d mappings=%d tables=%d",
                         census.leaves.leaves_4k, census.leaves.leaves_2m, census.leaves.leaves_1g,
                         census.claimed_slots, census.mappings, census.table_pages);
}

std::string Describe(const Leaf& leaf) {
  return absl::StrFormat("iova=%#x phys=%#x size=%#x r=%d w=%d first=%d last=%d origin=%d owner=%d",
                         leaf.iova, leaf.phys, leaf.size, leaf.perms.read, leaf.perms.write,
                         leaf.first, leaf.last, static_cast<int>(leaf.origin), leaf.owner);
}

std::string Describe(const std::optional<Leaf>& leaf) {
  return leaf.has_value() ? Describe(*leaf) : "none";
}

std::string Describe(const PageTable::LeafCounts& counts) {
  return absl::StrFormat("4k=%d 2m=%d 1g=%d", counts.leaves_4k, counts.leaves_2m, counts.leaves_1g);
}

PageTable::LeafCounts Counts(uint64_t leaves_4k, uint64_t leaves_2m, uint64_t leaves_1g) {
  PageTable::LeafCounts counts;
  counts.leaves_4k = leaves_4k;
  counts.leaves_2m = leaves_2m;
  counts.leaves_1g = leaves_1g;
  return counts;
}

// Wraps every PageTable call in a guard, as the header requires, and checks
// after each call that the table-page gauge agrees with a full walk.
class PageTableTest : public ::testing::Test {
 protected:
  std::optional<PageTable::LeafCounts> Install(const Mapping& mapping) {
    EpochReclaimer::Guard guard(reclaimer_);
    return table_.Install(mapping);
  }
  std::optional<Leaf> Lookup(uint64_t iova) {
    EpochReclaimer::Guard guard(reclaimer_);
    return table_.Lookup(iova);
  }
  std::optional<Leaf> FindLeaf(uint64_t from, uint64_t end) {
    EpochReclaimer::Guard guard(reclaimer_);
    return table_.FindLeaf(from, end);
  }
  std::optional<PageTable::Removed> Remove(uint64_t first_iova, uint64_t limit) {
    EpochReclaimer::Guard guard(reclaimer_);
    return table_.Remove(first_iova, limit);
  }
  std::optional<PageTable::Removed> RemoveExactly(uint64_t iova, uint64_t end) {
    EpochReclaimer::Guard guard(reclaimer_);
    return table_.RemoveExactly(iova, end);
  }
  bool Release(uint64_t iova, uint64_t size) {
    EpochReclaimer::Guard guard(reclaimer_);
    return table_.Release(iova, size);
  }
  std::vector<Leaf> Leaves() {
    EpochReclaimer::Guard guard(reclaimer_);
    std::vector<Leaf> leaves;
    table_.ForEachLeaf([&](const Leaf& leaf) { leaves.push_back(leaf); });
    return leaves;
  }
  PageTable::Census Census() {
    EpochReclaimer::Guard guard(reclaimer_);
    PageTable::Census census = table_.TakeCensus();
    EXPECT_EQ(census.table_pages, table_.table_pages());
    return census;
  }
  // Everything observable: the census and every translating leaf.
  std::string Snapshot() {
    std::vector<std::string> parts = {Describe(Census())};
    for (const Leaf& leaf : Leaves()) parts.push_back(Describe(leaf));
    return absl::StrJoin(parts, "\n");
  }

  EpochReclaimer reclaimer_;
  PageTable table_{reclaimer_};
};

// --- Install and Lookup -----------------------------------------------------

TEST_F(PageTableTest, EmptyTableHasOnlyTheRoot) {
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=1");
  EXPECT_EQ(table_.table_pages(), 1u);
  EXPECT_FALSE(Lookup(0).has_value());
  EXPECT_FALSE(Lookup(kBase).has_value());
  EXPECT_FALSE(Lookup(kIovaEnd - k4K).has_value());
  EXPECT_FALSE(FindLeaf(0, kIovaEnd).has_value());
  EXPECT_TRUE(Leaves().empty());
}

TEST_F(PageTableTest, LooksUp4KMappingsPageByPage) {
  const uint64_t iova = kBase + 0x5000;
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(iova, 3 * k4K));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(3, 0, 0)));
  EXPECT_EQ(Describe(Census()), "4k=3 2m=0 1g=0 claimed=0 mappings=1 tables=4");

  for (uint64_t page = 0; page < 3; ++page) {
    for (uint64_t offset : {uint64_t{0}, uint64_t{0x123}, k4K - 1}) {
      const uint64_t address = iova + page * k4K + offset;
      SCOPED_TRACE(absl::StrFormat("address %#x", address));
      std::optional<Leaf> leaf = Lookup(address);
      ASSERT_TRUE(leaf.has_value());
      EXPECT_EQ(leaf->iova, iova + page * k4K);
      EXPECT_EQ(leaf->phys, iova + page * k4K + kPhysOffset);
      EXPECT_EQ(leaf->size, k4K);
      EXPECT_EQ(leaf->first, page == 0);
      EXPECT_EQ(leaf->last, page == 2);
    }
  }
  EXPECT_FALSE(Lookup(iova - 1).has_value());
  EXPECT_FALSE(Lookup(iova - k4K).has_value());
  EXPECT_FALSE(Lookup(iova + 3 * k4K).has_value());
  EXPECT_FALSE(Lookup(iova + k2M).has_value());
  EXPECT_FALSE(Lookup(0).has_value());
}

TEST_F(PageTableTest, SinglePageIsBothFirstAndLast) {
  ASSERT_TRUE(Install(MakeMapping(kBase, k4K)).has_value());
  std::optional<Leaf> leaf = Lookup(kBase + 0x10);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_TRUE(leaf->first);
  EXPECT_TRUE(leaf->last);
}

TEST_F(PageTableTest, ExclusiveOneLeafInstallsPublishTheirLeaf) {
  // Also where a leftover empty table sits: that one goes to the installer.
  const uint64_t leftover = kBase + 4 * k2M;
  ASSERT_TRUE(Install(MakeMapping(leftover + 0x9000, k4K)).has_value());
  ASSERT_TRUE(RemoveExactly(leftover + 0x9000, leftover + 0xa000).has_value());
  struct Case {
    const char* name;
    Mapping mapping;
    PageTable::LeafCounts counts;
  };
  const Case cases[] = {
      {"4K", MakeMapping(kBase, k4K), Counts(1, 0, 0)},
      {"2M", MakeMapping(kBase + k2M, k2M, kAllSizes), Counts(0, 1, 0)},
      {"1G", MakeMapping(kBase + k1G, k1G, kAllSizes), Counts(0, 0, 1)},
      {"2M over a leftover table", MakeMapping(leftover, k2M, kAllSizes), Counts(0, 1, 0)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::optional<PageTable::LeafCounts> counts = Install(Exclusive(c.mapping));
    ASSERT_TRUE(counts.has_value());
    EXPECT_EQ(Describe(*counts), Describe(c.counts));
    for (uint64_t iova : {c.mapping.iova, c.mapping.iova + c.mapping.size - 1}) {
      std::optional<Leaf> leaf = Lookup(iova);
      ASSERT_TRUE(leaf.has_value());
      EXPECT_EQ(leaf->iova, c.mapping.iova);
      EXPECT_EQ(leaf->size, c.mapping.size);
      EXPECT_EQ(leaf->phys, c.mapping.phys);
      EXPECT_TRUE(leaf->first && leaf->last);
    }
  }
  EXPECT_EQ(Leaves().size(), std::size(cases));
}

// Each thread remembers the leaf table its last 4 KiB install found; a table
// unlinked since (here replaced by a 2 MiB leaf, then freed) must not be
// used again, by an install or by a remove.
TEST_F(PageTableTest, ATableUnlinkedSinceItWasRememberedIsNotUsed) {
  const uint64_t span = kBase + 6 * k2M;
  const uint64_t page = span + 0x9000;
  auto replace_the_table = [&] {
    ASSERT_TRUE(RemoveExactly(page, page + k4K).has_value());
    ASSERT_TRUE(Install(Exclusive(MakeMapping(span, k2M, kAllSizes))).has_value());
    ASSERT_TRUE(RemoveExactly(span, span + k2M).has_value());
    reclaimer_.Reclaim();  // frees the replaced table
  };

  ASSERT_TRUE(Install(Exclusive(MakeMapping(page, k4K))).has_value());  // remembers the table
  replace_the_table();
  ASSERT_TRUE(Install(Exclusive(MakeMapping(page, k4K))).has_value());
  std::optional<Leaf> leaf = Lookup(page);  // a walk from the root
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(leaf->phys, page + kPhysOffset);

  replace_the_table();
  // Mapped again by another thread, whose install this thread's memory
  // knows nothing of.
  std::thread([&] { EXPECT_TRUE(Install(Exclusive(MakeMapping(page, k4K))).has_value()); }).join();
  std::optional<PageTable::Removed> removed = RemoveExactly(page, page + k4K);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->iova, page);
  EXPECT_FALSE(Lookup(page).has_value());
}

TEST_F(PageTableTest, RoundTripsPermsOwnerOriginAndPhys) {
  struct Case {
    Perms perms;
    IovaOrigin origin;
    uint32_t owner;
    uint64_t phys;
  };
  const Case cases[] = {
      {{true, false}, IovaOrigin::kAllocated, 0, 0},
      {{false, true}, IovaOrigin::kReserved, 1, 0x1234'5000},
      {{true, true}, IovaOrigin::kClaimed, PageTable::kMaxOwner, 0x000f'ffff'ffff'f000},
      {{false, false}, IovaOrigin::kAllocated, 0x555, 0x000a'aaaa'aaaa'a000},
      {{true, true}, IovaOrigin::kReserved, 0xaaa, 0x0005'5555'5555'5000},
  };
  uint64_t iova = kBase;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrFormat("owner %d phys %#x", c.owner, c.phys));
    Mapping mapping = MakeMapping(iova, k4K);
    mapping.perms = c.perms;
    mapping.origin = c.origin;
    mapping.owner = c.owner;
    mapping.phys = c.phys;
    ASSERT_TRUE(Install(mapping).has_value());
    std::optional<Leaf> leaf = Lookup(iova + 0x800);
    ASSERT_TRUE(leaf.has_value());
    EXPECT_EQ(leaf->iova, iova);
    EXPECT_EQ(leaf->phys, c.phys);
    EXPECT_EQ(leaf->size, k4K);
    EXPECT_EQ(leaf->perms, c.perms);
    EXPECT_EQ(leaf->origin, c.origin);
    EXPECT_EQ(leaf->owner, c.owner);
    EXPECT_TRUE(leaf->first);
    EXPECT_TRUE(leaf->last);

    std::optional<PageTable::Removed> removed = Remove(iova, iova + k4K);
    ASSERT_TRUE(removed.has_value());
    EXPECT_EQ(removed->origin, c.origin);
    EXPECT_EQ(removed->owner, c.owner);
    if (c.origin == IovaOrigin::kClaimed) Release(iova, k4K);
    iova += 2 * k4K;
  }
  EXPECT_EQ(Census().claimed_slots, 0u);
}

TEST_F(PageTableTest, HugeLeavesKeepTheirAttributes) {
  Mapping mapping = MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M);
  mapping.perms = {true, false};
  mapping.origin = IovaOrigin::kReserved;
  mapping.owner = 77;
  ASSERT_TRUE(Install(mapping).has_value());
  std::optional<Leaf> leaf = Lookup(kBase + k2M + 0x12345);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(Describe(*leaf), Describe(Leaf{.iova = kBase + k2M,
                                           .phys = kBase + k2M + kPhysOffset,
                                           .size = k2M,
                                           .perms = {true, false},
                                           .first = true,
                                           .last = true,
                                           .origin = IovaOrigin::kReserved,
                                           .owner = 77}));
}

// --- Leaf sizes ---------------------------------------------------------------

TEST_F(PageTableTest, AlignedRangeGetsOne2MLeaf) {
  std::optional<PageTable::LeafCounts> counts =
      Install(MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(0, 1, 0)));
  // Root, 1 GiB-level and 2 MiB-level pages; no 4 KiB-level page.
  EXPECT_EQ(Describe(Census()), "4k=0 2m=1 1g=0 claimed=0 mappings=1 tables=3");
  for (uint64_t address : {kBase + k2M, kBase + k2M + 0x1234, kBase + 2 * k2M - 1}) {
    std::optional<Leaf> leaf = Lookup(address);
    ASSERT_TRUE(leaf.has_value());
    EXPECT_EQ(leaf->iova, kBase + k2M);
    EXPECT_EQ(leaf->phys, kBase + k2M + kPhysOffset);
    EXPECT_EQ(leaf->size, k2M);
    EXPECT_TRUE(leaf->first && leaf->last);
  }
  EXPECT_FALSE(Lookup(kBase + k2M - 1).has_value());
  EXPECT_FALSE(Lookup(kBase + 2 * k2M).has_value());
}

TEST_F(PageTableTest, Uses4KLeavesWhen2MIsNotAllowed) {
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(kBase + k2M, k2M, kPage4K));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(512, 0, 0)));
  EXPECT_EQ(Describe(Census()), "4k=512 2m=0 1g=0 claimed=0 mappings=1 tables=4");
  std::vector<Leaf> leaves = Leaves();
  ASSERT_EQ(leaves.size(), 512u);
  EXPECT_TRUE(leaves.front().first);
  EXPECT_FALSE(leaves.front().last);
  EXPECT_TRUE(leaves.back().last);
  EXPECT_FALSE(leaves.back().first);
  EXPECT_EQ(leaves.back().iova, kBase + 2 * k2M - k4K);
}

TEST_F(PageTableTest, AlignedRangeGetsOne1GLeaf) {
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(kBase, k1G, kAllSizes));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(0, 0, 1)));
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=1 claimed=0 mappings=1 tables=2");
  std::optional<Leaf> leaf = Lookup(kBase + k1G - 1);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(leaf->iova, kBase);
  EXPECT_EQ(leaf->phys, kBase + kPhysOffset);
  EXPECT_EQ(leaf->size, k1G);
  EXPECT_TRUE(leaf->first && leaf->last);
}

TEST_F(PageTableTest, Uses2MLeavesWhen1GIsNotAllowed) {
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(kBase, k1G, kPage4K | kPage2M));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(0, 512, 0)));
  EXPECT_EQ(Describe(Census()), "4k=0 2m=512 1g=0 claimed=0 mappings=1 tables=3");
}

TEST_F(PageTableTest, MixesLeafSizesAcross2MBoundaries) {
  // 4 MiB + 8 KiB from 4 KiB below a 2 MiB boundary: one 4 KiB page up to the
  // boundary, two 2 MiB leaves, and one 4 KiB page after them.
  const uint64_t iova = kBase + k2M - k4K;
  std::optional<PageTable::LeafCounts> counts =
      Install(MakeMapping(iova, 2 * k2M + 2 * k4K, kPage4K | kPage2M));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(2, 2, 0)));
  // Root, the 1 GiB-level page, the 2 MiB-level page, and two 4 KiB-level pages.
  EXPECT_EQ(Describe(Census()), "4k=2 2m=2 1g=0 claimed=0 mappings=1 tables=5");
  std::vector<std::string> leaves;
  for (const Leaf& leaf : Leaves()) {
    leaves.push_back(absl::StrFormat("%#x+%#x%s%s", leaf.iova - kBase, leaf.size,
                                     leaf.first ? " first" : "", leaf.last ? " last" : ""));
    EXPECT_EQ(leaf.phys, leaf.iova + kPhysOffset);
  }
  EXPECT_EQ(absl::StrJoin(leaves, ", "),
            "0x1ff000+0x1000 first, 0x200000+0x200000, 0x400000+0x200000, 0x600000+0x1000 last");
}

TEST_F(PageTableTest, MixesLeafSizesAcross1GBoundaries) {
  // From 4 KiB below a 1 GiB boundary to 2 MiB + 4 KiB past the next one.
  const uint64_t iova = kBase + k1G - k4K;
  const uint64_t size = k4K + k1G + k2M + k4K;
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(iova, size, kAllSizes));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(2, 1, 1)));
  std::vector<std::string> leaves;
  for (const Leaf& leaf : Leaves()) {
    leaves.push_back(absl::StrFormat("%#x+%#x%s%s", leaf.iova - kBase, leaf.size,
                                     leaf.first ? " first" : "", leaf.last ? " last" : ""));
  }
  EXPECT_EQ(absl::StrJoin(leaves, ", "),
            "0x3ffff000+0x1000 first, 0x40000000+0x40000000, 0x80000000+0x200000, "
            "0x80200000+0x1000 last");
}

TEST_F(PageTableTest, MisalignedPhysUsesSmallerLeaves) {
  // phys 4 KiB off a 2 MiB boundary: no 2 MiB leaf can translate it.
  Mapping mapping = MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M);
  mapping.phys = 0x8000'0000 + k4K;
  std::optional<PageTable::LeafCounts> counts = Install(mapping);
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(512, 0, 0)));
  std::optional<Leaf> leaf = Lookup(kBase + k2M + 5 * k4K);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(leaf->phys, 0x8000'0000 + 6 * k4K);

  // phys 2 MiB-aligned but not 1 GiB-aligned: 2 MiB leaves, not one 1 GiB.
  mapping = MakeMapping(kBase + k1G, k1G, kAllSizes);
  mapping.phys = 0x1'0000'0000 + k2M;
  counts = Install(mapping);
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(0, 512, 0)));
  leaf = Lookup(kBase + k1G + k2M + 0x10);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(leaf->size, k2M);
  EXPECT_EQ(leaf->phys, 0x1'0000'0000 + 2 * k2M);
}

// --- Overlap ----------------------------------------------------------------

TEST_F(PageTableTest, InstallOverlappingAMappingChangesNothing) {
  // In span S: a 4-page mapping M in the middle, and a 2 MiB leaf L in the
  // next span. Every attempt below touches only spans whose tables exist.
  const uint64_t span = kBase + 5 * k2M;
  const uint64_t m = span + 0x10000;
  const uint64_t m_end = m + 4 * k4K;
  const uint64_t l = span + k2M;
  ASSERT_TRUE(Install(MakeMapping(m, m_end - m)).has_value());
  ASSERT_TRUE(Install(MakeMapping(l, k2M, kPage4K | kPage2M)).has_value());
  const std::string before = Snapshot();

  struct Case {
    const char* name;
    Mapping mapping;
  };
  Mapping shared_huge = MakeMapping(span, k2M, kPage4K | kPage2M);
  shared_huge.tables_may_be_shared = true;
  Mapping reserved = MakeMapping(m + k4K, k4K);
  reserved.origin = IovaOrigin::kReserved;
  reserved.owner = 9;
  const Case cases[] = {
      {"same range", MakeMapping(m, m_end - m)},
      {"last page overlaps M's first", MakeMapping(m - 3 * k4K, 4 * k4K)},
      {"first page overlaps M's last", MakeMapping(m_end - k4K, 8 * k4K)},
      {"contains M", MakeMapping(m - 8 * k4K, 20 * k4K)},
      {"inside M", reserved},
      {"2M leaf over M's table", MakeMapping(span, k2M, kPage4K | kPage2M)},
      {"2M shared over M's table", shared_huge},
      {"4K pages over M's span", MakeMapping(span, k2M, kPage4K)},
      {"claim over M", MakeClaim(m, k4K)},
      {"page inside L", MakeMapping(l + 5 * k4K, k4K)},
      {"last page overlaps L", MakeMapping(l - 2 * k4K, 3 * k4K)},
      {"same as L", MakeMapping(l, k2M, kPage4K | kPage2M)},
      {"same as L in 4K", MakeMapping(l, k2M, kPage4K)},
      {"L's last page", MakeMapping(l + k2M - k4K, k4K)},
      {"M to L", MakeMapping(m_end, l + k4K - m_end, kPage4K | kPage2M)},
      // One-leaf installs that publish with a plain store (Mapping::exclusive)
      // still see a taken slot.
      {"exclusive page inside M", Exclusive(MakeMapping(m + 2 * k4K, k4K))},
      {"exclusive 2M leaf over M's table", Exclusive(MakeMapping(span, k2M, kPage4K | kPage2M))},
      {"exclusive same as L", Exclusive(MakeMapping(l, k2M, kPage4K | kPage2M))},
      {"exclusive page inside L", Exclusive(MakeMapping(l + 5 * k4K, k4K))},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_FALSE(Install(c.mapping).has_value());
    EXPECT_EQ(Snapshot(), before);
    for (uint64_t page = m - k4K; page <= m_end; page += k4K) {
      std::optional<Leaf> leaf = Lookup(page);
      ASSERT_EQ(leaf.has_value(), page >= m && page < m_end) << absl::StrFormat("%#x", page);
      if (leaf.has_value()) {
        EXPECT_EQ(leaf->phys, page + kPhysOffset);
      }
    }
    std::optional<Leaf> huge = Lookup(l + 0x1234);
    ASSERT_TRUE(huge.has_value());
    EXPECT_EQ(huge->size, k2M);
  }
  // Nothing was left claimed: the gaps around M still take mappings.
  EXPECT_TRUE(Install(MakeMapping(m - k4K, k4K)).has_value());
  EXPECT_TRUE(Install(MakeMapping(m_end, k4K)).has_value());
  EXPECT_TRUE(Install(MakeMapping(l - k4K, k4K)).has_value());
}

TEST_F(PageTableTest, FailedInstallThatBuiltATableLeavesNoMappingOrClaim) {
  // The attempt starts in a span with no table yet and fails in the next one.
  // Whatever table it built on the way is empty and harmless: the census of
  // leaves, claims and mappings is unchanged and the span still takes a huge
  // leaf.
  const uint64_t blocker = kBase + 2 * k2M;
  ASSERT_TRUE(Install(MakeMapping(blocker, k4K)).has_value());
  PageTable::Census before = Census();
  EXPECT_FALSE(Install(MakeMapping(blocker - 2 * k4K, 3 * k4K)).has_value());
  PageTable::Census after = Census();
  EXPECT_EQ(after.leaves.leaves_4k, before.leaves.leaves_4k);
  EXPECT_EQ(after.claimed_slots, 0u);
  EXPECT_EQ(after.mappings, before.mappings);
  EXPECT_FALSE(Lookup(blocker - k4K).has_value());
  ASSERT_EQ(Leaves().size(), 1u);

  std::optional<PageTable::LeafCounts> counts =
      Install(MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(counts->leaves_2m, 1u);
  EXPECT_EQ(Census().table_pages, before.table_pages);
}

// --- Remove -----------------------------------------------------------------

TEST_F(PageTableTest, RemoveReturnsTheMapping) {
  Mapping mapping = MakeMapping(kBase + k2M - k4K, 2 * k2M + 2 * k4K, kPage4K | kPage2M);
  mapping.origin = IovaOrigin::kReserved;
  mapping.owner = 42;
  ASSERT_TRUE(Install(mapping).has_value());
  ASSERT_TRUE(Install(MakeMapping(kBase, k4K)).has_value());  // a neighbour, kept

  std::optional<PageTable::Removed> removed = Remove(mapping.iova, mapping.iova + mapping.size);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->iova, mapping.iova);
  EXPECT_EQ(removed->size, mapping.size);
  EXPECT_EQ(removed->origin, IovaOrigin::kReserved);
  EXPECT_EQ(removed->owner, 42u);
  EXPECT_EQ(removed->leaf_sizes, kPage4K | kPage2M);
  EXPECT_FALSE(removed->reclaim_due);

  for (uint64_t address = mapping.iova; address < mapping.iova + mapping.size; address += k4K) {
    ASSERT_FALSE(Lookup(address).has_value()) << absl::StrFormat("%#x", address);
  }
  EXPECT_TRUE(Lookup(kBase).has_value());
  PageTable::Census census = Census();
  EXPECT_EQ(census.mappings, 1u);
  EXPECT_EQ(census.leaves.leaves_4k, 1u);
  EXPECT_EQ(census.leaves.leaves_2m, 0u);
  EXPECT_EQ(census.claimed_slots, 0u);

  // The range is free again.
  EXPECT_TRUE(Install(mapping).has_value());
}

TEST_F(PageTableTest, RemoveReportsLeafSizesOfEachKind) {
  ASSERT_TRUE(Install(MakeMapping(kBase, k1G, kAllSizes)).has_value());
  std::optional<PageTable::Removed> removed = Remove(kBase, kIovaEnd);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->leaf_sizes, kPage1G);
  EXPECT_EQ(removed->size, k1G);

  ASSERT_TRUE(Install(MakeMapping(kBase + 5 * k4K, 2 * k4K)).has_value());
  removed = Remove(kBase + 5 * k4K, kBase + 7 * k4K);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->leaf_sizes, kPage4K);
  EXPECT_EQ(removed->size, 2 * k4K);
}

TEST_F(PageTableTest, RemoveNeedsTheMappingsFirstLeaf) {
  const uint64_t small = kBase + 0x10000;
  ASSERT_TRUE(Install(MakeMapping(small, 4 * k4K)).has_value());
  const uint64_t mixed = kBase + 2 * k2M - k4K;
  ASSERT_TRUE(Install(MakeMapping(mixed, k2M + 2 * k4K, kPage4K | kPage2M)).has_value());
  const uint64_t huge = kBase + 4 * k2M;
  ASSERT_TRUE(Install(MakeMapping(huge, 2 * k2M, kPage4K | kPage2M)).has_value());
  const std::string before = Snapshot();

  const uint64_t not_first[] = {
      small + k4K,        // second page
      small + 3 * k4K,    // last page
      small + 0x10,       // inside the first page
      small - k4K,        // unmapped
      mixed + k4K,        // the 2 MiB leaf in the middle
      mixed + k2M + k4K,  // the last page
      huge + k4K,         // inside the first 2 MiB leaf
      huge + k2M,         // the second 2 MiB leaf
      kBase + 100 * k2M,  // nothing there, no table
      kBase + 7 * k512G,  // nothing there, no table
  };
  for (uint64_t iova : not_first) {
    SCOPED_TRACE(absl::StrFormat("%#x", iova));
    EXPECT_FALSE(Remove(iova, kIovaEnd).has_value());
    EXPECT_EQ(Snapshot(), before);
  }
}

TEST_F(PageTableTest, RemoveLeavesAMappingPastTheLimitUntouched) {
  const uint64_t iova = kBase + k2M - k4K;
  const uint64_t size = 2 * k2M + 2 * k4K;
  ASSERT_TRUE(Install(MakeMapping(iova, size, kPage4K | kPage2M)).has_value());
  const std::string before = Snapshot();
  for (uint64_t limit :
       {uint64_t{0}, iova, iova + k4K, iova + k2M, iova + size - k4K, iova + size - 1}) {
    SCOPED_TRACE(absl::StrFormat("limit %#x", limit));
    EXPECT_FALSE(Remove(iova, limit).has_value());
    EXPECT_EQ(Snapshot(), before);
    std::optional<Leaf> first = Lookup(iova);
    ASSERT_TRUE(first.has_value());
    EXPECT_TRUE(first->first);
  }
  std::optional<PageTable::Removed> removed = Remove(iova, iova + size);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->size, size);
}

TEST_F(PageTableTest, RemoveExactlyTakesOnlyTheMappingOfThatRange) {
  const uint64_t iova = kBase + k2M - k4K;
  const uint64_t size = 2 * k2M + 2 * k4K;  // 4 KiB, 2 MiB, 2 MiB, 4 KiB leaves
  ASSERT_TRUE(Install(MakeMapping(iova, size, kPage4K | kPage2M)).has_value());
  const std::string before = Snapshot();
  for (uint64_t end : {iova + size - k4K, iova + size + k4K, iova + 2 * size}) {
    SCOPED_TRACE(absl::StrFormat("end %#x", end));
    EXPECT_FALSE(RemoveExactly(iova, end).has_value());
    EXPECT_EQ(Snapshot(), before);
  }
  EXPECT_FALSE(RemoveExactly(iova + k4K, iova + size).has_value());  // not its first leaf
  EXPECT_FALSE(RemoveExactly(iova + (uint64_t{1} << 48), iova + size).has_value());  // aliases
  EXPECT_EQ(Snapshot(), before);
  std::optional<PageTable::Removed> removed = RemoveExactly(iova, iova + size);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->size, size);
  EXPECT_EQ(removed->leaf_sizes, kPage4K | kPage2M);
  EXPECT_EQ(Census().leaves.leaves_4k + Census().leaves.leaves_2m, 0u);
}

TEST_F(PageTableTest, RemovingASingleLeafEmptiesItsSlot) {
  ASSERT_TRUE(Install(MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M)).has_value());
  ASSERT_TRUE(Install(MakeMapping(kBase + 2 * k2M, k4K)).has_value());
  const uint64_t tables = table_.table_pages();
  std::optional<PageTable::Removed> removed = RemoveExactly(kBase + k2M, kBase + 2 * k2M);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->leaf_sizes, kPage2M);
  ASSERT_TRUE(Remove(kBase + 2 * k2M, kIovaEnd).has_value());
  const PageTable::Census census = Census();
  EXPECT_EQ(census.leaves.leaves_4k + census.leaves.leaves_2m, 0u);
  EXPECT_EQ(census.claimed_slots, 0u);
  EXPECT_EQ(table_.table_pages(), tables);  // a leaf's removal unlinks no table
  // The emptied slots take new mappings of either size.
  EXPECT_TRUE(Install(MakeMapping(kBase + k2M, k4K)).has_value());
  EXPECT_TRUE(Install(MakeMapping(kBase + 2 * k2M, k2M, kPage4K | kPage2M)).has_value());
}

TEST_F(PageTableTest, SecondRemoveOfAMappingReturnsNullopt) {
  ASSERT_TRUE(Install(MakeMapping(kBase, 3 * k4K)).has_value());
  ASSERT_TRUE(Remove(kBase, kIovaEnd).has_value());
  const std::string before = Snapshot();
  EXPECT_FALSE(Remove(kBase, kIovaEnd).has_value());
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(PageTableTest, RemoveUnlinksTablesWhoseSpanItCovers) {
  // 4 KiB leaves filling a 2 MiB span: its 4 KiB-level page goes with them.
  ASSERT_TRUE(Install(MakeMapping(kBase + k2M, k2M, kPage4K)).has_value());
  EXPECT_EQ(table_.table_pages(), 4u);
  std::optional<PageTable::Removed> removed = Remove(kBase + k2M, kBase + 2 * k2M);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(table_.table_pages(), 3u);
  EXPECT_EQ(Census().table_pages, 3u);
  EXPECT_EQ(reclaimer_.retired(), 1u);
  reclaimer_.Reclaim();
  EXPECT_EQ(reclaimer_.retired(), 0u);

  // One span covered, two only partly: only the covered span's page goes.
  const uint64_t iova = kBase + k2M - k4K;
  ASSERT_TRUE(Install(MakeMapping(iova, k2M + 2 * k4K, kPage4K)).has_value());
  EXPECT_EQ(table_.table_pages(), 6u);
  ASSERT_TRUE(Remove(iova, iova + k2M + 2 * k4K).has_value());
  EXPECT_EQ(table_.table_pages(), 5u);
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=5");
  reclaimer_.Reclaim();

  // 2 MiB leaves filling a 1 GiB span: the 2 MiB-level page goes.
  ASSERT_TRUE(Install(MakeMapping(kBase + k1G, k1G, kPage4K | kPage2M)).has_value());
  EXPECT_EQ(table_.table_pages(), 6u);
  ASSERT_TRUE(Remove(kBase + k1G, kBase + 2 * k1G).has_value());
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=5");
  reclaimer_.Reclaim();
  EXPECT_EQ(reclaimer_.retired(), 0u);

  // A whole 1 GiB span of 4 KiB leaves unlinks its subtree in one piece,
  // counting every page below it.
  ASSERT_TRUE(Install(MakeMapping(kBase + 2 * k1G, k1G, kPage4K)).has_value());
  EXPECT_EQ(table_.table_pages(), 5u + 1 + 512);
  ASSERT_TRUE(Remove(kBase + 2 * k1G, kBase + 3 * k1G).has_value());
  EXPECT_EQ(Census().table_pages, 5u);
  EXPECT_EQ(reclaimer_.retired(), 1u);
  reclaimer_.Reclaim();
  EXPECT_EQ(reclaimer_.retired(), 0u);
}

TEST_F(PageTableTest, RemoveAsksForReclaimOnceManyTablesWait) {
  // 256 whole 2 MiB spans of 4 KiB leaves inside one 1 GiB span: Remove
  // unlinks 256 pages one by one.
  const uint64_t size = EpochReclaimer::kAutoReclaimThreshold * k2M;
  ASSERT_TRUE(Install(MakeMapping(kBase, size, kPage4K)).has_value());
  const uint64_t pages = table_.table_pages();
  std::optional<PageTable::Removed> removed = Remove(kBase, kBase + size);
  ASSERT_TRUE(removed.has_value());
  EXPECT_TRUE(removed->reclaim_due);
  EXPECT_EQ(table_.table_pages(), pages - EpochReclaimer::kAutoReclaimThreshold);
  EXPECT_EQ(reclaimer_.retired(), EpochReclaimer::kAutoReclaimThreshold);
  reclaimer_.Reclaim();
  EXPECT_EQ(reclaimer_.retired(), 0u);
  EXPECT_EQ(Census().table_pages, pages - EpochReclaimer::kAutoReclaimThreshold);
}

// --- kClaimed ---------------------------------------------------------------

TEST_F(PageTableTest, ClaimedRangeStaysClaimedUntilRelease) {
  const uint64_t iova = kBase + 0x40000;
  Mapping claim = MakeClaim(iova, 3 * k4K);
  claim.owner = 5;
  ASSERT_TRUE(Install(claim).has_value());
  std::optional<Leaf> leaf = Lookup(iova + k4K);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(leaf->origin, IovaOrigin::kClaimed);
  EXPECT_EQ(leaf->phys, iova + k4K);

  std::optional<PageTable::Removed> removed = Remove(iova, iova + 3 * k4K);
  ASSERT_TRUE(removed.has_value());
  EXPECT_EQ(removed->origin, IovaOrigin::kClaimed);
  EXPECT_EQ(removed->owner, 5u);
  EXPECT_EQ(removed->size, 3 * k4K);

  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=3 mappings=0 tables=4");
  for (uint64_t page = iova; page < iova + 3 * k4K; page += k4K) {
    EXPECT_FALSE(Lookup(page).has_value());
  }
  EXPECT_FALSE(FindLeaf(iova, iova + 3 * k4K).has_value());
  EXPECT_TRUE(Leaves().empty());
  EXPECT_FALSE(Remove(iova, kIovaEnd).has_value());

  // Nothing can be installed over the claimed slots.
  const std::string before = Snapshot();
  EXPECT_FALSE(Install(MakeMapping(iova, k4K)).has_value());
  EXPECT_FALSE(Install(MakeMapping(iova + 2 * k4K, 2 * k4K)).has_value());
  EXPECT_FALSE(Install(MakeMapping(iova - k4K, 2 * k4K)).has_value());
  EXPECT_FALSE(Install(MakeClaim(iova + k4K, k4K)).has_value());
  EXPECT_EQ(Snapshot(), before);
  // Around them, it can.
  EXPECT_TRUE(Install(MakeMapping(iova - k4K, k4K)).has_value());
  EXPECT_TRUE(Install(MakeMapping(iova + 3 * k4K, k4K)).has_value());

  EXPECT_FALSE(Release(iova, 3 * k4K));
  EXPECT_EQ(Census().claimed_slots, 0u);
  EXPECT_EQ(Census().mappings, 2u);
  EXPECT_TRUE(Install(MakeMapping(iova, 3 * k4K)).has_value());
  EXPECT_TRUE(Lookup(iova + 2 * k4K).has_value());
}

TEST_F(PageTableTest, ClaimedHugeLeafStaysClaimedUntilRelease) {
  const uint64_t iova = kBase + k2M - k4K;
  const uint64_t size = k2M + 2 * k4K;
  ASSERT_TRUE(Install(MakeClaim(iova, size, kPage4K | kPage2M)).has_value());
  EXPECT_EQ(Census().leaves.leaves_2m, 1u);
  ASSERT_TRUE(Remove(iova, iova + size).has_value());
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=3 mappings=0 tables=5");
  EXPECT_FALSE(Lookup(kBase + k2M + 0x5000).has_value());
  EXPECT_FALSE(Install(MakeMapping(kBase + k2M + 0x5000, k4K)).has_value());
  EXPECT_FALSE(Install(MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M)).has_value());
  Release(iova, size);
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=5");
  EXPECT_TRUE(Install(MakeMapping(kBase + k2M, k2M, kPage4K | kPage2M)).has_value());
}

TEST_F(PageTableTest, ReleaseUnlinksTablesWhoseSpanItCovers) {
  ASSERT_TRUE(Install(MakeClaim(kBase, k2M, kPage4K)).has_value());
  ASSERT_TRUE(Remove(kBase, kBase + k2M).has_value());
  // Kept claimed, so the page stays.
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=512 mappings=0 tables=4");
  Release(kBase, k2M);
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=3");
  reclaimer_.Reclaim();
  EXPECT_EQ(reclaimer_.retired(), 0u);
}

TEST_F(PageTableTest, ClaimsShareTablesWithOtherMappings) {
  ASSERT_TRUE(Install(MakeMapping(kBase + 0x3000, k4K)).has_value());
  // A claim of the whole span descends into the table and stops at the page.
  EXPECT_FALSE(Install(MakeClaim(kBase, k2M, kPage4K | kPage2M)).has_value());
  std::optional<PageTable::LeafCounts> counts = Install(MakeClaim(kBase, 0x3000, kPage4K));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(counts->leaves_4k, 3u);
  EXPECT_EQ(Census().mappings, 2u);
}

// --- Huge leaves over leftover tables ------------------------------------------

class LeftoverTableTest : public PageTableTest {
 protected:
  // Maps and removes two pages inside [span, span + 2 MiB): neither removal
  // covers the span, so its (now empty) 4 KiB-level page stays.
  void LeaveEmptyTable(uint64_t span) {
    ASSERT_TRUE(Install(MakeMapping(span + 0x3000, k4K)).has_value());
    ASSERT_TRUE(Install(MakeMapping(span + 0x100000, 2 * k4K)).has_value());
    ASSERT_TRUE(Remove(span + 0x3000, kIovaEnd).has_value());
    ASSERT_TRUE(Remove(span + 0x100000, kIovaEnd).has_value());
    ASSERT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=4");
  }
};

TEST_F(LeftoverTableTest, HugeLeafReplacesAnEmptyTable) {
  const uint64_t span = kBase + 4 * k2M;
  LeaveEmptyTable(span);
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(span, k2M, kPage4K | kPage2M));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(0, 1, 0)));
  EXPECT_EQ(Describe(Census()), "4k=0 2m=1 1g=0 claimed=0 mappings=1 tables=3");
  std::optional<Leaf> leaf = Lookup(span + 0x3000);
  ASSERT_TRUE(leaf.has_value());
  EXPECT_EQ(leaf->size, k2M);
  EXPECT_EQ(leaf->phys, span + kPhysOffset);
  EXPECT_EQ(reclaimer_.retired(), 1u);  // the replaced page
  reclaimer_.Reclaim();
  EXPECT_EQ(reclaimer_.retired(), 0u);

  ASSERT_TRUE(Remove(span, span + k2M).has_value());
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=3");
}

TEST_F(LeftoverTableTest, SharedHugeLeafDescendsIntoAnEmptyTable) {
  const uint64_t span = kBase + 4 * k2M;
  LeaveEmptyTable(span);
  Mapping mapping = MakeMapping(span, k2M, kPage4K | kPage2M);
  mapping.tables_may_be_shared = true;
  std::optional<PageTable::LeafCounts> counts = Install(mapping);
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(512, 0, 0)));
  EXPECT_EQ(Describe(Census()), "4k=512 2m=0 1g=0 claimed=0 mappings=1 tables=4");
  std::vector<Leaf> leaves = Leaves();
  ASSERT_EQ(leaves.size(), 512u);
  EXPECT_TRUE(leaves.front().first);
  EXPECT_TRUE(leaves.back().last);
}

TEST_F(LeftoverTableTest, GiantLeafReplacesAnEmptyTableTree) {
  // A leftover 2 MiB-level page with a leftover 4 KiB-level page below it.
  const uint64_t span = kBase + k1G;
  ASSERT_TRUE(Install(MakeMapping(span + 5 * k2M + k4K, k4K)).has_value());
  ASSERT_TRUE(Remove(span + 5 * k2M + k4K, kIovaEnd).has_value());
  ASSERT_EQ(Census().table_pages, 4u);
  std::optional<PageTable::LeafCounts> counts = Install(MakeMapping(span, k1G, kAllSizes));
  ASSERT_TRUE(counts.has_value());
  EXPECT_EQ(Describe(*counts), Describe(Counts(0, 0, 1)));
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=1 claimed=0 mappings=1 tables=2");
  reclaimer_.Reclaim();
  ASSERT_TRUE(Remove(span, span + k1G).has_value());
  EXPECT_EQ(Describe(Census()), "4k=0 2m=0 1g=0 claimed=0 mappings=0 tables=2");
}

TEST_F(LeftoverTableTest, HugeLeafDoesNotReplaceATableInUse) {
  const uint64_t span = kBase + 4 * k2M;
  LeaveEmptyTable(span);
  ASSERT_TRUE(Install(MakeMapping(span + k2M - k4K, k4K)).has_value());  // its last page
  const std::string before = Snapshot();
  EXPECT_FALSE(Install(MakeMapping(span, k2M, kPage4K | kPage2M)).has_value());
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(reclaimer_.retired(), 0u);
}

TEST_F(LeftoverTableTest, FailedInstallPutsBackAReplacedTable) {
  // The 2 MiB leaf replaces the empty page, then the last page collides: the
  // page must come back, still usable, and nothing else may change.
  const uint64_t span = kBase + 4 * k2M;
  LeaveEmptyTable(span);
  ASSERT_TRUE(Install(MakeMapping(span + k2M + 8 * k4K, k4K)).has_value());
  const std::string before = Snapshot();
  EXPECT_FALSE(Install(MakeMapping(span, k2M + 9 * k4K, kPage4K | kPage2M)).has_value());
  EXPECT_EQ(Snapshot(), before);
  EXPECT_EQ(reclaimer_.retired(), 0u);
  // The page is back and linked: a 4 KiB mapping there adds no table.
  ASSERT_TRUE(Install(MakeMapping(span + 0x7000, k4K)).has_value());
  EXPECT_EQ(Census().table_pages, 5u);
  EXPECT_TRUE(Lookup(span + 0x7000).has_value());
}

// --- FindLeaf and ForEachLeaf -------------------------------------------------

TEST_F(PageTableTest, FindLeafReturnsTheFirstLeafInTheRange) {
  const uint64_t a = kBase + 0x3000;         // 4 KiB
  const uint64_t b = kBase + k1G + 2 * k2M;  // 2 MiB, next 1 GiB span
  const uint64_t c = k512G + 0x5000;         // 4 KiB, next root entry
  const uint64_t d = 3 * k512G + 7 * k1G;    // 1 GiB
  const uint64_t e = kBase + 0x20000;        // claimed, not translating
  ASSERT_TRUE(Install(MakeMapping(a, k4K)).has_value());
  ASSERT_TRUE(Install(MakeMapping(b, k2M, kPage4K | kPage2M)).has_value());
  ASSERT_TRUE(Install(MakeMapping(c, k4K)).has_value());
  ASSERT_TRUE(Install(MakeMapping(d, k1G, kAllSizes)).has_value());
  ASSERT_TRUE(Install(MakeClaim(e, 4 * k4K)).has_value());
  ASSERT_TRUE(Remove(e, kIovaEnd).has_value());

  auto found = [&](uint64_t from, uint64_t end) -> std::string {
    std::optional<Leaf> leaf = FindLeaf(from, end);
    return leaf.has_value() ? absl::StrFormat("%#x+%#x", leaf->iova, leaf->size) : "none";
  };
  auto leaf = [](uint64_t iova, uint64_t size) { return absl::StrFormat("%#x+%#x", iova, size); };
  EXPECT_EQ(found(0, kIovaEnd), leaf(a, k4K));
  EXPECT_EQ(found(a, a + 1), leaf(a, k4K));
  EXPECT_EQ(found(a + 0x10, a + 0x20), leaf(a, k4K));
  EXPECT_EQ(found(a + k4K, kIovaEnd), leaf(b, k2M));  // skips the claimed slots
  EXPECT_EQ(found(e, e + 4 * k4K), "none");
  EXPECT_EQ(found(a + k4K, b), "none");  // end is exclusive
  EXPECT_EQ(found(a + k4K, b + 1), leaf(b, k2M));
  EXPECT_EQ(found(b + 0x1234, kIovaEnd), leaf(b, k2M));  // intersecting, starts below
  EXPECT_EQ(found(b + k2M, kIovaEnd), leaf(c, k4K));     // across root entries
  EXPECT_EQ(found(c + k4K, kIovaEnd), leaf(d, k1G));
  EXPECT_EQ(found(d + k1G - 1, kIovaEnd), leaf(d, k1G));
  EXPECT_EQ(found(d + k1G, kIovaEnd), "none");
  EXPECT_EQ(found(d + k1G, ~uint64_t{0}), "none");  // end clamped to 2^48
  EXPECT_EQ(found(0, ~uint64_t{0}), leaf(a, k4K));
  // Empty and inverted ranges.
  EXPECT_EQ(found(a, a), "none");
  EXPECT_EQ(found(b + 5, b + 5), "none");
  EXPECT_EQ(found(a + k4K, a), "none");
  EXPECT_EQ(found(kIovaEnd, kIovaEnd), "none");

  std::optional<Leaf> full = FindLeaf(c - k4K, c + k4K);
  ASSERT_TRUE(full.has_value());
  EXPECT_EQ(full->phys, c + kPhysOffset);
  EXPECT_TRUE(full->first && full->last);
}

TEST_F(PageTableTest, ForEachLeafVisitsInAddressOrder) {
  std::vector<Mapping> mappings = {
      MakeMapping(2 * k512G + k4K, 2 * k4K),
      MakeMapping(kBase + k1G - k4K, k4K + k2M + k4K, kAllSizes),
      MakeMapping(kBase, k4K),
      MakeMapping(k512G + 3 * k1G, k1G, kAllSizes),
      MakeMapping(kBase + 0x7000, 3 * k4K),
      MakeMapping(0, k4K),
      MakeMapping(kIovaEnd - k4K, k4K),
  };
  uint64_t total = 0;
  for (const Mapping& mapping : mappings) {
    ASSERT_TRUE(Install(mapping).has_value());
    total += mapping.size;
  }
  std::vector<Leaf> leaves = Leaves();
  ASSERT_EQ(leaves.size(), 12u);
  uint64_t covered = 0;
  for (size_t i = 0; i < leaves.size(); ++i) {
    SCOPED_TRACE(Describe(leaves[i]));
    covered += leaves[i].size;
    EXPECT_EQ(leaves[i].phys, leaves[i].iova + kPhysOffset);
    EXPECT_EQ(leaves[i].iova % leaves[i].size, 0u);
    if (i > 0) {
      EXPECT_GE(leaves[i].iova, leaves[i - 1].iova + leaves[i - 1].size);
    }
    std::optional<Leaf> looked_up = Lookup(leaves[i].iova);
    EXPECT_EQ(Describe(looked_up), Describe(leaves[i]));
  }
  EXPECT_EQ(covered, total);
  EXPECT_EQ(leaves.front().iova, 0u);
  EXPECT_EQ(leaves.back().iova, kIovaEnd - k4K);
  EXPECT_EQ(Census().mappings, mappings.size());
}

// --- EpochReclaimer -----------------------------------------------------------

TEST(EpochReclaimerTest, ReclaimRunsRetiredCallbacks) {
  EpochReclaimer reclaimer;
  reclaimer.Reclaim();  // nothing retired
  int ran = 0;
  EXPECT_FALSE(reclaimer.Retire([&] { ++ran; }));
  EXPECT_FALSE(reclaimer.Retire([&] { ++ran; }));
  EXPECT_EQ(reclaimer.retired(), 2u);
  EXPECT_EQ(ran, 0);
  {
    EpochReclaimer::Guard guard(reclaimer);  // gone before Reclaim
  }
  reclaimer.Reclaim();
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(reclaimer.retired(), 0u);
  reclaimer.Reclaim();
  EXPECT_EQ(ran, 2);
}

TEST(EpochReclaimerTest, RetireAsksForReclaimAtTheThreshold) {
  int ran = 0;  // outlives the reclaimer, whose destructor runs the last callback
  EpochReclaimer reclaimer;
  for (size_t i = 1; i < EpochReclaimer::kAutoReclaimThreshold; ++i) {
    ASSERT_FALSE(reclaimer.Retire([&] { ++ran; })) << i;
  }
  EXPECT_TRUE(reclaimer.Retire([&] { ++ran; }));
  EXPECT_EQ(ran, 0);  // Retire itself never frees
  reclaimer.Reclaim();
  EXPECT_EQ(ran, static_cast<int>(EpochReclaimer::kAutoReclaimThreshold));
  EXPECT_FALSE(reclaimer.Retire([&] { ++ran; }));
}

TEST(EpochReclaimerTest, DestructorRunsRemainingCallbacks) {
  int ran = 0;
  auto owned = std::make_unique<int>(7);  // freed by the callback
  {
    EpochReclaimer reclaimer;
    reclaimer.Retire([&] { ++ran; });
    reclaimer.Retire([&ran, owned = std::move(owned)]() mutable {
      ran += *owned;
      owned.reset();
    });
  }
  EXPECT_EQ(ran, 8);
}

TEST(EpochReclaimerTest, CallbackMayRetireMore) {
  EpochReclaimer reclaimer;
  int ran = 0;
  reclaimer.Retire([&] {
    ++ran;
    reclaimer.Retire([&] { ran += 10; });
  });
  reclaimer.Reclaim();
  EXPECT_EQ(ran, 1);
  EXPECT_EQ(reclaimer.retired(), 1u);
  reclaimer.Reclaim();
  EXPECT_EQ(ran, 11);
}

// Holds guards on another thread: `hold` guards on entry, dropped one at a
// time, innermost first, as `drop` is counted down.
class GuardHolder final {
 public:
  GuardHolder(EpochReclaimer& reclaimer, int nesting) : steps_(nesting) {
    for (int i = 0; i < nesting; ++i) steps_[i] = std::make_unique<std::latch>(1);
    thread_ = std::thread([this, &reclaimer, nesting] {
      std::vector<std::unique_ptr<EpochReclaimer::Guard>> guards;
      for (int i = 0; i < nesting; ++i) {
        guards.push_back(std::make_unique<EpochReclaimer::Guard>(reclaimer));
      }
      held_.count_down();
      for (int i = 0; i < nesting; ++i) {
        steps_[i]->wait();
        guards.pop_back();
        dropped_.fetch_add(1);
      }
    });
    held_.wait();
  }
  ~GuardHolder() {
    for (size_t i = dropped_.load(); i < steps_.size(); ++i) steps_[i]->count_down();
    thread_.join();
  }
  // Drops one guard and waits until it is gone.
  void DropOne() {
    const int before = dropped_.load();
    steps_[before]->count_down();
    while (dropped_.load() == before) std::this_thread::yield();
  }

 private:
  std::latch held_{1};
  std::vector<std::unique_ptr<std::latch>> steps_;
  std::atomic<int> dropped_{0};
  std::thread thread_;
};

// Lets a concurrent Reclaim() run ahead if it (wrongly) could: not a timing
// assertion, since a correct reclaimer fails no check however long it runs.
void LetOthersRun() {
  for (int i = 0; i < 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

TEST(EpochReclaimerTest, ReclaimWaitsForAGuardOlderThanTheRetire) {
  EpochReclaimer reclaimer;
  std::atomic<bool> ran{false};
  std::atomic<bool> reclaimed{false};
  {
    GuardHolder holder(reclaimer, 1);
    reclaimer.Retire([&] { ran = true; });
    std::thread reclaiming([&] {
      reclaimer.Reclaim();
      reclaimed = true;
    });
    LetOthersRun();
    EXPECT_FALSE(ran.load());
    EXPECT_FALSE(reclaimed.load());
    holder.DropOne();
    reclaiming.join();
  }
  EXPECT_TRUE(ran.load());
  EXPECT_TRUE(reclaimed.load());
}

TEST(EpochReclaimerTest, ReclaimWaitsForTheOutermostNestedGuard) {
  EpochReclaimer reclaimer;
  std::atomic<bool> ran{false};
  GuardHolder holder(reclaimer, 2);
  reclaimer.Retire([&] { ran = true; });
  std::thread reclaiming([&] { reclaimer.Reclaim(); });
  LetOthersRun();
  EXPECT_FALSE(ran.load());
  holder.DropOne();  // the inner guard
  LetOthersRun();
  EXPECT_FALSE(ran.load());
  holder.DropOne();  // the outer guard
  reclaiming.join();
  EXPECT_TRUE(ran.load());
}

TEST(EpochReclaimerTest, GuardsOnOtherThreadsAfterRetireDoNotStarveReclaim) {
  // Each churning thread always holds a guard: it takes a new one before
  // dropping the old. Guards that start after Reclaim's phase flip are not
  // waited for, so Reclaim() still returns.
  EpochReclaimer reclaimer;
  std::atomic<bool> stop{false};
  constexpr int kChurners = 2;
  std::latch started(kChurners);
  std::vector<std::thread> churners;
  for (int i = 0; i < kChurners; ++i) {
    churners.emplace_back([&] {
      auto held = std::make_unique<EpochReclaimer::Guard>(reclaimer);
      started.count_down();
      while (!stop.load()) {
        auto next = std::make_unique<EpochReclaimer::Guard>(reclaimer);
        held = std::move(next);
      }
    });
  }
  started.wait();
  int ran = 0;
  for (int round = 0; round < 20; ++round) {
    reclaimer.Retire([&] { ++ran; });
    reclaimer.Reclaim();
  }
  stop = true;
  for (std::thread& churner : churners) churner.join();
  EXPECT_EQ(ran, 20);
}

TEST(EpochReclaimerTest, ThreadsThatExitedDoNotHoldUpReclaim) {
  // Every thread that takes a guard gets a slot; exited threads' slots are
  // dropped, and a thread that exits inside no guard is never waited for.
  EpochReclaimer reclaimer;
  for (int round = 0; round < 4; ++round) {
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&] {
        EpochReclaimer::Guard outer(reclaimer);
        EpochReclaimer::Guard inner(reclaimer);
      });
    }
    for (std::thread& thread : threads) thread.join();
    int ran = 0;
    reclaimer.Retire([&] { ++ran; });
    reclaimer.Reclaim();
    EXPECT_EQ(ran, 1);
  }
}

TEST(EpochReclaimerTest, EachReclaimerWaitsForItsOwnGuards) {
  // One thread uses reclaimer after reclaimer, likely at recycled addresses:
  // a guard must always count with the reclaimer it was taken of.
  for (int round = 0; round < 5; ++round) {
    auto reclaimer = std::make_unique<EpochReclaimer>();
    EpochReclaimer other;
    std::atomic<bool> ran{false};
    std::thread reclaiming;
    {
      EpochReclaimer::Guard guard(*reclaimer);
      EpochReclaimer::Guard unrelated(other);
      reclaimer->Retire([&] { ran = true; });
      reclaiming = std::thread([&] { reclaimer->Reclaim(); });
      LetOthersRun();
      EXPECT_FALSE(ran.load()) << "round " << round;
    }
    reclaiming.join();
    EXPECT_TRUE(ran.load());
  }
}

TEST(EpochReclaimerTest, ReadersNeverSeeAFreedObject) {
  struct Node {
    uint64_t value;
    uint64_t check;  // ~value
  };
  EpochReclaimer reclaimer;
  std::atomic<Node*> current{std::make_unique<Node>(Node{0, ~uint64_t{0}}).release()};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        EpochReclaimer::Guard guard(reclaimer);
        const Node* node = current.load(std::memory_order_seq_cst);
        if (node->check != ~node->value) bad.fetch_add(1);
      }
    });
  }
  threads.emplace_back([&] {
    while (!stop.load()) {
      reclaimer.Reclaim();
      std::this_thread::yield();
    }
  });
  for (uint64_t i = 1; i <= 3000; ++i) {
    std::unique_ptr<Node> old(
        current.exchange(std::make_unique<Node>(Node{i, ~i}).release(), std::memory_order_seq_cst));
    if (reclaimer.Retire([old = std::move(old)]() mutable { old.reset(); })) reclaimer.Reclaim();
  }
  stop = true;
  for (std::thread& thread : threads) thread.join();
  reclaimer.Reclaim();
  EXPECT_EQ(reclaimer.retired(), 0u);
  EXPECT_EQ(bad.load(), 0u);
  std::unique_ptr<Node> last(current.load());
}

// --- Concurrency ----------------------------------------------------------------

// Collects failures from worker threads, for the main thread to report.
class Errors final {
 public:
  void Add(std::string error) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (errors_.size() < 20) errors_.push_back(std::move(error));
    any_.store(true);
  }
  bool any() const { return any_.load(); }
  std::string Report() {
    std::lock_guard<std::mutex> lock(mutex_);
    return absl::StrJoin(errors_, "\n");
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> errors_;
  std::atomic<bool> any_{false};
};

// Four owners share one 2 MiB span (a 512 KiB small slice each) and one 1 GiB
// span (an 8 MiB big slice each, 2 MiB-aligned). Owner o's leaves translate to
// iova + o * 2^40.
constexpr int kOwners = 4;
constexpr uint64_t kSmallSlice = 512 * 1024;
constexpr uint64_t kBigSlice = 8 * 1024 * 1024;
constexpr uint64_t kRegion = kBase;
constexpr uint64_t kRegionEnd = kRegion + k2M + kOwners * kBigSlice;
uint64_t SmallSlice(int owner) { return kRegion + (owner - 1) * kSmallSlice; }
uint64_t BigSlice(int owner) { return kRegion + k2M + (owner - 1) * kBigSlice; }
uint64_t PhysOffsetOf(uint32_t owner) { return uint64_t{owner} << 40; }

// Why `leaf`, found at or for `address`, cannot be a leaf some owner mapped;
// empty if it can.
std::string CheckOwnedLeaf(const Leaf& leaf, uint64_t address) {
  const auto bad = [&](const char* why) {
    return absl::StrFormat("%s: %s (address %#x)", why, Describe(leaf), address);
  };
  if (leaf.owner < 1 || leaf.owner > kOwners) return bad("unknown owner");
  if (leaf.size != k4K && leaf.size != k2M) return bad("bad size");
  if (leaf.iova % leaf.size != 0) return bad("misaligned");
  if (leaf.phys != leaf.iova + PhysOffsetOf(leaf.owner)) return bad("wrong phys");
  if (leaf.origin != IovaOrigin::kReserved) return bad("wrong origin");
  if (leaf.perms != Perms{true, leaf.owner % 2 == 0}) return bad("wrong perms");
  const int owner = static_cast<int>(leaf.owner);
  const bool in_small =
      leaf.iova >= SmallSlice(owner) && leaf.iova + leaf.size <= SmallSlice(owner) + kSmallSlice;
  const bool in_big =
      leaf.iova >= BigSlice(owner) && leaf.iova + leaf.size <= BigSlice(owner) + kBigSlice;
  if (!in_small && !in_big) return bad("outside its owner's slices");
  return "";
}

TEST(PageTableConcurrencyTest, OwnersSharingTablesWithTranslatorsAndReclaimer) {
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  Errors errors;
  std::atomic<int> working{kOwners};
  std::atomic<uint64_t> translations{0};
  std::vector<std::thread> threads;

  for (int owner = 1; owner <= kOwners; ++owner) {
    threads.emplace_back([&, owner] {
      std::mt19937_64 random(owner);
      std::map<uint64_t, uint64_t> live;  // iova -> size, this owner's mappings
      const auto covering = [&](uint64_t address) -> const std::pair<const uint64_t, uint64_t>* {
        auto it = live.upper_bound(address);
        if (it == live.begin()) return nullptr;
        --it;
        return address < it->first + it->second ? &*it : nullptr;
      };
      const auto overlaps = [&](uint64_t begin, uint64_t end) {
        auto it = live.lower_bound(begin);
        if (it != live.end() && it->first < end) return true;
        return it != live.begin() && std::prev(it)->first + std::prev(it)->second > begin;
      };
      const auto remove = [&](uint64_t iova, uint64_t size) {
        std::optional<PageTable::Removed> removed;
        {
          EpochReclaimer::Guard guard(reclaimer);
          if (size > k4K && table.Remove(iova, iova + size - k4K).has_value()) {
            errors.Add(absl::StrFormat("removed %#x+%#x below its end", iova, size));
          }
          removed = table.Remove(iova, iova + size);
        }
        if (!removed.has_value() || removed->size != size ||
            removed->owner != static_cast<uint32_t>(owner)) {
          errors.Add(absl::StrFormat("owner %d could not remove %#x+%#x", owner, iova, size));
        } else if (removed->reclaim_due) {
          reclaimer.Reclaim();
        }
        live.erase(iova);
      };
      constexpr int kOps = 3000;
      for (int op = 0; op < kOps && !errors.any(); ++op) {
        const uint64_t choice = random() % 10;
        if (choice < 4) {  // install
          Mapping mapping;
          if (random() % 2 == 0) {
            const uint64_t pages = 1 + random() % 16;
            mapping.iova = SmallSlice(owner) + (random() % (128 - pages + 1)) * k4K;
            mapping.size = pages * k4K;
          } else {
            static constexpr uint64_t kSizes[] = {k4K,       5 * k4K,         64 * k4K, k2M,
                                                  k2M + k4K, k2M + 100 * k4K, 2 * k2M};
            mapping.size = kSizes[random() % std::size(kSizes)];
            const uint64_t room = kBigSlice - mapping.size;
            mapping.iova =
                BigSlice(owner) + (random() % 2 == 0 ? (random() % (room / k2M + 1)) * k2M
                                                     : (random() % (room / k4K + 1)) * k4K);
          }
          mapping.phys = mapping.iova + PhysOffsetOf(owner);
          mapping.perms = {true, owner % 2 == 0};
          mapping.origin = IovaOrigin::kReserved;
          mapping.owner = owner;
          mapping.page_sizes = random() % 4 == 0 ? kPage4K : kPage4K | kPage2M;
          const bool expected = !overlaps(mapping.iova, mapping.iova + mapping.size);
          std::optional<PageTable::LeafCounts> counts;
          {
            EpochReclaimer::Guard guard(reclaimer);
            counts = table.Install(mapping);
          }
          if (counts.has_value() != expected) {
            errors.Add(absl::StrFormat("owner %d install %#x+%#x: got %d, expected %d", owner,
                                       mapping.iova, mapping.size, counts.has_value(), expected));
          } else if (counts.has_value()) {
            if (counts->leaves_4k * k4K + counts->leaves_2m * k2M != mapping.size) {
              errors.Add(
                  absl::StrFormat("leaf counts %s for size %#x", Describe(*counts), mapping.size));
            }
            live[mapping.iova] = mapping.size;
          }
        } else if (choice < 7) {  // remove
          if (live.empty()) continue;
          auto it = live.begin();
          std::advance(it, random() % live.size());
          remove(it->first, it->second);
        } else {  // look up own pages: hit exactly where mapped
          const uint64_t address = random() % 2 == 0 ? SmallSlice(owner) + random() % kSmallSlice
                                                     : BigSlice(owner) + random() % kBigSlice;
          std::optional<Leaf> leaf;
          {
            EpochReclaimer::Guard guard(reclaimer);
            leaf = table.Lookup(address);
          }
          const auto* mapped = covering(address);
          if (leaf.has_value() != (mapped != nullptr)) {
            errors.Add(absl::StrFormat("owner %d lookup %#x: %s", owner, address, Describe(leaf)));
          } else if (leaf.has_value()) {
            std::string bad = CheckOwnedLeaf(*leaf, address);
            if (leaf->owner != static_cast<uint32_t>(owner)) bad = "another owner's leaf";
            if (leaf->iova < mapped->first ||
                leaf->iova + leaf->size > mapped->first + mapped->second) {
              bad = "leaf outside the mapping";
            }
            if (leaf->first != (leaf->iova == mapped->first)) bad = "wrong first";
            if (leaf->last != (leaf->iova + leaf->size == mapped->first + mapped->second)) {
              bad = "wrong last";
            }
            if (!bad.empty()) errors.Add(bad + " " + Describe(leaf));
          }
        }
      }
      while (!live.empty()) remove(live.begin()->first, live.begin()->second);
      working.fetch_sub(1);
    });
  }
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 random(100 + t);
      while (working.load() > 0 && !errors.any()) {
        const uint64_t address = kRegion + random() % (kRegionEnd - kRegion);
        EpochReclaimer::Guard guard(reclaimer);
        if (std::optional<Leaf> leaf = table.Lookup(address)) {
          std::string bad = CheckOwnedLeaf(*leaf, address);
          if (address < leaf->iova || address >= leaf->iova + leaf->size) bad = "does not cover";
          if (!bad.empty()) errors.Add("Lookup: " + bad + " " + Describe(leaf));
          translations.fetch_add(1);
        }
        const uint64_t end = address + 1 + random() % (4 * k2M);
        if (std::optional<Leaf> leaf = table.FindLeaf(address, end)) {
          std::string bad = CheckOwnedLeaf(*leaf, address);
          if (leaf->iova >= end || leaf->iova + leaf->size <= address) bad = "outside the range";
          if (!bad.empty()) errors.Add("FindLeaf: " + bad + " " + Describe(leaf));
        }
      }
    });
  }
  threads.emplace_back([&] {
    while (working.load() > 0) {
      reclaimer.Reclaim();
      std::this_thread::yield();
    }
  });
  for (std::thread& thread : threads) thread.join();
  EXPECT_FALSE(errors.any()) << errors.Report();

  reclaimer.Reclaim();
  EXPECT_EQ(reclaimer.retired(), 0u);
  EpochReclaimer::Guard guard(reclaimer);
  PageTable::Census census = table.TakeCensus();
  EXPECT_EQ(census.leaves.leaves_4k + census.leaves.leaves_2m + census.claimed_slots, 0u);
  EXPECT_EQ(census.mappings, 0u);
  EXPECT_EQ(census.table_pages, table.table_pages());
  bool any_leaf = false;
  table.ForEachLeaf([&](const Leaf&) { any_leaf = true; });
  EXPECT_FALSE(any_leaf);
}

TEST(PageTableConcurrencyTest, ExactlyOneOfTwoRacingRemovesWins) {
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  constexpr int kRounds = 1000;
  std::barrier sync(3);
  std::optional<PageTable::Removed> results[2];
  std::vector<std::thread> removers;
  std::atomic<uint64_t> target{0};
  for (int r = 0; r < 2; ++r) {
    removers.emplace_back([&, r] {
      for (int round = 0; round < kRounds; ++round) {
        sync.arrive_and_wait();  // installed
        {
          EpochReclaimer::Guard guard(reclaimer);
          const uint64_t iova = target.load();
          results[r] = table.Remove(iova, kIovaEnd);
        }
        sync.arrive_and_wait();  // removed
      }
    });
  }
  const Mapping shapes[] = {
      MakeMapping(kBase + 0x5000, 3 * k4K),
      MakeMapping(kBase + k2M - k4K, k2M + 2 * k4K, kPage4K | kPage2M),
      MakeMapping(kBase + k2M, k2M, kPage4K),  // its page is unlinked
      MakeClaim(kBase + 0x8000, 2 * k4K),
  };
  for (int round = 0; round < kRounds; ++round) {
    const Mapping& mapping = shapes[round % std::size(shapes)];
    bool installed;
    {
      EpochReclaimer::Guard guard(reclaimer);
      installed = table.Install(mapping).has_value();
    }
    EXPECT_TRUE(installed) << "round " << round;
    target = mapping.iova;
    sync.arrive_and_wait();
    sync.arrive_and_wait();
    const int winners = results[0].has_value() + results[1].has_value();
    EXPECT_EQ(winners, installed ? 1 : 0) << "round " << round;
    for (const std::optional<PageTable::Removed>& result : results) {
      if (!result.has_value()) continue;
      EXPECT_EQ(result->iova, mapping.iova);
      EXPECT_EQ(result->size, mapping.size);
      EXPECT_EQ(result->origin, mapping.origin);
    }
    EpochReclaimer::Guard guard(reclaimer);
    if (winners == 0) table.Remove(mapping.iova, kIovaEnd);  // keep going after a failure
    if (mapping.origin == IovaOrigin::kClaimed) table.Release(mapping.iova, mapping.size);
    PageTable::Census census = table.TakeCensus();
    EXPECT_EQ(census.mappings + census.claimed_slots, 0u) << Describe(census);
    EXPECT_EQ(census.table_pages, table.table_pages());
  }
  for (std::thread& remover : removers) remover.join();
  reclaimer.Reclaim();
}

TEST(PageTableConcurrencyTest, OverlappingClaimsHaveOneWinnerPerSlot) {
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  constexpr int kThreads = 3;
  constexpr int kRounds = 100;
  constexpr int kAttempts = 12;
  const uint64_t window = kBase + k1G;  // two 2 MiB spans
  struct Winner {
    Mapping mapping;
    PageTable::LeafCounts counts;
  };
  std::vector<Winner> winners[kThreads];
  std::barrier sync(kThreads + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 random(7 + t);
      for (int round = 0; round < kRounds; ++round) {
        sync.arrive_and_wait();
        for (int attempt = 0; attempt < kAttempts; ++attempt) {
          Mapping claim;
          if (random() % 4 == 0) {
            claim = MakeClaim(window + (random() % 2) * k2M, k2M, kPage4K | kPage2M);
          } else {
            const uint64_t pages = 1 + random() % 64;
            claim = MakeClaim(window + (random() % (1024 - pages + 1)) * k4K, pages * k4K,
                              kPage4K | kPage2M);
          }
          claim.owner = t + 1;
          std::optional<PageTable::LeafCounts> counts;
          {
            EpochReclaimer::Guard guard(reclaimer);
            counts = table.Install(claim);
          }
          if (counts.has_value()) winners[t].push_back({claim, *counts});
        }
        sync.arrive_and_wait();
      }
    });
  }
  for (int round = 0; round < kRounds; ++round) {
    sync.arrive_and_wait();  // go
    sync.arrive_and_wait();  // done
    std::map<uint64_t, const Winner*> by_iova;
    PageTable::LeafCounts expected;
    for (int t = 0; t < kThreads; ++t) {
      for (const Winner& winner : winners[t]) {
        by_iova[winner.mapping.iova] = &winner;
        expected.leaves_4k += winner.counts.leaves_4k;
        expected.leaves_2m += winner.counts.leaves_2m;
        EXPECT_EQ(winner.counts.leaves_4k * k4K + winner.counts.leaves_2m * k2M,
                  winner.mapping.size);
      }
    }
    // Winners are disjoint: at most one per slot.
    uint64_t previous_end = 0;
    for (const auto& [iova, winner] : by_iova) {
      EXPECT_GE(iova, previous_end) << "round " << round << ": overlapping winners";
      previous_end = iova + winner->mapping.size;
    }
    {
      EpochReclaimer::Guard guard(reclaimer);
      PageTable::Census census = table.TakeCensus();
      EXPECT_EQ(Describe(census.leaves), Describe(expected)) << "round " << round;
      EXPECT_EQ(census.mappings, by_iova.size());
      EXPECT_EQ(census.claimed_slots, 0u);
      EXPECT_EQ(census.table_pages, table.table_pages());
      // Every leaf is its winner's.
      table.ForEachLeaf([&](const Leaf& leaf) {
        auto it = by_iova.upper_bound(leaf.iova);
        if (it == by_iova.begin()) {
          ADD_FAILURE() << "leaf of no winner: " << Describe(leaf);
          return;
        }
        const Mapping& mapping = std::prev(it)->second->mapping;
        EXPECT_LE(leaf.iova + leaf.size, mapping.iova + mapping.size) << Describe(leaf);
        EXPECT_EQ(leaf.owner, mapping.owner) << Describe(leaf);
        EXPECT_EQ(leaf.phys, leaf.iova) << Describe(leaf);
        EXPECT_EQ(leaf.first, leaf.iova == mapping.iova) << Describe(leaf);
      });
      // Clean up: removed claims stay claimed until released.
      uint64_t slots = 0;
      for (const auto& [iova, winner] : by_iova) {
        std::optional<PageTable::Removed> removed = table.Remove(iova, kIovaEnd);
        EXPECT_TRUE(removed.has_value());
        if (removed.has_value()) {
          EXPECT_EQ(removed->size, winner->mapping.size);
        }
        slots += winner->counts.leaves_4k + winner->counts.leaves_2m;
      }
      EXPECT_EQ(table.TakeCensus().claimed_slots, slots);
      for (const auto& [iova, winner] : by_iova) table.Release(iova, winner->mapping.size);
      census = table.TakeCensus();
      EXPECT_EQ(census.claimed_slots + census.mappings, 0u);
    }
    reclaimer.Reclaim();
    for (auto& list : winners) list.clear();
  }
  for (std::thread& thread : threads) thread.join();
}

TEST(PageTableConcurrencyTest, RacingInstallsOverALeftoverTableHaveOneWinner) {
  // Both racers want the span of an empty leftover table; without shared
  // tables, a 2 MiB leaf may replace it. Exactly one may win, and its mapping
  // must be reachable.
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  const uint64_t span = kBase + 6 * k2M;
  constexpr int kRounds = 2000;
  // The racers spin for the start of a round rather than block, so that
  // they start within a few instructions of each other.
  std::atomic<int> go{-1};
  std::barrier done(3);
  std::optional<PageTable::LeafCounts> results[2];
  Mapping attempts[2];
  std::vector<std::thread> racers;
  for (int r = 0; r < 2; ++r) {
    racers.emplace_back([&, r] {
      for (int round = 0; round < kRounds; ++round) {
        while (go.load(std::memory_order_acquire) != round) std::this_thread::yield();
        {
          EpochReclaimer::Guard guard(reclaimer);
          results[r] = table.Install(attempts[r]);
        }
        done.arrive_and_wait();
      }
    });
  }
  for (int round = 0; round < kRounds; ++round) {
    {  // an empty table in the span
      EpochReclaimer::Guard guard(reclaimer);
      EXPECT_TRUE(table.Install(MakeMapping(span + 0x9000, k4K)).has_value());
      EXPECT_TRUE(table.Remove(span + 0x9000, kIovaEnd).has_value());
    }
    for (int r = 0; r < 2; ++r) {
      const bool huge = r == 0 || round % 2 == 0;
      attempts[r] =
          huge ? MakeMapping(span, k2M, kPage4K | kPage2M) : MakeMapping(span + 0x40000, 16 * k4K);
      attempts[r].origin = IovaOrigin::kReserved;
      attempts[r].owner = r + 1;
    }
    go.store(round, std::memory_order_release);
    done.arrive_and_wait();
    EpochReclaimer::Guard guard(reclaimer);
    const int winners = results[0].has_value() + results[1].has_value();
    EXPECT_LE(winners, 1) << "round " << round;
    EXPECT_GE(winners, 1) << "round " << round;  // no third party to lose to
    for (int r = 0; r < 2; ++r) {
      if (!results[r].has_value()) continue;
      std::optional<Leaf> leaf = table.Lookup(attempts[r].iova + 0x1000);
      EXPECT_TRUE(leaf.has_value()) << "round " << round << ": winner " << r << " unreachable";
      if (leaf.has_value()) {
        EXPECT_EQ(leaf->owner, static_cast<uint32_t>(r + 1));
      }
    }
    PageTable::Census census = table.TakeCensus();
    EXPECT_EQ(census.mappings, static_cast<uint64_t>(winners)) << Describe(census);
    EXPECT_EQ(census.claimed_slots, 0u);
    EXPECT_EQ(census.table_pages, table.table_pages());
    for (int r = 0; r < 2; ++r) {
      if (results[r].has_value()) table.Remove(attempts[r].iova, kIovaEnd);
    }
  }
  for (std::thread& racer : racers) racer.join();
  reclaimer.Reclaim();
}

TEST(PageTableConcurrencyTest, FailedHugeInstallDoesNotLoseAConcurrentInstall) {
  // One thread keeps trying a mapping that replaces the span's empty table
  // with a 2 MiB leaf and then collides with a blocker in the next span, so
  // it puts the table back every time. The other keeps trying a 2 MiB leaf or
  // a page in the span until it succeeds: its mapping must then be reachable,
  // not hidden by a table put back over it.
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  const uint64_t span = kBase + 8 * k2M;
  const uint64_t blocker = span + 2 * k2M - k4K;  // the next span's last page
  {
    EpochReclaimer::Guard guard(reclaimer);
    ASSERT_TRUE(table.Install(MakeMapping(blocker, k4K)).has_value());
  }
  constexpr int kRounds = 100;
  constexpr int kHugeAttempts = 20;
  constexpr int kMaxAttempts = 5'000'000;  // the other thread gives up well before
  for (int round = 0; round < kRounds; ++round) {
    {  // an empty table in the span
      EpochReclaimer::Guard guard(reclaimer);
      ASSERT_TRUE(table.Install(MakeMapping(span + 0x9000, k4K)).has_value());
      ASSERT_TRUE(table.Remove(span + 0x9000, kIovaEnd).has_value());
    }
    std::atomic<bool> done{false};
    std::atomic<int> huge_successes{0};
    std::atomic<int> huge_tries{0};
    std::thread huge([&] {
      const Mapping mapping = MakeMapping(span, 2 * k2M, kPage4K | kPage2M);
      // Bounded, so that the other thread cannot be starved: lock-free
      // progress lets one thread win, not every thread.
      for (int attempt = 0; attempt < kHugeAttempts && !done.load(); ++attempt) {
        EpochReclaimer::Guard guard(reclaimer);
        if (table.Install(mapping).has_value()) huge_successes.fetch_add(1);
        huge_tries.fetch_add(1);
      }
    });
    Mapping small = round % 2 == 0 ? MakeMapping(span, k2M, kPage4K | kPage2M)
                                   : MakeMapping(span + (1 + round % 400) * k4K, k4K);
    small.owner = 3;
    // Race with the huge installs, not with the thread's start.
    while (huge_tries.load() < 2) std::this_thread::yield();
    std::optional<PageTable::LeafCounts> counts;
    for (int attempt = 0; !counts.has_value() && attempt < kMaxAttempts; ++attempt) {
      EpochReclaimer::Guard guard(reclaimer);
      counts = table.Install(small);
    }
    done = true;
    huge.join();
    ASSERT_TRUE(counts.has_value()) << "round " << round;
    EXPECT_EQ(huge_successes.load(), 0);
    // A 2 MiB request that found the table partly sealed by the other thread
    // maps inside it with 4 KiB leaves instead: either is right.
    EXPECT_EQ(counts->leaves_4k * k4K + counts->leaves_2m * k2M, small.size);
    {
      EpochReclaimer::Guard guard(reclaimer);
      for (uint64_t address : {small.iova + 0x800, small.iova + small.size - 1}) {
        std::optional<Leaf> leaf = table.Lookup(address);
        ASSERT_TRUE(leaf.has_value()) << "round " << round << ": a successful install was lost";
        EXPECT_EQ(leaf->owner, 3u);
        EXPECT_EQ(leaf->phys, leaf->iova + kPhysOffset);
      }
      PageTable::Census census = table.TakeCensus();
      EXPECT_EQ(census.mappings, 2u) << Describe(census);
      EXPECT_EQ(census.claimed_slots, 0u) << Describe(census);
      EXPECT_EQ(census.table_pages, table.table_pages());
      ASSERT_TRUE(table.Remove(small.iova, kIovaEnd).has_value());
    }
    reclaimer.Reclaim();
  }
}

TEST(PageTableConcurrencyTest, RemovePastTheLimitNeverHidesTheMapping) {
  // A remover whose limit is too small must leave the mapping untouched:
  // concurrent translations of it must keep hitting.
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  const uint64_t iova = kBase + 0x10000;
  const uint64_t size = 16 * k4K;
  {
    EpochReclaimer::Guard guard(reclaimer);
    ASSERT_TRUE(table.Install(MakeMapping(iova, size)).has_value());
  }
  std::atomic<bool> done{false};
  std::atomic<uint64_t> misses{0};
  std::atomic<uint64_t> wrong_removes{0};
  std::thread translator([&] {
    while (!done.load()) {
      EpochReclaimer::Guard guard(reclaimer);
      if (!table.Lookup(iova).has_value()) misses.fetch_add(1);
      if (!table.FindLeaf(iova, iova + k4K).has_value()) misses.fetch_add(1);
    }
  });
  std::thread remover([&] {
    for (int i = 0; i < 20000; ++i) {
      EpochReclaimer::Guard guard(reclaimer);
      if (table.Remove(iova, iova + size - k4K).has_value()) wrong_removes.fetch_add(1);
    }
    done = true;
  });
  remover.join();
  translator.join();
  EXPECT_EQ(wrong_removes.load(), 0u);
  EXPECT_EQ(misses.load(), 0u);
  EpochReclaimer::Guard guard(reclaimer);
  EXPECT_EQ(table.TakeCensus().mappings, 1u);
}

}  // namespace
}  // namespace iommu_broker
