// InvalidationQueue: descriptors reach their IOTLBs, oversized batches are
// promoted to whole-domain invalidations, the emulated cost is waited, and
// concurrent callers share batches (or not, without combining) while each
// still returns only after its own descriptors were executed.
#include "core/iommu/invalidation_queue.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/iommu/iotlb.h"
#include "core/iommu/types.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kDev1 = 1;
constexpr uint32_t kDev2 = 2;

std::unique_ptr<Iotlb> MakeIotlb() {
  absl::StatusOr<std::unique_ptr<Iotlb>> iotlb =
      Iotlb::Create({.sets = 64, .ways = 8}, kPage4K | kPage2M);
  EXPECT_TRUE(iotlb.ok()) << iotlb.status();
  return iotlb.ok() ? *std::move(iotlb) : nullptr;
}

// Caches iova -> iova + 4 GiB for `requester` (no invalidation can race it
// in these tests, so the fill is never dropped).
void Fill(Iotlb& iotlb, uint32_t requester, uint64_t iova, uint64_t page_size = kPage4K) {
  const uint64_t token = iotlb.FillToken();
  iotlb.Insert(token, requester,
               IotlbEntry{.iova = iova,
                          .phys = iova + (uint64_t{1} << 32),
                          .page_size = page_size,
                          .perms = {.read = true, .write = true}});
}

bool Cached(Iotlb& iotlb, uint32_t requester, uint64_t iova) {
  return iotlb.Lookup(requester, iova).has_value();
}

uint64_t Nanos(absl::Duration duration) {
  return static_cast<uint64_t>(absl::ToInt64Nanoseconds(duration));
}

TEST(InvalidationQueueTest, RangeDescriptorRemovesEntriesInRange) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, kDev1, 0x1000);
  Fill(*iotlb, kDev1, 0x2000);
  Fill(*iotlb, kDev2, 0x2000);
  Fill(*iotlb, kDev1, 0x3000);
  ASSERT_TRUE(Cached(*iotlb, kDev1, 0x1000));
  ASSERT_TRUE(Cached(*iotlb, kDev1, 0x3000));

  InvalidationQueue queue({});
  const InvalidationDescriptor range =
      InvalidationDescriptor::Range(iotlb.get(), 0x1000, 0x2000, kPage4K);
  queue.Invalidate({&range, 1});

  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x1000));
  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x2000));
  EXPECT_FALSE(Cached(*iotlb, kDev2, 0x2000));  // any requester
  EXPECT_TRUE(Cached(*iotlb, kDev1, 0x3000));   // outside the range
}

TEST(InvalidationQueueTest, RangeDescriptorPassesItsGranule) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, kDev1, 0x200000, kPage2M);
  ASSERT_TRUE(Cached(*iotlb, kDev1, 0x234000));

  InvalidationQueue queue({});
  queue.Invalidate({InvalidationDescriptor::Range(iotlb.get(), 0x200000, kPage2M, kPage2M)});
  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x234000));
}

TEST(InvalidationQueueTest, RequesterDescriptorRemovesOnlyThatRequester) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  Fill(*iotlb, kDev1, 0x1000);
  Fill(*iotlb, kDev1, 0x5000);
  Fill(*iotlb, kDev2, 0x1000);

  InvalidationQueue queue({});
  queue.Invalidate({InvalidationDescriptor::Requester(iotlb.get(), kDev1)});

  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x1000));
  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x5000));
  EXPECT_TRUE(Cached(*iotlb, kDev2, 0x1000));
}

TEST(InvalidationQueueTest, DomainDescriptorRemovesEverythingInThatIotlb) {
  std::unique_ptr<Iotlb> a = MakeIotlb();
  std::unique_ptr<Iotlb> b = MakeIotlb();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Fill(*a, kDev1, 0x1000);
  Fill(*a, kDev2, 0x7000);
  Fill(*a, kDev1, 0x400000, kPage2M);
  Fill(*b, kDev1, 0x1000);

  InvalidationQueue queue({});
  queue.Invalidate({InvalidationDescriptor::Domain(a.get())});

  EXPECT_FALSE(Cached(*a, kDev1, 0x1000));
  EXPECT_FALSE(Cached(*a, kDev2, 0x7000));
  EXPECT_FALSE(Cached(*a, kDev1, 0x400000));
  EXPECT_TRUE(Cached(*b, kDev1, 0x1000));  // another domain's IOTLB
}

TEST(InvalidationQueueTest, OneCallMayNameSeveralIotlbs) {
  std::unique_ptr<Iotlb> a = MakeIotlb();
  std::unique_ptr<Iotlb> b = MakeIotlb();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Fill(*a, kDev1, 0x1000);
  Fill(*b, kDev2, 0x9000);
  Fill(*b, kDev2, 0xa000);

  InvalidationQueue queue({});
  queue.Invalidate({InvalidationDescriptor::Range(a.get(), 0x1000, 0x1000, kPage4K),
                    InvalidationDescriptor::Range(b.get(), 0x9000, 0x1000, kPage4K)});

  EXPECT_FALSE(Cached(*a, kDev1, 0x1000));
  EXPECT_FALSE(Cached(*b, kDev2, 0x9000));
  EXPECT_TRUE(Cached(*b, kDev2, 0xa000));
  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.batches, 1u);
  EXPECT_EQ(stats.descriptors, 2u);
}

TEST(InvalidationQueueTest, BatchAtTheLimitIsNotPromoted) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  for (uint64_t page = 0; page < 4; ++page) Fill(*iotlb, kDev1, page * 0x1000);
  Fill(*iotlb, kDev1, 0x100000);  // named by no descriptor

  InvalidationQueue queue({.cost = {}, .max_batch_descriptors = 4});
  std::vector<InvalidationDescriptor> descriptors;
  for (uint64_t page = 0; page < 4; ++page) {
    descriptors.push_back(
        InvalidationDescriptor::Range(iotlb.get(), page * 0x1000, 0x1000, kPage4K));
  }
  queue.Invalidate(descriptors);

  for (uint64_t page = 0; page < 4; ++page) EXPECT_FALSE(Cached(*iotlb, kDev1, page * 0x1000));
  EXPECT_TRUE(Cached(*iotlb, kDev1, 0x100000));
  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.promoted_batches, 0u);
  EXPECT_EQ(stats.descriptors, 4u);
}

TEST(InvalidationQueueTest, OversizedBatchIsPromotedToOneDomainInvalidationPerIotlb) {
  std::unique_ptr<Iotlb> a = MakeIotlb();
  std::unique_ptr<Iotlb> b = MakeIotlb();
  std::unique_ptr<Iotlb> untouched = MakeIotlb();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(untouched, nullptr);
  for (uint64_t page = 0; page < 3; ++page) Fill(*a, kDev1, page * 0x1000);
  Fill(*a, kDev2, 0x100000);  // in no descriptor's range
  Fill(*b, kDev1, 0x1000);
  Fill(*b, kDev1, 0x2000);
  Fill(*b, kDev2, 0x200000, kPage2M);  // in no descriptor's range
  Fill(*untouched, kDev1, 0x1000);

  InvalidationQueue queue({.cost = {}, .max_batch_descriptors = 4});
  std::vector<InvalidationDescriptor> descriptors;
  for (uint64_t page = 0; page < 3; ++page) {
    descriptors.push_back(InvalidationDescriptor::Range(a.get(), page * 0x1000, 0x1000, kPage4K));
  }
  descriptors.push_back(InvalidationDescriptor::Range(b.get(), 0x1000, 0x1000, kPage4K));
  descriptors.push_back(InvalidationDescriptor::Requester(b.get(), kDev1));
  queue.Invalidate(descriptors);  // 5 > 4

  EXPECT_FALSE(Cached(*a, kDev2, 0x100000));
  EXPECT_FALSE(Cached(*b, kDev1, 0x2000));
  EXPECT_FALSE(Cached(*b, kDev2, 0x200000));
  for (uint64_t page = 0; page < 3; ++page) EXPECT_FALSE(Cached(*a, kDev1, page * 0x1000));
  EXPECT_TRUE(Cached(*untouched, kDev1, 0x1000));
  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.promoted_batches, 1u);
  EXPECT_EQ(stats.descriptors, 2u);  // one per IOTLB
  EXPECT_EQ(stats.batches, 1u);
}

TEST(InvalidationQueueTest, DomainForRangesCountsAsTheRangesItStandsFor) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  InvalidationQueue queue({.cost = {}, .max_batch_descriptors = 4});

  Fill(*iotlb, kDev1, 0x1000);
  Fill(*iotlb, kDev2, 0x100000);
  queue.Invalidate({InvalidationDescriptor::DomainForRanges(iotlb.get(), 5)});  // 5 > 4
  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x1000));
  EXPECT_FALSE(Cached(*iotlb, kDev2, 0x100000));
  InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.promoted_batches, 1u);
  EXPECT_EQ(stats.descriptors, 1u);
  Log2Histogram::Snapshot sizes = queue.BatchSizes();
  EXPECT_EQ(sizes.count, 1u);
  EXPECT_EQ(sizes.sum, 5u);  // as posted

  Fill(*iotlb, kDev1, 0x1000);
  queue.Invalidate({InvalidationDescriptor::DomainForRanges(iotlb.get(), 4)});  // at the limit
  EXPECT_FALSE(Cached(*iotlb, kDev1, 0x1000));
  stats = queue.Stats();
  EXPECT_EQ(stats.promoted_batches, 1u);  // not again
  EXPECT_EQ(stats.descriptors, 2u);
  sizes = queue.BatchSizes();
  EXPECT_EQ(sizes.sum, 9u);
}

TEST(InvalidationQueueTest, StatsCountCallsBatchesAndDescriptors) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  InvalidationQueue queue({});
  EXPECT_EQ(queue.Stats().calls, 0u);

  queue.Invalidate({InvalidationDescriptor::Domain(iotlb.get()),
                    InvalidationDescriptor::Requester(iotlb.get(), kDev1)});
  queue.Invalidate({});
  queue.Invalidate({InvalidationDescriptor::Range(iotlb.get(), 0, 0x1000, kPage4K)});

  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.calls, 3u);
  EXPECT_EQ(stats.batches, 3u);  // each call needs a batch that starts after it
  EXPECT_EQ(stats.descriptors, 3u);
  EXPECT_EQ(stats.promoted_batches, 0u);
  EXPECT_EQ(stats.busy_nanos, 0u);  // free hardware
}

TEST(InvalidationQueueTest, EmptyCallIsACompletionBarrier) {
  InvalidationQueue queue(
      {.cost = {.fixed = absl::Milliseconds(1), .per_descriptor = absl::Milliseconds(5)}});
  queue.Invalidate({});
  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.calls, 1u);
  EXPECT_EQ(stats.batches, 1u);
  EXPECT_EQ(stats.descriptors, 0u);
  EXPECT_EQ(stats.busy_nanos, Nanos(absl::Milliseconds(1)));  // fixed only
}

TEST(InvalidationQueueTest, CallWaitsTheFixedCost) {
  InvalidationQueue queue({.cost = {.fixed = absl::Milliseconds(2)}});
  const Clock::time_point start = Clock::now();
  queue.Invalidate({});
  const Clock::duration elapsed = Clock::now() - start;
  // A lower bound only: the emulated hardware makes the caller wait.
  EXPECT_GE(elapsed, std::chrono::milliseconds(2));
  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.busy_nanos, Nanos(absl::Milliseconds(2)));
  EXPECT_GE(stats.wait_nanos, Nanos(absl::Milliseconds(2)));
}

TEST(InvalidationQueueTest, CallWaitsThePerDescriptorCost) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  InvalidationQueue queue(
      {.cost = {.fixed = absl::Milliseconds(1), .per_descriptor = absl::Milliseconds(1)}});
  const Clock::time_point start = Clock::now();
  queue.Invalidate({InvalidationDescriptor::Range(iotlb.get(), 0x0000, 0x1000, kPage4K),
                    InvalidationDescriptor::Range(iotlb.get(), 0x1000, 0x1000, kPage4K),
                    InvalidationDescriptor::Range(iotlb.get(), 0x2000, 0x1000, kPage4K)});
  const Clock::duration elapsed = Clock::now() - start;
  EXPECT_GE(elapsed, std::chrono::milliseconds(4));
  EXPECT_EQ(queue.Stats().busy_nanos, Nanos(absl::Milliseconds(4)));
}

TEST(InvalidationQueueTest, PromotedBatchCostsItsDomainDescriptors) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  ASSERT_NE(iotlb, nullptr);
  InvalidationQueue queue(
      {.cost = {.per_descriptor = absl::Milliseconds(1)}, .max_batch_descriptors = 2});
  std::vector<InvalidationDescriptor> descriptors;
  for (uint64_t page = 0; page < 5; ++page) {
    descriptors.push_back(
        InvalidationDescriptor::Range(iotlb.get(), page * 0x1000, 0x1000, kPage4K));
  }
  queue.Invalidate(descriptors);
  const InvalidationQueueStats stats = queue.Stats();
  EXPECT_EQ(stats.promoted_batches, 1u);
  EXPECT_EQ(stats.busy_nanos, Nanos(absl::Milliseconds(1)));
}

TEST(InvalidationQueueTest, SetCostAppliesToLaterBatches) {
  InvalidationQueue queue({});
  EXPECT_EQ(queue.cost().fixed, absl::ZeroDuration());
  queue.SetCost({.fixed = absl::Milliseconds(3), .per_descriptor = absl::Microseconds(7)});
  EXPECT_EQ(queue.cost().fixed, absl::Milliseconds(3));
  EXPECT_EQ(queue.cost().per_descriptor, absl::Microseconds(7));

  const Clock::time_point start = Clock::now();
  queue.Invalidate({});
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(3));
  EXPECT_EQ(queue.Stats().busy_nanos, Nanos(absl::Milliseconds(3)));
}

// Which batches had completed when a lone caller's `applied` hook ran.
uint64_t BatchesCompletedWhenApplied(InvalidationCost cost) {
  std::unique_ptr<Iotlb> iotlb = MakeIotlb();
  EXPECT_NE(iotlb, nullptr);
  Fill(*iotlb, kDev1, 0x1000);
  InvalidationQueue queue({.cost = cost});
  bool cached_when_applied = true;
  uint64_t completed = ~uint64_t{0};
  queue.Invalidate({InvalidationDescriptor::Range(iotlb.get(), 0x1000, 0x1000, kPage4K)}, [&] {
    cached_when_applied = Cached(*iotlb, kDev1, 0x1000);
    completed = queue.Stats().batches;
  });
  EXPECT_FALSE(cached_when_applied);
  return completed;
}

TEST(InvalidationQueueTest, AppliedHookRunsDuringTheEmulatedWait) {
  // The descriptors are applied before the batch's cost is waited, so the
  // caller's bookkeeping overlaps it.
  EXPECT_EQ(BatchesCompletedWhenApplied({.fixed = absl::Milliseconds(1)}), 0u);
  EXPECT_EQ(BatchesCompletedWhenApplied({.per_descriptor = absl::Milliseconds(1)}), 0u);
}

TEST(InvalidationQueueTest, AppliedHookRunsAfterAFreeBatchCompletes) {
  // Nothing to overlap: running it inside the batch would only hold up
  // other callers waiting for the completion.
  EXPECT_EQ(BatchesCompletedWhenApplied({}), 1u);
}

TEST(InvalidationQueueTest, AppliedHookRunsOnceWithoutCombining) {
  InvalidationQueue queue({.cost = {.fixed = absl::Microseconds(50)}, .combine = false});
  int applied = 0;
  queue.Invalidate({}, [&] { ++applied; });
  EXPECT_EQ(applied, 1);
}

// Starts `threads` callers at once, each invalidating one page of its own
// IOTLB, and returns the queue's stats once all have returned.
InvalidationQueueStats RunSimultaneousCallers(InvalidationQueue& queue, int threads) {
  std::vector<std::unique_ptr<Iotlb>> iotlbs;
  for (int t = 0; t < threads; ++t) iotlbs.push_back(MakeIotlb());
  std::latch start(threads);
  std::vector<std::thread> callers;
  for (int t = 0; t < threads; ++t) {
    Iotlb* iotlb = iotlbs[t].get();
    callers.emplace_back([&queue, &start, iotlb] {
      start.arrive_and_wait();
      queue.Invalidate({InvalidationDescriptor::Range(iotlb, 0x1000, 0x1000, kPage4K)});
    });
  }
  for (std::thread& caller : callers) caller.join();
  return queue.Stats();
}

TEST(InvalidationQueueTest, CombiningSharesBatchesBetweenConcurrentCallers) {
  constexpr int kThreads = 8;
  InvalidationQueue queue({.cost = {.fixed = absl::Milliseconds(20)}, .combine = true});
  const InvalidationQueueStats stats = RunSimultaneousCallers(queue, kThreads);
  EXPECT_EQ(stats.calls, uint64_t{kThreads});
  EXPECT_EQ(stats.descriptors, uint64_t{kThreads});
  // All callers arrive during the first 20 ms batch, so the rest share the
  // next one; anything short of one batch each shows that batches are shared.
  EXPECT_LE(stats.batches, uint64_t{kThreads - 1});
  EXPECT_GE(stats.batches, 1u);
  EXPECT_EQ(stats.busy_nanos, stats.batches * Nanos(absl::Milliseconds(20)));
}

TEST(InvalidationQueueTest, WithoutCombiningEveryCallRunsItsOwnBatch) {
  constexpr int kThreads = 8;
  InvalidationQueue queue({.cost = {.fixed = absl::Milliseconds(2)}, .combine = false});
  const InvalidationQueueStats stats = RunSimultaneousCallers(queue, kThreads);
  EXPECT_EQ(stats.calls, uint64_t{kThreads});
  EXPECT_EQ(stats.batches, uint64_t{kThreads});
  EXPECT_EQ(stats.descriptors, uint64_t{kThreads});
  EXPECT_EQ(stats.busy_nanos, uint64_t{kThreads} * Nanos(absl::Milliseconds(2)));
  // Batches run one at a time, so the callers waited at least their sum.
  EXPECT_GE(stats.wait_nanos, stats.busy_nanos);
}

// The guarantee strict unmap relies on: when Invalidate returns, the entries
// its descriptors name are gone, even while other callers' batches run and
// whoever executes a batch is another thread.
void CheckEachCallerSeesItsOwnInvalidation(bool combine) {
  constexpr int kThreads = 4;
  constexpr int kIterations = 200;
  InvalidationQueue queue({.cost = {.fixed = absl::Microseconds(20)}, .combine = combine});
  std::vector<std::unique_ptr<Iotlb>> iotlbs;
  for (int t = 0; t < kThreads; ++t) iotlbs.push_back(MakeIotlb());
  std::unique_ptr<Iotlb> shared = MakeIotlb();  // named by every thread too
  std::atomic<int> fills_missing{0};
  std::atomic<int> stale_after_return{0};
  // The `applied` hook: run once per call, on the caller's thread, once the
  // entries are gone.
  std::atomic<int> applied_not_once{0};
  std::atomic<int> applied_elsewhere{0};
  std::atomic<int> stale_when_applied{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    Iotlb* own = iotlbs[t].get();
    threads.emplace_back([&, own] {
      start.arrive_and_wait();
      for (int i = 0; i < kIterations; ++i) {
        const uint64_t iova = static_cast<uint64_t>(i % 32) * 0x1000;
        // Only this thread posts descriptors for `own`, and only inside
        // Invalidate, so nothing can invalidate this fill before the call.
        Fill(*own, kDev1, iova);
        if (!Cached(*own, kDev1, iova)) fills_missing.fetch_add(1);
        if (i % 4 == 0) {
          queue.Invalidate({});  // a bare barrier now and then
        }
        int applied_calls = 0;
        const std::thread::id caller = std::this_thread::get_id();
        queue.Invalidate({InvalidationDescriptor::Range(own, iova, 0x1000, kPage4K),
                          InvalidationDescriptor::Range(shared.get(), iova, 0x1000, kPage4K)},
                         [&] {
                           ++applied_calls;
                           if (std::this_thread::get_id() != caller) applied_elsewhere.fetch_add(1);
                           if (Cached(*own, kDev1, iova)) stale_when_applied.fetch_add(1);
                         });
        if (applied_calls != 1) applied_not_once.fetch_add(1);
        if (Cached(*own, kDev1, iova)) stale_after_return.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(fills_missing.load(), 0);
  EXPECT_EQ(stale_after_return.load(), 0);
  EXPECT_EQ(applied_not_once.load(), 0);
  EXPECT_EQ(applied_elsewhere.load(), 0);
  EXPECT_EQ(stale_when_applied.load(), 0);
  const InvalidationQueueStats stats = queue.Stats();
  constexpr uint64_t kCalls = kThreads * (kIterations + kIterations / 4);
  EXPECT_EQ(stats.calls, kCalls);
  EXPECT_EQ(stats.descriptors, uint64_t{2} * kThreads * kIterations);
  EXPECT_LE(stats.batches, kCalls);
  if (!combine) {
    EXPECT_EQ(stats.batches, kCalls);
  }
}

TEST(InvalidationQueueTest, CallerReturnsAfterItsOwnDescriptorsRanWithCombining) {
  CheckEachCallerSeesItsOwnInvalidation(/*combine=*/true);
}

TEST(InvalidationQueueTest, CallerReturnsAfterItsOwnDescriptorsRanWithoutCombining) {
  CheckEachCallerSeesItsOwnInvalidation(/*combine=*/false);
}

}  // namespace
}  // namespace iommu_broker
