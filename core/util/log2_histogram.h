// Log2Histogram counts values into power-of-two buckets without a lock: the
// engine's latency and size distributions, recorded on hot paths and read
// when metrics are scraped.
//
//   Log2Histogram latency(/*first_bound=*/1024, /*bounded_buckets=*/15);  // 1 us .. 16.8 ms
//   latency.Record(waited_nanos);
//   Log2Histogram::Snapshot now = latency.Read();
//   // now.counts[i]: values in (upper_bounds[i-1], upper_bounds[i]];
//   // now.counts.back(): values above the last bound (+Inf)
//
// Bucket i holds values up to first_bound << i. A record is two relaxed
// atomic adds on the recording thread's stripe (ThisThreadStripe), so
// threads do not share cache lines; Read sums the stripes, and during
// recording may see a value's count before its sum.
//
// Thread-safety: thread-safe; the bounds are constant after construction.
#ifndef IOMMU_BROKER_CORE_UTIL_LOG2_HISTOGRAM_H_
#define IOMMU_BROKER_CORE_UTIL_LOG2_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/util/striped_counter.h"

namespace iommu_broker {

class Log2Histogram final {
 public:
  static constexpr size_t kMaxBoundedBuckets = 24;

  struct Snapshot {
    std::vector<uint64_t> upper_bounds;  // inclusive, ascending
    std::vector<uint64_t> counts;        // one per bound, then the overflow
    uint64_t count = 0;
    uint64_t sum = 0;
  };

  // `first_bound` must be a power of two, `bounded_buckets` in
  // [1, kMaxBoundedBuckets].
  Log2Histogram(uint64_t first_bound, size_t bounded_buckets)
      : first_bound_shift_(std::countr_zero(first_bound)), bounded_buckets_(bounded_buckets) {}
  Log2Histogram(const Log2Histogram&) = delete;
  Log2Histogram& operator=(const Log2Histogram&) = delete;

  void Record(uint64_t value) {
    Stripe& stripe = stripes_[ThisThreadStripe(kStripes)];
    stripe.counts[BucketOf(value)].fetch_add(1, std::memory_order_relaxed);
    stripe.sum.fetch_add(value, std::memory_order_relaxed);
  }

  Snapshot Read() const {
    Snapshot snapshot;
    snapshot.counts.assign(bounded_buckets_ + 1, 0);
    for (size_t bucket = 0; bucket < bounded_buckets_; ++bucket) {
      snapshot.upper_bounds.push_back(uint64_t{1} << (first_bound_shift_ + bucket));
    }
    for (const Stripe& stripe : stripes_) {
      for (size_t bucket = 0; bucket <= bounded_buckets_; ++bucket) {
        snapshot.counts[bucket] += stripe.counts[bucket].load(std::memory_order_relaxed);
      }
      snapshot.sum += stripe.sum.load(std::memory_order_relaxed);
    }
    for (uint64_t count : snapshot.counts) snapshot.count += count;
    return snapshot;
  }

 private:
  static constexpr size_t kStripes = 8;

  struct alignas(64) Stripe {
    std::array<std::atomic<uint64_t>, kMaxBoundedBuckets + 1> counts{};
    std::atomic<uint64_t> sum{0};
  };

  // value <= first_bound << i  <=>  (value - 1) >> shift < 2^i.
  size_t BucketOf(uint64_t value) const {
    if (value == 0) return 0;
    const size_t bucket = std::bit_width((value - 1) >> first_bound_shift_);
    return bucket < bounded_buckets_ ? bucket : bounded_buckets_;
  }

  const int first_bound_shift_;
  const size_t bounded_buckets_;
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_LOG2_HISTOGRAM_H_
