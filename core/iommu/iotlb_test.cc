// The IOTLB: tagging by requester and page size, invalidation by range,
// requester and whole cache, fill tokens, replacement, geometry validation,
// statistics, and a concurrent test of lookups, fills and invalidations.
#include "core/iommu/iotlb.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Iotlb> MakeIotlb(IotlbGeometry geometry = {},
                                 PageSizeSet page_sizes = kPage4K | kPage2M | kPage1G) {
  absl::StatusOr<std::unique_ptr<Iotlb>> iotlb = Iotlb::Create(geometry, page_sizes);
  EXPECT_TRUE(iotlb.ok()) << iotlb.status();
  return iotlb.ok() ? *std::move(iotlb) : nullptr;
}

IotlbEntry Entry(uint64_t iova, uint64_t phys, uint64_t page_size = kPage4K,
                 Perms perms = {.read = true, .write = true}) {
  return {.iova = iova, .phys = phys, .page_size = page_size, .perms = perms};
}

// Inserts with a fresh token, as a walk that no invalidation raced with.
void Fill(Iotlb& iotlb, uint32_t requester, const IotlbEntry& entry) {
  iotlb.Insert(iotlb.FillToken(), requester, entry);
}

bool Hits(Iotlb& iotlb, uint32_t requester, uint64_t iova) {
  return iotlb.Lookup(requester, iova).has_value();
}

TEST(IotlbTest, HitAfterInsertReturnsTheEntry) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 7, Entry(0x5000, 0x9000, kPage4K, {.read = true, .write = false}));
  std::optional<IotlbEntry> hit = iotlb->Lookup(7, 0x5abc);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->iova, 0x5000u);
  EXPECT_EQ(hit->phys, 0x9000u);
  EXPECT_EQ(hit->page_size, kPage4K);
  EXPECT_EQ(hit->perms, (Perms{.read = true, .write = false}));
  EXPECT_FALSE(Hits(*iotlb, 7, 0x6000));  // the next page was never filled
}

TEST(IotlbTest, EntriesAreTaggedByRequester) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x5000, 0x9000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x5000));
  EXPECT_FALSE(Hits(*iotlb, 2, 0x5000));
  EXPECT_FALSE(Hits(*iotlb, Iotlb::kMaxRequester, 0x5000));
}

// Requesters outside [1, kMaxRequester] and IOVAs above 2^48 are neither
// cached nor aliased onto valid ones (4097 must not read requester 1's entry).
TEST(IotlbTest, OutOfRangeRequestersAndIovasNeverHit) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x5000, 0x9000));
  for (uint32_t requester : {0u, Iotlb::kMaxRequester + 1, Iotlb::kMaxRequester + 2, ~0u}) {
    Fill(*iotlb, requester, Entry(0x5000, 0x9000));
    EXPECT_FALSE(Hits(*iotlb, requester, 0x5000)) << requester;
  }
  const uint64_t high = uint64_t{1} << kIovaBits;
  Fill(*iotlb, 1, Entry(high, 0x9000));
  EXPECT_FALSE(Hits(*iotlb, 1, high));
  EXPECT_FALSE(Hits(*iotlb, 1, ~uint64_t{0}));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x5000));
  EXPECT_EQ(iotlb->Stats().inserts, 1u);
}

TEST(IotlbTest, TwoMegabyteEntryCoversEveryPageInside) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  const uint64_t iova = 3 * kPage2M;
  const uint64_t phys = 7 * kPage2M;
  Fill(*iotlb, 1, Entry(iova, phys, kPage2M));
  for (uint64_t offset = 0; offset < kPage2M; offset += kPage4K) {
    std::optional<IotlbEntry> hit = iotlb->Lookup(1, iova + offset + 0x10);
    ASSERT_TRUE(hit.has_value()) << offset;
    EXPECT_EQ(hit->iova, iova);
    EXPECT_EQ(hit->phys, phys);
    EXPECT_EQ(hit->page_size, kPage2M);
  }
  EXPECT_FALSE(Hits(*iotlb, 1, iova - 1));
  EXPECT_FALSE(Hits(*iotlb, 1, iova + kPage2M));
}

TEST(IotlbTest, OneGigabyteEntryCoversItsRange) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(kPage1G, 0, kPage1G));
  std::optional<IotlbEntry> hit = iotlb->Lookup(1, 2 * kPage1G - kPage4K);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->page_size, kPage1G);
  EXPECT_EQ(hit->iova, kPage1G);
  EXPECT_FALSE(Hits(*iotlb, 1, 2 * kPage1G));
}

// Lookups skip page sizes never inserted; the first huge entry, arriving
// after many 4 KiB lookups and misses, is found all the same, and 4 KiB
// entries after it.
TEST(IotlbTest, HugeEntriesInsertedAfterSmallOnesAreFound) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x1000, 0x9000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1000));
  EXPECT_FALSE(Hits(*iotlb, 1, 5 * kPage2M));
  EXPECT_FALSE(Hits(*iotlb, 1, 3 * kPage1G));

  Fill(*iotlb, 1, Entry(5 * kPage2M, 9 * kPage2M, kPage2M));
  std::optional<IotlbEntry> two_mib = iotlb->Lookup(1, 5 * kPage2M + 0x1234);
  ASSERT_TRUE(two_mib.has_value());
  EXPECT_EQ(two_mib->page_size, kPage2M);
  EXPECT_FALSE(Hits(*iotlb, 1, 3 * kPage1G));

  Fill(*iotlb, 1, Entry(3 * kPage1G, kPage1G, kPage1G));
  std::optional<IotlbEntry> one_gib = iotlb->Lookup(1, 3 * kPage1G + 0x123000);
  ASSERT_TRUE(one_gib.has_value());
  EXPECT_EQ(one_gib->page_size, kPage1G);
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1000));
  const IotlbStats stats = iotlb->Stats();
  EXPECT_EQ(stats.hits, 4u);
  EXPECT_EQ(stats.misses, 3u);
}

// A page size the IOTLB was not created with is not cached: Lookup would
// never probe for it.
TEST(IotlbTest, UnsupportedPageSizeIsNotCached) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({}, kPage4K | kPage2M);
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(kPage1G, 0, kPage1G));
  EXPECT_FALSE(Hits(*iotlb, 1, kPage1G));
  EXPECT_EQ(iotlb->Stats().inserts, 0u);
}

// Invalidation is by the granule that was mapped: a 4 KiB invalidation over
// a 2 MiB leaf's whole range leaves the leaf, one 2 MiB probe removes it.
TEST(IotlbTest, InvalidateRangeMatchesTheGranule) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  const uint64_t iova = 5 * kPage2M;
  Fill(*iotlb, 1, Entry(iova, 0, kPage2M));
  Fill(*iotlb, 2, Entry(iova, 0, kPage2M));
  iotlb->InvalidateRange(iova, kPage2M, kPage4K);
  EXPECT_TRUE(Hits(*iotlb, 1, iova + kPage4K));
  EXPECT_EQ(iotlb->Stats().invalidated_entries, 0u);
  iotlb->InvalidateRange(iova, kPage2M, kPage2M);
  EXPECT_FALSE(Hits(*iotlb, 1, iova + kPage4K));
  EXPECT_FALSE(Hits(*iotlb, 2, iova));
  EXPECT_EQ(iotlb->Stats().invalidated_entries, 2u);
}

// Leaves of other sizes are left alone even when their page number equals an
// invalidated one (page 1 of each size), whether the invalidation probes
// (one page) or sweeps ([0, 2 GiB): more pages than sets), and whether the
// sizes share a set (sets = 1) or not.
TEST(IotlbTest, InvalidateRangeLeavesOtherPageSizes) {
  const uint64_t sizes[] = {kPage4K, kPage2M, kPage1G};
  for (IotlbGeometry geometry :
       {IotlbGeometry{.sets = 64, .ways = 8}, IotlbGeometry{.sets = 1, .ways = 4}}) {
    for (bool whole_range : {false, true}) {
      std::unique_ptr<Iotlb> iotlb = MakeIotlb(geometry);
      ASSERT_NE(iotlb, nullptr);
      for (uint64_t size : sizes) Fill(*iotlb, 1, Entry(size, 0, size));
      for (int invalidated = 0; invalidated < 3; ++invalidated) {
        const uint64_t granule = sizes[invalidated];
        if (whole_range) {
          iotlb->InvalidateRange(0, 2 * kPage1G, granule);
        } else {
          iotlb->InvalidateRange(granule, granule, granule);
        }
        for (int i = 0; i < 3; ++i) {
          std::optional<IotlbEntry> hit = iotlb->Lookup(1, sizes[i]);
          EXPECT_EQ(hit.has_value() && hit->page_size == sizes[i], i > invalidated)
              << "sets " << geometry.sets << (whole_range ? " whole range" : " one page")
              << ": entry " << sizes[i] << " after invalidating " << granule;
        }
      }
    }
  }
}

// Probing path (fewer pages than sets): only pages inside the range go, for
// every requester.
TEST(IotlbTest, InvalidateRangeRemovesOnlyPagesInTheRange) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 64, .ways = 8});
  ASSERT_NE(iotlb, nullptr);
  for (uint64_t page = 0; page < 16; ++page) {
    Fill(*iotlb, 1, Entry(page * kPage4K, page * kPage4K));
    Fill(*iotlb, 2, Entry(page * kPage4K, page * kPage4K));
  }
  iotlb->InvalidateRange(4 * kPage4K, 4 * kPage4K, kPage4K);
  for (uint64_t page = 0; page < 16; ++page) {
    const bool inside = page >= 4 && page < 8;
    EXPECT_EQ(Hits(*iotlb, 1, page * kPage4K), !inside) << page;
    EXPECT_EQ(Hits(*iotlb, 2, page * kPage4K), !inside) << page;
  }
  EXPECT_EQ(iotlb->Stats().invalidated_entries, 8u);
}

// Sweeping path (more pages than sets) removes exactly the same entries.
TEST(IotlbTest, InvalidateRangeSweepRemovesOnlyPagesInTheRange) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 2, .ways = 32});
  ASSERT_NE(iotlb, nullptr);
  for (uint64_t page = 0; page < 16; ++page) {
    Fill(*iotlb, 1, Entry(page * kPage4K, page * kPage4K));
    Fill(*iotlb, 2, Entry(page * kPage4K, page * kPage4K));
  }
  iotlb->InvalidateRange(4 * kPage4K, 6 * kPage4K, kPage4K);
  for (uint64_t page = 0; page < 16; ++page) {
    const bool inside = page >= 4 && page < 10;
    EXPECT_EQ(Hits(*iotlb, 1, page * kPage4K), !inside) << page;
    EXPECT_EQ(Hits(*iotlb, 2, page * kPage4K), !inside) << page;
  }
  EXPECT_EQ(iotlb->Stats().invalidated_entries, 12u);
  EXPECT_EQ(iotlb->Stats().evictions, 0u);
}

// An unaligned range is rounded outward to whole granules: [0x1800, 0x2800)
// touches pages 0x1000 and 0x2000.
TEST(IotlbTest, InvalidateRangeRoundsOutward) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  for (uint64_t page = 0; page < 4; ++page) Fill(*iotlb, 1, Entry(page * kPage4K, 0));
  iotlb->InvalidateRange(0x1800, 0x1000, kPage4K);
  EXPECT_TRUE(Hits(*iotlb, 1, 0x0000));
  EXPECT_FALSE(Hits(*iotlb, 1, 0x1000));
  EXPECT_FALSE(Hits(*iotlb, 1, 0x2000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x3000));
}

// A range running to the top of the address space must not overflow.
TEST(IotlbTest, InvalidateRangeToTheTopOfTheAddressSpace) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  const uint64_t last_page = (uint64_t{1} << kIovaBits) - kPage4K;
  Fill(*iotlb, 1, Entry(last_page, 0));
  Fill(*iotlb, 1, Entry(0, 0));
  iotlb->InvalidateRange(last_page, ~uint64_t{0}, kPage4K);
  EXPECT_FALSE(Hits(*iotlb, 1, last_page));
  EXPECT_TRUE(Hits(*iotlb, 1, 0));
}

TEST(IotlbTest, InvalidateRequesterRemovesOnlyThatRequester) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  for (uint32_t requester = 1; requester <= 3; ++requester) {
    Fill(*iotlb, requester, Entry(0x1000, 0x1000));
    Fill(*iotlb, requester, Entry(kPage2M, 0, kPage2M));
  }
  iotlb->InvalidateRequester(2);
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1000));
  EXPECT_TRUE(Hits(*iotlb, 1, kPage2M));
  EXPECT_FALSE(Hits(*iotlb, 2, 0x1000));
  EXPECT_FALSE(Hits(*iotlb, 2, kPage2M));
  EXPECT_TRUE(Hits(*iotlb, 3, 0x1000));
  EXPECT_TRUE(Hits(*iotlb, 3, kPage2M));
  EXPECT_EQ(iotlb->Stats().invalidated_entries, 2u);
}

TEST(IotlbTest, InvalidateAllRemovesEverything) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 4, .ways = 4});
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x1000, 0));
  Fill(*iotlb, 2, Entry(kPage2M, 0, kPage2M));
  Fill(*iotlb, 3, Entry(kPage1G, 0, kPage1G));
  iotlb->InvalidateAll();
  EXPECT_FALSE(Hits(*iotlb, 1, 0x1000));
  EXPECT_FALSE(Hits(*iotlb, 2, kPage2M));
  EXPECT_FALSE(Hits(*iotlb, 3, kPage1G));
  EXPECT_EQ(iotlb->Stats().invalidated_entries, 3u);
}

// A fill whose walk began before any invalidation (even of another range)
// is dropped; a fill with a token taken afterwards is kept.
TEST(IotlbTest, FillTokenTakenBeforeAnInvalidationIsDropped) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  for (int kind = 0; kind < 3; ++kind) {
    const uint64_t token = iotlb->FillToken();
    if (kind == 0) iotlb->InvalidateRange(kPage1G, kPage4K, kPage4K);
    if (kind == 1) iotlb->InvalidateRequester(9);
    if (kind == 2) iotlb->InvalidateAll();
    iotlb->Insert(token, 1, Entry(0x1000, 0x2000));
    EXPECT_FALSE(Hits(*iotlb, 1, 0x1000)) << kind;
  }
  EXPECT_EQ(iotlb->Stats().dropped_fills, 3u);
  EXPECT_EQ(iotlb->Stats().inserts, 0u);
  iotlb->Insert(iotlb->FillToken(), 1, Entry(0x1000, 0x2000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1000));
}

// Inserting a tag already cached rewrites that way instead of using another.
TEST(IotlbTest, InsertOfACachedTagUpdatesIt) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 1, .ways = 2});
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x1000, 0xa000));
  Fill(*iotlb, 1, Entry(0x1000, 0xb000, kPage4K, {.read = true, .write = false}));
  Fill(*iotlb, 1, Entry(0x2000, 0xc000));
  std::optional<IotlbEntry> hit = iotlb->Lookup(1, 0x1000);
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(hit->phys, 0xb000u);
  EXPECT_FALSE(hit->perms.write);
  EXPECT_TRUE(Hits(*iotlb, 1, 0x2000));
  EXPECT_EQ(iotlb->Stats().evictions, 0u);
}

// With one set of two ways the third and fourth fills evict round-robin:
// way 0 (page 1), then way 1 (page 2).
TEST(IotlbTest, FullSetEvictsRoundRobin) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 1, .ways = 2});
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x1000, 0));
  Fill(*iotlb, 1, Entry(0x2000, 0));
  Fill(*iotlb, 1, Entry(0x3000, 0));
  EXPECT_FALSE(Hits(*iotlb, 1, 0x1000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x2000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x3000));
  EXPECT_EQ(iotlb->Stats().evictions, 1u);
  Fill(*iotlb, 1, Entry(0x4000, 0));
  EXPECT_FALSE(Hits(*iotlb, 1, 0x2000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x3000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x4000));
  EXPECT_EQ(iotlb->Stats().evictions, 2u);
}

// A way freed by an invalidation is reused before anything is evicted.
TEST(IotlbTest, InvalidWayIsReusedBeforeEvicting) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 1, .ways = 2});
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, 1, Entry(0x1000, 0));
  Fill(*iotlb, 1, Entry(0x2000, 0));
  iotlb->InvalidateRange(0x2000, kPage4K, kPage4K);
  Fill(*iotlb, 1, Entry(0x3000, 0));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x3000));
  EXPECT_EQ(iotlb->Stats().evictions, 0u);
}

TEST(IotlbTest, CreateRejectsBadGeometryNamingTheField) {
  struct Case {
    IotlbGeometry geometry;
    PageSizeSet page_sizes;
    const char* message;
  };
  const Case cases[] = {
      {{.sets = 48, .ways = 8}, kPage4K, "iotlb sets 48 is not a power of two in [1, 65536]"},
      {{.sets = 0, .ways = 8}, kPage4K, "iotlb sets 0 "},
      {{.sets = 131072, .ways = 8}, kPage4K, "iotlb sets 131072 "},
      {{.sets = 64, .ways = 0}, kPage4K, "iotlb ways 0 "},
      {{.sets = 64, .ways = 65}, kPage4K, "iotlb ways 65 "},
      {{.sets = 64, .ways = 8}, 0, "iotlb page_sizes 0x0 "},
      {{.sets = 64, .ways = 8}, kPage2M, "iotlb page_sizes 0x200000 "},
      {{.sets = 64, .ways = 8}, kPage4K | 0x2000, "iotlb page_sizes 0x3000 "},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::unique_ptr<Iotlb>> iotlb = Iotlb::Create(c.geometry, c.page_sizes);
    ASSERT_FALSE(iotlb.ok()) << c.message;
    EXPECT_EQ(iotlb.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(iotlb.status().message(), HasSubstr(c.message));
  }
}

TEST(IotlbTest, CreateAcceptsTheLimits) {
  for (IotlbGeometry geometry :
       {IotlbGeometry{.sets = 1, .ways = 1}, IotlbGeometry{.sets = 65536, .ways = 1},
        IotlbGeometry{.sets = 2, .ways = 64}}) {
    absl::StatusOr<std::unique_ptr<Iotlb>> iotlb = Iotlb::Create(geometry, kPage4K);
    ASSERT_TRUE(iotlb.ok()) << iotlb.status();
    EXPECT_EQ((*iotlb)->geometry().sets, geometry.sets);
    EXPECT_EQ((*iotlb)->geometry().ways, geometry.ways);
    Fill(**iotlb, 1, Entry(0x1000, 0));
    EXPECT_TRUE(Hits(**iotlb, 1, 0x1000));
  }
}

// One hit or one miss per Lookup, however many page sizes it probed.
TEST(IotlbTest, StatsCountEachOperation) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 1, .ways = 1});
  ASSERT_NE(iotlb, nullptr);
  EXPECT_FALSE(Hits(*iotlb, 1, 0x1000));
  Fill(*iotlb, 1, Entry(0x1000, 0));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1000));
  EXPECT_TRUE(Hits(*iotlb, 1, 0x1fff));
  Fill(*iotlb, 1, Entry(kPage2M, 0, kPage2M));  // evicts page 0x1000
  const uint64_t token = iotlb->FillToken();
  iotlb->InvalidateAll();
  iotlb->Insert(token, 1, Entry(0x1000, 0));
  EXPECT_FALSE(Hits(*iotlb, 1, kPage2M));
  const IotlbStats stats = iotlb->Stats();
  EXPECT_EQ(stats.hits, 2u);
  EXPECT_EQ(stats.misses, 2u);
  EXPECT_EQ(stats.inserts, 2u);
  EXPECT_EQ(stats.evictions, 1u);
  EXPECT_EQ(stats.dropped_fills, 1u);
  EXPECT_EQ(stats.invalidated_entries, 1u);
}

// Lookups and fills race with a thread that remaps pages and then
// invalidates them. Every hit must be exactly an entry that was inserted for
// its tag (the physical address encodes requester, page and generation), and
// never one older than a remap whose invalidation completed before the
// lookup began: a fill whose walk raced with that invalidation was dropped.
TEST(IotlbTest, ConcurrentLookupsFillsAndInvalidationsStayConsistent) {
  constexpr int kSmallPages = 32;  // 4 KiB pages in [0, 128 KiB)
  constexpr int kLargePages = 4;   // 2 MiB pages from 2 MiB up
  constexpr int kPages = kSmallPages + kLargePages;
  constexpr uint32_t kRequesters = 3;
  constexpr int kWorkers = 3;
  constexpr int kLookupsPerWorker = 20000;
  std::unique_ptr<Iotlb> iotlb = MakeIotlb({.sets = 8, .ways = 4}, kPage4K | kPage2M);
  ASSERT_NE(iotlb, nullptr);

  auto page_iova = [](int page) {
    return page < kSmallPages ? page * kPage4K : (page - kSmallPages + 1) * kPage2M;
  };
  auto page_size = [](int page) { return page < kSmallPages ? kPage4K : kPage2M; };
  // phys = requester << 58 | generation << 30 | iova (below 2^24), so it is
  // 2 MiB-aligned for 2 MiB pages and decodes back to all three.
  auto phys_of = [&](uint32_t requester, int page, uint64_t generation) {
    return uint64_t{requester} << 58 | generation << 30 | page_iova(page);
  };
  // The "page table": bumping a page's generation remaps it.
  std::vector<std::atomic<uint64_t>> generation(kPages);
  // Generations whose invalidation has completed: no lookup begun after may
  // return anything older.
  std::vector<std::atomic<uint64_t>> invalidated(kPages);

  std::atomic<int> workers_running{kWorkers};
  std::atomic<uint64_t> hits{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      // A failed ASSERT returns from `work`; the invalidator still stops.
      auto work = [&] {
        std::mt19937_64 random(w + 1);
        for (int i = 0; i < kLookupsPerWorker; ++i) {
          const uint32_t requester = 1 + random() % kRequesters;
          const int page = static_cast<int>(random() % kPages);
          const uint64_t iova = page_iova(page) + ((random() % page_size(page)) & ~uint64_t{7});
          const uint64_t floor = invalidated[page].load(std::memory_order_acquire);
          std::optional<IotlbEntry> hit = iotlb->Lookup(requester, iova);
          if (hit.has_value()) {
            hits.fetch_add(1, std::memory_order_relaxed);
            const uint64_t hit_generation = (hit->phys >> 30) & ((uint64_t{1} << 28) - 1);
            ASSERT_EQ(hit->iova, page_iova(page));
            ASSERT_EQ(hit->page_size, page_size(page));
            ASSERT_EQ(hit->phys, phys_of(requester, page, hit_generation));
            ASSERT_GE(hit_generation, floor) << "stale entry survived its invalidation";
            ASSERT_LE(hit_generation, generation[page].load());
            ASSERT_EQ(hit->perms, (Perms{.read = true, .write = hit_generation % 2 == 1}));
          } else {
            const uint64_t token = iotlb->FillToken();
            const uint64_t current = generation[page].load();  // the walk
            // A slow walk now and then, so invalidations land inside walks.
            if (random() % 4 == 0) std::this_thread::yield();
            iotlb->Insert(token, requester,
                          Entry(page_iova(page), phys_of(requester, page, current), page_size(page),
                                {.read = true, .write = current % 2 == 1}));
          }
        }
      };
      work();
      workers_running.fetch_sub(1);
    });
  }
  threads.emplace_back([&] {
    std::mt19937_64 random(100);
    for (int round = 0; workers_running.load() > 0; ++round) {
      const int page = static_cast<int>(random() % kPages);
      const uint64_t remapped = generation[page].fetch_add(1) + 1;  // unmap + map
      switch (round % 16) {
        case 0:
          iotlb->InvalidateAll();
          break;
        case 1:
          iotlb->InvalidateRequester(1 + random() % kRequesters);
          iotlb->InvalidateRange(page_iova(page), page_size(page), page_size(page));
          break;
        default:
          iotlb->InvalidateRange(page_iova(page), page_size(page), page_size(page));
      }
      invalidated[page].store(remapped, std::memory_order_release);
      if (round % 64 == 0) std::this_thread::yield();
    }
  });
  for (std::thread& thread : threads) thread.join();

  // Quiescent: after a completed InvalidateAll nothing hits.
  iotlb->InvalidateAll();
  for (uint32_t requester = 1; requester <= kRequesters; ++requester) {
    for (int page = 0; page < kPages; ++page) {
      EXPECT_FALSE(Hits(*iotlb, requester, page_iova(page))) << requester << " " << page;
    }
  }
  const IotlbStats stats = iotlb->Stats();
  EXPECT_EQ(stats.hits, hits.load());
  EXPECT_EQ(stats.hits + stats.misses,
            uint64_t{kWorkers} * kLookupsPerWorker + uint64_t{kRequesters} * kPages);
}

}  // namespace
}  // namespace iommu_broker
