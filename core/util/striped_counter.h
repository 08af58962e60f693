// StripedCounter is a statistics counter that many threads bump on their hot
// paths without sharing a cache line: each thread adds to one of a few
// cache-line-sized stripes, and a reader sums them.
//
//   StripedCounter hits;
//   hits.Add();            // any thread, about one uncontended atomic add
//   uint64_t n = hits.Value();
//
// Value() is exact when no thread is adding; during adds it is a sum of
// individually current stripes. Signed deltas are allowed (gauges); Value()
// then returns the signed total.
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_CORE_UTIL_STRIPED_COUNTER_H_
#define IOMMU_BROKER_CORE_UTIL_STRIPED_COUNTER_H_

#include <unistd.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace iommu_broker {

// The stripe a thread uses in every StripedCounter (and other per-stripe
// structures). Threads are spread by their kernel thread id, read once per
// thread: ids of threads started one after another are consecutive, so a
// handful of threads always land on distinct stripes.
inline size_t ThisThreadStripe(size_t stripes) {
  thread_local const size_t tid = static_cast<size_t>(gettid());
  return tid % stripes;
}

class StripedCounter final {
 public:
  static constexpr size_t kStripes = 16;

  StripedCounter() = default;
  StripedCounter(const StripedCounter&) = delete;
  StripedCounter& operator=(const StripedCounter&) = delete;

  void Add(int64_t delta = 1) {
    stripes_[ThisThreadStripe(kStripes)].value.fetch_add(delta, std::memory_order_relaxed);
  }

  // Adds 1 unless the total has reached `limit`; returns whether it added.
  // Reads only this thread's stripe while that stripe holds less than
  // 1/(2 * kStripes) of the limit, so it is exact for one thread and may
  // admit up to half the limit too many when many threads race near it.
  bool TryIncrement(int64_t limit) {
    std::atomic<int64_t>& mine = stripes_[ThisThreadStripe(kStripes)].value;
    if (mine.load(std::memory_order_relaxed) >= limit / (2 * int64_t{kStripes}) &&
        Value() >= limit) {
      return false;
    }
    mine.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  int64_t Value() const {
    int64_t sum = 0;
    for (const Stripe& stripe : stripes_) sum += stripe.value.load(std::memory_order_relaxed);
    return sum;
  }

 private:
  struct alignas(64) Stripe {
    std::atomic<int64_t> value{0};
  };
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_STRIPED_COUNTER_H_
