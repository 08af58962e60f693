// Measures IovaAllocator (the product) against MutexMapBaseline, a
// mutex-guarded first-fit map defined below, on the same workloads in the same
// binary, so every run shows the ratio. Each timed iteration is one
// Allocate + Free pair on an allocator that all threads share; every workload
// runs at 1, 2, 4 and 8 threads.
//
// Reading the output (wall time throughout, since with more threads than cores
// CPU time would hide the time spent waiting for a lock or a core):
//   Time                      wall time / pairs of all threads, i.e. the
//                             inverse of total throughput;
//   items_per_second          total pairs per second;
//   time_per_pair_per_thread  how long one pair takes as seen by one thread;
//   cache_hit_fraction,       product only: allocations served by the calling
//   arena_fraction            thread's cache, and carved from the shared arena.
// CPU is the CPU time of all threads per pair. If it stays flat as threads are
// added while Time does not fall, the threads were not given more cores (other
// load on the machine); contention inside an allocator raises CPU instead,
// unless its threads sleep on a lock, as the baseline's do.
// BM_Metadata is not a timing: it reports heap bytes per live allocation.
//
// Run a Release build (the last command is wrapped here; about two minutes on
// two cores):
//   cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
//   ninja -C build iova_allocator_bench
//   build/bench/iova_allocator_bench --benchmark_min_time=0.5 --benchmark_repetitions=3
//       --benchmark_report_aggregates_only=true
// One workload, both allocators: --benchmark_filter='BM_OnePage<'

#include <malloc.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "benchmark/benchmark.h"
#include "core/iova/iova_allocator.h"

namespace iommu_broker {
namespace {

constexpr uint64_t kPage = kIovaGranule;
constexpr uint64_t kApertureFirst = 0;
constexpr uint64_t kApertureLast = (uint64_t{1} << 48) - 1;
constexpr IovaRange kMsiWindow = {.start = 0xfee00000, .size = 0x100000};
// A 64-bit DMA mask: the aperture, not the limit, bounds every workload.
constexpr uint64_t kNoLimit = ~uint64_t{0};

// The allocator one would write first: one lock and an ordered map of free
// ranges, first fit. It is the yardstick, not a competitor, so it stays simple
// enough to be obviously correct. Unlike the product it does not round sizes
// up, and hands out the lowest fitting address.
class MutexMapBaseline {
 public:
  // `reserved` must lie inside the aperture, the ranges disjoint.
  MutexMapBaseline(uint64_t aperture_first, uint64_t aperture_last,
                   const std::vector<IovaRange>& reserved) {
    free_ranges_.emplace(aperture_first, aperture_last - aperture_first + 1);
    for (const IovaRange& range : reserved) {
      Carve(std::prev(free_ranges_.upper_bound(range.start)), range.start, range.size);
    }
  }

  MutexMapBaseline(const MutexMapBaseline&) = delete;
  MutexMapBaseline& operator=(const MutexMapBaseline&) = delete;

  // Same contract as IovaAllocator::Allocate: a power-of-two size aligned to
  // itself, any other size to the largest power of two below it, the whole
  // range at or below `limit`.
  std::optional<uint64_t> Allocate(uint64_t size, uint64_t limit) {
    const uint64_t alignment = std::bit_floor(size);
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_ranges_.begin(); it != free_ranges_.end(); ++it) {
      const uint64_t start = (it->first + alignment - 1) & ~(alignment - 1);
      const uint64_t last = start + size - 1;
      // Later ranges start higher, so their aligned starts are no lower.
      if (last > limit) break;
      if (last < it->first + it->second) {
        Carve(it, start, size);
        return start;
      }
    }
    return std::nullopt;
  }

  // `[iova, iova + size)` must be exactly what Allocate returned.
  void Free(uint64_t iova, uint64_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t end = iova + size;
    auto next = free_ranges_.lower_bound(iova);
    if (next != free_ranges_.end() && next->first == end) {
      end += next->second;
      next = free_ranges_.erase(next);
    }
    if (next != free_ranges_.begin()) {
      const auto previous = std::prev(next);
      if (previous->first + previous->second == iova) {
        previous->second = end - previous->first;
        return;
      }
    }
    free_ranges_.emplace_hint(next, iova, end - iova);
  }

 private:
  // Removes [start, start + size) from the free range `it`, which holds it.
  void Carve(std::map<uint64_t, uint64_t>::iterator it, uint64_t start, uint64_t size) {
    const uint64_t range_start = it->first;
    const uint64_t range_end = it->first + it->second;
    free_ranges_.erase(it);
    if (range_start < start) free_ranges_.emplace(range_start, start - range_start);
    if (start + size < range_end) free_ranges_.emplace(start + size, range_end - (start + size));
  }

  std::mutex mutex_;
  std::map<uint64_t, uint64_t> free_ranges_;  // start -> size, never adjacent
};

// Gives both allocators one shape, so each benchmark is written once. Create
// returns null on failure; Allocate returns nullopt (0 is a valid IOVA here).
template <typename Allocator>
struct Adapter;

template <>
struct Adapter<IovaAllocator> {
  static std::unique_ptr<IovaAllocator> Create() {
    IovaAllocatorOptions options;
    options.aperture_first = kApertureFirst;
    options.aperture_last = kApertureLast;
    options.reserved = {kMsiWindow};
    options.free_check = FreeCheck::kTrusted;
    absl::StatusOr<std::unique_ptr<IovaAllocator>> allocator = IovaAllocator::Create(options);
    if (!allocator.ok()) {
      // Setup has no State to report through; the benchmark reports the null.
      std::fprintf(stderr, "IovaAllocator::Create: %s\n", allocator.status().ToString().c_str());
      return nullptr;
    }
    return *std::move(allocator);
  }
  static std::optional<uint64_t> Allocate(IovaAllocator& allocator, uint64_t size, uint64_t limit) {
    absl::StatusOr<uint64_t> iova = allocator.Allocate(size, limit);
    if (!iova.ok()) return std::nullopt;
    return *iova;
  }
  static bool Free(IovaAllocator& allocator, uint64_t iova, uint64_t size) {
    return allocator.Free(iova, size).ok();
  }
  // Where this run's allocations came from. A workload that keeps missing the
  // thread cache is a design problem even when its times still look fine.
  static void ReportPaths(benchmark::State& state, const IovaAllocator& allocator) {
    const IovaStats stats = allocator.Stats();
    const double fast = static_cast<double>(stats.fast_path_allocations);
    const double depot = static_cast<double>(stats.depot_allocations);
    const double arena = static_cast<double>(stats.slow_path_allocations);
    if (fast + depot + arena == 0) return;
    state.counters["cache_hit_fraction"] = fast / (fast + depot + arena);
    state.counters["arena_fraction"] = arena / (fast + depot + arena);
  }
};

template <>
struct Adapter<MutexMapBaseline> {
  static std::unique_ptr<MutexMapBaseline> Create() {
    return std::make_unique<MutexMapBaseline>(kApertureFirst, kApertureLast,
                                              std::vector<IovaRange>{kMsiWindow});
  }
  static std::optional<uint64_t> Allocate(MutexMapBaseline& allocator, uint64_t size,
                                          uint64_t limit) {
    return allocator.Allocate(size, limit);
  }
  static bool Free(MutexMapBaseline& allocator, uint64_t iova, uint64_t size) {
    allocator.Free(iova, size);
    return true;
  }
  static void ReportPaths(benchmark::State&, const MutexMapBaseline&) {}
};

// The instance all threads of one benchmark run share. Google Benchmark calls
// Setup and Teardown on the main thread before it starts the run's threads and
// after it joins them, which orders both with every access from the threads.
// Each run (including each iteration-count probe) gets a fresh instance.
template <typename Allocator>
class SharedInstance {
 public:
  static void Create(const benchmark::State&) { instance_ = Adapter<Allocator>::Create(); }
  static void Destroy(const benchmark::State&) { instance_.reset(); }
  static Allocator* Get() { return instance_.get(); }

 private:
  static inline std::unique_ptr<Allocator> instance_;
};

// Random inputs are drawn before timing so that the generator's cost is not
// measured. A power-of-two length lets the loop index them with a mask.
constexpr size_t kTableLength = 4096;
constexpr size_t kTableMask = kTableLength - 1;
static_assert(std::has_single_bit(kTableLength));

// Seeded per thread as well as per table, so threads do not request the same
// sizes in lockstep and runs are repeatable.
std::mt19937_64 MakeGenerator(const benchmark::State& state, uint32_t table) {
  std::seed_seq seeds = {table, static_cast<uint32_t>(state.thread_index())};
  return std::mt19937_64(seeds);
}

std::vector<uint64_t> UniformPageSizes(const benchmark::State& state, uint64_t min_pages,
                                       uint64_t max_pages) {
  std::mt19937_64 generator = MakeGenerator(state, /*table=*/1);
  std::uniform_int_distribution<uint64_t> pages(min_pages, max_pages);
  std::vector<uint64_t> sizes(kTableLength);
  for (uint64_t& size : sizes) size = pages(generator) * kPage;
  return sizes;
}

std::vector<uint64_t> PowerOfTwoSizes(const benchmark::State& state, int min_log2, int max_log2) {
  std::mt19937_64 generator = MakeGenerator(state, /*table=*/2);
  std::uniform_int_distribution<int> log2(min_log2, max_log2);
  std::vector<uint64_t> sizes(kTableLength);
  for (uint64_t& size : sizes) size = uint64_t{1} << log2(generator);
  return sizes;
}

std::vector<size_t> UniformIndices(const benchmark::State& state, size_t count) {
  std::mt19937_64 generator = MakeGenerator(state, /*table=*/3);
  std::uniform_int_distribution<size_t> index(0, count - 1);
  std::vector<size_t> indices(kTableLength);
  for (size_t& i : indices) i = index(generator);
  return indices;
}

// Called by every thread after its loop: items are summed over threads and
// divided by wall time; the per-thread counter divides by the thread count as
// well, then inverts the rate into a time. Counters are summed over threads,
// so the allocator-wide ones come from thread 0 alone; its loop ends at a
// barrier all threads reach after their last timed pair.
template <typename Allocator>
void ReportPairs(benchmark::State& state, const Allocator* allocator) {
  state.SetItemsProcessed(state.iterations());
  state.counters["time_per_pair_per_thread"] =
      benchmark::Counter(static_cast<double>(state.iterations()),
                         benchmark::Counter::kAvgThreadsRate | benchmark::Counter::kInvert);
  if (state.thread_index() == 0 && allocator != nullptr && !state.error_occurred()) {
    Adapter<Allocator>::ReportPaths(state, *allocator);
  }
}

// Allocates and at once frees sizes[i & kTableMask], i = 0, 1, 2, ...
template <typename Allocator>
void AllocateAndFree(benchmark::State& state, const std::vector<uint64_t>& sizes) {
  Allocator* const allocator = SharedInstance<Allocator>::Get();
  // After SkipWithError the loop below runs no iteration but still meets the
  // other threads at its start and end barriers.
  if (allocator == nullptr) state.SkipWithError("creating the allocator failed");
  size_t next = 0;
  for (auto _ : state) {
    const uint64_t size = sizes[next++ & kTableMask];
    const std::optional<uint64_t> iova = Adapter<Allocator>::Allocate(*allocator, size, kNoLimit);
    if (!iova.has_value()) {
      state.SkipWithError("Allocate failed");
      break;
    }
    if (!Adapter<Allocator>::Free(*allocator, *iova, size)) {
      state.SkipWithError("Free failed");
      break;
    }
  }
  ReportPairs(state, allocator);
}

// (a) The most common DMA mapping: one page.
template <typename Allocator>
void BM_OnePage(benchmark::State& state) {
  AllocateAndFree<Allocator>(state, std::vector<uint64_t>(kTableLength, kPage));
}

// (b) Typical network and block I/O buffers: 1-32 pages, many size classes.
template <typename Allocator>
void BM_RandomSmall(benchmark::State& state) {
  AllocateAndFree<Allocator>(state, UniformPageSizes(state, 1, 32));
}

// (d) 256 KiB - 2 MiB: larger than a typical magazine-cached class.
template <typename Allocator>
void BM_RandomMedium(benchmark::State& state) {
  AllocateAndFree<Allocator>(state, UniformPageSizes(state, 64, 512));
}

// (e) Huge-page-backed mappings, 2 MiB - 1 GiB, each aligned to its size.
template <typename Allocator>
void BM_HugePowerOfTwo(benchmark::State& state) {
  AllocateAndFree<Allocator>(state, PowerOfTwoSizes(state, /*min_log2=*/21, /*max_log2=*/30));
}

// (c) A steady state with 4096 live allocations per thread: each step frees a
// random one and allocates 1-16 pages in its place, so the space fragments
// the way a long-running device's does, and frees do not simply undo the
// allocation just made.
template <typename Allocator>
void BM_LiveSet4096(benchmark::State& state) {
  constexpr size_t kLiveAllocations = 4096;
  Allocator* const allocator = SharedInstance<Allocator>::Get();
  const std::vector<uint64_t> sizes = UniformPageSizes(state, 1, 16);
  const std::vector<size_t> victims = UniformIndices(state, kLiveAllocations);
  std::vector<IovaRange> live(kLiveAllocations);  // size 0: nothing held

  if (allocator == nullptr) {
    state.SkipWithError("creating the allocator failed");
  } else {
    for (size_t i = 0; i < kLiveAllocations; ++i) {
      const uint64_t size = sizes[(i * 7) & kTableMask];  // not the loop's first pairing
      const std::optional<uint64_t> iova = Adapter<Allocator>::Allocate(*allocator, size, kNoLimit);
      if (!iova.has_value()) {
        state.SkipWithError("Allocate failed while building the live set");
        break;
      }
      live[i] = {.start = *iova, .size = size};
    }
  }

  size_t next = 0;
  for (auto _ : state) {
    const size_t i = next++ & kTableMask;
    IovaRange& victim = live[victims[i]];
    if (!Adapter<Allocator>::Free(*allocator, victim.start, victim.size)) {
      state.SkipWithError("Free failed");
      break;
    }
    const std::optional<uint64_t> iova =
        Adapter<Allocator>::Allocate(*allocator, sizes[i], kNoLimit);
    if (!iova.has_value()) {
      victim = {};
      state.SkipWithError("Allocate failed");
      break;
    }
    victim = {.start = *iova, .size = sizes[i]};
  }
  ReportPairs(state, allocator);

  for (const IovaRange& range : live) {
    if (range.size != 0) Adapter<Allocator>::Free(*allocator, range.start, range.size);
  }
}

// Heap bytes in use, whether malloc served them from an arena or by mmap.
// mallinfo2 sums all of glibc's arenas.
size_t HeapBytesInUse() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

// Heap bytes per live allocation at 2^20 live one-page allocations, measured
// from just after Create, so fixed costs are amortized over the 2^20 rather
// than excluded. holes:0 allocates 2^20 pages, which leaves the free space in
// a few large ranges; holes:1 allocates 2^21 and frees every other one,
// leaving 2^20 one-page holes that can never coalesce, which is what free-
// space metadata (per free range or block) is sized by.
template <typename Allocator>
void BM_Metadata(benchmark::State& state) {
  constexpr size_t kLiveAllocations = size_t{1} << 20;
  const bool with_holes = state.range(0) != 0;
  const size_t allocations = with_holes ? 2 * kLiveAllocations : kLiveAllocations;
  std::vector<uint64_t> iovas;
  iovas.reserve(allocations);  // before the first measurement, so not counted

  for (auto _ : state) {
    std::unique_ptr<Allocator> allocator = Adapter<Allocator>::Create();
    if (allocator == nullptr) {
      state.SkipWithError("creating the allocator failed");
      break;
    }
    const size_t heap_before = HeapBytesInUse();
    for (size_t i = 0; i < allocations; ++i) {
      const std::optional<uint64_t> iova =
          Adapter<Allocator>::Allocate(*allocator, kPage, kNoLimit);
      if (!iova.has_value()) break;
      iovas.push_back(*iova);
    }
    if (iovas.size() != allocations) {
      state.SkipWithError("Allocate failed");
      break;
    }
    if (with_holes) {
      size_t kept = 0;
      for (size_t i = 0; i < iovas.size(); ++i) {
        if (i % 2 == 0) {
          Adapter<Allocator>::Free(*allocator, iovas[i], kPage);
        } else {
          iovas[kept++] = iovas[i];
        }
      }
      iovas.resize(kept);
    }
    const size_t heap_after = HeapBytesInUse();

    state.counters["bytes_per_live_allocation"] =
        (static_cast<double>(heap_after) - static_cast<double>(heap_before)) /
        static_cast<double>(iovas.size());
    state.counters["live_allocations"] = static_cast<double>(iovas.size());
    for (uint64_t iova : iovas) Adapter<Allocator>::Free(*allocator, iova, kPage);
    iovas.clear();
  }
}

// Every pair benchmark shares one allocator among 1, 2, 4 and 8 threads.
template <typename Allocator>
void SharedAcrossThreads(benchmark::internal::Benchmark* benchmark) {
  benchmark->Setup(SharedInstance<Allocator>::Create)
      ->Teardown(SharedInstance<Allocator>::Destroy)
      ->Threads(1)
      ->Threads(2)
      ->Threads(4)
      ->Threads(8)
      ->UseRealTime();
}

// Registered product-then-baseline per workload, so pairs print together.
BENCHMARK_TEMPLATE(BM_OnePage, IovaAllocator)->Apply(SharedAcrossThreads<IovaAllocator>);
BENCHMARK_TEMPLATE(BM_OnePage, MutexMapBaseline)->Apply(SharedAcrossThreads<MutexMapBaseline>);
BENCHMARK_TEMPLATE(BM_RandomSmall, IovaAllocator)->Apply(SharedAcrossThreads<IovaAllocator>);
BENCHMARK_TEMPLATE(BM_RandomSmall, MutexMapBaseline)->Apply(SharedAcrossThreads<MutexMapBaseline>);
BENCHMARK_TEMPLATE(BM_LiveSet4096, IovaAllocator)->Apply(SharedAcrossThreads<IovaAllocator>);
BENCHMARK_TEMPLATE(BM_LiveSet4096, MutexMapBaseline)->Apply(SharedAcrossThreads<MutexMapBaseline>);
BENCHMARK_TEMPLATE(BM_RandomMedium, IovaAllocator)->Apply(SharedAcrossThreads<IovaAllocator>);
BENCHMARK_TEMPLATE(BM_RandomMedium, MutexMapBaseline)->Apply(SharedAcrossThreads<MutexMapBaseline>);
BENCHMARK_TEMPLATE(BM_HugePowerOfTwo, IovaAllocator)->Apply(SharedAcrossThreads<IovaAllocator>);
BENCHMARK_TEMPLATE(BM_HugePowerOfTwo, MutexMapBaseline)
    ->Apply(SharedAcrossThreads<MutexMapBaseline>);

// One iteration: a measurement of memory, not of time.
BENCHMARK_TEMPLATE(BM_Metadata, IovaAllocator)
    ->ArgName("holes")
    ->Arg(0)
    ->Arg(1)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_Metadata, MutexMapBaseline)
    ->ArgName("holes")
    ->Arg(0)
    ->Arg(1)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace iommu_broker

BENCHMARK_MAIN();
