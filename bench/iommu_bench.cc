// Measures the emulated IOMMU's hot paths through the public Iommu API
// (Map, Unmap and Translate on Device handles from Iommu::FindDevice), with a
// physical-limit baseline in the same binary: BM_PteStoreBaseline, one 64-bit
// release store that sets a PTE and one that clears it, the least any map +
// unmap can write. Every other figure is also read as a ratio to it. A
// second baseline, BM_MapUnmapPartsOnly, does what a fast 4 KiB map + unmap
// must do with the engine's own parts and nothing around them (no Iommu, no
// domain): allocate an IOVA, install one leaf in a PageTable, remove it,
// queue the removed range in a vector, and free the queued IOVAs once it
// holds a flush queue's default 256 entries (no IOTLB invalidation, no
// validation, no results or counters), all inside epoch guards; it installs
// as a domain does an allocated IOVA (PageTable::Mapping::exclusive).
// BM_MapUnmap_Fast_Cost0 over it is the cost of everything else on the path.
// BM_MapUnmapPartsOnly_NoPageTable leaves out the page table: the IOVA
// allocator and the queue alone, what the figure for Linux's
// allocator plus flush queue (~31 ns a pair) covers.
//
// Workloads (each Iommu has 16 GiB of physical memory, one domain "bench"
// and one device per thread attached to it; no maintenance thread, so runs
// are deterministic: the fast policy's flush queue drains only when a
// per-thread queue fills, 256 entries by default):
//   BM_MapUnmap_<policy>_<cost>   map 4 KiB, unmap it: paranoid, fast, pt
//                                 (identity, the DMA mask reaches all memory),
//                                 bypass (fast, allow_bypass, kRequire); cost
//                                 is IommuOptions.invalidation.cost.fixed.
//                                 _SharedDevice: both threads use one device.
//   BM_MapUnmap_ParanoidNaiveStrict_Cost1us  the same with combine = false:
//                                 one invalidation batch per unmap, one after
//                                 another, the yardstick for flush combining.
//   BM_MapDmaUnmapDma_<policy>    map, translate, unmap, then translate the
//                                 unmapped IOVA (a late DMA): fast serves it
//                                 from the stale IOTLB entry, paranoid faults.
//   BM_Translate_IotlbHit_<policy>   the same 4 KiB IOVA over and over.
//   BM_Translate_IotlbMiss_<policy>_<order>  65536 one-page mappings, far
//                                 more than the 64 x 8 IOTLB, translated in
//                                 IOVA order or in a random permutation: the
//                                 4-level walk plus the IOTLB fill.
//   BM_MapUnmap<2M|1G>_<policy>_<HugePages|4KOnly>  map and unmap one aligned
//                                 2 MiB / 1 GiB buffer: one PTE with huge
//                                 pages, 512 / 262144 PTEs with 4 KiB only.
//
// Reading the output (wall time throughout, ->UseRealTime(), so with two
// threads Time is wall time / the items of all threads, the inverse of total
// throughput, and items_per_second is total throughput):
//   time_per_item_per_thread  how long one item takes as one thread sees it;
//   cpu_ghz                   the clock the threads' cores ran at, read after
//                             the loop (bench/cpu_clock.h: on this VM it is not
//                             the nominal MHz of the context above the table);
//   cycles_per_item_per_thread  time_per_item_per_thread at that clock, which
//                             compares across runs at different clocks (the
//                             console prints it with the "s" Google Benchmark
//                             gives every inverted rate: 153.6s is 153.6
//                             cycles);
//   batches_per_unmap         invalidation batches / unmaps (paranoid: below 1
//                             means unmaps shared batches);
//   inv_wait_ns_per_unmap     time callers spent in invalidation / unmaps;
//   flushes_per_unmap         fast: flush-queue drains / unmaps;
//   stale_per_late_dma        translations of an unmapped IOVA served from a
//                             stale IOTLB entry / such translations;
//   iotlb_hit_ratio           from DomainStats.iotlb over the run;
//   leaves_per_map            leaf PTEs one map wrote;
//   iova_cache_hit_fraction   IOVA allocations served by the calling thread's
//                             cache (the rest came from the depot or arena);
// The 4KOnly workloads call Iommu::Maintain, inside the timed loop, after
// every unmap (each unlinks the table pages under the buffer), so freeing
// those pages is charged to the iteration that unlinked them rather than to
// whichever later call happens to reclaim; memory stays bounded without a
// maintenance thread. The HugePages ones unlink nothing and never call it.
//
// Run a Release build (link-time optimized, as scripts/bench.sh builds it):
//   cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release
//   ninja -C build-release iommu_bench
//   build-release/bench/iommu_bench --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true --benchmark_min_time=0.2
// One group: --benchmark_filter='BM_MapUnmap_Fast'

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/cpu_clock.h"
#include "benchmark/benchmark.h"
#include "core/iommu/device.h"
#include "core/iommu/domain.h"
#include "core/iommu/epoch.h"
#include "core/iommu/flush_queue.h"
#include "core/iommu/invalidation_queue.h"
#include "core/iommu/iommu.h"
#include "core/iommu/page_table.h"
#include "core/iommu/types.h"
#include "core/iova/iova_allocator.h"

namespace iommu_broker {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kPhysicalMemory = 16 * kGiB;
constexpr char kDomainId[] = "bench";
constexpr PageSizeSet kAllPageSizes = kPage4K | kPage2M | kPage1G;
constexpr Perms kReadWrite = {.read = true, .write = true};

// What one benchmark's Iommu looks like. A structural type, so each scenario
// instantiates its own Setup function (Google Benchmark takes a plain
// function pointer).
struct Scenario {
  Policy policy = Policy::kParanoid;
  int64_t cost_ns = 0;  // IommuOptions.invalidation.cost.fixed
  bool combine = true;  // IommuOptions.invalidation.combine
  bool allow_bypass = false;
  PageSizeSet page_sizes = kAllPageSizes;
  bool metrics = true;  // IommuOptions.record_flush_latencies
};

// The Iommu all threads of one benchmark run share. Google Benchmark calls
// Setup and Teardown on the main thread before it starts the run's threads
// and after it joins them, which orders both with every access from the
// threads. Each run (including each iteration-count probe) gets a fresh one.
class Fixture final {
 public:
  template <Scenario kScenario>
  static void Create(const benchmark::State& state) {
    instance_ = std::make_unique<Fixture>(kScenario, state.threads());
  }
  static void Destroy(const benchmark::State&) { instance_.reset(); }
  static Fixture& Get() { return *instance_; }

  Fixture(const Scenario& scenario, int threads) : scenario_(scenario) {
    status_ = Build(std::max(threads, 1));
    if (!status_.ok()) std::fprintf(stderr, "fixture: %s\n", status_.ToString().c_str());
  }

  const absl::Status& status() const { return status_; }
  const Scenario& scenario() const { return scenario_; }
  Iommu& iommu() { return *iommu_; }
  Device& device(int index) { return *devices_[static_cast<size_t>(index)]; }

 private:
  absl::Status Build(int devices) {
    IommuOptions options;
    options.physical_memory_bytes = kPhysicalMemory;
    options.invalidation.cost.fixed = absl::Nanoseconds(scenario_.cost_ns);
    options.invalidation.combine = scenario_.combine;
    options.record_flush_latencies = scenario_.metrics;
    options.maintenance_interval = absl::ZeroDuration();
    absl::StatusOr<std::unique_ptr<Iommu>> iommu = Iommu::Create(options);
    if (!iommu.ok()) return iommu.status();
    iommu_ = *std::move(iommu);

    DomainConfig domain;
    domain.id = kDomainId;
    domain.policy = scenario_.policy;
    domain.page_sizes = scenario_.page_sizes;
    if (absl::Status status = iommu_->CreateDomain(domain); !status.ok()) return status;
    for (int i = 0; i < devices; ++i) {
      const std::string id = absl::StrCat("bench-dev", i);
      DeviceConfig device;
      device.id = id;
      device.allow_bypass = scenario_.allow_bypass;
      if (absl::Status status = iommu_->AddDevice(device); !status.ok()) return status;
      absl::StatusOr<std::optional<DetachResult>> attached = iommu_->Attach(id, kDomainId);
      if (!attached.ok()) return attached.status();
      absl::StatusOr<std::shared_ptr<Device>> found = iommu_->FindDevice(id);
      if (!found.ok()) return found.status();
      devices_.push_back(*std::move(found));
    }
    return absl::OkStatus();
  }

  static inline std::unique_ptr<Fixture> instance_;

  const Scenario scenario_;
  absl::Status status_;
  std::unique_ptr<Iommu> iommu_;
  std::vector<std::shared_ptr<Device>> devices_;
};

// Reports a failed status; the caller then breaks out of its loop.
void Fail(benchmark::State& state, const char* what, const absl::Status& status) {
  const std::string message = absl::StrCat(what, ": ", status.ToString());
  state.SkipWithError(message.c_str());
}

// Unmaps and checks the bytes removed; false (after reporting) on failure.
bool UnmapExpecting(benchmark::State& state, Iommu& iommu, Device& device, uint64_t iova,
                    uint64_t size, uint64_t expected_bytes) {
  absl::StatusOr<UnmapResult> unmapped = iommu.Unmap(device, iova, size);
  if (!unmapped.ok()) {
    Fail(state, "Unmap", unmapped.status());
    return false;
  }
  if (unmapped->bytes_unmapped != expected_bytes) {
    state.SkipWithError(absl::StrCat("Unmap removed ", unmapped->bytes_unmapped, " bytes").c_str());
    return false;
  }
  return true;
}

// Called by every thread after its loop: items are summed over threads and
// divided by wall time; the per-thread counter divides by the thread count as
// well, then inverts the rate into a time. Each thread then reads its core's
// clock, which turns that time into cycles: the VM's clock moves by a fifth
// from one hour to the next, its cycles per item do not.
void ReportItems(benchmark::State& state) {
  state.SetItemsProcessed(state.iterations());
  const double items = static_cast<double>(state.iterations());
  state.counters["time_per_item_per_thread"] =
      benchmark::Counter(items, benchmark::Counter::kAvgThreadsRate | benchmark::Counter::kInvert);
  if (const std::optional<double> ghz = MeasureCpuClockGhz()) {
    state.counters["cpu_ghz"] = benchmark::Counter(*ghz, benchmark::Counter::kAvgThreads);
    // Items per nanosecond-of-clock, so that the inverted rate comes out as
    // wall seconds x cycles a second / items.
    state.counters["cycles_per_item_per_thread"] = benchmark::Counter(
        items / (*ghz * 1e9), benchmark::Counter::kAvgThreadsRate | benchmark::Counter::kInvert);
  }
}

double Ratio(uint64_t numerator, uint64_t denominator) {
  return denominator == 0 ? 0.0 : static_cast<double>(numerator) / static_cast<double>(denominator);
}

// Domain-wide counters, set by thread 0 alone (counters are summed over
// threads). Its loop ends at a barrier every thread reaches after its last
// timed item, so the stats cover the whole run.
void ReportDomain(benchmark::State& state, Fixture& fixture) {
  if (state.thread_index() != 0 || state.error_occurred() || !fixture.status().ok()) return;
  absl::StatusOr<DomainStats> stats = fixture.iommu().GetDomainStats(kDomainId);
  if (!stats.ok()) {
    Fail(state, "GetDomainStats", stats.status());
    return;
  }
  const InvalidationQueueStats unit = fixture.iommu().UnitStats(0);
  if (stats->unmaps > 0) {
    state.counters["batches_per_unmap"] = Ratio(unit.batches, stats->unmaps);
    state.counters["inv_wait_ns_per_unmap"] = Ratio(unit.wait_nanos, stats->unmaps);
    if (fixture.scenario().policy == Policy::kFast) {
      const FlushQueueStats& fq = stats->flush_queue;
      state.counters["flushes_per_unmap"] =
          Ratio(fq.full_flushes + fq.timeout_flushes + fq.explicit_flushes, stats->unmaps);
    }
  }
  const IovaStats& iova = stats->iova;
  const uint64_t allocations =
      iova.fast_path_allocations + iova.depot_allocations + iova.slow_path_allocations;
  if (allocations > 0) {
    state.counters["iova_cache_hit_fraction"] = Ratio(iova.fast_path_allocations, allocations);
  }
  if (stats->translations > 0) {
    state.counters["iotlb_hit_ratio"] =
        Ratio(stats->iotlb.hits, stats->iotlb.hits + stats->iotlb.misses);
  }
}

// The physical limit: one release store sets a PTE, one clears it. Each
// thread writes its own 512-entry table (one table page).
void BM_PteStoreBaseline(benchmark::State& state) {
  alignas(64) std::array<std::atomic<uint64_t>, 512> ptes{};
  uint64_t next = 0;
  for (auto _ : state) {
    std::atomic<uint64_t>& pte = ptes[next & 511];
    pte.store((next << 12) | 3, std::memory_order_release);
    benchmark::ClobberMemory();
    pte.store(0, std::memory_order_release);
    benchmark::ClobberMemory();
    ++next;
  }
  benchmark::DoNotOptimize(ptes.data());
  ReportItems(state);
}

void BM_MapUnmapPartsOnly(benchmark::State& state, bool with_page_table) {
  constexpr uint64_t kLimit = (uint64_t{1} << 39) - 1;
  EpochReclaimer reclaimer;
  PageTable table(reclaimer);
  IovaAllocatorOptions options;
  options.aperture_first = kPage4K;
  options.aperture_last = kLimit;
  absl::StatusOr<std::unique_ptr<IovaAllocator>> allocator = IovaAllocator::Create(options);
  if (!allocator.ok()) {
    Fail(state, "IovaAllocator::Create", allocator.status());
    return;
  }
  const size_t capacity = FlushQueueOptions{}.capacity;  // a domain's default queue
  std::vector<PageTable::Removed> queued;
  queued.reserve(capacity);
  PageTable::Mapping mapping{.size = kPage4K, .perms = kReadWrite, .exclusive = true};
  uint64_t next = 0;
  for (auto _ : state) {
    mapping.phys = kGiB + (next++ & 255) * kPage4K;
    {
      EpochReclaimer::Guard guard(reclaimer);
      absl::StatusOr<uint64_t> iova = (*allocator)->Allocate(kPage4K, kLimit);
      if (!iova.ok()) {
        Fail(state, "Allocate", iova.status());
        break;
      }
      mapping.iova = *iova;
      if (with_page_table && !table.Install(mapping)) {
        state.SkipWithError("Install found the IOVA taken");
        break;
      }
    }
    {
      EpochReclaimer::Guard guard(reclaimer);
      PageTable::Removed& removed = queued.emplace_back();
      if (!with_page_table) {
        removed.iova = mapping.iova;
        removed.size = kPage4K;
      } else if (std::optional<PageTable::Removed> gone =
                     table.RemoveExactly(mapping.iova, mapping.iova + kPage4K)) {
        PageTable::CopyRemoved(*gone, removed);
      } else {
        state.SkipWithError("RemoveExactly found nothing");
        break;
      }
    }
    if (queued.size() == capacity) {
      for (const PageTable::Removed& removed : queued) {
        (*allocator)->Free(removed.iova, removed.size).IgnoreError();
      }
      queued.clear();
    }
  }
  ReportItems(state);
}

// Map and unmap one 4 KiB page, over and over; each thread cycles through 256
// physical pages of its own.
void BM_MapUnmap(benchmark::State& state, bool shared_device) {
  Fixture& fixture = Fixture::Get();
  if (!fixture.status().ok()) Fail(state, "fixture", fixture.status());
  const Scenario& scenario = fixture.scenario();
  MappingKind expected = MappingKind::kTranslated;
  MapRequest request;
  request.size = kPage4K;
  request.perms = kReadWrite;
  if (scenario.allow_bypass) {
    request.bypass = BypassMode::kRequire;
    expected = MappingKind::kBypass;
  } else if (scenario.policy == Policy::kPassthrough) {
    expected = MappingKind::kIdentity;
  }
  const uint64_t expected_bytes = expected == MappingKind::kTranslated ? kPage4K : 0;
  const uint64_t phys_base = (1 + static_cast<uint64_t>(state.thread_index())) * kGiB;
  uint64_t next = 0;
  if (fixture.status().ok()) {
    Iommu& iommu = fixture.iommu();
    Device& device = fixture.device(shared_device ? 0 : state.thread_index());
    for (auto _ : state) {
      request.phys = phys_base + (next++ & 255) * kPage4K;
      absl::StatusOr<MapResult> mapped = iommu.Map(device, request);
      if (!mapped.ok()) {
        Fail(state, "Map", mapped.status());
        break;
      }
      if (mapped->kind != expected) {
        state.SkipWithError(
            absl::StrCat("Map returned kind ", MappingKindName(mapped->kind)).c_str());
        break;
      }
      if (!UnmapExpecting(state, iommu, device, mapped->iova, kPage4K, expected_bytes)) break;
    }
  } else {
    for (auto _ : state) {
    }
  }
  ReportItems(state);
  ReportDomain(state, fixture);
}

// Map, DMA (translate), unmap, then a late DMA to the unmapped IOVA: counts
// how often the late DMA reaches memory through a stale IOTLB entry.
void BM_MapDmaUnmapDma(benchmark::State& state) {
  Fixture& fixture = Fixture::Get();
  if (!fixture.status().ok()) Fail(state, "fixture", fixture.status());
  MapRequest request;
  request.size = kPage4K;
  request.perms = kReadWrite;
  const uint64_t phys_base = (1 + static_cast<uint64_t>(state.thread_index())) * kGiB;
  uint64_t next = 0;
  uint64_t late_served = 0;
  if (fixture.status().ok()) {
    Iommu& iommu = fixture.iommu();
    Device& device = fixture.device(state.thread_index());
    for (auto _ : state) {
      request.phys = phys_base + (next++ & 255) * kPage4K;
      absl::StatusOr<MapResult> mapped = iommu.Map(device, request);
      if (!mapped.ok()) {
        Fail(state, "Map", mapped.status());
        break;
      }
      absl::StatusOr<TranslateResult> dma =
          iommu.Translate(device, mapped->iova, kPage4K, Access::kWrite);
      if (!dma.ok() || dma->fault.has_value()) {
        Fail(state, "Translate of a mapped page",
             dma.ok() ? absl::InternalError("faulted") : dma.status());
        break;
      }
      absl::StatusOr<UnmapResult> unmapped = iommu.Unmap(device, mapped->iova, kPage4K);
      if (!unmapped.ok()) {
        Fail(state, "Unmap", unmapped.status());
        break;
      }
      absl::StatusOr<TranslateResult> late =
          iommu.Translate(device, mapped->iova, kPage4K, Access::kWrite);
      if (!late.ok()) {
        Fail(state, "Translate after unmap", late.status());
        break;
      }
      late_served += late->fault.has_value() ? 0 : 1;
    }
  } else {
    for (auto _ : state) {
    }
  }
  ReportItems(state);
  ReportDomain(state, fixture);
  state.counters["stale_per_late_dma"] =
      benchmark::Counter(static_cast<double>(late_served), benchmark::Counter::kAvgIterations);
  if (state.thread_index() == 0 && fixture.status().ok() && !state.error_occurred()) {
    if (absl::StatusOr<DomainStats> stats = fixture.iommu().GetDomainStats(kDomainId);
        stats.ok() && stats->unmaps > 0) {
      state.counters["stale_counted_per_unmap"] = Ratio(stats->stale_translations, stats->unmaps);
    }
  }
}

// Translates the same 4 KiB IOVA over and over; each thread its own device
// and page, filled into the IOTLB before the loop.
void BM_TranslateHit(benchmark::State& state) {
  Fixture& fixture = Fixture::Get();
  if (!fixture.status().ok()) Fail(state, "fixture", fixture.status());
  if (fixture.status().ok()) {
    Iommu& iommu = fixture.iommu();
    Device& device = fixture.device(state.thread_index());
    MapRequest request;
    request.phys = (1 + static_cast<uint64_t>(state.thread_index())) * kGiB;
    request.size = kPage4K;
    request.perms = kReadWrite;
    absl::StatusOr<MapResult> mapped = iommu.Map(device, request);
    absl::StatusOr<TranslateResult> fill;
    if (!mapped.ok()) {
      Fail(state, "Map", mapped.status());
    } else if (fill = iommu.Translate(device, mapped->iova, kPage4K, Access::kRead);
               !fill.ok() || fill->fault.has_value()) {
      Fail(state, "Translate", fill.ok() ? absl::InternalError("faulted") : fill.status());
    }
    const uint64_t iova = mapped.ok() ? mapped->iova : 0;
    for (auto _ : state) {
      absl::StatusOr<TranslateResult> dma = iommu.Translate(device, iova, kPage4K, Access::kRead);
      if (!dma.ok() || dma->fault.has_value() || !dma->iotlb_hit) {
        Fail(state, "Translate",
             dma.ok() ? absl::InternalError("faulted or missed") : dma.status());
        break;
      }
      benchmark::DoNotOptimize(dma->segments.front().phys);
    }
  } else {
    for (auto _ : state) {
    }
  }
  ReportItems(state);
  ReportDomain(state, fixture);
}

// 65536 one-page mappings translated round-robin in IOVA order, or in a
// random permutation, so almost every lookup misses the 512-entry IOTLB.
void BM_TranslateMiss(benchmark::State& state, bool random_order) {
  constexpr size_t kPages = 65536;
  Fixture& fixture = Fixture::Get();
  if (!fixture.status().ok()) Fail(state, "fixture", fixture.status());
  std::vector<uint64_t> iovas;
  if (fixture.status().ok()) {
    Iommu& iommu = fixture.iommu();
    Device& device = fixture.device(state.thread_index());
    iovas.reserve(kPages);
    MapRequest request;
    request.size = kPage4K;
    request.perms = kReadWrite;
    for (size_t i = 0; i < kPages; ++i) {
      request.phys = kGiB + i * kPage4K;
      absl::StatusOr<MapResult> mapped = iommu.Map(device, request);
      if (!mapped.ok()) {
        Fail(state, "Map", mapped.status());
        break;
      }
      iovas.push_back(mapped->iova);
    }
    if (random_order) {
      std::mt19937_64 generator(42);
      std::shuffle(iovas.begin(), iovas.end(), generator);
    } else {
      std::sort(iovas.begin(), iovas.end());
    }
    size_t next = 0;
    if (!state.error_occurred()) {
      for (auto _ : state) {
        absl::StatusOr<TranslateResult> dma =
            iommu.Translate(device, iovas[next++ & (kPages - 1)], kPage4K, Access::kRead);
        if (!dma.ok() || dma->fault.has_value()) {
          Fail(state, "Translate", dma.ok() ? absl::InternalError("faulted") : dma.status());
          break;
        }
        benchmark::DoNotOptimize(dma->segments.front().phys);
      }
    } else {
      for (auto _ : state) {
      }
    }
  } else {
    for (auto _ : state) {
    }
  }
  ReportItems(state);
  ReportDomain(state, fixture);
}

// Map and unmap one `size`-aligned buffer of `size` bytes. Its leaves are one
// PTE when the domain has that page size, size / 4 KiB otherwise.
void BM_MapUnmapLarge(benchmark::State& state, uint64_t size) {
  Fixture& fixture = Fixture::Get();
  if (!fixture.status().ok()) Fail(state, "fixture", fixture.status());
  const bool huge = (fixture.scenario().page_sizes & size) != 0;
  const uint64_t expected_leaves = huge ? 1 : size / kPage4K;
  // The 4 KiB-only unmap unlinks the table pages under the buffer; Maintain
  // frees them (see the file comment).
  const bool maintain = !huge;
  MapRequest request;
  request.size = size;
  request.perms = kReadWrite;
  uint64_t next = 0;
  uint64_t leaves = 0;
  if (fixture.status().ok()) {
    Iommu& iommu = fixture.iommu();
    Device& device = fixture.device(state.thread_index());
    for (auto _ : state) {
      // Eight aligned buffers from 1 GiB up (all inside 16 GiB).
      request.phys = kGiB + (next++ & 7) * std::max(size, kGiB);
      absl::StatusOr<MapResult> mapped = iommu.Map(device, request);
      if (!mapped.ok()) {
        Fail(state, "Map", mapped.status());
        break;
      }
      leaves = mapped->leaves_4k + mapped->leaves_2m + mapped->leaves_1g;
      if (leaves != expected_leaves) {
        state.SkipWithError(absl::StrCat("Map wrote ", mapped->leaves_4k, " 4K + ",
                                         mapped->leaves_2m, " 2M + ", mapped->leaves_1g,
                                         " 1G leaves; expected ", expected_leaves)
                                .c_str());
        break;
      }
      if (!UnmapExpecting(state, iommu, device, mapped->iova, size, size)) break;
      if (maintain) iommu.Maintain(absl::Now());
    }
  } else {
    for (auto _ : state) {
    }
  }
  ReportItems(state);
  ReportDomain(state, fixture);
  state.counters["leaves_per_map"] = static_cast<double>(leaves);
  state.counters["bytes_per_map"] = static_cast<double>(size);
}

// ---------------------------------------------------------------- Registration

constexpr int64_t kCost1us = 1000;

template <Scenario kScenario>
benchmark::internal::Benchmark* WithFixture(benchmark::internal::Benchmark* benchmark) {
  return benchmark->Setup(&Fixture::Create<kScenario>)->Teardown(&Fixture::Destroy)->UseRealTime();
}

template <Scenario kScenario>
void RegisterMapUnmap(const std::string& name) {
  WithFixture<kScenario>(benchmark::RegisterBenchmark(name.c_str(), BM_MapUnmap, false))
      ->Threads(1)
      ->Threads(2);
  WithFixture<kScenario>(
      benchmark::RegisterBenchmark((name + "_SharedDevice").c_str(), BM_MapUnmap, true))
      ->Threads(2);
}

template <Scenario kScenario>
void RegisterLarge(const std::string& name, uint64_t size) {
  WithFixture<kScenario>(benchmark::RegisterBenchmark(name.c_str(), BM_MapUnmapLarge, size))
      ->Threads(1)
      ->Unit(size >= kGiB ? benchmark::kMicrosecond : benchmark::kNanosecond);
}

void RegisterAll() {
  benchmark::RegisterBenchmark("BM_PteStoreBaseline", BM_PteStoreBaseline)
      ->Threads(1)
      ->Threads(2)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_MapUnmapPartsOnly", BM_MapUnmapPartsOnly, true)
      ->Threads(1)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_MapUnmapPartsOnly_NoPageTable", BM_MapUnmapPartsOnly, false)
      ->Threads(1)
      ->UseRealTime();

  // 1. Map + unmap of 4 KiB per policy, invalidation cost 0 and 1 us.
  constexpr Scenario kParanoid0 = {.policy = Policy::kParanoid};
  constexpr Scenario kParanoid1 = {.policy = Policy::kParanoid, .cost_ns = kCost1us};
  constexpr Scenario kFast0 = {.policy = Policy::kFast};
  constexpr Scenario kFast1 = {.policy = Policy::kFast, .cost_ns = kCost1us};
  constexpr Scenario kPt0 = {.policy = Policy::kPassthrough};
  constexpr Scenario kPt1 = {.policy = Policy::kPassthrough, .cost_ns = kCost1us};
  constexpr Scenario kBypass0 = {.policy = Policy::kFast, .allow_bypass = true};
  constexpr Scenario kBypass1 = {
      .policy = Policy::kFast, .cost_ns = kCost1us, .allow_bypass = true};
  RegisterMapUnmap<kParanoid0>("BM_MapUnmap_Paranoid_Cost0");
  RegisterMapUnmap<kParanoid1>("BM_MapUnmap_Paranoid_Cost1us");
  // 2. The naive strict baseline for flush combining.
  constexpr Scenario kNaive1 = {.policy = Policy::kParanoid, .cost_ns = kCost1us, .combine = false};
  RegisterMapUnmap<kNaive1>("BM_MapUnmap_ParanoidNaiveStrict_Cost1us");
  RegisterMapUnmap<kFast0>("BM_MapUnmap_Fast_Cost0");
  RegisterMapUnmap<kFast1>("BM_MapUnmap_Fast_Cost1us");
  // 3. What recording flush latencies for the metrics costs.
  constexpr Scenario kFast0NoMetrics = {.policy = Policy::kFast, .metrics = false};
  constexpr Scenario kParanoid0NoMetrics = {.policy = Policy::kParanoid, .metrics = false};
  RegisterMapUnmap<kFast0NoMetrics>("BM_MapUnmap_Fast_Cost0_MetricsOff");
  RegisterMapUnmap<kParanoid0NoMetrics>("BM_MapUnmap_Paranoid_Cost0_MetricsOff");
  RegisterMapUnmap<kPt0>("BM_MapUnmap_Pt_Cost0");
  RegisterMapUnmap<kPt1>("BM_MapUnmap_Pt_Cost1us");
  RegisterMapUnmap<kBypass0>("BM_MapUnmap_Bypass_Cost0");
  RegisterMapUnmap<kBypass1>("BM_MapUnmap_Bypass_Cost1us");

  // The fast policy's vulnerability window, next to paranoid's.
  WithFixture<kParanoid0>(
      benchmark::RegisterBenchmark("BM_MapDmaUnmapDma_Paranoid_Cost0", BM_MapDmaUnmapDma))
      ->Threads(1);
  WithFixture<kFast0>(
      benchmark::RegisterBenchmark("BM_MapDmaUnmapDma_Fast_Cost0", BM_MapDmaUnmapDma))
      ->Threads(1);

  // 3. Translate: IOTLB hit and 4-level walk.
  WithFixture<kParanoid0>(
      benchmark::RegisterBenchmark("BM_Translate_IotlbHit_Paranoid", BM_TranslateHit))
      ->Threads(1)
      ->Threads(2);
  WithFixture<kFast0>(benchmark::RegisterBenchmark("BM_Translate_IotlbHit_Fast", BM_TranslateHit))
      ->Threads(1)
      ->Threads(2);
  WithFixture<kParanoid0>(benchmark::RegisterBenchmark("BM_Translate_IotlbMiss_Paranoid_Sequential",
                                                       BM_TranslateMiss, false))
      ->Threads(1);
  WithFixture<kParanoid0>(benchmark::RegisterBenchmark("BM_Translate_IotlbMiss_Paranoid_Random",
                                                       BM_TranslateMiss, true))
      ->Threads(1);
  WithFixture<kFast0>(benchmark::RegisterBenchmark("BM_Translate_IotlbMiss_Fast_Sequential",
                                                   BM_TranslateMiss, false))
      ->Threads(1);
  WithFixture<kFast0>(
      benchmark::RegisterBenchmark("BM_Translate_IotlbMiss_Fast_Random", BM_TranslateMiss, true))
      ->Threads(1);

  // 4. 2 MiB and 1 GiB buffers: one huge PTE vs 4 KiB pages only.
  constexpr Scenario kParanoid4K = {.policy = Policy::kParanoid, .page_sizes = kPage4K};
  constexpr Scenario kFast4K = {.policy = Policy::kFast, .page_sizes = kPage4K};
  RegisterLarge<kParanoid0>("BM_MapUnmap2M_Paranoid_HugePages", kPage2M);
  RegisterLarge<kParanoid4K>("BM_MapUnmap2M_Paranoid_4KOnly", kPage2M);
  RegisterLarge<kFast0>("BM_MapUnmap2M_Fast_HugePages", kPage2M);
  RegisterLarge<kFast4K>("BM_MapUnmap2M_Fast_4KOnly", kPage2M);
  RegisterLarge<kParanoid0>("BM_MapUnmap1G_Paranoid_HugePages", kPage1G);
  RegisterLarge<kParanoid4K>("BM_MapUnmap1G_Paranoid_4KOnly", kPage1G);
  RegisterLarge<kFast0>("BM_MapUnmap1G_Fast_HugePages", kPage1G);
  RegisterLarge<kFast4K>("BM_MapUnmap1G_Fast_4KOnly", kPage1G);
}

}  // namespace
}  // namespace iommu_broker

int main(int argc, char** argv) {
  iommu_broker::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
