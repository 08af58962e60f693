// LatencyHistogram counts durations in log-linear buckets, as HdrHistogram
// does: below 64 ns every nanosecond has its own bucket; above, each
// power-of-two range [2^e, 2^(e+1)) ns is split into 64 equal buckets. A
// percentile read back is the upper bound of the bucket holding it, so it is
// at most 1/64 (1.6%) above the exact value, never below it. The memory is
// fixed (about 30 KiB) whatever the number or range of the values.
//
//   LatencyHistogram histogram;
//   histogram.Record(absl::Microseconds(12));
//   absl::Duration p99 = histogram.Percentile(99);
//
// Thread-safety: not thread-safe; keep one per thread and Merge them.
#ifndef IOMMU_BROKER_CLIENT_CPP_LATENCY_HISTOGRAM_H_
#define IOMMU_BROKER_CLIENT_CPP_LATENCY_HISTOGRAM_H_

#include <cstdint>
#include <vector>

#include "absl/time/time.h"

namespace iommu_broker::client {

class LatencyHistogram final {
 public:
  LatencyHistogram();

  // Negative durations count as zero.
  void Record(absl::Duration latency);
  // Adds every value `other` recorded.
  void Merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  // The largest value recorded, exactly; zero when empty.
  absl::Duration max() const { return absl::Nanoseconds(max_nanoseconds_); }
  // The smallest value that `percentile` percent (0-100) of the recorded
  // values do not exceed, within a bucket; zero when empty. Percentile(100)
  // is max().
  absl::Duration Percentile(double percentile) const;

 private:
  std::vector<uint64_t> counts_;  // per bucket
  uint64_t count_ = 0;
  int64_t max_nanoseconds_ = 0;
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_LATENCY_HISTOGRAM_H_
