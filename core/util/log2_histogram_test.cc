#include "core/util/log2_histogram.h"

#include <cstdint>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::ElementsAre;

TEST(Log2HistogramTest, EachValueLandsInTheFirstBucketWhoseBoundHoldsIt) {
  Log2Histogram histogram(/*first_bound=*/4, /*bounded_buckets=*/3);  // 4, 8, 16, +Inf
  for (uint64_t value : {0, 1, 4, 5, 8, 9, 16, 17, 1000}) histogram.Record(value);
  const Log2Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_THAT(snapshot.upper_bounds, ElementsAre(4, 8, 16));
  EXPECT_THAT(snapshot.counts, ElementsAre(3, 2, 2, 2));
  EXPECT_EQ(snapshot.count, 9u);
  EXPECT_EQ(snapshot.sum, 0u + 1 + 4 + 5 + 8 + 9 + 16 + 17 + 1000);
}

TEST(Log2HistogramTest, TheLargestValuesOverflow) {
  Log2Histogram histogram(1024, Log2Histogram::kMaxBoundedBuckets);
  histogram.Record(UINT64_MAX);
  histogram.Record(uint64_t{1024} << (Log2Histogram::kMaxBoundedBuckets - 1));
  const Log2Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.counts[Log2Histogram::kMaxBoundedBuckets - 1], 1u);
  EXPECT_EQ(snapshot.counts.back(), 1u);
}

TEST(Log2HistogramTest, ConcurrentRecordsAreAllCounted) {
  Log2Histogram histogram(1, 10);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&histogram] {
      for (int i = 0; i < kPerThread; ++i) histogram.Record(static_cast<uint64_t>(i % 600));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const Log2Histogram::Snapshot snapshot = histogram.Read();
  EXPECT_EQ(snapshot.count, uint64_t{kThreads} * kPerThread);
  uint64_t per_thread_sum = 0;
  for (int i = 0; i < kPerThread; ++i) per_thread_sum += static_cast<uint64_t>(i % 600);
  EXPECT_EQ(snapshot.sum, kThreads * per_thread_sum);
}

}  // namespace
}  // namespace iommu_broker
