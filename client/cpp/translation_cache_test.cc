#include "client/cpp/translation_cache.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace iommu_broker::client {
namespace {

constexpr uint64_t kPage = TranslationCache::kPageSize;

std::optional<uint64_t> PhysOf(TranslationCache& cache, uint64_t iova_page, DmaAccess access) {
  std::optional<TranslationCache::CachedPage> cached = cache.Lookup(iova_page, access);
  if (!cached.has_value()) return std::nullopt;
  return cached->phys_page;
}

TEST(TranslationCacheTest, HitsOnlyForGrantedAccesses) {
  TranslationCache cache(64);
  EXPECT_FALSE(cache.Lookup(0x1000, DmaAccess::kRead).has_value());
  cache.Insert(cache.FillToken(), 0x1000, 0x9000, DmaAccess::kRead);
  EXPECT_EQ(PhysOf(cache, 0x1000, DmaAccess::kRead), 0x9000u);
  EXPECT_FALSE(cache.Lookup(0x1000, DmaAccess::kWrite).has_value());
  cache.Insert(cache.FillToken(), 0x1000, 0x9000, DmaAccess::kWrite);
  EXPECT_EQ(PhysOf(cache, 0x1000, DmaAccess::kWrite), 0x9000u);
  // A different physical page voids the old grants.
  cache.Insert(cache.FillToken(), 0x1000, 0xa000, DmaAccess::kWrite);
  EXPECT_FALSE(cache.Lookup(0x1000, DmaAccess::kRead).has_value());
  const TranslationCacheStats stats = cache.Stats();
  EXPECT_EQ(stats.hits, 2u);
  EXPECT_EQ(stats.misses, 3u);
  EXPECT_EQ(stats.entries, 1u);
}

TEST(TranslationCacheTest, AFillThatRacedWithAnInvalidationIsDropped) {
  TranslationCache cache(64);
  const uint64_t token = cache.FillToken();
  cache.InvalidateRange(0x1000, kPage);
  cache.Insert(token, 0x1000, 0x9000, DmaAccess::kRead);
  EXPECT_FALSE(cache.Lookup(0x1000, DmaAccess::kRead).has_value());
  EXPECT_EQ(cache.Stats().dropped_fills, 1u);
}

TEST(TranslationCacheTest, RangeInvalidationDropsEveryOverlappingPageAndNoOther) {
  TranslationCache cache(1 << 16);
  for (uint64_t page = 0; page < 8; ++page) {
    cache.Insert(cache.FillToken(), page * kPage, 0x100000 + page * kPage, DmaAccess::kRead);
  }
  cache.InvalidateRange(2 * kPage + 1, 2 * kPage);  // touches pages 2, 3 and 4
  for (uint64_t page = 0; page < 8; ++page) {
    EXPECT_EQ(cache.Lookup(page * kPage, DmaAccess::kRead).has_value(), page < 2 || page > 4)
        << page;
  }
  cache.InvalidateRange(0, uint64_t{1} << 40);  // scans instead of probing
  EXPECT_EQ(cache.Stats().entries, 0u);
}

TEST(TranslationCacheTest, APageMarkedUnmappedStillHitsButCountsStaleUntilInvalidated) {
  TranslationCache cache(64);
  for (uint64_t page = 0; page < 3; ++page) {
    cache.Insert(cache.FillToken(), page * kPage, 0x100000 + page * kPage, DmaAccess::kRead);
  }
  cache.MarkUnmapped(kPage, kPage);
  std::optional<TranslationCache::CachedPage> marked = cache.Lookup(kPage, DmaAccess::kRead);
  ASSERT_TRUE(marked.has_value());
  EXPECT_EQ(marked->phys_page, 0x101000u);
  EXPECT_TRUE(marked->stale);
  std::optional<TranslationCache::CachedPage> neighbour = cache.Lookup(0, DmaAccess::kRead);
  ASSERT_TRUE(neighbour.has_value());
  EXPECT_FALSE(neighbour->stale);
  cache.MarkUnmapped(0, uint64_t{1} << 40);  // scans instead of probing
  EXPECT_TRUE(cache.Lookup(2 * kPage, DmaAccess::kRead)->stale);
  cache.InvalidateRange(kPage, kPage);
  EXPECT_FALSE(cache.Lookup(kPage, DmaAccess::kRead).has_value());
  const TranslationCacheStats stats = cache.Stats();
  EXPECT_EQ(stats.hits, 3u);
  EXPECT_EQ(stats.stale_hits, 2u);
}

TEST(TranslationCacheTest, AFillThatRacedWithAnUnmappedMarkIsDropped) {
  // Its answer may predate the unmap: kept, it would be a stale page that no
  // mark covers.
  TranslationCache cache(64);
  const uint64_t token = cache.FillToken();
  cache.MarkUnmapped(0x1000, kPage);
  cache.Insert(token, 0x1000, 0x9000, DmaAccess::kRead);
  EXPECT_FALSE(cache.Lookup(0x1000, DmaAccess::kRead).has_value());
  EXPECT_EQ(cache.Stats().dropped_fills, 1u);
}

TEST(TranslationCacheTest, StaysWithinItsCapacity) {
  TranslationCache cache(32);
  for (uint64_t page = 0; page < 1000; ++page) {
    cache.Insert(cache.FillToken(), page * kPage, page * kPage, DmaAccess::kRead);
  }
  EXPECT_LE(cache.Stats().entries, 32u);
}

// A model broker remaps a few pages to ever new physical pages while readers
// fill the cache from the model and look pages up. Paranoid: each unmap
// invalidates the cache before it replies. Fast: each unmap marks the page
// (the broker's notice) and a later flush invalidates it. Counts lookups
// that break coherence: one that began after a page's invalidation and saw
// it, or (fast) one that began after its mark and saw it unmarked.
struct Violations {
  int after_invalidation = 0;
  int unmarked = 0;
};

Violations RemapWhileReading(bool fast) {
  constexpr int kPages = 4;
  constexpr uint64_t kGenerations = 2000;
  TranslationCache cache(64);
  std::array<std::atomic<uint64_t>, kPages> model{};               // generation + 1; 0: unmapped
  std::vector<std::atomic<uint64_t>> marked_at(kGenerations + 1);  // 0: not yet
  std::vector<std::atomic<uint64_t>> invalidated_at(kGenerations + 1);  // 0: not yet
  std::atomic<uint64_t> clock{1};
  std::atomic<bool> done{false};
  std::atomic<int> after_invalidation{0};
  std::atomic<int> unmarked{0};

  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      for (uint64_t i = r; !done.load(); ++i) {
        const int slot = static_cast<int>(i % kPages);
        const uint64_t page = slot * kPage;
        const uint64_t started = clock.load();
        std::optional<TranslationCache::CachedPage> cached = cache.Lookup(page, DmaAccess::kRead);
        if (cached.has_value()) {
          const uint64_t generation = cached->phys_page / kPage;
          const uint64_t invalidated = invalidated_at[generation].load();
          const uint64_t marked = marked_at[generation].load();
          if (invalidated != 0 && invalidated <= started) after_invalidation.fetch_add(1);
          if (marked != 0 && marked <= started && !cached->stale) unmarked.fetch_add(1);
          continue;
        }
        const uint64_t token = cache.FillToken();
        const uint64_t mapped = model[slot].load();  // the broker's answer
        if (mapped != 0) cache.Insert(token, page, mapped * kPage, DmaAccess::kRead);
      }
    });
  }
  for (uint64_t generation = 1; generation <= kGenerations; ++generation) {
    const int slot = static_cast<int>(generation % kPages);
    model[slot].store(generation);
    std::this_thread::yield();
    model[slot].store(0);  // unmapped ...
    if (fast) {
      cache.MarkUnmapped(slot * kPage, kPage);  // ... noticed ...
      marked_at[generation].store(clock.fetch_add(1) + 1);
      std::this_thread::yield();
    }
    cache.InvalidateRange(slot * kPage, kPage);                // ... invalidated ...
    invalidated_at[generation].store(clock.fetch_add(1) + 1);  // ... and replied or flushed
  }
  done.store(true);
  for (std::thread& reader : readers) reader.join();
  return {.after_invalidation = after_invalidation.load(), .unmarked = unmarked.load()};
}

TEST(TranslationCacheTest, ParanoidNoLookupSeesAPageItsInvalidationRemoved) {
  EXPECT_EQ(RemapWhileReading(/*fast=*/false).after_invalidation, 0);
}

TEST(TranslationCacheTest, FastLookupsSeeAMarkedPageOnlyAsStaleAndNeverAfterItsFlush) {
  const Violations violations = RemapWhileReading(/*fast=*/true);
  EXPECT_EQ(violations.unmarked, 0);
  EXPECT_EQ(violations.after_invalidation, 0);
}

// Callers (DeviceIotlb's users, its tests) wait for Stats().invalidations to
// reach a count before relying on that invalidation: the count must not run
// ahead of the removal. Each round caches a page, invalidates it, and lets
// another thread look it up as soon as the count says the invalidation
// happened.
TEST(TranslationCacheTest, AnInvalidationIsCountedOnlyOnceItsPagesAreGone) {
  constexpr int kRounds = 20000;
  TranslationCache cache(64);
  std::atomic<int> invalidating{-1};  // the round whose invalidation has begun
  std::atomic<int> checked{-1};       // the round the watcher has checked
  std::atomic<int> seen_after_count{0};
  std::thread watcher([&] {
    for (int round = 0; round < kRounds; ++round) {
      while (invalidating.load() < round) std::this_thread::yield();
      while (cache.Stats().invalidations < static_cast<uint64_t>(round) + 1) {
      }
      if (cache.Lookup(kPage, DmaAccess::kRead).has_value()) seen_after_count.fetch_add(1);
      checked.store(round);
    }
  });
  for (int round = 0; round < kRounds; ++round) {
    cache.Insert(cache.FillToken(), kPage, (round + 1) * kPage, DmaAccess::kRead);
    invalidating.store(round);
    cache.InvalidateRange(kPage, kPage);
    while (checked.load() < round) std::this_thread::yield();
  }
  watcher.join();
  EXPECT_EQ(seen_after_count.load(), 0);
}

}  // namespace
}  // namespace iommu_broker::client
