#include "core/iommu/flush_latencies.h"

#include <memory>

namespace iommu_broker {

absl::string_view FlushKindName(FlushKind kind) {
  switch (kind) {
    case FlushKind::kSyncUnmap:
      return "sync_unmap";
    case FlushKind::kQueueFull:
      return "queue_full";
    case FlushKind::kQueueTimeout:
      return "queue_timeout";
    case FlushKind::kExplicit:
      return "explicit";
    case FlushKind::kDomainWide:
      return "domain_wide";
    case FlushKind::kDevice:
      return "device";
  }
  return "unknown";
}

FlushLatencies::FlushLatencies() {
  for (std::unique_ptr<Log2Histogram>& histogram : histograms_) {
    histogram = std::make_unique<Log2Histogram>(kFirstBoundNanos, kBoundedBuckets);
  }
}

}  // namespace iommu_broker
