#include "server/operation_metrics.h"

#include "absl/strings/ascii.h"
#include "core/util/striped_counter.h"

namespace iommu_broker {
namespace {

constexpr size_t kOkResult = 0;
constexpr size_t kFaultResult = 1;

std::string ResultName(size_t result) {
  if (result == kOkResult) return "ok";
  if (result == kFaultResult) return "fault";
  return absl::AsciiStrToLower(
      absl::StatusCodeToString(static_cast<absl::StatusCode>(result - kFaultResult)));
}

}  // namespace

absl::string_view DataOperationName(DataOperation operation) {
  switch (operation) {
    case DataOperation::kMap:
      return "map";
    case DataOperation::kUnmap:
      return "unmap";
    case DataOperation::kTranslate:
      return "translate";
    case DataOperation::kFlush:
      return "flush";
  }
  return "unknown";
}

OperationMetrics::OperationMetrics() : stripes_(std::make_unique<std::array<Stripe, kStripes>>()) {
  for (std::unique_ptr<Log2Histogram>& latency : latencies_) {
    latency = std::make_unique<Log2Histogram>(kFirstLatencyBoundNanos, kLatencyBuckets);
  }
}

void OperationMetrics::Count(DataOperation operation, std::optional<Policy> policy,
                             const absl::Status& status, bool fault) {
  const size_t policy_slot = policy.has_value() ? static_cast<size_t>(*policy) : kPolicyCount;
  size_t result = fault ? kFaultResult : kOkResult;
  if (!status.ok()) {
    const size_t code = static_cast<size_t>(status.code());
    result = code < kResults - kFaultResult ? code + kFaultResult : kResults - 1;
  }
  (*stripes_)[ThisThreadStripe(kStripes)]
      .counts[CounterIndex(operation, policy_slot, result)]
      .fetch_add(1, std::memory_order_relaxed);
}

void OperationMetrics::RecordLatency(DataOperation operation, Policy policy, uint64_t nanos) {
  if (static_cast<size_t>(operation) >= kTimedOperations) return;
  latencies_[LatencyIndex(operation, policy)]->Record(nanos);
}

std::vector<OperationMetrics::Reading> OperationMetrics::ReadCounts() const {
  std::vector<Reading> readings;
  for (size_t operation = 0; operation < kDataOperations; ++operation) {
    for (size_t policy_slot = 0; policy_slot < kPolicySlots; ++policy_slot) {
      for (size_t result = 0; result < kResults; ++result) {
        const size_t index =
            CounterIndex(static_cast<DataOperation>(operation), policy_slot, result);
        uint64_t count = 0;
        for (const Stripe& stripe : *stripes_) {
          count += stripe.counts[index].load(std::memory_order_relaxed);
        }
        if (count == 0) continue;
        readings.push_back({.operation = static_cast<DataOperation>(operation),
                            .policy = policy_slot < kPolicyCount
                                          ? std::optional<Policy>(static_cast<Policy>(policy_slot))
                                          : std::nullopt,
                            .result = ResultName(result),
                            .count = count});
      }
    }
  }
  return readings;
}

Log2Histogram::Snapshot OperationMetrics::ReadLatency(DataOperation operation,
                                                      Policy policy) const {
  return latencies_[LatencyIndex(operation, policy)]->Read();
}

}  // namespace iommu_broker
