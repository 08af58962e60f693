#include "core/iommu/invalidation_queue.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/iotlb.h"
#include "core/util/cpu_relax.h"

namespace iommu_broker {
namespace {

// Longest cost one batch busy-waits; keeps the deadline arithmetic in range
// should a caller configure an absurd (say, infinite) cost.
constexpr absl::Duration kMaxBatchCost = absl::Hours(24);
// The longest a leader waits for company (see GatherOthers).
constexpr absl::Duration kMaxGather = absl::Microseconds(5);

uint64_t NanosOf(std::chrono::steady_clock::duration duration) {
  const int64_t nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(duration).count();
  return nanos > 0 ? static_cast<uint64_t>(nanos) : 0;
}

// Takes `lock`'s mutex, trying briefly before sleeping on it: the queue's
// critical sections last nanoseconds, while a futex sleep and wake-up on a
// virtual machine costs microseconds (docs/PERFORMANCE.md).
void LockSpinning(std::unique_lock<std::mutex>& lock) {
  constexpr int kTries = 200;
  for (int attempt = 0; attempt < kTries; ++attempt) {
    if (lock.try_lock()) return;
    CpuRelax();
  }
  lock.lock();
}

void Apply(const InvalidationDescriptor& descriptor) {
  if (descriptor.iotlb == nullptr) return;
  switch (descriptor.kind) {
    case InvalidationDescriptor::Kind::kRange:
      descriptor.iotlb->InvalidateRange(descriptor.iova, descriptor.size, descriptor.granule);
      break;
    case InvalidationDescriptor::Kind::kRequester:
      descriptor.iotlb->InvalidateRequester(descriptor.requester);
      break;
    case InvalidationDescriptor::Kind::kDomain:
      descriptor.iotlb->InvalidateAll();
      break;
  }
}

}  // namespace

InvalidationQueue::InvalidationQueue(InvalidationQueueOptions options)
    : combine_(options.combine),
      max_batch_descriptors_(options.max_batch_descriptors),
      cost_(options.cost) {}

uint64_t InvalidationQueue::Invalidate(absl::Span<const InvalidationDescriptor> descriptors,
                                       absl::FunctionRef<void()> applied) {
  const auto start = std::chrono::steady_clock::now();
  Waiter waiter{.applied = applied};
  std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
  LockSpinning(lock);
  if (combine_) {
    // Our descriptors ride in the open batch, which cannot have started yet.
    // Whoever finds the queue idle executes the open batch for everyone in it.
    open_batch_.push_back(descriptors);
    waiter.batch = open_batch_number_;
    bool gathered = false;
    while (completed_batch_number_ < waiter.batch) {
      if (executing_) {
        if (AwaitBatchEnd(lock, waiter)) break;  // ours is done; the lock is released
        continue;
      }
      if (!gathered && open_batch_.size() == 1 && ExpectCompany()) {
        gathered = true;
        if (GatherOthers(lock, waiter)) break;  // another caller ran ours; released
        continue;
      }
      Batch batch;
      batch.swap(open_batch_);
      last_batch_callers_ = batch.size();
      RunBatch(lock, batch, waiter);
    }
  } else {
    // Naive strict invalidation: our own batch, after everyone else's.
    while (executing_) AwaitBatchEnd(lock, waiter);
    RunBatch(lock, Batch{descriptors}, waiter);
  }
  if (lock.owns_lock()) lock.unlock();
  const uint64_t waited = NanosOf(std::chrono::steady_clock::now() - start);
  CallStats& slot = call_stats_.Local();
  AddOwned(slot.calls, 1);
  AddOwned(slot.wait_nanos, static_cast<int64_t>(waited));
  waiter.NotifyApplied();  // if it was not seen while waiting
  return waited;
}

void InvalidationQueue::RunBatch(std::unique_lock<std::mutex>& lock, const Batch& batch,
                                 Waiter& waiter) {
  const uint64_t number = open_batch_number_++;
  const InvalidationCost cost = cost_;
  last_leader_ = std::this_thread::get_id();
  executing_ = true;
  // Only gatherers read it, and they exist only when batches cost something.
  if (cost.fixed > absl::ZeroDuration()) started_batches_.store(number, std::memory_order_release);
  lock.unlock();
  const BatchResult result = Execute(batch, number, cost, waiter);
  LockSpinning(lock);
  completed_batch_number_ = number;
  completed_batches_.store(number, std::memory_order_release);
  executing_ = false;
  RecordBatch(result);
  batch_done_.notify_all();
}

bool InvalidationQueue::ExpectCompany() const {
  if (cost_.fixed <= absl::ZeroDuration()) return false;  // nothing to save
  // Two callers or more shared the last batch, or someone else led it:
  // others are unmapping too, and one of them is likely on its way.
  return last_batch_callers_ > 1 ||
         (last_leader_ != std::this_thread::get_id() && last_leader_ != std::thread::id());
}

bool InvalidationQueue::GatherOthers(std::unique_lock<std::mutex>& lock, Waiter& waiter) {
  const auto deadline = std::chrono::steady_clock::now() +
                        absl::ToChronoNanoseconds(std::min(cost_.fixed / 2, kMaxGather));
  const uint64_t completed = completed_batch_number_;
  lock.unlock();
  // A caller that joins finds the queue idle and a companion waiting, so it
  // starts the batch itself: watching for that start needs no lock, and
  // leaves the lock's lines with the one who will take it.
  bool started = false;
  while (!(started = started_batches_.load(std::memory_order_acquire) >= waiter.batch) &&
         std::chrono::steady_clock::now() < deadline) {
    CpuRelax();
  }
  // Acquire: the batch's invalidations happen before we return.
  if (started && SpinForCompletion(completed, waiter) >= waiter.batch) return true;
  LockSpinning(lock);
  return false;
}

uint64_t InvalidationQueue::SpinForCompletion(uint64_t seen, Waiter& waiter) const {
  constexpr int kSpins = 2000;  // a few microseconds of pause instructions
  uint64_t completed = seen;
  for (int spin = 0; spin < kSpins && completed == seen; ++spin) {
    CpuRelax();
    if (!waiter.notified && applied_batches_.load(std::memory_order_acquire) >= waiter.batch) {
      waiter.NotifyApplied();
    }
    completed = completed_batches_.load(std::memory_order_acquire);
  }
  return completed;
}

bool InvalidationQueue::AwaitBatchEnd(std::unique_lock<std::mutex>& lock, Waiter& waiter) {
  const uint64_t seen = completed_batch_number_;
  lock.unlock();
  // Acquire: the batch's invalidations happen before we return.
  if (SpinForCompletion(seen, waiter) >= waiter.batch) return true;
  LockSpinning(lock);
  if (executing_ && completed_batch_number_ == seen) batch_done_.wait(lock);
  return false;
}

InvalidationQueue::BatchResult InvalidationQueue::Execute(const Batch& batch, uint64_t number,
                                                          InvalidationCost cost, Waiter& waiter) {
  const absl::Duration fixed = std::max(cost.fixed, absl::ZeroDuration());
  const absl::Duration per_descriptor = std::max(cost.per_descriptor, absl::ZeroDuration());
  const bool timed = fixed > absl::ZeroDuration() || per_descriptor > absl::ZeroDuration();
  std::chrono::steady_clock::time_point started;
  if (timed) started = std::chrono::steady_clock::now();

  uint64_t posted = 0;
  uint64_t count = 0;
  for (absl::Span<const InvalidationDescriptor> part : batch) {
    count += part.size();
    for (const InvalidationDescriptor& descriptor : part) posted += descriptor.posted_as;
  }
  batch_sizes_.Record(posted);
  BatchResult result;
  if (posted > max_batch_descriptors_) {
    // Too many to walk: drop each IOTLB the batch touches instead.
    std::vector<Iotlb*> iotlbs;
    iotlbs.reserve(count);
    for (absl::Span<const InvalidationDescriptor> part : batch) {
      for (const InvalidationDescriptor& descriptor : part) {
        // A flush-queue batch names one IOTLB over and over: skip repeats
        // before sorting.
        if (descriptor.iotlb != nullptr && (iotlbs.empty() || iotlbs.back() != descriptor.iotlb)) {
          iotlbs.push_back(descriptor.iotlb);
        }
      }
    }
    std::sort(iotlbs.begin(), iotlbs.end());
    iotlbs.erase(std::unique(iotlbs.begin(), iotlbs.end()), iotlbs.end());
    for (Iotlb* iotlb : iotlbs) Apply(InvalidationDescriptor::Domain(iotlb));
    result.descriptors = iotlbs.size();
    result.promoted = true;
  } else {
    for (absl::Span<const InvalidationDescriptor> part : batch) {
      for (const InvalidationDescriptor& descriptor : part) Apply(descriptor);
    }
    result.descriptors = count;
  }
  // Announced only when there is an emulated wait to overlap: the store
  // takes the line its spinners read, and otherwise the completion, right
  // after, announces the same.
  if (timed) {
    applied_batches_.store(number, std::memory_order_release);
    waiter.NotifyApplied();
  }

  if (timed) {
    const absl::Duration total =
        std::min(fixed + per_descriptor * static_cast<int64_t>(result.descriptors), kMaxBatchCost);
    result.busy_nanos = static_cast<uint64_t>(absl::ToInt64Nanoseconds(total));
    // Spin, as a driver polling a wait descriptor does: the CPU is busy.
    const auto deadline = started + absl::ToChronoNanoseconds(total);
    while (std::chrono::steady_clock::now() < deadline) {
    }
  }
  return result;
}

void InvalidationQueue::RecordBatch(const BatchResult& result) {
  ++stats_.batches;
  stats_.descriptors += result.descriptors;
  if (result.promoted) ++stats_.promoted_batches;
  stats_.busy_nanos += result.busy_nanos;
}

void InvalidationQueue::SetCost(InvalidationCost cost) {
  std::lock_guard<std::mutex> lock(mutex_);
  cost_ = cost;
}

InvalidationCost InvalidationQueue::cost() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cost_;
}

InvalidationQueueStats InvalidationQueue::Stats() const {
  InvalidationQueueStats stats;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats = stats_;
  }
  call_stats_.ForEach([&stats](const CallStats& slot) {
    stats.calls += static_cast<uint64_t>(slot.calls.load(std::memory_order_relaxed));
    stats.wait_nanos += static_cast<uint64_t>(slot.wait_nanos.load(std::memory_order_relaxed));
  });
  return stats;
}

}  // namespace iommu_broker
