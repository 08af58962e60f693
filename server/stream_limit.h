// StreamLimit counts the long-lived streams (Batch, WatchEvents) a broker
// serves, so that one more than the configured maximum is refused with
// RESOURCE_EXHAUSTED instead of holding memory without bound.
//
//   if (!limit.TryAcquire()) return RESOURCE_EXHAUSTED;
//   ... stream runs ...
//   limit.Release();
//
// Thread-safety: thread-safe (one atomic).
#ifndef IOMMU_BROKER_SERVER_STREAM_LIMIT_H_
#define IOMMU_BROKER_SERVER_STREAM_LIMIT_H_

#include <atomic>
#include <cstddef>

namespace iommu_broker {

class StreamLimit final {
 public:
  explicit StreamLimit(size_t max_streams) : max_streams_(max_streams) {}
  StreamLimit(const StreamLimit&) = delete;
  StreamLimit& operator=(const StreamLimit&) = delete;

  bool TryAcquire() {
    size_t active = active_.load(std::memory_order_relaxed);
    while (active < max_streams_) {
      if (active_.compare_exchange_weak(active, active + 1, std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }
  void Release() { active_.fetch_sub(1, std::memory_order_relaxed); }
  size_t active() const { return active_.load(std::memory_order_relaxed); }
  size_t max_streams() const { return max_streams_; }

 private:
  const size_t max_streams_;
  std::atomic<size_t> active_{0};
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_STREAM_LIMIT_H_
