#include "core/iova/iova_allocator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "core/iova/iova_arena.h"
#include "core/iova/size_class.h"
#include "core/util/hex.h"
#include "core/util/reclaim_gate.h"

namespace iommu_broker {
namespace {

constexpr int kGranuleShift = 12;
static_assert(kIovaGranule == uint64_t{1} << kGranuleShift);

// A magazine holds at most this many cached ranges of one class (a thread's
// two then hold a fast-policy flush queue's 256 entries, so a thread that
// maps and unmaps through its own queue never needs the depot)...
constexpr int kMagazineSlots = 128;
// ...and no more than this much IOVA space: 64 MiB, or 1/256 of a small
// aperture, so that all threads' caches together hold a small part of the
// space (at least two ranges, though).
constexpr uint64_t kMagazineBytes = uint64_t{64} << 20;
constexpr uint64_t kMagazineApertureShare = 256;
// Full magazines the depot keeps per class before giving ranges to the arena.
constexpr size_t kDepotMagazinesPerClass = 16;
// A refill takes at most 1/kRefillShare of the arena's free space, so when
// space runs low threads take ranges one at a time instead of hoarding them.
constexpr uint64_t kRefillShare = 64;

std::array<int, size_class::kCount> MagazineCapacities(uint64_t aperture_granules) {
  const uint64_t budget =
      std::min(kMagazineBytes >> kGranuleShift, aperture_granules / kMagazineApertureShare);
  std::array<int, size_class::kCount> capacity;
  for (int size_class = 0; size_class < size_class::kCount; ++size_class) {
    capacity[size_class] = static_cast<int>(
        std::clamp<uint64_t>(budget / size_class::GranulesOf(size_class), 2, kMagazineSlots));
  }
  return capacity;
}

// Bytes for a granule count; saturates for a full 64-bit aperture (2^52
// granules), whose size does not fit in 64 bits.
constexpr uint64_t GranulesToBytes(uint64_t granules) {
  return granules >= (uint64_t{1} << (64 - kGranuleShift)) ? ~uint64_t{0}
                                                           : granules << kGranuleShift;
}

// Adjusts a counter that only one thread writes at a time (with
// happens-before between writers): a plain add, yet readable by Stats().
void Bump(std::atomic<uint64_t>& counter, uint64_t delta = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}
void Drop(std::atomic<uint64_t>& counter, uint64_t delta) {
  counter.store(counter.load(std::memory_order_relaxed) - delta, std::memory_order_relaxed);
}

// Objects one thread writes on its fast path start and end on cache-line
// boundaries, so that no heap neighbour shares a line with them.
constexpr size_t kCacheLine = 64;

// A stack of cached free ranges of one class, as first granules.
struct alignas(kCacheLine) Magazine {
  int count = 0;
  std::array<uint64_t, kMagazineSlots> granules;

  // Pops a range that starts at or below `last_start`, preferring the top.
  bool PopAtOrBelow(uint64_t last_start, uint64_t* granule) {
    if (ABSL_PREDICT_TRUE(count > 0 && granules[count - 1] <= last_start)) {
      *granule = granules[--count];
      return true;
    }
    for (int i = count - 2; i >= 0; --i) {
      if (granules[i] <= last_start) {
        *granule = granules[i];
        granules[i] = granules[--count];
        return true;
      }
    }
    return false;
  }

  // Gives every range to `arena` and empties the magazine. Ranges are
  // released as maximal contiguous runs: one arena operation per run.
  void ReleaseTo(IovaArena& arena, uint64_t footprint) {
    std::sort(granules.begin(), granules.begin() + count);
    for (int i = 0; i < count;) {
      int run_end = i + 1;
      while (run_end < count && granules[run_end] == granules[run_end - 1] + footprint) ++run_end;
      arena.Release(granules[i], (run_end - i) * footprint);
      i = run_end;
    }
    count = 0;
  }
};

// A thread's two magazines for one class (Bonwick): `loaded` serves first;
// swapping with `previous` absorbs alloc/free bursts without the depot.
struct ClassCache {
  std::unique_ptr<Magazine> loaded;
  std::unique_ptr<Magazine> previous;

  bool TryPop(uint64_t last_start, uint64_t* granule) {
    if (ABSL_PREDICT_TRUE(loaded != nullptr && loaded->PopAtOrBelow(last_start, granule))) {
      return true;
    }
    if (previous == nullptr || !previous->PopAtOrBelow(last_start, granule)) return false;
    std::swap(loaded, previous);
    return true;
  }

  bool TryPush(int capacity, uint64_t granule) {
    if (ABSL_PREDICT_FALSE(loaded == nullptr || loaded->count == capacity)) {
      if (previous == nullptr || previous->count != 0) return false;
      std::swap(loaded, previous);
    }
    loaded->granules[loaded->count++] = granule;
    return true;
  }
};

}  // namespace

// One thread's cache. The owner thread uses `classes` on its fast path under
// `gate` with no lock; everyone else, and the owner off its fast path, holds
// `mu`. Counters have one writer at a time and are read by Stats().
// `operations_at_last_shrink` belongs to ShrinkIdleCaches (registry mutex).
struct alignas(kCacheLine) ThreadCache {
  explicit ThreadCache(HeavyBarrier barrier) : gate(barrier) {}

  ReclaimGate gate;
  std::mutex mu;
  std::array<ClassCache, size_class::kCount> classes;
  std::atomic<uint64_t> cached_granules{0};
  std::atomic<uint64_t> allocations{0};
  std::atomic<uint64_t> frees{0};
  std::atomic<uint64_t> depot_allocations{0};
  std::atomic<uint64_t> arena_allocations{0};
  uint64_t operations_at_last_shrink = 0;
};

class IovaAllocator::Space final : public std::enable_shared_from_this<IovaAllocator::Space> {
 public:
  Space(const IovaAllocatorOptions& options, std::vector<IovaRange> fixed_reserved);
  ~Space();

  // The fast paths are inlined into IovaAllocator's entry points.
  ABSL_ATTRIBUTE_ALWAYS_INLINE absl::StatusOr<uint64_t> Allocate(uint64_t size, uint64_t limit);
  ABSL_ATTRIBUTE_ALWAYS_INLINE absl::Status Free(uint64_t iova, uint64_t size);
  absl::Status FreeAll(absl::Span<const IovaRange> ranges);
  absl::Status Reserve(uint64_t iova, uint64_t size);
  absl::Status Unreserve(uint64_t iova, uint64_t size);
  void ReclaimAllCaches();
  void ShrinkIdleCaches();
  IovaStats Stats() const;

  // Called by a thread's binding table when the thread exits.
  void UnbindCache(ThreadCache* cache);

 private:
  // Depot of magazines for one class.
  struct DepotShelf {
    std::mutex mu;
    std::vector<std::unique_ptr<Magazine>> magazines ABSL_GUARDED_BY(mu);
    bool used_since_shrink ABSL_GUARDED_BY(mu) = false;
  };

  ABSL_ATTRIBUTE_ALWAYS_INLINE ThreadCache* CacheForThisThread();
  ABSL_ATTRIBUTE_NOINLINE ThreadCache* BindThisThread();

  ABSL_ATTRIBUTE_ALWAYS_INLINE bool TryAllocateFast(ThreadCache& cache, int size_class,
                                                    uint64_t last_start, uint64_t* granule);
  ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<uint64_t> AllocateSlow(ThreadCache& cache, int size_class,
                                                                uint64_t last_start);
  bool RefillFromDepot(ThreadCache& cache, int size_class, uint64_t last_start, uint64_t* granule)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache.mu);
  bool RefillFromArena(ThreadCache& cache, int size_class, uint64_t last_start, uint64_t* granule)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache.mu);
  ABSL_ATTRIBUTE_NOINLINE void FreeSlow(ThreadCache& cache, int size_class, uint64_t granule);
  // Installs `magazine` as `loaded`, keeping the old `loaded` as `previous`
  // and moving the old `previous` (if it holds anything) to the depot.
  void InstallMagazine(ThreadCache& cache, int size_class, std::unique_ptr<Magazine> magazine)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cache.mu);
  // Shelves a non-empty magazine in the depot, or gives its ranges to the
  // arena when the shelf is full.
  void ShelveMagazine(int size_class, std::unique_ptr<Magazine> magazine);
  void ReleaseMagazine(int size_class, Magazine& magazine);
  void DrainCache(ThreadCache& cache) ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu_);
  void DrainDepot(bool only_idle_shelves);

  ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<uint64_t> CheckedRecord(uint64_t iova, uint64_t size);
  ABSL_ATTRIBUTE_NOINLINE absl::Status LimitError(uint64_t size, uint64_t limit) const;
  ABSL_ATTRIBUTE_NOINLINE static absl::Status IovaAlignmentError(uint64_t iova);
  absl::Status CheckedForget(uint64_t iova, uint64_t size);
  absl::Status CheckReservable(uint64_t first, uint64_t count) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(arena_mu_);
  // Sizes the allocator serves: granule multiples in [4 KiB, 1 GiB].
  static bool IsValidSize(uint64_t size) {
    return size - 1 < kMaxIovaAllocation && size % kIovaGranule == 0;
  }
  ABSL_ATTRIBUTE_NOINLINE static absl::Status SizeError(uint64_t size);
  ABSL_ATTRIBUTE_NOINLINE absl::Status FreeChecked(uint64_t iova, uint64_t size);
  ABSL_ATTRIBUTE_ALWAYS_INLINE void FreeTrusted(uint64_t iova, uint64_t size);
  ABSL_ATTRIBUTE_ALWAYS_INLINE void FreeAllTrusted(absl::Span<const IovaRange> ranges);
  absl::Status CheckedForgetAll(absl::Span<const IovaRange> ranges);
  absl::Status ForgetLocked(uint64_t iova, uint64_t size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(checked_mu_);

  // Constant after construction.
  const uint64_t first_granule_;
  const uint64_t end_granule_;  // exclusive
  const uint64_t aperture_last_;
  const std::vector<IovaRange> fixed_reserved_;  // merged, clipped to the aperture
  const uint64_t fixed_reserved_granules_;
  const FreeCheck free_check_;
  const HeavyBarrier heavy_barrier_;
  const std::array<int, size_class::kCount> magazine_capacity_;

  // Lock order: registry_mu_ > ThreadCache::mu > DepotShelf::mu > arena_mu_;
  // checked_mu_ is never held with another. std::mutex rather than
  // absl::Mutex: Debian's Abseil is not built for ThreadSanitizer, which
  // then cannot see absl::Mutex and reports every critical section as a race.
  mutable std::mutex registry_mu_;
  std::vector<std::unique_ptr<ThreadCache>> caches_ ABSL_GUARDED_BY(registry_mu_);
  std::vector<ThreadCache*> unbound_caches_ ABSL_GUARDED_BY(registry_mu_);

  std::array<DepotShelf, size_class::kCount> depot_;
  std::atomic<uint64_t> depot_granules_{0};

  mutable std::mutex arena_mu_;
  IovaArena arena_ ABSL_GUARDED_BY(arena_mu_);
  absl::btree_map<uint64_t, uint64_t> reservations_ ABSL_GUARDED_BY(arena_mu_);  // first -> count
  uint64_t reserved_granules_ ABSL_GUARDED_BY(arena_mu_) = 0;

  std::mutex checked_mu_;
  absl::flat_hash_map<uint64_t, uint64_t> live_ ABSL_GUARDED_BY(checked_mu_);  // iova -> size

  std::atomic<uint64_t> failed_allocations_{0};
  std::atomic<uint64_t> cache_reclaims_{0};
};

namespace {

// A thread's caches, one per allocator it has used. The weak reference keeps
// a dead allocator's storage (make_shared) from being reused at the same
// address while this table still names it, so `space` stays a unique key.
struct CacheBinding {
  std::weak_ptr<IovaAllocator::Space> owner;
  const IovaAllocator::Space* space;
  ThreadCache* cache;
};

class ThreadBindings final {
 public:
  ~ThreadBindings() {
    for (const CacheBinding& binding : bindings_) {
      if (std::shared_ptr<IovaAllocator::Space> space = binding.owner.lock()) {
        space->UnbindCache(binding.cache);
      }
    }
  }
  std::vector<CacheBinding>& bindings() { return bindings_; }

 private:
  std::vector<CacheBinding> bindings_;
};

// The most recently used binding, read on every fast-path operation: a
// trivially constructed thread_local costs one segment-relative load.
struct LastBinding {
  const IovaAllocator::Space* space = nullptr;
  ThreadCache* cache = nullptr;
};

// Per-thread caches need per-thread roots; these two thread_locals are the
// allocator's only non-member state.
thread_local ThreadBindings thread_bindings;
constinit thread_local LastBinding last_binding;

}  // namespace

IovaAllocator::Space::Space(const IovaAllocatorOptions& options,
                            std::vector<IovaRange> fixed_reserved)
    : first_granule_(options.aperture_first >> kGranuleShift),
      end_granule_((options.aperture_last >> kGranuleShift) + 1),
      aperture_last_(options.aperture_last),
      fixed_reserved_(std::move(fixed_reserved)),
      fixed_reserved_granules_([this] {
        uint64_t granules = 0;
        for (const IovaRange& range : fixed_reserved_) granules += range.size >> kGranuleShift;
        return granules;
      }()),
      free_check_(options.free_check),
      heavy_barrier_(RegisterHeavyBarrier()),
      magazine_capacity_(MagazineCapacities(end_granule_ - first_granule_)) {
  std::lock_guard<std::mutex> lock(arena_mu_);
  arena_.Release(first_granule_, end_granule_ - first_granule_);
  for (const IovaRange& range : fixed_reserved_) {
    arena_.TakeRange(range.start >> kGranuleShift, range.size >> kGranuleShift);
  }
}

IovaAllocator::Space::~Space() = default;

inline ThreadCache* IovaAllocator::Space::CacheForThisThread() {
  if (ABSL_PREDICT_TRUE(last_binding.space == this)) return last_binding.cache;
  return BindThisThread();
}

ThreadCache* IovaAllocator::Space::BindThisThread() {
  std::vector<CacheBinding>& bindings = thread_bindings.bindings();
  std::erase_if(bindings, [](const CacheBinding& binding) { return binding.owner.expired(); });
  auto found = std::find_if(bindings.begin(), bindings.end(),
                            [this](const CacheBinding& binding) { return binding.space == this; });
  ThreadCache* cache;
  if (found != bindings.end()) {
    cache = found->cache;
  } else {
    std::lock_guard<std::mutex> lock(registry_mu_);
    if (unbound_caches_.empty()) {
      caches_.push_back(std::make_unique<ThreadCache>(heavy_barrier_));
      cache = caches_.back().get();
    } else {
      cache = unbound_caches_.back();
      unbound_caches_.pop_back();
    }
    bindings.push_back({weak_from_this(), this, cache});
  }
  last_binding = {this, cache};
  return cache;
}

void IovaAllocator::Space::UnbindCache(ThreadCache* cache) {
  std::lock_guard<std::mutex> lock(registry_mu_);
  DrainCache(*cache);
  unbound_caches_.push_back(cache);
}

absl::Status IovaAllocator::Space::SizeError(uint64_t size) {
  if (size == 0)
    return absl::InvalidArgumentError("size 0: must be at least one 4096-byte granule");
  if (size % kIovaGranule != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("size ", Hex(size), " is not a multiple of the 4096-byte granule"));
  }
  if (size > kMaxIovaAllocation) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size ", Hex(size), " exceeds the largest allocation, ", Hex(kMaxIovaAllocation)));
  }
  return absl::OkStatus();
}

inline absl::StatusOr<uint64_t> IovaAllocator::Space::Allocate(uint64_t size, uint64_t limit) {
  if (ABSL_PREDICT_FALSE(!IsValidSize(size))) return SizeError(size);
  const int size_class = size_class::IndexOf(size >> kGranuleShift);
  const uint64_t footprint = size_class::GranulesOf(size_class);
  const uint64_t end = (std::min(limit, aperture_last_) >> kGranuleShift) + 1;
  if (ABSL_PREDICT_FALSE(end < first_granule_ + footprint)) return LimitError(size, limit);
  const uint64_t last_start = end - footprint;

  ThreadCache& cache = *CacheForThisThread();
  uint64_t granule;
  absl::StatusOr<uint64_t> iova = TryAllocateFast(cache, size_class, last_start, &granule)
                                      ? granule << kGranuleShift
                                      : AllocateSlow(cache, size_class, last_start);
  if (ABSL_PREDICT_FALSE(free_check_ == FreeCheck::kChecked) && iova.ok()) {
    return CheckedRecord(*iova, size);
  }
  return iova;
}

inline bool IovaAllocator::Space::TryAllocateFast(ThreadCache& cache, int size_class,
                                                  uint64_t last_start, uint64_t* granule) {
  if (!cache.gate.EnterFast()) return false;
  const bool hit = cache.classes[size_class].TryPop(last_start, granule);
  if (hit) {
    Drop(cache.cached_granules, size_class::GranulesOf(size_class));
    Bump(cache.allocations);
  }
  cache.gate.ExitFast();
  return hit;
}

absl::Status IovaAllocator::Space::LimitError(uint64_t size, uint64_t limit) const {
  return absl::OutOfRangeError(absl::StrCat("limit ", Hex(limit), " leaves no room for size ",
                                            Hex(size), " above the aperture start ",
                                            Hex(first_granule_ << kGranuleShift)));
}

absl::Status IovaAllocator::Space::IovaAlignmentError(uint64_t iova) {
  return absl::InvalidArgumentError(
      absl::StrCat("iova ", Hex(iova), " is not aligned to the 4096-byte granule"));
}

absl::StatusOr<uint64_t> IovaAllocator::Space::AllocateSlow(ThreadCache& cache, int size_class,
                                                            uint64_t last_start) {
  const uint64_t footprint = size_class::GranulesOf(size_class);
  for (bool reclaimed = false;; reclaimed = true) {
    {
      std::lock_guard<std::mutex> lock(cache.mu);
      uint64_t granule;
      if (cache.classes[size_class].TryPop(last_start, &granule)) {
        Drop(cache.cached_granules, footprint);
        Bump(cache.allocations);
        return granule << kGranuleShift;
      }
      if (RefillFromDepot(cache, size_class, last_start, &granule)) {
        Bump(cache.depot_allocations);
        Bump(cache.allocations);
        return granule << kGranuleShift;
      }
      if (RefillFromArena(cache, size_class, last_start, &granule)) {
        Bump(cache.arena_allocations);
        Bump(cache.allocations);
        return granule << kGranuleShift;
      }
    }
    if (reclaimed) break;
    // The space may be sitting in other threads' caches: take it all back
    // and try once more before saying there is none.
    ReclaimAllCaches();
  }
  failed_allocations_.fetch_add(1, std::memory_order_relaxed);
  return absl::ResourceExhaustedError(
      absl::StrCat("no free IOVA range of ", Hex(footprint << kGranuleShift), " bytes at or below ",
                   Hex(((last_start + footprint) << kGranuleShift) - 1)));
}

bool IovaAllocator::Space::RefillFromDepot(ThreadCache& cache, int size_class, uint64_t last_start,
                                           uint64_t* granule) {
  std::unique_ptr<Magazine> magazine;
  {
    DepotShelf& shelf = depot_[size_class];
    std::lock_guard<std::mutex> lock(shelf.mu);
    // Any shelved magazine may hold a range below the limit; take the first
    // that does (almost always the top one: most devices use one limit).
    for (auto it = shelf.magazines.rbegin(); it != shelf.magazines.rend(); ++it) {
      if ((*it)->PopAtOrBelow(last_start, granule)) {
        magazine = std::move(*it);
        shelf.magazines.erase(std::next(it).base());
        shelf.used_since_shrink = true;
        break;
      }
    }
  }
  if (magazine == nullptr) return false;
  const uint64_t footprint = size_class::GranulesOf(size_class);
  depot_granules_.fetch_sub((magazine->count + 1) * footprint, std::memory_order_relaxed);
  Bump(cache.cached_granules, magazine->count * footprint);
  InstallMagazine(cache, size_class, std::move(magazine));
  return true;
}

bool IovaAllocator::Space::RefillFromArena(ThreadCache& cache, int size_class, uint64_t last_start,
                                           uint64_t* granule) {
  const uint64_t footprint = size_class::GranulesOf(size_class);
  const uint64_t alignment = size_class::AlignmentOf(size_class);
  const uint64_t end = last_start + footprint;
  // Carve up to half a magazine at once, so a thread that only allocates
  // comes here once per that many allocations.
  auto refill = std::make_unique<Magazine>();
  bool got_one = false;
  {
    std::lock_guard<std::mutex> lock(arena_mu_);
    const uint64_t batch = std::clamp<uint64_t>(arena_.free_granules() / kRefillShare / footprint,
                                                1, magazine_capacity_[size_class] / 2);
    // A power-of-two class can be carved as one run of the whole batch: one
    // arena operation instead of one per range.
    std::optional<uint64_t> run;
    if (alignment == footprint && batch > 1) run = arena_.Take(batch * footprint, alignment, end);
    for (uint64_t i = 0; i < batch; ++i) {
      std::optional<uint64_t> first =
          run.has_value() ? *run + i * footprint : arena_.Take(footprint, alignment, end);
      if (!first.has_value()) break;
      if (!got_one) {
        *granule = *first;
        got_one = true;
      } else {
        refill->granules[refill->count++] = *first;
      }
    }
  }
  if (refill->count > 0) {
    Bump(cache.cached_granules, refill->count * footprint);
    InstallMagazine(cache, size_class, std::move(refill));
  }
  return got_one;
}

void IovaAllocator::Space::InstallMagazine(ThreadCache& cache, int size_class,
                                           std::unique_ptr<Magazine> magazine) {
  ClassCache& classes = cache.classes[size_class];
  std::unique_ptr<Magazine> displaced = std::move(classes.previous);
  classes.previous = std::move(classes.loaded);
  classes.loaded = std::move(magazine);
  if (displaced != nullptr && displaced->count > 0) {
    Drop(cache.cached_granules, displaced->count * size_class::GranulesOf(size_class));
    ShelveMagazine(size_class, std::move(displaced));
  }
}

void IovaAllocator::Space::ShelveMagazine(int size_class, std::unique_ptr<Magazine> magazine) {
  {
    DepotShelf& shelf = depot_[size_class];
    std::lock_guard<std::mutex> lock(shelf.mu);
    if (shelf.magazines.size() < kDepotMagazinesPerClass) {
      depot_granules_.fetch_add(magazine->count * size_class::GranulesOf(size_class),
                                std::memory_order_relaxed);
      shelf.magazines.push_back(std::move(magazine));
      return;
    }
  }
  ReleaseMagazine(size_class, *magazine);
}

void IovaAllocator::Space::ReleaseMagazine(int size_class, Magazine& magazine) {
  std::lock_guard<std::mutex> lock(arena_mu_);
  magazine.ReleaseTo(arena_, size_class::GranulesOf(size_class));
}

inline absl::Status IovaAllocator::Space::Free(uint64_t iova, uint64_t size) {
  if (ABSL_PREDICT_FALSE(!IsValidSize(size))) return SizeError(size);
  if (ABSL_PREDICT_FALSE(iova % kIovaGranule != 0)) return IovaAlignmentError(iova);
  if (free_check_ == FreeCheck::kChecked) return FreeChecked(iova, size);
  FreeTrusted(iova, size);
  return absl::OkStatus();
}

absl::Status IovaAllocator::Space::FreeAll(absl::Span<const IovaRange> ranges) {
  for (const IovaRange& range : ranges) {
    if (ABSL_PREDICT_FALSE(!IsValidSize(range.size))) return SizeError(range.size);
    if (ABSL_PREDICT_FALSE(range.start % kIovaGranule != 0)) return IovaAlignmentError(range.start);
  }
  if (free_check_ == FreeCheck::kChecked) {
    if (absl::Status known = CheckedForgetAll(ranges); !known.ok()) return known;
  }
  FreeAllTrusted(ranges);
  return absl::OkStatus();
}

absl::Status IovaAllocator::Space::FreeChecked(uint64_t iova, uint64_t size) {
  if (absl::Status known = CheckedForget(iova, size); !known.ok()) return known;
  FreeTrusted(iova, size);
  return absl::OkStatus();
}

inline void IovaAllocator::Space::FreeTrusted(uint64_t iova, uint64_t size) {
  const IovaRange range{iova, size};
  FreeAllTrusted(absl::MakeConstSpan(&range, 1));
}

inline void IovaAllocator::Space::FreeAllTrusted(absl::Span<const IovaRange> ranges) {
  ThreadCache& cache = *CacheForThisThread();
  size_t next = 0;
  while (next < ranges.size()) {
    if (cache.gate.EnterFast()) {
      uint64_t kept_granules = 0;
      const size_t first = next;
      for (; next < ranges.size(); ++next) {
        const int size_class = size_class::IndexOf(ranges[next].size >> kGranuleShift);
        const uint64_t granule = ranges[next].start >> kGranuleShift;
        if (!cache.classes[size_class].TryPush(magazine_capacity_[size_class], granule)) break;
        kept_granules += size_class::GranulesOf(size_class);
      }
      // Once per entry rather than per range: these are what a batch saves.
      Bump(cache.cached_granules, kept_granules);
      Bump(cache.frees, next - first);
      cache.gate.ExitFast();
    }
    if (next < ranges.size()) {
      const IovaRange& range = ranges[next++];
      FreeSlow(cache, size_class::IndexOf(range.size >> kGranuleShift),
               range.start >> kGranuleShift);
    }
  }
}

void IovaAllocator::Space::FreeSlow(ThreadCache& cache, int size_class, uint64_t granule) {
  std::lock_guard<std::mutex> lock(cache.mu);
  ClassCache& classes = cache.classes[size_class];
  const int capacity = magazine_capacity_[size_class];
  if (!classes.TryPush(capacity, granule)) {
    // Both magazines full (or never made): start an empty one.
    InstallMagazine(cache, size_class, std::make_unique<Magazine>());
    classes.TryPush(capacity, granule);
  }
  Bump(cache.cached_granules, size_class::GranulesOf(size_class));
  Bump(cache.frees);
}

void IovaAllocator::Space::DrainCache(ThreadCache& cache) {
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.gate.BeginReclaim();
  {
    std::lock_guard<std::mutex> arena_lock(arena_mu_);
    for (int size_class = 0; size_class < size_class::kCount; ++size_class) {
      const uint64_t footprint = size_class::GranulesOf(size_class);
      for (std::unique_ptr<Magazine>* magazine :
           {&cache.classes[size_class].loaded, &cache.classes[size_class].previous}) {
        if (*magazine == nullptr) continue;
        (*magazine)->ReleaseTo(arena_, footprint);
        magazine->reset();
      }
    }
  }
  cache.cached_granules.store(0, std::memory_order_relaxed);
  cache.gate.EndReclaim();
}

void IovaAllocator::Space::DrainDepot(bool only_idle_shelves) {
  for (int size_class = 0; size_class < size_class::kCount; ++size_class) {
    std::vector<std::unique_ptr<Magazine>> drained;
    {
      DepotShelf& shelf = depot_[size_class];
      std::lock_guard<std::mutex> lock(shelf.mu);
      const bool idle = !shelf.used_since_shrink;
      shelf.used_since_shrink = false;
      if (only_idle_shelves && !idle) continue;
      drained.swap(shelf.magazines);
    }
    for (const std::unique_ptr<Magazine>& magazine : drained) {
      depot_granules_.fetch_sub(magazine->count * size_class::GranulesOf(size_class),
                                std::memory_order_relaxed);
      ReleaseMagazine(size_class, *magazine);
    }
  }
}

void IovaAllocator::Space::ReclaimAllCaches() {
  {
    std::lock_guard<std::mutex> lock(registry_mu_);
    for (const std::unique_ptr<ThreadCache>& cache : caches_) {
      if (cache->cached_granules.load(std::memory_order_relaxed) == 0) continue;
      DrainCache(*cache);
      cache_reclaims_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  DrainDepot(/*only_idle_shelves=*/false);
}

void IovaAllocator::Space::ShrinkIdleCaches() {
  {
    std::lock_guard<std::mutex> lock(registry_mu_);
    for (const std::unique_ptr<ThreadCache>& cache : caches_) {
      const uint64_t operations = cache->allocations.load(std::memory_order_relaxed) +
                                  cache->frees.load(std::memory_order_relaxed);
      const bool idle = operations == cache->operations_at_last_shrink;
      cache->operations_at_last_shrink = operations;
      if (!idle || cache->cached_granules.load(std::memory_order_relaxed) == 0) continue;
      DrainCache(*cache);
      cache_reclaims_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  DrainDepot(/*only_idle_shelves=*/true);
}

absl::StatusOr<uint64_t> IovaAllocator::Space::CheckedRecord(uint64_t iova, uint64_t size) {
  std::lock_guard<std::mutex> lock(checked_mu_);
  if (live_.try_emplace(iova, size).second) return iova;
  // Two live allocations at one IOVA: the space is corrupt (a trusted-mode
  // caller freed something it did not own).
  return absl::InternalError(absl::StrCat("iova ", Hex(iova), " was handed out twice"));
}

absl::Status IovaAllocator::Space::CheckedForget(uint64_t iova, uint64_t size) {
  std::lock_guard<std::mutex> lock(checked_mu_);
  return ForgetLocked(iova, size);
}

absl::Status IovaAllocator::Space::CheckedForgetAll(absl::Span<const IovaRange> ranges) {
  std::lock_guard<std::mutex> lock(checked_mu_);
  for (size_t i = 0; i < ranges.size(); ++i) {
    absl::Status known = ForgetLocked(ranges[i].start, ranges[i].size);
    if (known.ok()) continue;
    // Put back what this call forgot, so a refused batch changes nothing.
    for (size_t j = 0; j < i; ++j) live_.try_emplace(ranges[j].start, ranges[j].size);
    return absl::Status(known.code(), absl::StrCat("ranges[", i, "]: ", known.message()));
  }
  return absl::OkStatus();
}

absl::Status IovaAllocator::Space::ForgetLocked(uint64_t iova, uint64_t size) {
  auto it = live_.find(iova);
  if (it == live_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("iova ", Hex(iova), " is not allocated (double free, or never allocated)"));
  }
  if (it->second != size) {
    return absl::InvalidArgumentError(absl::StrCat("size ", Hex(size), " does not match size ",
                                                   Hex(it->second), " allocated at iova ",
                                                   Hex(iova)));
  }
  live_.erase(it);
  return absl::OkStatus();
}

absl::Status IovaAllocator::Space::CheckReservable(uint64_t first, uint64_t count) const {
  const uint64_t end = first + count;
  for (const IovaRange& fixed : fixed_reserved_) {
    const uint64_t fixed_first = fixed.start >> kGranuleShift;
    if (fixed_first < end && first < fixed_first + (fixed.size >> kGranuleShift)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "range [", Hex(first << kGranuleShift), ", ", Hex(end << kGranuleShift),
          ") overlaps the reserved region at ", Hex(fixed.start), " of size ", Hex(fixed.size)));
    }
  }
  auto after = reservations_.lower_bound(end);
  if (after != reservations_.begin()) {
    const auto& [reserved_first, reserved_count] = *std::prev(after);
    if (reserved_first + reserved_count > first) {
      return absl::AlreadyExistsError(
          absl::StrCat("range [", Hex(first << kGranuleShift), ", ", Hex(end << kGranuleShift),
                       ") overlaps the range reserved at ", Hex(reserved_first << kGranuleShift),
                       " of size ", Hex(reserved_count << kGranuleShift)));
    }
  }
  return absl::OkStatus();
}

absl::Status IovaAllocator::Space::Reserve(uint64_t iova, uint64_t size) {
  if (size == 0 || size % kIovaGranule != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("size ", Hex(size), " is not a positive multiple of the 4096-byte granule"));
  }
  if (iova % kIovaGranule != 0) return IovaAlignmentError(iova);
  const uint64_t first = iova >> kGranuleShift;
  const uint64_t count = size >> kGranuleShift;
  if (first < first_granule_ || first >= end_granule_ || count > end_granule_ - first) {
    return absl::OutOfRangeError(
        absl::StrCat("range at iova ", Hex(iova), " of size ", Hex(size), " leaves the aperture [",
                     Hex(first_granule_ << kGranuleShift), ", ", Hex(aperture_last_), "]"));
  }
  for (bool reclaimed = false;; reclaimed = true) {
    {
      std::lock_guard<std::mutex> lock(arena_mu_);
      if (absl::Status reservable = CheckReservable(first, count); !reservable.ok()) {
        return reservable;
      }
      if (arena_.TakeRange(first, count)) {
        reservations_.emplace(first, count);
        reserved_granules_ += count;
        return absl::OkStatus();
      }
    }
    if (reclaimed) break;
    ReclaimAllCaches();
  }
  return absl::AlreadyExistsError(absl::StrCat("range at iova ", Hex(iova), " of size ", Hex(size),
                                               " overlaps allocated IOVA space"));
}

absl::Status IovaAllocator::Space::Unreserve(uint64_t iova, uint64_t size) {
  if (iova % kIovaGranule != 0) return IovaAlignmentError(iova);
  std::lock_guard<std::mutex> lock(arena_mu_);
  auto it = reservations_.find(iova >> kGranuleShift);
  if (it == reservations_.end() || GranulesToBytes(it->second) != size) {
    return absl::NotFoundError(
        absl::StrCat("no range of size ", Hex(size), " is reserved at iova ", Hex(iova)));
  }
  arena_.Release(it->first, it->second);
  reserved_granules_ -= it->second;
  reservations_.erase(it);
  return absl::OkStatus();
}

IovaStats IovaAllocator::Space::Stats() const {
  IovaStats stats;
  uint64_t cached = depot_granules_.load(std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(registry_mu_);
    for (const std::unique_ptr<ThreadCache>& cache : caches_) {
      cached += cache->cached_granules.load(std::memory_order_relaxed);
      const uint64_t depot = cache->depot_allocations.load(std::memory_order_relaxed);
      const uint64_t arena = cache->arena_allocations.load(std::memory_order_relaxed);
      stats.depot_allocations += depot;
      stats.slow_path_allocations += arena;
      stats.fast_path_allocations +=
          cache->allocations.load(std::memory_order_relaxed) - depot - arena;
    }
    stats.thread_caches = caches_.size() - unbound_caches_.size();
  }
  uint64_t free;
  uint64_t reserved;
  {
    std::lock_guard<std::mutex> lock(arena_mu_);
    free = arena_.free_granules();
    reserved = fixed_reserved_granules_ + reserved_granules_;
    stats.largest_free_block_bytes = GranulesToBytes(arena_.largest_free_block());
  }
  const uint64_t aperture = end_granule_ - first_granule_;
  const uint64_t accounted = reserved + free + cached;
  stats.aperture_bytes = GranulesToBytes(aperture);
  stats.reserved_bytes = GranulesToBytes(reserved);
  stats.cached_bytes = GranulesToBytes(cached);
  stats.free_bytes = GranulesToBytes(free);
  stats.allocated_bytes = accounted >= aperture ? 0 : GranulesToBytes(aperture - accounted);
  stats.failed_allocations = failed_allocations_.load(std::memory_order_relaxed);
  stats.cache_reclaims = cache_reclaims_.load(std::memory_order_relaxed);
  return stats;
}

namespace {

absl::Status ValidateOptions(const IovaAllocatorOptions& options) {
  if (options.aperture_first % kIovaGranule != 0) {
    return absl::InvalidArgumentError(absl::StrCat("aperture_first ", Hex(options.aperture_first),
                                                   " is not aligned to the 4096-byte granule"));
  }
  if ((options.aperture_last + 1) % kIovaGranule != 0) {
    return absl::InvalidArgumentError(absl::StrCat("aperture_last ", Hex(options.aperture_last),
                                                   " is not the last byte of a 4096-byte granule"));
  }
  if (options.aperture_first > options.aperture_last) {
    return absl::InvalidArgumentError(absl::StrCat("aperture_first ", Hex(options.aperture_first),
                                                   " is above aperture_last ",
                                                   Hex(options.aperture_last)));
  }
  for (const IovaRange& range : options.reserved) {
    if (range.start % kIovaGranule != 0 || range.size == 0 || range.size % kIovaGranule != 0 ||
        range.size - 1 > ~uint64_t{0} - range.start) {
      return absl::InvalidArgumentError(
          absl::StrCat("reserved range at ", Hex(range.start), " of size ", Hex(range.size),
                       " is not a non-empty, granule-aligned range within 64 bits"));
    }
  }
  if (options.free_check != FreeCheck::kTrusted && options.free_check != FreeCheck::kChecked) {
    return absl::InvalidArgumentError("free_check is neither kTrusted nor kChecked");
  }
  return absl::OkStatus();
}

// The reserved ranges clipped to the aperture, sorted and merged.
std::vector<IovaRange> MergeReserved(const IovaAllocatorOptions& options) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [first, last] inclusive
  for (const IovaRange& range : options.reserved) {
    const uint64_t first = std::max(range.start, options.aperture_first);
    const uint64_t last = std::min(range.start + (range.size - 1), options.aperture_last);
    if (first <= last) ranges.emplace_back(first, last);
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (const auto& range : ranges) {
    if (!merged.empty() && range.first <= merged.back().second + 1 &&
        merged.back().second != ~uint64_t{0}) {
      merged.back().second = std::max(merged.back().second, range.second);
    } else if (merged.empty() || range.first > merged.back().second) {
      merged.push_back(range);
    }
  }
  std::vector<IovaRange> result;
  for (const auto& [first, last] : merged) result.push_back({first, last - first + 1});
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<IovaAllocator>> IovaAllocator::Create(
    const IovaAllocatorOptions& options) {
  if (absl::Status valid = ValidateOptions(options); !valid.ok()) return valid;
  return std::unique_ptr<IovaAllocator>(
      new IovaAllocator(std::make_shared<Space>(options, MergeReserved(options))));
}

IovaAllocator::IovaAllocator(std::shared_ptr<Space> space) : space_(std::move(space)) {}
IovaAllocator::~IovaAllocator() = default;

absl::StatusOr<uint64_t> IovaAllocator::Allocate(uint64_t size, uint64_t limit) {
  return space_->Allocate(size, limit);
}
absl::Status IovaAllocator::Free(uint64_t iova, uint64_t size) { return space_->Free(iova, size); }
absl::Status IovaAllocator::FreeAll(absl::Span<const IovaRange> ranges) {
  return space_->FreeAll(ranges);
}
absl::Status IovaAllocator::Reserve(uint64_t iova, uint64_t size) {
  return space_->Reserve(iova, size);
}
absl::Status IovaAllocator::Unreserve(uint64_t iova, uint64_t size) {
  return space_->Unreserve(iova, size);
}
void IovaAllocator::ReclaimAllCaches() { space_->ReclaimAllCaches(); }
void IovaAllocator::ShrinkIdleCaches() { space_->ShrinkIdleCaches(); }
IovaStats IovaAllocator::Stats() const { return space_->Stats(); }

}  // namespace iommu_broker
