#include "core/iommu/pending_invalidations.h"

#include <atomic>
#include <cstdint>
#include <latch>
#include <thread>

#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

TEST(PendingInvalidationsTest, QuietWhileNothingIsPending) {
  PendingInvalidations pending;
  const uint64_t token = pending.QuietSince();
  EXPECT_NE(token, PendingInvalidations::kPending);
  EXPECT_TRUE(pending.StillQuiet(token));
}

TEST(PendingInvalidationsTest, PendingFromBeginUntilComplete) {
  PendingInvalidations pending;
  pending.Begin();
  EXPECT_EQ(pending.QuietSince(), PendingInvalidations::kPending);
  EXPECT_FALSE(pending.StillQuiet(pending.QuietSince()));
  pending.Complete(1);
  EXPECT_TRUE(pending.StillQuiet(pending.QuietSince()));
}

TEST(PendingInvalidationsTest, CompleteCountsSeveralUnmaps) {
  PendingInvalidations pending;
  for (int i = 0; i < 3; ++i) pending.Begin();
  pending.Complete(2);
  EXPECT_EQ(pending.QuietSince(), PendingInvalidations::kPending);
  pending.Complete(1);
  EXPECT_NE(pending.QuietSince(), PendingInvalidations::kPending);
}

// A lookup can read an IOTLB entry just before an unmap clears its PTE, and
// the unmap's invalidation can complete before the translation checks for
// pending invalidations. Nothing is pending by then, yet the entry it read
// was stale when it returned: a window that saw a whole unmap is not quiet.
TEST(PendingInvalidationsTest, AnUnmapThatBeganAndCompletedInTheWindowIsSeen) {
  PendingInvalidations pending;
  const uint64_t token = pending.QuietSince();
  // ... the lookup reads an entry here; meanwhile:
  pending.Begin();
  pending.Complete(1);
  EXPECT_FALSE(pending.StillQuiet(token));
  // Nothing is pending now, so a later window is quiet again.
  EXPECT_TRUE(pending.StillQuiet(pending.QuietSince()));
}

TEST(PendingInvalidationsTest, AnUnmapThatBeganInTheWindowIsSeen) {
  PendingInvalidations pending;
  const uint64_t token = pending.QuietSince();
  pending.Begin();
  EXPECT_FALSE(pending.StillQuiet(token));
}

// A model of a PTE and the one IOTLB entry caching it: the writer unmaps and
// remaps (Begin, change the PTE, invalidate the entry, Complete, refill)
// while the reader translates; whenever the reader's window is quiet, the
// entry it read must be current.
TEST(PendingInvalidationsTest, QuietWindowsNeverSeeAStaleEntry) {
  constexpr int kWindows = 100000;
  constexpr uint64_t kRemaps = 100000;
  PendingInvalidations pending;
  std::atomic<uint64_t> pte{1};
  std::atomic<uint64_t> entry{1};  // 0: not cached
  std::atomic<bool> done{false};
  std::latch start(2);
  uint64_t quiet_hits = 0;
  uint64_t stale_in_quiet_windows = 0;

  std::thread writer([&] {
    start.arrive_and_wait();
    for (uint64_t generation = 2; !done.load(std::memory_order_acquire); ++generation) {
      pending.Begin();
      pte.store(generation, std::memory_order_seq_cst);
      entry.store(0, std::memory_order_seq_cst);  // the invalidation
      pending.Complete(1);
      entry.store(generation, std::memory_order_seq_cst);  // a fill after it
    }
  });
  std::thread reader([&] {
    start.arrive_and_wait();
    // At least kWindows windows, and on until the writer has remapped
    // kRemaps times, however the two threads are scheduled.
    for (int i = 0; i < kWindows || pte.load(std::memory_order_relaxed) < kRemaps; ++i) {
      const uint64_t token = pending.QuietSince();
      const uint64_t hit = entry.load(std::memory_order_seq_cst);
      const uint64_t current = pte.load(std::memory_order_seq_cst);
      if (hit != 0 && pending.StillQuiet(token)) {
        ++quiet_hits;
        if (hit != current) ++stale_in_quiet_windows;
      }
    }
    done.store(true, std::memory_order_release);
  });
  writer.join();
  reader.join();
  EXPECT_EQ(stale_in_quiet_windows, 0u) << "of " << quiet_hits << " quiet hits";
}

}  // namespace
}  // namespace iommu_broker
