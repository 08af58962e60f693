// Publisher<Event> hands each published event to every open subscription
// (core/iommu/subscription.h), in publication order, and forgets the
// subscriptions that were closed or dropped by their readers.
//
//   Publisher<Fault> publisher;
//   std::shared_ptr<Subscription<Fault>> sub = publisher.Subscribe(/*capacity=*/256);
//   publisher.Publish(fault);
//
// has_subscribers() lets a hot path skip building an event nobody reads.
//
// Thread-safety: thread-safe. Publish delivers under the publisher's mutex
// (so concurrent publishers' events reach every subscriber in one order);
// the lock order is always Publisher, then Subscription.
#ifndef IOMMU_BROKER_CORE_IOMMU_PUBLISHER_H_
#define IOMMU_BROKER_CORE_IOMMU_PUBLISHER_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "core/iommu/subscription.h"

namespace iommu_broker {

template <typename Event>
class Publisher final {
 public:
  Publisher() = default;
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  std::shared_ptr<Subscription<Event>> Subscribe(size_t queue_capacity) {
    auto subscription = std::make_shared<Subscription<Event>>(queue_capacity);
    std::lock_guard<std::mutex> lock(mutex_);
    subscribers_.push_back(subscription);
    has_subscribers_.store(true, std::memory_order_relaxed);
    return subscription;
  }

  // A hint: false means nobody subscribed or every subscriber has gone
  // (noticed at the last Publish). A subscription that races with this
  // read may miss the event, as if it had subscribed a moment later.
  bool has_subscribers() const { return has_subscribers_.load(std::memory_order_relaxed); }

  void Publish(const Event& event) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(subscribers_, [&event](const std::weak_ptr<Subscription<Event>>& weak) {
      std::shared_ptr<Subscription<Event>> subscription = weak.lock();
      return subscription == nullptr || !subscription->Deliver(event);
    });
    has_subscribers_.store(!subscribers_.empty(), std::memory_order_relaxed);
  }

 private:
  std::mutex mutex_;
  std::vector<std::weak_ptr<Subscription<Event>>> subscribers_ ABSL_GUARDED_BY(mutex_);
  std::atomic<bool> has_subscribers_{false};
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_PUBLISHER_H_
