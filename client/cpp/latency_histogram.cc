#include "client/cpp/latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace iommu_broker::client {
namespace {

// 64 buckets per power of two: the relative error of a bucket is 1/64.
constexpr int kSubBucketBits = 6;
constexpr uint64_t kSubBuckets = uint64_t{1} << kSubBucketBits;
// Values are non-negative int64 nanoseconds: the top power of two is 2^62.
constexpr int kMaxShift = 62 - kSubBucketBits;
constexpr size_t kBuckets = kSubBuckets + (kMaxShift + 1) * kSubBuckets;

// Below kSubBuckets a bucket per value; above, the value's top
// kSubBucketBits + 1 bits pick the bucket.
size_t BucketOf(uint64_t nanoseconds) {
  if (nanoseconds < kSubBuckets) return nanoseconds;
  const int shift = std::bit_width(nanoseconds) - 1 - kSubBucketBits;
  return kSubBuckets + static_cast<size_t>(shift) * kSubBuckets +
         ((nanoseconds >> shift) - kSubBuckets);
}

// The largest value that falls in `bucket`.
uint64_t UpperBoundOf(size_t bucket) {
  if (bucket < kSubBuckets) return bucket;
  const size_t shift = (bucket - kSubBuckets) / kSubBuckets;
  const uint64_t top_bits = (bucket - kSubBuckets) % kSubBuckets + kSubBuckets;
  return (top_bits << shift) + ((uint64_t{1} << shift) - 1);
}

}  // namespace

LatencyHistogram::LatencyHistogram() : counts_(kBuckets, 0) {}

void LatencyHistogram::Record(absl::Duration latency) {
  const int64_t nanoseconds = std::max<int64_t>(0, absl::ToInt64Nanoseconds(latency));
  ++counts_[BucketOf(static_cast<uint64_t>(nanoseconds))];
  ++count_;
  max_nanoseconds_ = std::max(max_nanoseconds_, nanoseconds);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  for (size_t bucket = 0; bucket < kBuckets; ++bucket) counts_[bucket] += other.counts_[bucket];
  count_ += other.count_;
  max_nanoseconds_ = std::max(max_nanoseconds_, other.max_nanoseconds_);
}

absl::Duration LatencyHistogram::Percentile(double percentile) const {
  if (count_ == 0) return absl::ZeroDuration();
  const double clamped = std::clamp(percentile, 0.0, 100.0);
  // The epsilon keeps a rank that is whole on paper (99.9% of 1000) from
  // rounding up to the next one.
  const double exact_rank = clamped * static_cast<double>(count_) / 100.0;
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(exact_rank - 1e-9)));
  uint64_t seen = 0;
  for (size_t bucket = 0; bucket < kBuckets; ++bucket) {
    seen += counts_[bucket];
    if (seen >= rank) {
      const uint64_t bound =
          std::min<uint64_t>(UpperBoundOf(bucket), static_cast<uint64_t>(max_nanoseconds_));
      return absl::Nanoseconds(static_cast<int64_t>(bound));
    }
  }
  return max();
}

}  // namespace iommu_broker::client
