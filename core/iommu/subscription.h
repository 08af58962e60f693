// Subscription<Event> is one subscriber's bounded queue of events (faults,
// invalidations) published by a log. A publisher that finds the queue full
// drops the event and counts it, so a slow subscriber loses events (and is
// told how many) instead of slowing down the data path that publishes.
//
//   auto sub = std::make_shared<Subscription<Fault>>(/*capacity=*/256);
//   sub->Deliver(fault);                                   // the publisher
//   std::optional<Fault> next = sub->Next(absl::Seconds(1));  // the reader
//
// Readers either block in Next, or (an RPC stream, which must not block) set
// a ready callback and call Next(ZeroDuration()) from it.
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_CORE_IOMMU_SUBSCRIPTION_H_
#define IOMMU_BROKER_CORE_IOMMU_SUBSCRIPTION_H_

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"

namespace iommu_broker {

template <typename Event>
class Subscription final {
 public:
  explicit Subscription(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // The oldest undelivered event, waiting up to `timeout` for one (zero:
  // not at all); nullopt on timeout or once Close() was called and the
  // queue is empty.
  std::optional<Event> Next(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
      return !queue_.empty() || closed_;
    };
    if (timeout >= kForever) {
      ready_.wait(lock, ready);
    } else if (timeout > absl::ZeroDuration()) {
      ready_.wait_for(lock, absl::ToChronoNanoseconds(timeout), ready);
    }
    if (queue_.empty()) return std::nullopt;
    Event event = std::move(queue_.front());
    queue_.pop_front();
    return event;
  }

  // `on_ready` runs after each event is queued, on the publishing thread,
  // and must be quick; it may call Next(ZeroDuration()). Close() waits for a
  // running call and stops further ones, so `on_ready` may refer to state
  // that Close()'s caller frees afterwards.
  void SetReadyCallback(absl::AnyInvocable<void()> on_ready) {
    std::lock_guard<std::mutex> lock(callback_mutex_);
    on_ready_ = std::move(on_ready);
  }

  // Events dropped because the queue was full, since subscribing.
  uint64_t dropped() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return dropped_;
  }

  // Wakes Next() callers and stops delivery (publishers then forget it).
  void Close() {
    std::lock_guard<std::mutex> callback_lock(callback_mutex_);
    on_ready_ = nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    ready_.notify_all();
  }

  bool closed() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return closed_;
  }

  // For the publisher: queues `event`, or counts it dropped if the queue is
  // full. Returns false (and does nothing) once closed, so the publisher can
  // forget this subscription.
  bool Deliver(const Event& event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return false;
      if (queue_.size() >= capacity_) {
        // Keep the oldest: the reader sees an unbroken prefix and a count
        // of what followed it.
        ++dropped_;
        return true;
      }
      queue_.push_back(event);
      ready_.notify_one();
    }
    std::lock_guard<std::mutex> callback_lock(callback_mutex_);
    if (on_ready_) on_ready_();
    return true;
  }

 private:
  // Timeouts at least this long wait without a deadline (avoids overflowing
  // the clock arithmetic for absl::InfiniteDuration()).
  static constexpr absl::Duration kForever = absl::Hours(24 * 365);

  const size_t capacity_;
  // Held while on_ready_ runs; taken before mutex_ (on_ready_ may take it).
  std::mutex callback_mutex_;
  absl::AnyInvocable<void()> on_ready_ ABSL_GUARDED_BY(callback_mutex_);
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Event> queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t dropped_ ABSL_GUARDED_BY(mutex_) = 0;
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_SUBSCRIPTION_H_
