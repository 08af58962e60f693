// Tests of LatencyHistogram: percentiles within a bucket's width of the exact
// ones (checked against a sorted copy of the values), max exact, merging.
#include "client/cpp/latency_histogram.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace iommu_broker::client {
namespace {

// The exact percentile of sorted `values`: the smallest value that
// `percentile` percent of them do not exceed.
int64_t ExactPercentile(const std::vector<int64_t>& sorted, double percentile) {
  const double rank = std::ceil(percentile * static_cast<double>(sorted.size()) / 100.0 - 1e-9);
  return sorted[static_cast<size_t>(std::max(1.0, rank)) - 1];
}

TEST(LatencyHistogramTest, EmptyReadsZero) {
  LatencyHistogram histogram;
  EXPECT_EQ(histogram.count(), 0u);
  EXPECT_EQ(histogram.Percentile(50), absl::ZeroDuration());
  EXPECT_EQ(histogram.max(), absl::ZeroDuration());
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  LatencyHistogram histogram;
  for (int64_t nanoseconds = 1; nanoseconds <= 50; ++nanoseconds) {
    histogram.Record(absl::Nanoseconds(nanoseconds));
  }
  EXPECT_EQ(histogram.Percentile(50), absl::Nanoseconds(25));
  EXPECT_EQ(histogram.Percentile(90), absl::Nanoseconds(45));
  EXPECT_EQ(histogram.Percentile(100), absl::Nanoseconds(50));
}

TEST(LatencyHistogramTest, NegativeCountsAsZero) {
  LatencyHistogram histogram;
  histogram.Record(absl::Nanoseconds(-5));
  EXPECT_EQ(histogram.count(), 1u);
  EXPECT_EQ(histogram.Percentile(100), absl::ZeroDuration());
}

TEST(LatencyHistogramTest, PercentilesAreWithinABucketOfExact) {
  std::mt19937_64 random(42);
  // Log-uniform from 1 ns to about 1 s, as latencies spread.
  std::uniform_real_distribution<double> exponent(0, 30);
  LatencyHistogram histogram;
  std::vector<int64_t> values;
  for (int i = 0; i < 100000; ++i) {
    const int64_t nanoseconds = static_cast<int64_t>(std::exp2(exponent(random)));
    values.push_back(nanoseconds);
    histogram.Record(absl::Nanoseconds(nanoseconds));
  }
  std::sort(values.begin(), values.end());
  for (double percentile : {1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    const int64_t exact = ExactPercentile(values, percentile);
    const int64_t read = absl::ToInt64Nanoseconds(histogram.Percentile(percentile));
    EXPECT_GE(read, exact) << "p" << percentile;
    EXPECT_LE(read, exact + exact / 64) << "p" << percentile;
  }
  EXPECT_EQ(histogram.max(), absl::Nanoseconds(values.back()));
  EXPECT_EQ(histogram.count(), values.size());
}

TEST(LatencyHistogramTest, WholeRanksDoNotRoundUp) {
  LatencyHistogram histogram;
  for (int i = 0; i < 999; ++i) histogram.Record(absl::Nanoseconds(10));
  histogram.Record(absl::Seconds(1));
  EXPECT_EQ(histogram.Percentile(99.9), absl::Nanoseconds(10));
  EXPECT_EQ(histogram.Percentile(100), absl::Seconds(1));
}

TEST(LatencyHistogramTest, HugeValuesStayInRange) {
  LatencyHistogram histogram;
  histogram.Record(absl::InfiniteDuration());
  histogram.Record(absl::Hours(24 * 365));
  EXPECT_EQ(histogram.count(), 2u);
  EXPECT_GE(histogram.Percentile(50), absl::Hours(24 * 365));
}

TEST(LatencyHistogramTest, MergeAddsCountsAndKeepsMax) {
  LatencyHistogram fast;
  LatencyHistogram slow;
  for (int i = 0; i < 90; ++i) fast.Record(absl::Microseconds(10));
  for (int i = 0; i < 10; ++i) slow.Record(absl::Milliseconds(5));
  fast.Merge(slow);
  EXPECT_EQ(fast.count(), 100u);
  EXPECT_GE(fast.Percentile(90), absl::Microseconds(10));
  EXPECT_LE(fast.Percentile(90), absl::Microseconds(10) + absl::Microseconds(10) / 64);
  EXPECT_EQ(fast.max(), absl::Milliseconds(5));
  EXPECT_GE(fast.Percentile(91), absl::Milliseconds(5));
}

}  // namespace
}  // namespace iommu_broker::client
