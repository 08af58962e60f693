// OperationMetrics counts the data path's operations (map, unmap,
// translate, flush; unary or in a Batch) by policy and result, and keeps
// the engine latency of the map and unmap operations that are timed. The
// DataPath records into it; the metrics collectable reads it at scrape.
//
//   OperationMetrics metrics;
//   metrics.Count(DataOperation::kMap, Policy::kFast, absl::OkStatus(), /*fault=*/false);
//   metrics.RecordLatency(DataOperation::kMap, Policy::kFast, nanos);
//   for (const OperationMetrics::Reading& r : metrics.ReadCounts()) ...
//
// Counting is one relaxed atomic add on the recording thread's stripe: no
// lock, no shared cache line between server threads.
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_SERVER_OPERATION_METRICS_H_
#define IOMMU_BROKER_SERVER_OPERATION_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/iommu/types.h"
#include "core/util/log2_histogram.h"

namespace iommu_broker {

enum class DataOperation { kMap, kUnmap, kTranslate, kFlush };
inline constexpr size_t kDataOperations = 4;
absl::string_view DataOperationName(DataOperation operation);  // "map", ...

class OperationMetrics final {
 public:
  // Latency buckets: 128 ns x 2^k, k = 0..17 (to 16.8 ms), then overflow.
  static constexpr uint64_t kFirstLatencyBoundNanos = 128;
  static constexpr size_t kLatencyBuckets = 18;

  // One non-zero count.
  struct Reading {
    DataOperation operation;
    std::optional<Policy> policy;  // none: refused before reaching a domain
    std::string result;            // "ok", "fault", or the code in lower case
    uint64_t count = 0;
  };

  OperationMetrics();
  OperationMetrics(const OperationMetrics&) = delete;
  OperationMetrics& operator=(const OperationMetrics&) = delete;

  // `fault`: an OK translate that faulted.
  void Count(DataOperation operation, std::optional<Policy> policy, const absl::Status& status,
             bool fault);
  // Map and unmap only (the others are not timed).
  void RecordLatency(DataOperation operation, Policy policy, uint64_t nanos);

  std::vector<Reading> ReadCounts() const;
  Log2Histogram::Snapshot ReadLatency(DataOperation operation, Policy policy) const;

 private:
  static constexpr size_t kPolicySlots = kPolicyCount + 1;  // the last: none
  // ok, fault, then absl::StatusCode 1..16.
  static constexpr size_t kResults = 18;
  static constexpr size_t kCounters = kDataOperations * kPolicySlots * kResults;
  static constexpr size_t kStripes = 8;
  static constexpr size_t kTimedOperations = 2;  // map, unmap

  struct alignas(64) Stripe {
    std::array<std::atomic<uint64_t>, kCounters> counts{};
  };

  static size_t CounterIndex(DataOperation operation, size_t policy_slot, size_t result) {
    return (static_cast<size_t>(operation) * kPolicySlots + policy_slot) * kResults + result;
  }
  static size_t LatencyIndex(DataOperation operation, Policy policy) {
    return static_cast<size_t>(operation) * kPolicyCount + static_cast<size_t>(policy);
  }

  std::unique_ptr<std::array<Stripe, kStripes>> stripes_;
  std::array<std::unique_ptr<Log2Histogram>, kTimedOperations * kPolicyCount> latencies_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_OPERATION_METRICS_H_
