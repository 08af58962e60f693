#include "core/iommu/flush_queue.h"

#include <utility>

#include "core/util/striped_counter.h"

namespace iommu_broker {

void AppendInvalidations(const PageTable::Removed& removed, Iotlb& iotlb,
                         std::vector<InvalidationDescriptor>& descriptors) {
  for (uint64_t granule : {kPage4K, kPage2M, kPage1G}) {
    if (removed.leaf_sizes & granule) {
      descriptors.push_back(
          InvalidationDescriptor::Range(&iotlb, removed.iova, removed.size, granule));
    }
  }
}

FlushQueue::FlushQueue(FlushQueueOptions options, Iotlb& iotlb,
                       InvalidationQueue& invalidation_queue, Release release)
    : options_(options),
      iotlb_(iotlb),
      invalidation_queue_(invalidation_queue),
      release_(std::move(release)) {}

void FlushQueue::Enqueue(absl::Span<const PageTable::Removed> removed) {
  Stripe& stripe = stripes_[ThisThreadStripe(kStripes)];
  std::lock_guard<std::mutex> lock(stripe.mutex);
  for (size_t i = 0; i < removed.size(); ++i) {
    if (stripe.entries.empty()) stripe.oldest = absl::Now();
    stripe.entries.push_back(removed[i]);
    ++stripe.queued;
    // A stripe flushes in order, so the call is done with its last range.
    if (i + 1 == removed.size()) ++stripe.unmaps;
    if (stripe.entries.size() >= options_.capacity) FlushStripe(stripe, Reason::kFull);
  }
}

void FlushQueue::Flush() {
  for (Stripe& stripe : stripes_) {
    std::lock_guard<std::mutex> lock(stripe.mutex);
    if (!stripe.entries.empty()) FlushStripe(stripe, Reason::kExplicit);
  }
}

void FlushQueue::FlushExpired(absl::Time now) {
  for (Stripe& stripe : stripes_) {
    std::lock_guard<std::mutex> lock(stripe.mutex);
    if (!stripe.entries.empty() && now - stripe.oldest >= options_.timeout) {
      FlushStripe(stripe, Reason::kTimeout);
    }
  }
}

void FlushQueue::FlushStripe(Stripe& stripe, Reason reason) {
  // The invalidation queue turns a long batch into one whole-domain
  // invalidation.
  std::vector<InvalidationDescriptor> descriptors;
  descriptors.reserve(stripe.entries.size());
  for (const PageTable::Removed& removed : stripe.entries) {
    AppendInvalidations(removed, iotlb_, descriptors);
  }
  invalidation_queue_.Invalidate(descriptors);
  release_(stripe.entries, stripe.unmaps);
  stripe.entries.clear();
  stripe.unmaps = 0;
  ++stripe.flushes[static_cast<size_t>(reason)];
}

FlushQueueStats FlushQueue::Stats() const {
  FlushQueueStats stats;
  for (const Stripe& stripe : stripes_) {
    std::lock_guard<std::mutex> lock(stripe.mutex);
    stats.queued += stripe.queued;
    stats.pending += stripe.entries.size();
    stats.full_flushes += stripe.flushes[static_cast<size_t>(Reason::kFull)];
    stats.timeout_flushes += stripe.flushes[static_cast<size_t>(Reason::kTimeout)];
    stats.explicit_flushes += stripe.flushes[static_cast<size_t>(Reason::kExplicit)];
  }
  return stats;
}

}  // namespace iommu_broker
