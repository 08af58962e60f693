#include "core/iommu/flush_queue.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/base/optimization.h"

namespace iommu_broker {

size_t InvalidationsFor(const PageTable::Removed& removed) {
  size_t count = 0;
  for (uint64_t granule : {kPage4K, kPage2M, kPage1G}) count += (removed.leaf_sizes & granule) != 0;
  return count;
}

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
    : queue_(queue), stripe_(queue.stripes_.Local()), through_gate_(stripe_.gate.EnterFast()) {
  if (!through_gate_) stripe_.mutex.lock();  // a reclaim is under way: wait for it
  if (!stripe_.busy) {
    queue_.pending_.Begin();
    stripe_.busy = true;
  }
}

FlushQueue::Unmapping::~Unmapping() {
  queue_.SettleStripe(stripe_);
  if (through_gate_) {
    stripe_.gate.ExitFast();
  } else {
    stripe_.mutex.unlock();
  }
}

void FlushQueue::Unmapping::Enqueue(absl::Span<const PageTable::Removed> removed) {
  for (const PageTable::Removed& gone : removed) {
    if (ABSL_PREDICT_FALSE(stripe_.used == 0)) {
      if (stripe_.entries.empty())
        stripe_.entries.resize(std::max<size_t>(queue_.options_.capacity, 1));
      stripe_.oldest_unix_nanos.store(absl::ToUnixNanos(absl::Now()), std::memory_order_relaxed);
    }
    PageTable::CopyRemoved(gone, stripe_.entries[stripe_.used++]);
    AddOwned(stripe_.waiting, 1);
    AddOwned(stripe_.queued, 1);
    // Stays busy even if this empties it: the rest of `removed` is unmapped
    // already. The busy period ends with the hold.
    if (ABSL_PREDICT_FALSE(stripe_.used == stripe_.entries.size())) {
      queue_.FlushStripe(stripe_, FlushKind::kQueueFull);
    }
  }
}

void FlushQueue::Flush(FlushKind kind) {
  stripes_.ForEach([&](Stripe& stripe) {
    Seized hold(stripe);
    if (stripe.used != 0) FlushStripe(stripe, kind);
    SettleStripe(stripe);
  });
}

void FlushQueue::FlushExpired(absl::Time now) {
  auto expired = [&](const Stripe& stripe) {
    return stripe.waiting.load(std::memory_order_relaxed) > 0 &&
           now - absl::FromUnixNanos(stripe.oldest_unix_nanos.load(std::memory_order_relaxed)) >=
               options_.timeout;
  };
  stripes_.ForEach([&](Stripe& stripe) {
    // A first look without the hold: taking it costs the owner's thread a
    // barrier, and the timer runs every millisecond.
    if (!expired(stripe)) return;
    Seized hold(stripe);
    if (!expired(stripe)) return;
    FlushStripe(stripe, FlushKind::kQueueTimeout);
    SettleStripe(stripe);
  });
}

void FlushQueue::FlushStripe(Stripe& stripe, FlushKind kind) {
  const uint64_t waited = invalidation_queue_.Invalidate(DescriptorsFor(stripe.queued_entries()));
  if (latencies_ != nullptr) latencies_->Record(Policy::kFast, kind, waited);
  release_(stripe.queued_entries());
  stripe.used = 0;
  stripe.waiting.store(0, std::memory_order_relaxed);
  AddOwned(stripe.flushes[static_cast<size_t>(kind)], 1);
}

std::vector<InvalidationDescriptor> FlushQueue::DescriptorsFor(
    absl::Span<const PageTable::Removed> entries) {
  size_t ranges = 0;
  for (const PageTable::Removed& removed : entries) ranges += InvalidationsFor(removed);
  // A full queue's batch is too long for the invalidation queue to walk: it
  // would drop the whole IOTLB instead, as Linux's flush queue always does.
  // Ask for that directly rather than build the range descriptors
  // (docs/PERFORMANCE.md).
  if (ranges > invalidation_queue_.max_batch_descriptors()) {
    return {InvalidationDescriptor::DomainForRanges(&iotlb_, ranges)};
  }
  std::vector<InvalidationDescriptor> descriptors;
  descriptors.reserve(ranges);
  for (const PageTable::Removed& removed : entries) {
    AppendInvalidations(removed, iotlb_, descriptors);
  }
  return descriptors;
}

void FlushQueue::SettleStripe(Stripe& stripe) {
  if (stripe.busy && stripe.used == 0) {
    pending_.Complete(1);
    stripe.busy = false;
  }
}

FlushQueueStats FlushQueue::Stats() const {
  auto read = [](const std::atomic<int64_t>& value) {
    return static_cast<uint64_t>(value.load(std::memory_order_relaxed));
  };
  auto flushes = [&](const Stripe& stripe, FlushKind kind) {
    return read(stripe.flushes[static_cast<size_t>(kind)]);
  };
  FlushQueueStats stats;
  stripes_.ForEach([&](const Stripe& stripe) {
    stats.queued += read(stripe.queued);
    stats.pending += read(stripe.waiting);
    stats.full_flushes += flushes(stripe, FlushKind::kQueueFull);
    stats.timeout_flushes += flushes(stripe, FlushKind::kQueueTimeout);
    stats.explicit_flushes +=
        flushes(stripe, FlushKind::kExplicit) + flushes(stripe, FlushKind::kDomainWide);
  });
  return stats;
}

}  // namespace iommu_broker
