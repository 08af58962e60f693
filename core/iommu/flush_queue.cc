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
                       InvalidationQueue& invalidation_queue, PendingInvalidations& pending,
                       FlushLatencies* latencies, Release release)
    : options_(options),
      iotlb_(iotlb),
      invalidation_queue_(invalidation_queue),
      pending_(pending),
      latencies_(latencies),
      release_(std::move(release)) {}

FlushQueue::Unmapping::Unmapping(FlushQueue& queue)
    : queue_(queue), stripe_(queue.stripes_[ThisThreadStripe(kStripes)]), lock_(stripe_.mutex) {
  if (!stripe_.busy) {
    queue_.pending_.Begin();
    stripe_.busy = true;
  }
}

FlushQueue::Unmapping::~Unmapping() { queue_.SettleStripe(stripe_); }

void FlushQueue::Unmapping::Enqueue(absl::Span<const PageTable::Removed> removed) {
  for (const PageTable::Removed& gone : removed) {
    if (stripe_.entries.empty()) stripe_.oldest = absl::Now();
    PageTable::CopyRemoved(gone, stripe_.entries.emplace_back());
    ++stripe_.queued;
    // Stays busy even if this empties it: the rest of `removed` is unmapped
    // already. The busy period ends when the lock is released.
    if (stripe_.entries.size() >= queue_.options_.capacity) {
      queue_.FlushStripe(stripe_, FlushKind::kQueueFull);
    }
  }
}

void FlushQueue::Flush(FlushKind kind) {
  for (Stripe& stripe : stripes_) {
    std::lock_guard<std::mutex> lock(stripe.mutex);
    if (!stripe.entries.empty()) FlushStripe(stripe, kind);
    SettleStripe(stripe);
  }
}

void FlushQueue::FlushExpired(absl::Time now) {
  for (Stripe& stripe : stripes_) {
    std::lock_guard<std::mutex> lock(stripe.mutex);
    if (!stripe.entries.empty() && now - stripe.oldest >= options_.timeout) {
      FlushStripe(stripe, FlushKind::kQueueTimeout);
      SettleStripe(stripe);
    }
  }
}

void FlushQueue::FlushStripe(Stripe& stripe, FlushKind kind) {
  // The invalidation queue turns a long batch into one whole-domain
  // invalidation.
  std::vector<InvalidationDescriptor> descriptors;
  descriptors.reserve(stripe.entries.size());
  for (const PageTable::Removed& removed : stripe.entries) {
    AppendInvalidations(removed, iotlb_, descriptors);
  }
  const uint64_t waited = invalidation_queue_.Invalidate(descriptors);
  if (latencies_ != nullptr) latencies_->Record(Policy::kFast, kind, waited);
  release_(stripe.entries);
  stripe.entries.clear();
  ++stripe.flushes[static_cast<size_t>(kind)];
}

void FlushQueue::SettleStripe(Stripe& stripe) {
  if (stripe.busy && stripe.entries.empty()) {
    pending_.Complete(1);
    stripe.busy = false;
  }
}

FlushQueueStats FlushQueue::Stats() const {
  FlushQueueStats stats;
  for (const Stripe& stripe : stripes_) {
    std::lock_guard<std::mutex> lock(stripe.mutex);
    stats.queued += stripe.queued;
    stats.pending += stripe.entries.size();
    stats.full_flushes += stripe.flushes[static_cast<size_t>(FlushKind::kQueueFull)];
    stats.timeout_flushes += stripe.flushes[static_cast<size_t>(FlushKind::kQueueTimeout)];
    stats.explicit_flushes += stripe.flushes[static_cast<size_t>(FlushKind::kExplicit)] +
                              stripe.flushes[static_cast<size_t>(FlushKind::kDomainWide)];
  }
  return stats;
}

}  // namespace iommu_broker
