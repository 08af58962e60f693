#include "core/iommu/flush_queue.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAreArray;

constexpr size_t kCapacity = 4;
// Below kCapacity, so that a full queue's batch is one the invalidation
// queue would promote.
constexpr size_t kMaxBatchDescriptors = 2;
constexpr absl::Duration kTimeout = absl::Milliseconds(10);

PageTable::Removed RemovedPage(uint64_t iova) {
  PageTable::Removed removed;
  removed.iova = iova;
  removed.size = kPage4K;
  removed.leaf_sizes = kPage4K;
  return removed;
}

class FlushQueueTest : public testing::Test {
 protected:
  FlushQueueTest()
      : iotlb_(*Iotlb::Create({.sets = 64, .ways = 8}, kPage4K)),
        invalidation_queue_({.cost = {}, .max_batch_descriptors = kMaxBatchDescriptors}),
        queue_({.capacity = kCapacity, .timeout = kTimeout}, *iotlb_, invalidation_queue_, pending_,
               /*latencies=*/nullptr, [this](absl::Span<const PageTable::Removed> done) {
                 std::lock_guard<std::mutex> lock(released_mutex_);
                 for (const PageTable::Removed& removed : done) released_.push_back(removed.iova);
               }) {}

  // One unmap of `iovas`, as a domain makes it.
  void Unmap(const std::vector<uint64_t>& iovas) {
    FlushQueue::Unmapping unmapping(queue_);
    std::vector<PageTable::Removed> removed;
    for (uint64_t iova : iovas) removed.push_back(RemovedPage(iova));
    unmapping.Enqueue(removed);
  }

  std::vector<uint64_t> Released() {
    std::lock_guard<std::mutex> lock(released_mutex_);
    return released_;
  }

  void Cache(uint64_t iova) {
    iotlb_->Insert(iotlb_->FillToken(), /*requester=*/1,
                   IotlbEntry{.iova = iova,
                              .phys = iova,
                              .page_size = kPage4K,
                              .perms = {.read = true, .write = true}});
  }
  bool Cached(uint64_t iova) const { return iotlb_->Lookup(/*requester=*/1, iova).has_value(); }

  bool NothingPending() const { return pending_.QuietSince() != PendingInvalidations::kPending; }

  std::unique_ptr<Iotlb> iotlb_;
  InvalidationQueue invalidation_queue_;
  PendingInvalidations pending_;
  FlushQueue queue_;
  std::mutex released_mutex_;
  std::vector<uint64_t> released_;
};

TEST_F(FlushQueueTest, RangesAreReleasedOnlyByTheBatchThatFillsTheQueue) {
  Unmap({0x1000, 0x2000, 0x3000});
  EXPECT_THAT(Released(), IsEmpty());
  EXPECT_EQ(queue_.Stats().pending, 3u);
  EXPECT_FALSE(NothingPending());

  Unmap({0x4000, 0x5000});
  EXPECT_THAT(Released(), ElementsAre(0x1000, 0x2000, 0x3000, 0x4000));
  const FlushQueueStats stats = queue_.Stats();
  EXPECT_EQ(stats.queued, 5u);
  EXPECT_EQ(stats.pending, 1u);
  EXPECT_EQ(stats.full_flushes, 1u);
}

TEST_F(FlushQueueTest, FlushReleasesEverythingAndEndsThePendingCount) {
  Unmap({0x1000, 0x2000});
  queue_.Flush(FlushKind::kExplicit);
  EXPECT_THAT(Released(), ElementsAre(0x1000, 0x2000));
  EXPECT_EQ(queue_.Stats().pending, 0u);
  EXPECT_EQ(queue_.Stats().explicit_flushes, 1u);
  EXPECT_TRUE(NothingPending());
}

TEST_F(FlushQueueTest, ShortBatchInvalidatesItsRangesAndLongOneTheWholeDomain) {
  for (uint64_t iova : {0x1000, 0x2000, 0x3000, 0x9000}) Cache(iova);
  Unmap({0x1000, 0x2000});
  queue_.Flush(FlushKind::kExplicit);  // two ranges: within the queue's limit
  EXPECT_FALSE(Cached(0x1000));
  EXPECT_FALSE(Cached(0x2000));
  EXPECT_TRUE(Cached(0x3000));
  EXPECT_TRUE(Cached(0x9000));  // still mapped
  InvalidationQueueStats stats = invalidation_queue_.Stats();
  EXPECT_EQ(stats.descriptors, 2u);
  EXPECT_EQ(stats.promoted_batches, 0u);

  Unmap({0x1000, 0x2000, 0x3000});
  queue_.Flush(FlushKind::kExplicit);  // three: above it
  EXPECT_FALSE(Cached(0x3000));
  EXPECT_FALSE(Cached(0x9000));  // a whole-domain invalidation drops it too
  stats = invalidation_queue_.Stats();
  EXPECT_EQ(stats.descriptors, 3u);
  EXPECT_EQ(stats.promoted_batches, 1u);
  EXPECT_EQ(invalidation_queue_.BatchSizes().sum, 5u);  // 2 + 3 ranges, as posted
  EXPECT_THAT(Released(), ElementsAre(0x1000, 0x2000, 0x1000, 0x2000, 0x3000));
}

TEST_F(FlushQueueTest, FlushExpiredReleasesOnlyQueuesOlderThanTheTimeout) {
  const absl::Time before = absl::Now();
  Unmap({0x1000});
  queue_.FlushExpired(before);
  EXPECT_THAT(Released(), IsEmpty());

  queue_.FlushExpired(absl::Now() + kTimeout);
  EXPECT_THAT(Released(), ElementsAre(0x1000));
  EXPECT_EQ(queue_.Stats().timeout_flushes, 1u);
  EXPECT_TRUE(NothingPending());
}

TEST_F(FlushQueueTest, AnExitedThreadsQueueIsFlushedByOthers) {
  std::thread([&] { Unmap({0x1000, 0x2000}); }).join();
  EXPECT_EQ(queue_.Stats().pending, 2u);
  queue_.FlushExpired(absl::Now() + kTimeout);
  EXPECT_THAT(Released(), ElementsAre(0x1000, 0x2000));
  EXPECT_TRUE(NothingPending());
}

TEST_F(FlushQueueTest, TheNextThreadTakesOverAnExitedThreadsQueue) {
  std::thread([&] { Unmap({0x1000, 0x2000}); }).join();
  std::thread([&] { Unmap({0x3000, 0x4000}); }).join();
  EXPECT_THAT(Released(), ElementsAre(0x1000, 0x2000, 0x3000, 0x4000));
  EXPECT_EQ(queue_.Stats().full_flushes, 1u);
}

TEST_F(FlushQueueTest, FlushWaitsForAnUnmapHoldingItsQueue) {
  std::atomic<bool> holding{false};
  std::atomic<bool> flush_called{false};
  std::thread unmapper([&] {
    FlushQueue::Unmapping unmapping(queue_);
    holding.store(true);
    while (!flush_called.load()) std::this_thread::yield();
    const PageTable::Removed removed = RemovedPage(0x1000);
    unmapping.Enqueue({&removed, 1});
  });
  while (!holding.load()) std::this_thread::yield();
  std::thread flusher([&] {
    flush_called.store(true);
    queue_.Flush(FlushKind::kExplicit);
    // The unmap held its queue when Flush began: Flush covers it.
    EXPECT_THAT(Released(), ElementsAre(0x1000));
  });
  unmapper.join();
  flusher.join();
  EXPECT_TRUE(NothingPending());
}

TEST_F(FlushQueueTest, ConcurrentUnmapsAndReclaimsReleaseEveryRangeOnce) {
  constexpr int kThreads = 3;
  constexpr uint64_t kUnmapsPerThread = 1000;
  std::atomic<bool> done{false};
  std::thread reclaimer([&] {
    while (!done.load()) {
      queue_.FlushExpired(absl::InfiniteFuture());
      queue_.Flush(FlushKind::kExplicit);
      (void)queue_.Stats();
    }
  });
  std::vector<std::thread> unmappers;
  for (int thread = 0; thread < kThreads; ++thread) {
    unmappers.emplace_back([&, thread] {
      for (uint64_t i = 0; i < kUnmapsPerThread; ++i) {
        Unmap({(static_cast<uint64_t>(thread) * kUnmapsPerThread + i + 1) * kPage4K});
      }
    });
  }
  for (std::thread& unmapper : unmappers) unmapper.join();
  done.store(true);
  reclaimer.join();
  queue_.Flush(FlushKind::kExplicit);

  std::vector<uint64_t> expected;
  for (uint64_t i = 1; i <= kThreads * kUnmapsPerThread; ++i) expected.push_back(i * kPage4K);
  EXPECT_THAT(Released(), UnorderedElementsAreArray(expected));
  const FlushQueueStats stats = queue_.Stats();
  EXPECT_EQ(stats.queued, kThreads * kUnmapsPerThread);
  EXPECT_EQ(stats.pending, 0u);
  EXPECT_TRUE(NothingPending());
}

}  // namespace
}  // namespace iommu_broker
