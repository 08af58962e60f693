// Concurrency stress of IovaAllocator (run under ThreadSanitizer too): threads allocate, free,
// reserve and reclaim at once while a per-granule shadow proves no granule has two owners.
#include <atomic>
#include <barrier>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/iova/iova_allocator.h"
#include "core/iova/size_class.h"
#include "core/util/hex.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

constexpr uint64_t kPage = kIovaGranule;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kNoLimit = ~uint64_t{0};

// Small enough that the threads' live sets plus their caches overrun it, so
// the cross-thread reclaim path runs against other threads' fast paths.
constexpr uint64_t kStressFirst = kGiB;
constexpr uint64_t kStressBytes = 64 * kMiB;
constexpr uint64_t kStressHole = kStressFirst + 40 * kMiB;  // a fixed reserved MiB
// A limit inside the aperture: some requests must come from its lower part.
constexpr uint64_t kStressLowLimit = kStressFirst + 24 * kMiB - 1;

// Op counts, not durations, bound every test; these keep the ThreadSanitizer
// build on two cores within seconds.
constexpr int kStressOps = 200000;  // shared out among the worker threads
constexpr size_t kMaxLivePerWorker = 48;
constexpr int kReserverOps = 1500;
constexpr size_t kMaxReservations = 8;
constexpr uint64_t kSeed = 0xc0ffee;
constexpr uint32_t kFixedOwner = ~uint32_t{0};  // the shadow's owner of fixed reserved ranges

uint64_t FootprintBytes(uint64_t size) {
  return size_class::GranulesOf(size_class::IndexOf(size / kPage)) * kPage;
}

uint64_t Uniform(std::mt19937_64& rng, uint64_t low, uint64_t high) {
  return std::uniform_int_distribution<uint64_t>(low, high)(rng);
}

bool Percent(std::mt19937_64& rng, int percent) {
  return Uniform(rng, 0, 99) < static_cast<uint64_t>(percent);
}

IovaAllocatorOptions Options(uint64_t first, uint64_t bytes, std::vector<IovaRange> reserved = {}) {
  IovaAllocatorOptions options;
  options.aperture_first = first;
  options.aperture_last = first + bytes - 1;
  options.reserved = std::move(reserved);
  return options;
}

IovaAllocatorOptions StressOptions() {
  return Options(kStressFirst, kStressBytes, {{kStressHole, kMiB}});
}

std::unique_ptr<IovaAllocator> CreateOrNull(const IovaAllocatorOptions& options) {
  absl::StatusOr<std::unique_ptr<IovaAllocator>> space = IovaAllocator::Create(options);
  EXPECT_TRUE(space.ok()) << space.status();
  return space.ok() ? *std::move(space) : nullptr;
}

// Who owns each granule of an aperture, by the test's account. Relaxed
// atomics: the shadow must not add happens-before edges that would hide a
// race inside the allocator from ThreadSanitizer.
class OwnershipShadow {
 public:
  OwnershipShadow(uint64_t first, uint64_t bytes)
      : first_(first), granules_(bytes / kPage), owners_(new std::atomic<uint32_t>[granules_]) {
    for (uint64_t i = 0; i < granules_; ++i) owners_[i].store(0, std::memory_order_relaxed);
  }

  // Marks [iova, iova + bytes) as owned by `owner` (nonzero). Returns an
  // empty string, or what went wrong (having taken nothing).
  std::string Claim(uint64_t iova, uint64_t bytes, uint32_t owner) {
    if (iova < first_ || (iova - first_) / kPage + bytes / kPage > granules_) {
      return "[" + Hex(iova) + ", +" + Hex(bytes) + ") is outside the aperture";
    }
    const uint64_t begin = (iova - first_) / kPage;
    for (uint64_t i = begin; i < begin + bytes / kPage; ++i) {
      uint32_t previous = 0;
      if (!owners_[i].compare_exchange_strong(previous, owner, std::memory_order_relaxed)) {
        Release(iova, (i - begin) * kPage, owner);
        return "granule " + Hex(first_ + i * kPage) + " of [" + Hex(iova) + ", +" + Hex(bytes) +
               ") claimed by owner " + std::to_string(owner) + " is held by owner " +
               std::to_string(previous);
      }
    }
    return "";
  }

  // Returns an empty string, or what went wrong.
  std::string Release(uint64_t iova, uint64_t bytes, uint32_t owner) {
    const uint64_t begin = (iova - first_) / kPage;
    for (uint64_t i = begin; i < begin + bytes / kPage; ++i) {
      uint32_t expected = owner;
      if (!owners_[i].compare_exchange_strong(expected, 0, std::memory_order_relaxed)) {
        return "granule " + Hex(first_ + i * kPage) + " released by owner " +
               std::to_string(owner) + " is held by owner " + std::to_string(expected);
      }
    }
    return "";
  }

 private:
  const uint64_t first_;
  const uint64_t granules_;
  const std::unique_ptr<std::atomic<uint32_t>[]> owners_;
};

// Returns an empty string if the placement obeys Allocate's contract.
std::string PlacementError(uint64_t iova, uint64_t size, uint64_t limit,
                           const IovaAllocatorOptions& options) {
  const uint64_t footprint = FootprintBytes(size);
  if (iova % std::bit_floor(size) != 0) return Hex(iova) + " misaligned for size " + Hex(size);
  if (iova < options.aperture_first || iova + (footprint - 1) > options.aperture_last) {
    return Hex(iova) + " footprint " + Hex(footprint) + " leaves the aperture";
  }
  if (iova + (footprint - 1) > limit) {
    return Hex(iova) + " footprint " + Hex(footprint) + " exceeds limit " + Hex(limit);
  }
  return "";
}

struct Held {
  uint64_t iova;
  uint64_t size;
  uint32_t owner;  // who claimed it in the shadow
};

// Allocations passed between threads, so that frees land in a cache other
// than the allocating thread's.
class Mailbox {
 public:
  bool TryPost(const Held& held) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (held_.size() >= 64) return false;
    held_.push_back(held);
    return true;
  }
  bool TryTake(Held& held) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (held_.empty()) return false;
    held = held_.back();
    held_.pop_back();
    return true;
  }

 private:
  std::mutex mutex_;
  std::vector<Held> held_;
};

struct WorkerCounts {
  uint64_t allocated = 0;
  uint64_t exhausted = 0;
};

// One thread's share of the stress. Stops at its first failure.
class StressWorker {
 public:
  StressWorker(IovaAllocator& space, OwnershipShadow& shadow, Mailbox& mailbox, uint32_t owner,
               uint64_t seed)
      : space_(space), shadow_(shadow), mailbox_(mailbox), owner_(owner), seed_(seed), rng_(seed) {}

  WorkerCounts Run(int operations) {
    for (int op = 0; op < operations && ok_; ++op) {
      const uint64_t dice = Uniform(rng_, 0, 99);
      if (dice < 3) {
        PostOne();
      } else if (dice < 6) {
        FreeFromMailbox();
      } else if (live_.size() < kMaxLivePerWorker && (live_.empty() || dice < 55)) {
        AllocateOne();
      } else {
        FreeOne(Uniform(rng_, 0, live_.size() - 1));
      }
    }
    while (!live_.empty() && ok_) FreeOne(live_.size() - 1);
    return counts_;
  }

 private:
  uint64_t RandomSize() {
    const uint64_t dice = Uniform(rng_, 0, 99);
    if (dice < 75) return Uniform(rng_, 1, 32) * kPage;
    if (dice < 95) return Uniform(rng_, 64, 512) * kPage;
    return 2 * kMiB;
  }

  void Fail(const std::string& what) {
    ADD_FAILURE() << "owner " << owner_ << " seed " << Hex(seed_) << ": " << what;
    ok_ = false;
  }

  void AllocateOne() {
    const uint64_t size = RandomSize();
    const uint64_t limit = Percent(rng_, 20) ? kStressLowLimit : kNoLimit;
    absl::StatusOr<uint64_t> iova = space_.Allocate(size, limit);
    if (!iova.ok()) {
      if (iova.status().code() == absl::StatusCode::kResourceExhausted) {
        ++counts_.exhausted;
        return;
      }
      return Fail("Allocate(" + Hex(size) + "): " + iova.status().ToString());
    }
    ++counts_.allocated;
    if (std::string error = PlacementError(*iova, size, limit, options_); !error.empty()) {
      return Fail(error);
    }
    if (std::string error = shadow_.Claim(*iova, FootprintBytes(size), owner_); !error.empty()) {
      return Fail("overlap: " + error);
    }
    live_.push_back({*iova, size, owner_});
  }

  // Unclaims before Free: once freed, the range may be someone else's.
  void FreeHeld(const Held& held) {
    if (std::string error = shadow_.Release(held.iova, FootprintBytes(held.size), held.owner);
        !error.empty()) {
      return Fail(error);
    }
    if (absl::Status status = space_.Free(held.iova, held.size); !status.ok()) {
      Fail("Free(" + Hex(held.iova) + ", " + Hex(held.size) + "): " + status.ToString());
    }
  }

  void FreeOne(size_t index) {
    const Held held = live_[index];
    live_[index] = live_.back();
    live_.pop_back();
    FreeHeld(held);
  }

  void PostOne() {
    if (live_.empty()) return;
    const size_t index = Uniform(rng_, 0, live_.size() - 1);
    if (!mailbox_.TryPost(live_[index])) return;
    live_[index] = live_.back();
    live_.pop_back();
  }

  void FreeFromMailbox() {
    Held held;
    if (mailbox_.TryTake(held)) FreeHeld(held);
  }

  const IovaAllocatorOptions options_ = StressOptions();
  IovaAllocator& space_;
  OwnershipShadow& shadow_;
  Mailbox& mailbox_;
  const uint32_t owner_;
  const uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<Held> live_;
  WorkerCounts counts_;
  bool ok_ = true;
};

// Takes and returns small fixed ranges while the workers allocate: every
// conflict with allocated space makes the allocator reclaim all caches.
void RunReserver(IovaAllocator& space, OwnershipShadow& shadow, uint32_t owner, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<IovaRange> held;
  auto fail = [&](const std::string& what) {
    ADD_FAILURE() << "reserver seed " << Hex(seed) << ": " << what;
  };
  auto unreserve_last = [&]() -> bool {
    const IovaRange range = held.back();
    held.pop_back();
    if (std::string error = shadow.Release(range.start, range.size, owner); !error.empty()) {
      fail(error);
      return false;
    }
    if (absl::Status status = space.Unreserve(range.start, range.size); !status.ok()) {
      fail("Unreserve(" + Hex(range.start) + "): " + status.ToString());
      return false;
    }
    return true;
  };
  for (int op = 0; op < kReserverOps; ++op) {
    if (!held.empty() && (held.size() == kMaxReservations || Percent(rng, 40))) {
      std::swap(held[Uniform(rng, 0, held.size() - 1)], held.back());
      if (!unreserve_last()) return;
      continue;
    }
    const uint64_t pages = Uniform(rng, 1, 16);
    const uint64_t iova = kStressFirst + Uniform(rng, 0, kStressBytes / kPage - pages) * kPage;
    const absl::Status status = space.Reserve(iova, pages * kPage);
    if (status.code() == absl::StatusCode::kAlreadyExists) continue;
    if (!status.ok()) return fail("Reserve(" + Hex(iova) + "): " + status.ToString());
    if (std::string error = shadow.Claim(iova, pages * kPage, owner); !error.empty()) {
      return fail("Reserve gave out taken space: " + error);
    }
    held.push_back({iova, pages * kPage});
  }
  while (!held.empty()) {
    if (!unreserve_last()) return;
  }
}

// Reclaims caches and reads stats while the workers run: reclaim against
// live fast paths is the handshake under test.
void RunReclaimer(IovaAllocator& space, const std::atomic<int>& workers_running) {
  for (int round = 0; workers_running.load(std::memory_order_acquire) > 0; ++round) {
    space.ShrinkIdleCaches();
    if (round % 4 == 0) space.ReclaimAllCaches();
    const IovaStats stats = space.Stats();
    // Fields need not sum under concurrency, but none may be out of bounds.
    EXPECT_LE(stats.allocated_bytes, stats.aperture_bytes);
    EXPECT_LE(stats.cached_bytes, stats.aperture_bytes);
    EXPECT_LE(stats.free_bytes, stats.aperture_bytes);
    EXPECT_LE(stats.reserved_bytes, stats.aperture_bytes);
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // pacing, not a deadline
  }
}

// Space that is whole again: nothing allocated or cached, and the arena's
// largest block as it was when the allocator was new.
void ExpectWhole(IovaAllocator& space, const IovaStats& fresh) {
  space.ReclaimAllCaches();
  const IovaStats stats = space.Stats();
  EXPECT_EQ(stats.allocated_bytes, 0u);
  EXPECT_EQ(stats.cached_bytes, 0u);
  EXPECT_EQ(stats.reserved_bytes, fresh.reserved_bytes);
  EXPECT_EQ(stats.free_bytes + stats.reserved_bytes, stats.aperture_bytes);
  EXPECT_EQ(stats.largest_free_block_bytes, fresh.largest_free_block_bytes);
}

class IovaStressTest : public testing::TestWithParam<int> {};

TEST_P(IovaStressTest, NoGranuleEverHasTwoOwners) {
  const int workers = GetParam();
  SCOPED_TRACE(testing::Message() << "seed " << Hex(kSeed) << ", " << workers << " workers");
  std::unique_ptr<IovaAllocator> space = CreateOrNull(StressOptions());
  ASSERT_NE(space, nullptr);
  const IovaStats fresh = space->Stats();
  OwnershipShadow shadow(kStressFirst, kStressBytes);
  // The fixed hole is owned from the start: handing out any of it is an overlap too.
  ASSERT_EQ(shadow.Claim(kStressHole, kMiB, kFixedOwner), "");
  Mailbox mailbox;

  std::atomic<int> workers_running(workers);
  std::vector<WorkerCounts> counts(workers);
  std::barrier start(workers + 2);
  std::vector<std::thread> threads;
  for (int i = 0; i < workers; ++i) {
    threads.emplace_back([&, i] {
      StressWorker worker(*space, shadow, mailbox, static_cast<uint32_t>(i + 1), kSeed + i);
      start.arrive_and_wait();
      counts[i] = worker.Run(kStressOps / workers);
      workers_running.fetch_sub(1, std::memory_order_release);
    });
  }
  threads.emplace_back([&] {
    start.arrive_and_wait();
    RunReserver(*space, shadow, static_cast<uint32_t>(workers + 1), kSeed + workers);
  });
  threads.emplace_back([&] {
    start.arrive_and_wait();
    RunReclaimer(*space, workers_running);
  });
  for (std::thread& thread : threads) thread.join();

  for (Held held; mailbox.TryTake(held);) {
    EXPECT_EQ(shadow.Release(held.iova, FootprintBytes(held.size), held.owner), "");
    EXPECT_TRUE(space->Free(held.iova, held.size).ok()) << Hex(held.iova);
  }
  WorkerCounts total;
  for (const WorkerCounts& c : counts) {
    total.allocated += c.allocated;
    total.exhausted += c.exhausted;
  }
  std::cout << workers << " workers: " << total.allocated << " allocations, " << total.exhausted
            << " RESOURCE_EXHAUSTED\n";
  const IovaStats stats = space->Stats();
  EXPECT_EQ(stats.failed_allocations, total.exhausted);
  EXPECT_EQ(stats.fast_path_allocations + stats.depot_allocations + stats.slow_path_allocations,
            total.allocated);
  ExpectWhole(*space, fresh);
}

INSTANTIATE_TEST_SUITE_P(Threads, IovaStressTest, testing::Values(2, 4, 8),
                         [](const testing::TestParamInfo<int>& info) {
                           return "Threads" + std::to_string(info.param);
                         });

// Allocates and frees `operations` times, then exits holding `keep` allocations
// for the caller to free from another thread.
std::vector<Held> ChurnAndKeep(IovaAllocator& space, uint64_t seed, int operations, size_t keep) {
  std::mt19937_64 rng(seed);
  std::vector<Held> live;
  for (int op = 0; op < operations; ++op) {
    if (live.empty() || Percent(rng, 55)) {
      const uint64_t size = Uniform(rng, 1, 32) * kPage;
      absl::StatusOr<uint64_t> iova = space.Allocate(size, kNoLimit);
      // Exhaustion while mostly free is MostlyFreeSpaceIsNeverExhausted's
      // business; this test is about what exiting threads leave behind.
      if (iova.status().code() == absl::StatusCode::kResourceExhausted) continue;
      if (!iova.ok()) {
        ADD_FAILURE() << "seed " << Hex(seed) << ": " << iova.status();
        break;
      }
      live.push_back({*iova, size, 0});
    } else {
      const size_t index = Uniform(rng, 0, live.size() - 1);
      EXPECT_TRUE(space.Free(live[index].iova, live[index].size).ok());
      live[index] = live.back();
      live.pop_back();
    }
  }
  while (live.size() > keep) {
    EXPECT_TRUE(space.Free(live.back().iova, live.back().size).ok());
    live.pop_back();
  }
  return live;
}

TEST(IovaConcurrencyTest, ExitedThreadsLeaveNoCacheBehind) {
  constexpr int kRounds = 40;
  constexpr int kThreadsPerRound = 4;
  std::unique_ptr<IovaAllocator> space = CreateOrNull(StressOptions());
  ASSERT_NE(space, nullptr);
  const IovaStats fresh = space->Stats();
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round << " seed " << Hex(kSeed));
    // The main thread binds a cache of its own once it frees what others kept.
    const uint64_t caches_before = space->Stats().thread_caches;
    std::vector<std::vector<Held>> kept(kThreadsPerRound);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreadsPerRound; ++i) {
      threads.emplace_back([&, i] {
        kept[i] = ChurnAndKeep(*space, kSeed + round * kThreadsPerRound + i, 300, i % 2 ? 8 : 0);
      });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(space->Stats().thread_caches, caches_before) << "exited threads still own caches";
    for (const std::vector<Held>& held : kept) {
      for (const Held& h : held) EXPECT_TRUE(space->Free(h.iova, h.size).ok()) << Hex(h.iova);
    }
  }
  // Idle twice over: every cache and depot magazine must be back in the arena.
  space->ShrinkIdleCaches();
  space->ShrinkIdleCaches();
  const IovaStats stats = space->Stats();
  EXPECT_EQ(stats.allocated_bytes, 0u);
  EXPECT_EQ(stats.cached_bytes, 0u);
  EXPECT_EQ(stats.free_bytes + stats.reserved_bytes, stats.aperture_bytes);
  ExpectWhole(*space, fresh);
}

// Allocates and frees `operations` times on `space`, claiming every footprint
// in `shadow`, and frees everything before returning. Returns an empty
// string, or the first thing that went wrong (without asserting, so that a
// caller waiting at a barrier still gets there).
std::string ChurnClaimed(IovaAllocator& space, const IovaAllocatorOptions& options,
                         OwnershipShadow& shadow, uint32_t owner, uint64_t seed, int operations) {
  std::mt19937_64 rng(seed);
  std::vector<Held> live;
  std::string error;
  auto free_last = [&] {
    const Held held = live.back();
    live.pop_back();
    error = shadow.Release(held.iova, FootprintBytes(held.size), held.owner);
    if (error.empty() && !space.Free(held.iova, held.size).ok()) error = "Free " + Hex(held.iova);
  };
  for (int op = 0; op < operations && error.empty(); ++op) {
    const uint64_t size = Uniform(rng, 1, 16) * kPage;
    absl::StatusOr<uint64_t> iova = space.Allocate(size, kNoLimit);
    if (!iova.ok()) return iova.status().ToString();
    error = PlacementError(*iova, size, kNoLimit, options);
    if (error.empty()) error = shadow.Claim(*iova, FootprintBytes(size), owner);
    if (!error.empty()) return error;
    live.push_back({*iova, size, owner});
    if (Percent(rng, 50)) free_last();
  }
  while (!live.empty() && error.empty()) free_last();
  return error;
}

// Refills carve many ranges at once, so in a small aperture other threads'
// caches can hold most of the space; an allocation must still get it back
// (the header: RESOURCE_EXHAUSTED only when the space, caches included, has
// no room). The threads' live sets together never exceed an eighth of it.
TEST(IovaConcurrencyTest, MostlyFreeSpaceIsNeverExhausted) {
  constexpr int kThreads = 4;
  constexpr int kOpsPerThread = 20000;
  constexpr size_t kLivePerThread = 2;
  constexpr uint64_t kBytes = 16 * kMiB;
  constexpr uint64_t kSizesInPages[] = {1, 3, 8, 16, 24, 32, 48, 64};
  std::unique_ptr<IovaAllocator> space = CreateOrNull(Options(kStressFirst, kBytes));
  ASSERT_NE(space, nullptr);
  std::atomic<bool> failed(false);
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      const uint64_t seed = kSeed + i;
      std::mt19937_64 rng(seed);
      std::vector<Held> live;
      start.arrive_and_wait();
      for (int op = 0; op < kOpsPerThread && !failed.load(std::memory_order_relaxed); ++op) {
        if (live.size() == kLivePerThread) {
          EXPECT_TRUE(space->Free(live.front().iova, live.front().size).ok());
          live.erase(live.begin());
        }
        const uint64_t size = kSizesInPages[Uniform(rng, 0, std::size(kSizesInPages) - 1)] * kPage;
        absl::StatusOr<uint64_t> iova = space->Allocate(size, kNoLimit);
        if (!iova.ok()) {
          const IovaStats stats = space->Stats();
          ADD_FAILURE() << "seed " << Hex(seed) << " op " << op << ": " << iova.status()
                        << " with allocated_bytes " << Hex(stats.allocated_bytes)
                        << " of aperture_bytes " << Hex(stats.aperture_bytes) << ", cached_bytes "
                        << Hex(stats.cached_bytes);
          failed.store(true, std::memory_order_relaxed);
          break;
        }
        live.push_back({*iova, size, 0});
      }
      for (const Held& held : live) EXPECT_TRUE(space->Free(held.iova, held.size).ok());
    });
  }
  for (std::thread& thread : threads) thread.join();
}

// Threads that used one allocator outlive it, use a second one created in its
// place (perhaps at the same address), and outlive that one too. The second
// aperture is disjoint from the first, so a range leaked from a stale cache
// would land outside it.
TEST(IovaConcurrencyTest, AllocatorsDieWhileTheirThreadsLive) {
  constexpr int kRounds = 16;
  constexpr int kThreads = 4;
  const IovaAllocatorOptions first_options = Options(0, 64 * kMiB);
  const IovaAllocatorOptions second_options = Options(4 * kGiB, 64 * kMiB);
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(testing::Message() << "round " << round << " seed " << Hex(kSeed));
    std::unique_ptr<IovaAllocator> first = CreateOrNull(first_options);
    ASSERT_NE(first, nullptr);
    std::unique_ptr<IovaAllocator> second;
    OwnershipShadow second_shadow(second_options.aperture_first, 64 * kMiB);
    std::barrier phase(kThreads + 1);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&, i] {
        const uint64_t seed = kSeed + round * kThreads + i;
        ChurnAndKeep(*first, seed, 200, 0);  // leaves its cache full of `first`'s ranges
        phase.arrive_and_wait();             // main destroys `first`, creates `second`
        phase.arrive_and_wait();
        if (second != nullptr) {
          const std::string error =
              ChurnClaimed(*second, second_options, second_shadow, i + 1, seed, 200);
          EXPECT_EQ(error, "") << "seed " << Hex(seed);
        }
        phase.arrive_and_wait();  // main checks and destroys `second`
        phase.arrive_and_wait();  // then this thread exits, its caches' spaces gone
      });
    }
    phase.arrive_and_wait();
    first.reset();
    second = CreateOrNull(second_options);
    phase.arrive_and_wait();
    phase.arrive_and_wait();
    if (second != nullptr) {
      second->ReclaimAllCaches();
      const IovaStats stats = second->Stats();
      EXPECT_EQ(stats.allocated_bytes, 0u);
      EXPECT_EQ(stats.cached_bytes, 0u);
      EXPECT_EQ(stats.free_bytes, stats.aperture_bytes);
    }
    second.reset();
    phase.arrive_and_wait();
    for (std::thread& thread : threads) thread.join();
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace iommu_broker
