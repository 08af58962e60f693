// FlushLatencies records how long callers wait for IOTLB invalidations, by
// the policy of the domain that asked and by what asked (FlushKind): the
// cost of each policy, which the broker's metrics show above all else.
//
//   FlushLatencies latencies;
//   latencies.Record(Policy::kParanoid, FlushKind::kSyncUnmap, waited_nanos);
//   Log2Histogram::Snapshot paranoid = latencies.Read(Policy::kParanoid, FlushKind::kSyncUnmap);
//
// Buckets are 1024 ns x 2^k, k = 0..14 (about 1 us to 16.8 ms), then
// overflow.
//
// Thread-safety: thread-safe (Log2Histogram).
#ifndef IOMMU_BROKER_CORE_IOMMU_FLUSH_LATENCIES_H_
#define IOMMU_BROKER_CORE_IOMMU_FLUSH_LATENCIES_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/strings/string_view.h"
#include "core/iommu/types.h"
#include "core/util/log2_histogram.h"

namespace iommu_broker {

enum class FlushKind {
  kSyncUnmap,     // a paranoid unmap, before it replies
  kQueueFull,     // a flush queue filled up
  kQueueTimeout,  // a flush queue's oldest entry timed out
  kExplicit,      // Flush() asked for it
  kDomainWide,    // a domain turning paranoid or being destroyed drains its queue
  kDevice,        // a device's entries, as it attaches or leaves
};
inline constexpr size_t kFlushKinds = 6;
// "sync_unmap", "queue_full", "queue_timeout", "explicit", "domain_wide", "device".
absl::string_view FlushKindName(FlushKind kind);

class FlushLatencies final {
 public:
  static constexpr uint64_t kFirstBoundNanos = 1024;
  static constexpr size_t kBoundedBuckets = 15;

  FlushLatencies();
  FlushLatencies(const FlushLatencies&) = delete;
  FlushLatencies& operator=(const FlushLatencies&) = delete;

  void Record(Policy policy, FlushKind kind, uint64_t waited_nanos) {
    histograms_[Index(policy, kind)]->Record(waited_nanos);
  }
  Log2Histogram::Snapshot Read(Policy policy, FlushKind kind) const {
    return histograms_[Index(policy, kind)]->Read();
  }

 private:
  static size_t Index(Policy policy, FlushKind kind) {
    return static_cast<size_t>(policy) * kFlushKinds + static_cast<size_t>(kind);
  }

  std::array<std::unique_ptr<Log2Histogram>, kPolicyCount * kFlushKinds> histograms_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_FLUSH_LATENCIES_H_
