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

// One turn of a spin-wait loop: tells the CPU (and a hypervisor) we are spinning.
void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
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

uint64_t InvalidationQueue::Invalidate(absl::Span<const InvalidationDescriptor> descriptors) {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
  LockSpinning(lock);
  if (combine_) {
    // Our descriptors ride in the open batch, which cannot have started yet.
    // Whoever finds the queue idle executes the open batch for everyone in it.
    open_batch_.insert(open_batch_.end(), descriptors.begin(), descriptors.end());
    ++open_batch_callers_;
    posted_.fetch_add(1, std::memory_order_release);
    const uint64_t mine = open_batch_number_;
    bool gathered = false;
    while (completed_batch_number_ < mine) {
      if (executing_) {
        if (AwaitBatchEnd(lock, mine)) break;  // ours is done; the lock is released
        continue;
      }
      if (!gathered && open_batch_callers_ == 1 && ExpectCompany()) {
        gathered = true;
        GatherOthers(lock);
        continue;  // someone else may have run the batch meanwhile
      }
      std::vector<InvalidationDescriptor> batch;
      batch.swap(open_batch_);
      last_batch_callers_ = std::exchange(open_batch_callers_, 0);
      RunBatch(lock, batch);
    }
  } else {
    // Naive strict invalidation: our own batch, after everyone else's.
    while (executing_) AwaitBatchEnd(lock, /*mine=*/0);
    std::vector<InvalidationDescriptor> batch(descriptors.begin(), descriptors.end());
    RunBatch(lock, batch);
  }
  if (lock.owns_lock()) lock.unlock();
  const uint64_t waited = NanosOf(std::chrono::steady_clock::now() - start);
  CallStats& slot = call_stats_.Local();
  AddOwned(slot.calls, 1);
  AddOwned(slot.wait_nanos, static_cast<int64_t>(waited));
  return waited;
}

void InvalidationQueue::RunBatch(std::unique_lock<std::mutex>& lock,
                                 std::vector<InvalidationDescriptor>& batch) {
  const uint64_t number = open_batch_number_++;
  const InvalidationCost cost = cost_;
  last_leader_ = std::this_thread::get_id();
  executing_ = true;
  batch_sizes_.Record(batch.size());
  lock.unlock();
  const BatchResult result = Execute(batch, cost);
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

void InvalidationQueue::GatherOthers(std::unique_lock<std::mutex>& lock) {
  const uint64_t seen = posted_.load(std::memory_order_acquire);
  const auto deadline = std::chrono::steady_clock::now() +
                        absl::ToChronoNanoseconds(std::min(cost_.fixed / 2, kMaxGather));
  lock.unlock();
  while (posted_.load(std::memory_order_acquire) == seen &&
         std::chrono::steady_clock::now() < deadline) {
    CpuRelax();
  }
  LockSpinning(lock);
}

bool InvalidationQueue::AwaitBatchEnd(std::unique_lock<std::mutex>& lock, uint64_t mine) {
  constexpr int kSpins = 2000;  // a few microseconds of pause instructions
  const uint64_t seen = completed_batch_number_;
  lock.unlock();
  uint64_t completed = seen;
  for (int spin = 0; spin < kSpins && completed == seen; ++spin) {
    CpuRelax();
    completed = completed_batches_.load(std::memory_order_acquire);
  }
  // Acquire: the batch's invalidations happen before we return.
  if (mine != 0 && completed >= mine) return true;
  LockSpinning(lock);
  if (executing_ && completed_batch_number_ == seen) batch_done_.wait(lock);
  return false;
}

InvalidationQueue::BatchResult InvalidationQueue::Execute(
    std::vector<InvalidationDescriptor>& batch, InvalidationCost cost) {
  const absl::Duration fixed = std::max(cost.fixed, absl::ZeroDuration());
  const absl::Duration per_descriptor = std::max(cost.per_descriptor, absl::ZeroDuration());
  const bool timed = fixed > absl::ZeroDuration() || per_descriptor > absl::ZeroDuration();
  std::chrono::steady_clock::time_point started;
  if (timed) started = std::chrono::steady_clock::now();

  BatchResult result;
  if (batch.size() > max_batch_descriptors_) {
    // Too many to walk: drop each IOTLB the batch touches instead.
    std::vector<Iotlb*> iotlbs;
    iotlbs.reserve(batch.size());
    for (const InvalidationDescriptor& descriptor : batch) {
      // A flush-queue batch names one IOTLB over and over: skip repeats
      // before sorting.
      if (descriptor.iotlb != nullptr && (iotlbs.empty() || iotlbs.back() != descriptor.iotlb)) {
        iotlbs.push_back(descriptor.iotlb);
      }
    }
    std::sort(iotlbs.begin(), iotlbs.end());
    iotlbs.erase(std::unique(iotlbs.begin(), iotlbs.end()), iotlbs.end());
    batch.clear();
    for (Iotlb* iotlb : iotlbs) batch.push_back(InvalidationDescriptor::Domain(iotlb));
    result.promoted = true;
  }
  for (const InvalidationDescriptor& descriptor : batch) Apply(descriptor);
  result.descriptors = batch.size();

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
