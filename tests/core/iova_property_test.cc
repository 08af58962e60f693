// Property tests of IovaAllocator against an obviously correct reference model:
// random operation sequences, exhaustion and refill, stats, bad input, metadata size.
#include <malloc.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <iterator>
#include <latch>
#include <map>
#include <memory>
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
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::AnyOf;
using ::testing::AnyOfArray;
using ::testing::HasSubstr;

constexpr uint64_t kPage = kIovaGranule;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kNoLimit = ~uint64_t{0};
constexpr uint64_t k32BitLimit = 0xffffffff;
constexpr uint64_t k36BitLimit = (uint64_t{1} << 36) - 1;
constexpr uint64_t k48BitLast = (uint64_t{1} << 48) - 1;
constexpr uint64_t kMsiWindow = 0xfee00000;

// mallinfo2 sees nothing of a sanitizer's own allocator.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitizedMalloc = true;
#else
constexpr bool kSanitizedMalloc = false;
#endif

std::string MessageOf(const absl::Status& status) { return std::string(status.message()); }

// What Allocate takes from the space for a request of `size` bytes.
uint64_t FootprintBytes(uint64_t size) {
  return size_class::GranulesOf(size_class::IndexOf(size / kPage)) * kPage;
}

uint64_t FootprintAlignmentBytes(uint64_t size) {
  return size_class::AlignmentOf(size_class::IndexOf(size / kPage)) * kPage;
}

// Inclusive ends keep ranges at the top of a 64-bit aperture representable.
uint64_t LastByte(uint64_t first, uint64_t size) { return first + (size - 1); }

bool RangeOverflows(uint64_t first, uint64_t size) { return size - 1 > ~first; }

// Byte counts of a full 64-bit aperture reach 2^64; IovaStats saturates them.
using Uint128 = unsigned __int128;
uint64_t SaturatedBytes(Uint128 bytes) {
  return bytes > ~uint64_t{0} ? ~uint64_t{0} : static_cast<uint64_t>(bytes);
}

std::string DebugString(const IovaStats& stats) {
  char text[512];
  std::snprintf(text, sizeof(text),
                "aperture=%llu reserved=%llu allocated=%llu cached=%llu free=%llu largest=%llu "
                "fast=%llu depot=%llu slow=%llu failed=%llu reclaims=%llu caches=%llu",
                static_cast<unsigned long long>(stats.aperture_bytes),
                static_cast<unsigned long long>(stats.reserved_bytes),
                static_cast<unsigned long long>(stats.allocated_bytes),
                static_cast<unsigned long long>(stats.cached_bytes),
                static_cast<unsigned long long>(stats.free_bytes),
                static_cast<unsigned long long>(stats.largest_free_block_bytes),
                static_cast<unsigned long long>(stats.fast_path_allocations),
                static_cast<unsigned long long>(stats.depot_allocations),
                static_cast<unsigned long long>(stats.slow_path_allocations),
                static_cast<unsigned long long>(stats.failed_allocations),
                static_cast<unsigned long long>(stats.cache_reclaims),
                static_cast<unsigned long long>(stats.thread_caches));
  return text;
}

std::unique_ptr<IovaAllocator> CreateOrNull(const IovaAllocatorOptions& options) {
  absl::StatusOr<std::unique_ptr<IovaAllocator>> space = IovaAllocator::Create(options);
  EXPECT_TRUE(space.ok()) << space.status();
  return space.ok() ? *std::move(space) : nullptr;
}

uint64_t Uniform(std::mt19937_64& rng, uint64_t low, uint64_t high) {
  return std::uniform_int_distribution<uint64_t>(low, high)(rng);
}

bool Percent(std::mt19937_64& rng, int percent) {
  return Uniform(rng, 0, 99) < static_cast<uint64_t>(percent);
}

// The number of whole `block`-aligned blocks of `block` bytes inside [first, last].
uint64_t AlignedBlocksIn(uint64_t first, uint64_t last, uint64_t block) {
  if (first > last || first > ~uint64_t{0} - (block - 1)) return 0;
  const uint64_t aligned = (first + (block - 1)) & ~(block - 1);
  if (aligned > last) return 0;
  const uint64_t span_minus_one = last - aligned;  // span itself may be 2^64
  return span_minus_one / block + (span_minus_one % block == block - 1 ? 1 : 0);
}

// The reference: which bytes of the aperture are taken, as disjoint inclusive
// ranges keyed by first byte. Deliberately naive; it only has to be right.
class SpaceModel {
 public:
  enum class Use { kFixed, kReserved, kAllocated };
  struct Range {
    uint64_t last;
    Use use;
    uint64_t requested_size;  // what Allocate was asked for; the range is the footprint
  };

  explicit SpaceModel(const IovaAllocatorOptions& options)
      : aperture_first_(options.aperture_first), aperture_last_(options.aperture_last) {
    for (const IovaRange& fixed : options.reserved) AddFixed(fixed);
  }

  bool InAperture(uint64_t first, uint64_t size) const {
    return !RangeOverflows(first, size) && first >= aperture_first_ &&
           LastByte(first, size) <= aperture_last_;
  }

  // The taken range overlapping [first, first + size), or nullptr.
  const std::pair<const uint64_t, Range>* Overlap(uint64_t first, uint64_t size) const {
    auto after = ranges_.upper_bound(LastByte(first, size));
    if (after == ranges_.begin()) return nullptr;
    auto candidate = std::prev(after);
    return candidate->second.last >= first ? &*candidate : nullptr;
  }

  const Range* Find(uint64_t first) const {
    auto it = ranges_.find(first);
    return it == ranges_.end() ? nullptr : &it->second;
  }

  void Take(uint64_t first, uint64_t size, Use use, uint64_t requested_size = 0) {
    ranges_[first] = Range{LastByte(first, size), use, requested_size};
  }

  void Give(uint64_t first) { ranges_.erase(first); }

  // Blocks of `block` bytes (a power of two), aligned to themselves, wholly
  // free, inside the aperture and at or below `limit`. A buddy allocator with
  // every cache reclaimed can always serve a request whose bit_ceil fits one.
  uint64_t FreeAlignedBlocks(uint64_t block, uint64_t limit) const {
    const uint64_t last = std::min(limit, aperture_last_);
    if (last < aperture_first_) return 0;
    uint64_t count = 0;
    uint64_t cursor = aperture_first_;
    for (const auto& [first, range] : ranges_) {
      if (first > last) break;
      if (first > cursor) count += AlignedBlocksIn(cursor, first - 1, block);
      if (range.last >= last) return count;
      cursor = range.last + 1;
    }
    return count + AlignedBlocksIn(cursor, last, block);
  }

  uint64_t BytesOf(Use use) const {
    uint64_t bytes = 0;
    for (const auto& [first, range] : ranges_) {
      if (range.use == use) bytes += range.last - first + 1;
    }
    return bytes;
  }

  uint64_t aperture_first() const { return aperture_first_; }
  uint64_t aperture_last() const { return aperture_last_; }
  uint64_t aperture_bytes() const {
    return SaturatedBytes(static_cast<Uint128>(aperture_last_) - aperture_first_ + 1);
  }
  bool AllFree() const { return ranges_.empty(); }
  uint64_t allocated_bytes() const { return BytesOf(Use::kAllocated); }
  uint64_t reserved_bytes() const { return BytesOf(Use::kFixed) + BytesOf(Use::kReserved); }

 private:
  // Fixed ranges may overlap each other and the aperture's edges: clip, then
  // merge with whatever they overlap so ranges_ stays disjoint.
  void AddFixed(const IovaRange& fixed) {
    if (fixed.size == 0) return;
    uint64_t first = std::max(fixed.start, aperture_first_);
    uint64_t last = std::min(LastByte(fixed.start, fixed.size), aperture_last_);
    if (first > last) return;
    while (const auto* overlap = Overlap(first, last - first + 1)) {
      first = std::min(first, overlap->first);
      last = std::max(last, overlap->second.last);
      ranges_.erase(overlap->first);
    }
    ranges_[first] = Range{last, Use::kFixed, 0};
  }

  const uint64_t aperture_first_;
  const uint64_t aperture_last_;
  std::map<uint64_t, Range> ranges_;
};

void ExpectValidPlacement(const SpaceModel& model, uint64_t iova, uint64_t size, uint64_t limit) {
  const uint64_t footprint = FootprintBytes(size);
  EXPECT_EQ(iova % std::bit_floor(size), 0u) << Hex(iova) << " size " << Hex(size);
  EXPECT_EQ(iova % FootprintAlignmentBytes(size), 0u) << Hex(iova) << " size " << Hex(size);
  EXPECT_TRUE(model.InAperture(iova, footprint))
      << Hex(iova) << " footprint " << Hex(footprint) << " leaves aperture ["
      << Hex(model.aperture_first()) << ", " << Hex(model.aperture_last()) << "]";
  EXPECT_LE(LastByte(iova, footprint), limit)
      << Hex(iova) << " footprint " << Hex(footprint) << " exceeds limit " << Hex(limit);
  if (const auto* overlap = model.Overlap(iova, footprint)) {
    ADD_FAILURE() << "[" << Hex(iova) << ", +" << Hex(footprint) << ") overlaps taken ["
                  << Hex(overlap->first) << ", " << Hex(overlap->second.last) << "] use "
                  << static_cast<int>(overlap->second.use);
  }
}

// Exact when quiescent (this test is single-threaded unless it says otherwise).
void ExpectStatsMatchModel(const IovaStats& stats, const SpaceModel& model) {
  EXPECT_EQ(stats.aperture_bytes, model.aperture_bytes()) << DebugString(stats);
  EXPECT_EQ(stats.allocated_bytes, model.allocated_bytes()) << DebugString(stats);
  EXPECT_EQ(stats.reserved_bytes, model.reserved_bytes()) << DebugString(stats);
  const Uint128 sum = static_cast<Uint128>(stats.reserved_bytes) + stats.allocated_bytes +
                      stats.cached_bytes + stats.free_bytes;
  EXPECT_EQ(SaturatedBytes(sum), stats.aperture_bytes) << DebugString(stats);
  EXPECT_LE(stats.largest_free_block_bytes, stats.free_bytes) << DebugString(stats);
  if (stats.largest_free_block_bytes == ~uint64_t{0}) {
    EXPECT_TRUE(model.AllFree()) << "only a whole free 64-bit aperture saturates the largest "
                                    "block: "
                                 << DebugString(stats);
  } else if (stats.largest_free_block_bytes != 0) {
    EXPECT_TRUE(std::has_single_bit(stats.largest_free_block_bytes)) << DebugString(stats);
    EXPECT_GT(model.FreeAlignedBlocks(stats.largest_free_block_bytes, kNoLimit), 0u)
        << "largest free block is not free in the model: " << DebugString(stats);
  }
}

struct Scenario {
  std::string name;
  IovaAllocatorOptions options;
  std::vector<uint64_t> limits;
  uint64_t largest_request;  // power-of-two sizes go up to this
};

IovaAllocatorOptions Options(uint64_t first, uint64_t last, std::vector<IovaRange> reserved = {},
                             FreeCheck free_check = FreeCheck::kTrusted) {
  IovaAllocatorOptions options;
  options.aperture_first = first;
  options.aperture_last = last;
  options.reserved = std::move(reserved);
  options.free_check = free_check;
  return options;
}

// 64 MiB that does not start at 0 or on a 64 MiB boundary, with a hole in the
// middle and a fixed range hanging over its lower edge: exhaustion is common.
constexpr uint64_t kSmallFirst = 0x10100000;
IovaAllocatorOptions SmallApertureOptions(FreeCheck free_check = FreeCheck::kTrusted) {
  return Options(kSmallFirst, kSmallFirst + 64 * kMiB - 1,
                 {{kSmallFirst + 28 * kMiB, 2 * kMiB}, {kSmallFirst - kMiB, kMiB + 16 * kPage}},
                 free_check);
}

Scenario SmallApertureWithHole(FreeCheck free_check) {
  return {"SmallApertureWithHole",
          SmallApertureOptions(free_check),
          {kNoLimit, k32BitLimit, kSmallFirst + 40 * kMiB - 1, kSmallFirst + 8 * kMiB - 1},
          64 * kMiB};
}

// One buddy block that straddles every limit: the allocator must split it.
Scenario SmallApertureAtZero() {
  return {"SmallApertureAtZero",
          Options(0, 64 * kMiB - 1),
          {kNoLimit, 16 * kMiB - 1, 40 * kMiB - 1, 3 * kMiB - 1},
          32 * kMiB};
}

Scenario Aperture48BitWithMsiWindow() {
  return {"Aperture48BitWithMsiWindow",
          Options(0, k48BitLast, {{kMsiWindow, kMiB}}),
          {k32BitLimit, k36BitLimit, kNoLimit},
          kGiB};
}

// 8 GiB around the 4 GiB line, with a 32-bit limit leaving only 1 GiB usable.
Scenario ApertureAcross4GiB() {
  return {"ApertureAcross4GiB",
          Options(3 * kGiB, 11 * kGiB - 1, {{kMsiWindow, kMiB}}),
          {k32BitLimit, k36BitLimit, kNoLimit},
          kGiB};
}

Scenario Full64BitAperture() {
  return {"Full64BitAperture",
          Options(0, kNoLimit, {{kMsiWindow, kMiB}}),
          {k32BitLimit, k36BitLimit, kNoLimit},
          kGiB};
}

// Drives one allocator and the model through the same random operations and
// compares them after every step. Stops at the first failure.
class RandomOperations {
 public:
  RandomOperations(const Scenario& scenario, uint64_t seed)
      : scenario_(scenario), rng_(seed), model_(scenario.options) {
    space_ = CreateOrNull(scenario.options);
  }

  void Run(int operations) {
    ASSERT_NE(space_, nullptr);
    for (int step = 0; step < operations && !testing::Test::HasFailure(); ++step) {
      SCOPED_TRACE(testing::Message() << "step " << step);
      Step();
      ExpectStatsMatch();
    }
    while (!live_.empty() && !testing::Test::HasFailure()) FreeOne();
    while (!reservations_.empty() && !testing::Test::HasFailure()) UnreserveOne();
    space_->ReclaimAllCaches();
    ExpectStatsMatch();
    EXPECT_EQ(space_->Stats().cached_bytes, 0u);
    EXPECT_EQ(space_->Stats().allocated_bytes, 0u);
  }

 private:
  struct Allocation {
    uint64_t iova;
    uint64_t size;
  };

  void Step() {
    const uint64_t dice = Uniform(rng_, 0, 99);
    if (dice < 42) {
      AllocateOne(RandomSize(), RandomLimit());
    } else if (dice < 75) {
      if (!live_.empty()) FreeOne();
    } else if (dice < 78) {
      AllocateBurst();
    } else if (dice < 81) {
      if (!live_.empty()) FreeOneClass();
    } else if (dice < 88) {
      ReserveOne();
    } else if (dice < 93) {
      if (!reservations_.empty()) UnreserveOne();
    } else if (dice < 95) {
      FreeBogus();
    } else if (dice < 97) {
      space_->ReclaimAllCaches();
      EXPECT_EQ(space_->Stats().cached_bytes, 0u) << "after ReclaimAllCaches";
    } else {
      space_->ShrinkIdleCaches();
      space_->ShrinkIdleCaches();
      EXPECT_EQ(space_->Stats().cached_bytes, 0u) << "after two idle ShrinkIdleCaches";
    }
  }

  uint64_t RandomSize() {
    const uint64_t dice = Uniform(rng_, 0, 99);
    if (dice < 55) return Uniform(rng_, 1, 32) * kPage;
    if (dice < 80) return Uniform(rng_, 64, 512) * kPage;
    if (dice < 87) {
      const int top = std::countr_zero(scenario_.largest_request);
      return uint64_t{1} << Uniform(rng_, 21, top);
    }
    // Sizes just past a class boundary or a power of two, and anything at all.
    switch (Uniform(rng_, 0, 2)) {
      case 0:
        return ((uint64_t{1} << Uniform(rng_, 0, 12)) + 1) * kPage;
      case 1:
        return (uint64_t{3} << Uniform(rng_, 0, 10)) * kPage;
      default:
        return Uniform(rng_, 1, 4096) * kPage;
    }
  }

  uint64_t RandomLimit() { return scenario_.limits[Uniform(rng_, 0, scenario_.limits.size() - 1)]; }

  // Enough of one class to overflow a thread's magazines into the depot.
  void AllocateBurst() {
    // Few sizes, so that later bursts meet the magazines earlier ones filled.
    constexpr uint64_t kBurstPages[] = {1, 2, 3, 8, 16, 64};
    const uint64_t size = kBurstPages[Uniform(rng_, 0, std::size(kBurstPages) - 1)] * kPage;
    const uint64_t limit = RandomLimit();
    const uint64_t count = Uniform(rng_, 64, 400);
    for (uint64_t i = 0; i < count && !testing::Test::HasFailure(); ++i) {
      if (!AllocateOne(size, limit)) return;
    }
  }

  // Frees every live allocation of one class, as a burst of same-class frees
  // that fills magazines and hands them to the depot.
  void FreeOneClass() {
    const uint64_t footprint = FootprintBytes(live_[Uniform(rng_, 0, live_.size() - 1)].size);
    for (size_t i = live_.size(); i-- > 0 && !testing::Test::HasFailure();) {
      if (FootprintBytes(live_[i].size) == footprint) FreeAt(i);
    }
  }

  // Returns whether the allocation succeeded.
  bool AllocateOne(uint64_t size, uint64_t limit) {
    const uint64_t footprint = FootprintBytes(size);
    SCOPED_TRACE(testing::Message() << "Allocate(" << Hex(size) << ", " << Hex(limit) << ")");
    absl::StatusOr<uint64_t> iova = space_->Allocate(size, limit);
    if (iova.ok()) {
      ExpectValidPlacement(model_, *iova, size, limit);
      model_.Take(*iova, footprint, SpaceModel::Use::kAllocated, size);
      live_.push_back({*iova, size});
      ++successes_;
      return true;
    }
    const bool can_never_fit = limit < model_.aperture_first() ||
                               limit - model_.aperture_first() < footprint - 1 ||
                               model_.aperture_last() - model_.aperture_first() < footprint - 1;
    if (can_never_fit) {
      EXPECT_THAT(iova.status().code(),
                  AnyOf(absl::StatusCode::kOutOfRange, absl::StatusCode::kResourceExhausted))
          << iova.status();
    } else {
      EXPECT_EQ(iova.status().code(), absl::StatusCode::kResourceExhausted) << iova.status();
    }
    if (iova.status().code() == absl::StatusCode::kResourceExhausted) {
      ++exhausted_;
      EXPECT_EQ(model_.FreeAlignedBlocks(std::bit_ceil(footprint), limit), 0u)
          << "RESOURCE_EXHAUSTED although the model has a free aligned "
          << Hex(std::bit_ceil(footprint)) << " block below the limit";
    }
    return false;
  }

  void FreeOne() { FreeAt(Uniform(rng_, 0, live_.size() - 1)); }

  void FreeAt(size_t index) {
    const Allocation victim = live_[index];
    live_[index] = live_.back();
    live_.pop_back();
    SCOPED_TRACE(testing::Message()
                 << "Free(" << Hex(victim.iova) << ", " << Hex(victim.size) << ")");
    EXPECT_TRUE(space_->Free(victim.iova, victim.size).ok());
    model_.Give(victim.iova);
    recently_freed_.push_back(victim);
    if (recently_freed_.size() > 64) recently_freed_.erase(recently_freed_.begin());
  }

  // Checked mode refuses frees of what is not allocated as allocated; the
  // trusted mode promises nothing, so it is not asked.
  void FreeBogus() {
    if (scenario_.options.free_check != FreeCheck::kChecked) return;
    uint64_t iova;
    uint64_t size;
    if (!recently_freed_.empty() && Percent(rng_, 50)) {
      const Allocation& freed = recently_freed_[Uniform(rng_, 0, recently_freed_.size() - 1)];
      iova = freed.iova;
      size = freed.size;
    } else if (!live_.empty()) {
      const Allocation& live = live_[Uniform(rng_, 0, live_.size() - 1)];
      iova = live.iova;
      size = live.size + kPage;  // the wrong size, sometimes of the same class
    } else {
      return;
    }
    const SpaceModel::Range* range = model_.Find(iova);
    if (range != nullptr && range->use == SpaceModel::Use::kAllocated &&
        range->requested_size == size) {
      return;  // reallocated with this very size since: a legitimate Free
    }
    SCOPED_TRACE(testing::Message() << "bogus Free(" << Hex(iova) << ", " << Hex(size) << ")");
    const IovaStats before = space_->Stats();
    const absl::Status status = space_->Free(iova, size);
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(MessageOf(status), HasSubstr(Hex(iova)));
    EXPECT_EQ(DebugString(space_->Stats()), DebugString(before));
  }

  // A range that is free, taken, recently freed (so maybe cached), or hanging
  // over the aperture's edge.
  std::pair<uint64_t, uint64_t> RandomReservation() {
    const uint64_t dice = Uniform(rng_, 0, 99);
    const uint64_t pages = Uniform(rng_, 1, 16);
    const uint64_t first = model_.aperture_first();
    const uint64_t last = model_.aperture_last();
    if (dice < 30 && !live_.empty()) {
      const Allocation& live = live_[Uniform(rng_, 0, live_.size() - 1)];
      const uint64_t offset = Uniform(rng_, 0, FootprintBytes(live.size) / kPage - 1) * kPage;
      return {live.iova + offset, pages * kPage};
    }
    if (dice < 55 && !recently_freed_.empty()) {
      const Allocation& freed = recently_freed_[Uniform(rng_, 0, recently_freed_.size() - 1)];
      return {freed.iova, FootprintBytes(freed.size)};
    }
    if (dice < 65) {  // over the lower or the upper edge
      const uint64_t overhang = (pages + 1) / 2 * kPage;
      if (Percent(rng_, 50) && first >= overhang) return {first - overhang, pages * kPage};
      return {last + 1 - overhang, pages * kPage};  // wraps past 2^64 for a full aperture
    }
    const uint64_t span_pages = (last - first) / kPage + 1;
    return {first + Uniform(rng_, 0, span_pages - 1) * kPage, pages * kPage};
  }

  void ReserveOne() {
    const auto [iova, size] = RandomReservation();
    SCOPED_TRACE(testing::Message() << "Reserve(" << Hex(iova) << ", " << Hex(size) << ")");
    const absl::Status status = space_->Reserve(iova, size);
    if (!model_.InAperture(iova, size)) {
      if (RangeOverflows(iova, size)) {
        EXPECT_THAT(status.code(),
                    AnyOf(absl::StatusCode::kOutOfRange, absl::StatusCode::kInvalidArgument))
            << status;
      } else {
        EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
      }
      return;
    }
    if (model_.Overlap(iova, size) != nullptr) {
      EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
      return;
    }
    // Free in the model but perhaps sitting in a cache: must be reclaimed.
    ASSERT_TRUE(status.ok()) << status;
    model_.Take(iova, size, SpaceModel::Use::kReserved);
    reservations_.push_back({iova, size});
  }

  void UnreserveOne() {
    const size_t index = Uniform(rng_, 0, reservations_.size() - 1);
    const Allocation victim = reservations_[index];
    reservations_[index] = reservations_.back();
    reservations_.pop_back();
    SCOPED_TRACE(testing::Message()
                 << "Unreserve(" << Hex(victim.iova) << ", " << Hex(victim.size) << ")");
    EXPECT_TRUE(space_->Unreserve(victim.iova, victim.size).ok());
    model_.Give(victim.iova);
  }

  void ExpectStatsMatch() {
    const IovaStats stats = space_->Stats();
    ExpectStatsMatchModel(stats, model_);
    EXPECT_EQ(stats.failed_allocations, exhausted_) << DebugString(stats);
    // Every successful allocation was served by exactly one of the three paths.
    EXPECT_EQ(stats.fast_path_allocations + stats.depot_allocations + stats.slow_path_allocations,
              successes_)
        << DebugString(stats);
  }

  const Scenario& scenario_;
  std::mt19937_64 rng_;
  SpaceModel model_;
  std::unique_ptr<IovaAllocator> space_;
  std::vector<Allocation> live_;
  std::vector<Allocation> reservations_;  // .size is the reserved size
  std::vector<Allocation> recently_freed_;
  uint64_t successes_ = 0;
  uint64_t exhausted_ = 0;
};

constexpr int kOperationsPerSeed = 4000;
constexpr uint64_t kSeeds[] = {0x5eed0001, 0x5eed0002, 0x5eed0003};

void RunRandomOperations(const Scenario& scenario) {
  for (uint64_t seed : kSeeds) {
    SCOPED_TRACE(testing::Message() << scenario.name << " seed " << Hex(seed));
    RandomOperations(scenario, seed).Run(kOperationsPerSeed);
    if (testing::Test::HasFailure()) return;
  }
}

TEST(IovaPropertyTest, RandomOperationsSmallApertureWithHole) {
  RunRandomOperations(SmallApertureWithHole(FreeCheck::kTrusted));
}

TEST(IovaPropertyTest, RandomOperationsSmallApertureWithHoleChecked) {
  RunRandomOperations(SmallApertureWithHole(FreeCheck::kChecked));
}

TEST(IovaPropertyTest, RandomOperationsSmallApertureAtZero) {
  RunRandomOperations(SmallApertureAtZero());
}

TEST(IovaPropertyTest, RandomOperations48BitApertureWithMsiWindow) {
  RunRandomOperations(Aperture48BitWithMsiWindow());
}

TEST(IovaPropertyTest, RandomOperationsApertureAcross4GiB) {
  RunRandomOperations(ApertureAcross4GiB());
}

TEST(IovaPropertyTest, RandomOperationsFull64BitAperture) {
  RunRandomOperations(Full64BitAperture());
}

// Allocates `size` until RESOURCE_EXHAUSTED; any other error is a failure.
std::vector<uint64_t> FillWith(IovaAllocator& space, uint64_t size, uint64_t limit) {
  std::vector<uint64_t> iovas;
  while (true) {
    absl::StatusOr<uint64_t> iova = space.Allocate(size, limit);
    if (!iova.ok()) {
      EXPECT_EQ(iova.status().code(), absl::StatusCode::kResourceExhausted) << iova.status();
      return iovas;
    }
    iovas.push_back(*iova);
  }
}

void FreeAll(IovaAllocator& space, const std::vector<uint64_t>& iovas, uint64_t size) {
  for (uint64_t iova : iovas) ASSERT_TRUE(space.Free(iova, size).ok()) << Hex(iova);
}

TEST(IovaPropertyTest, FreedSpaceIsReusableToTheSameCount) {
  const IovaAllocatorOptions options = SmallApertureOptions();
  const SpaceModel empty(options);
  for (uint64_t pages : {1, 3, 5, 12, 16, 512}) {
    const uint64_t size = pages * kPage;
    SCOPED_TRACE(testing::Message() << "size " << Hex(size));
    std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
    ASSERT_NE(space, nullptr);
    const std::vector<uint64_t> first_fill = FillWith(*space, size, kNoLimit);
    // A buddy space serves any request that fits one free aligned block of its
    // bit_ceil, and power-of-two requests exactly to the count of such blocks.
    const uint64_t blocks = empty.FreeAlignedBlocks(std::bit_ceil(FootprintBytes(size)), kNoLimit);
    if (std::has_single_bit(size)) {
      EXPECT_EQ(first_fill.size(), blocks);
    } else {
      EXPECT_GE(first_fill.size(), blocks);
    }
    ASSERT_NO_FATAL_FAILURE(FreeAll(*space, first_fill, size));
    EXPECT_EQ(FillWith(*space, size, kNoLimit).size(), first_fill.size());
  }
}

TEST(IovaPropertyTest, LimitIsHonouredUntilExhaustion) {
  const IovaAllocatorOptions options = Options(0, 64 * kMiB - 1);
  const uint64_t limit = 24 * kMiB - 1;
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  const std::vector<uint64_t> below = FillWith(*space, 16 * kPage, limit);
  EXPECT_EQ(below.size(), 24 * kMiB / (16 * kPage));
  for (uint64_t iova : below) EXPECT_LE(LastByte(iova, 16 * kPage), limit) << Hex(iova);
  // The rest of the aperture is still there for a device without the limit.
  EXPECT_EQ(FillWith(*space, 16 * kPage, kNoLimit).size(), 40 * kMiB / (16 * kPage));
}

// Space freed on one thread sits in that thread's cache; another thread must
// get it back rather than fail.
void ExpectRefillOnAnotherThread(bool first_thread_stays_alive) {
  const IovaAllocatorOptions options = SmallApertureOptions();
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  for (uint64_t pages : {1, 5, 16}) {
    const uint64_t size = pages * kPage;
    SCOPED_TRACE(testing::Message() << "size " << Hex(size));
    size_t first_count = 0;
    std::latch freed(1);
    std::latch refilled(1);
    std::thread owner([&] {
      const std::vector<uint64_t> iovas = FillWith(*space, size, kNoLimit);
      first_count = iovas.size();
      FreeAll(*space, iovas, size);
      freed.count_down();
      if (first_thread_stays_alive) refilled.wait();
    });
    if (!first_thread_stays_alive) owner.join();
    freed.wait();
    std::vector<uint64_t> second;
    std::thread thief([&] { second = FillWith(*space, size, kNoLimit); });
    thief.join();
    refilled.count_down();
    if (first_thread_stays_alive) owner.join();
    EXPECT_GT(first_count, 0u);
    EXPECT_EQ(second.size(), first_count);
    FreeAll(*space, second, size);
  }
}

TEST(IovaPropertyTest, SpaceCachedByAnExitedThreadIsReclaimed) {
  ExpectRefillOnAnotherThread(/*first_thread_stays_alive=*/false);
}

TEST(IovaPropertyTest, SpaceCachedByABlockedThreadIsReclaimed) {
  ExpectRefillOnAnotherThread(/*first_thread_stays_alive=*/true);
}

TEST(IovaPropertyTest, ReserveReclaimsCachedSpace) {
  const IovaAllocatorOptions options = SmallApertureOptions();
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  std::vector<uint64_t> iovas;
  std::thread owner([&] {
    iovas = FillWith(*space, 8 * kPage, kNoLimit);
    FreeAll(*space, iovas, 8 * kPage);
  });
  owner.join();
  ASSERT_FALSE(iovas.empty());
  // Every range just freed is free again, wherever it is cached.
  for (uint64_t iova : iovas) {
    ASSERT_TRUE(space->Reserve(iova, 8 * kPage).ok()) << Hex(iova);
  }
  const IovaStats stats = space->Stats();
  EXPECT_EQ(stats.free_bytes + stats.cached_bytes, 0u) << DebugString(stats);
  for (uint64_t iova : iovas) ASSERT_TRUE(space->Unreserve(iova, 8 * kPage).ok()) << Hex(iova);
  ExpectStatsMatchModel(space->Stats(), SpaceModel(options));
}

TEST(IovaPropertyTest, ShrinkIdleCachesReturnsAnIdleThreadsCache) {
  const IovaAllocatorOptions options = SmallApertureOptions();
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  std::latch cached(1);
  std::latch shrunk(1);
  std::thread idler([&] {
    FreeAll(*space, FillWith(*space, 4 * kPage, kNoLimit), 4 * kPage);
    cached.count_down();
    shrunk.wait();  // alive, but neither allocating nor freeing
  });
  cached.wait();
  EXPECT_GT(space->Stats().cached_bytes, 0u) << "nothing cached: the test proves nothing";
  space->ShrinkIdleCaches();
  space->ShrinkIdleCaches();
  const IovaStats stats = space->Stats();
  shrunk.count_down();
  idler.join();
  EXPECT_EQ(stats.cached_bytes, 0u) << DebugString(stats);
  ExpectStatsMatchModel(stats, SpaceModel(options));
}

struct BadCall {
  std::string description;
  std::function<absl::Status(IovaAllocator&)> call;
  std::vector<absl::StatusCode> codes;  // any of these
  std::string message_mentions;         // empty: no requirement
};

absl::Status StatusOf(const absl::StatusOr<uint64_t>& result) { return result.status(); }

std::vector<BadCall> BadCalls() {
  constexpr uint64_t first = kSmallFirst;
  constexpr uint64_t last = kSmallFirst + 64 * kMiB - 1;
  using Code = absl::StatusCode;
  return {
      {"Allocate size 0",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(0, kNoLimit)); },
       {Code::kInvalidArgument},
       ""},
      {"Allocate unaligned size",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(0x1003, kNoLimit)); },
       {Code::kInvalidArgument},
       "0x1003"},
      {"Allocate just over 1 GiB",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(kGiB + kPage, kNoLimit)); },
       {Code::kInvalidArgument},
       Hex(kGiB + kPage)},
      {"Allocate 2 GiB",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(2 * kGiB, kNoLimit)); },
       {Code::kInvalidArgument},
       Hex(2 * kGiB)},
      {"Allocate huge size",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(~uint64_t{0} - (kPage - 1), kNoLimit)); },
       {Code::kInvalidArgument},
       ""},
      {"Allocate with limit below the aperture",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(kPage, first - 1)); },
       {Code::kOutOfRange},
       Hex(first - 1)},
      {"Allocate with limit below aperture_first + size",
       [](IovaAllocator& s) { return StatusOf(s.Allocate(2 * kMiB, first + kMiB - 1)); },
       {Code::kOutOfRange},
       Hex(first + kMiB - 1)},
      {"Free unaligned iova",
       [](IovaAllocator& s) { return s.Free(first + 0x1003, kPage); },
       {Code::kInvalidArgument},
       Hex(first + 0x1003)},
      {"Free size 0",
       [](IovaAllocator& s) { return s.Free(first, 0); },
       {Code::kInvalidArgument},
       ""},
      {"Free unaligned size",
       [](IovaAllocator& s) { return s.Free(first, 0x1003); },
       {Code::kInvalidArgument},
       "0x1003"},
      {"Free over 1 GiB",
       [](IovaAllocator& s) { return s.Free(first, 2 * kGiB); },
       {Code::kInvalidArgument},
       Hex(2 * kGiB)},
      {"Reserve unaligned iova",
       [](IovaAllocator& s) { return s.Reserve(first + 0x1003, kPage); },
       {Code::kInvalidArgument},
       Hex(first + 0x1003)},
      {"Reserve unaligned size",
       [](IovaAllocator& s) { return s.Reserve(first, 0x1003); },
       {Code::kInvalidArgument},
       "0x1003"},
      {"Reserve size 0",
       [](IovaAllocator& s) { return s.Reserve(first, 0); },
       {Code::kInvalidArgument},
       ""},
      {"Reserve over the lower edge",
       [](IovaAllocator& s) { return s.Reserve(first - kPage, 2 * kPage); },
       {Code::kOutOfRange},
       Hex(first - kPage)},
      {"Reserve past the upper edge",
       [](IovaAllocator& s) { return s.Reserve(last + 1, kPage); },
       {Code::kOutOfRange},
       Hex(last + 1)},
      {"Reserve below the aperture",
       [](IovaAllocator& s) { return s.Reserve(0, kPage); },
       {Code::kOutOfRange},
       ""},
      {"Reserve a fixed reserved range",
       [](IovaAllocator& s) { return s.Reserve(first + 28 * kMiB + kPage, kPage); },
       {Code::kAlreadyExists},
       Hex(first + 28 * kMiB + kPage)},
      {"Unreserve unaligned iova",
       [](IovaAllocator& s) { return s.Unreserve(first + 0x1003, kPage); },
       {Code::kInvalidArgument, Code::kNotFound},
       Hex(first + 0x1003)},
  };
}

// Runs the same valid operations on two identical allocators, with every bad
// call interleaved on one of them: a bad call that changed anything would
// make their answers or stats diverge.
TEST(IovaPropertyTest, BadInputIsRefusedAndChangesNothing) {
  std::unique_ptr<IovaAllocator> tested = CreateOrNull(SmallApertureOptions());
  std::unique_ptr<IovaAllocator> control = CreateOrNull(SmallApertureOptions());
  ASSERT_NE(tested, nullptr);
  ASSERT_NE(control, nullptr);
  std::mt19937_64 rng(0xbad1);
  std::vector<uint64_t> live;
  for (const BadCall& bad : BadCalls()) {
    SCOPED_TRACE(bad.description);
    const uint64_t size = Uniform(rng, 1, 32) * kPage;
    absl::StatusOr<uint64_t> tested_iova = tested->Allocate(size, kNoLimit);
    absl::StatusOr<uint64_t> control_iova = control->Allocate(size, kNoLimit);
    ASSERT_TRUE(tested_iova.ok() && control_iova.ok());
    ASSERT_EQ(*tested_iova, *control_iova);

    const IovaStats before = tested->Stats();
    const absl::Status status = bad.call(*tested);
    EXPECT_THAT(status.code(), AnyOfArray(bad.codes)) << status;
    if (!bad.message_mentions.empty()) {
      EXPECT_THAT(MessageOf(status), HasSubstr(bad.message_mentions));
    }
    EXPECT_EQ(DebugString(tested->Stats()), DebugString(before));

    EXPECT_TRUE(tested->Free(*tested_iova, size).ok());
    EXPECT_TRUE(control->Free(*control_iova, size).ok());
    EXPECT_EQ(DebugString(tested->Stats()), DebugString(control->Stats()));
  }
}

TEST(IovaPropertyTest, UnreserveOfAnythingButAReservationIsRefused) {
  const IovaAllocatorOptions options = SmallApertureOptions();
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  const uint64_t reserved = kSmallFirst + 4 * kMiB;
  ASSERT_TRUE(space->Reserve(reserved, 4 * kPage).ok());
  absl::StatusOr<uint64_t> allocated = space->Allocate(4 * kPage, kNoLimit);
  ASSERT_TRUE(allocated.ok());
  const IovaStats before = space->Stats();
  const std::pair<uint64_t, uint64_t> wrong[] = {
      {reserved, 2 * kPage},                // part of a reservation
      {reserved + kPage, 3 * kPage},        // its tail
      {reserved, 8 * kPage},                // more than it
      {kSmallFirst + 28 * kMiB, 2 * kMiB},  // a fixed reserved range
      {*allocated, 4 * kPage},              // an allocation
      {kSmallFirst + 8 * kMiB, kPage},      // free space
  };
  for (const auto& [iova, size] : wrong) {
    SCOPED_TRACE(testing::Message() << "Unreserve(" << Hex(iova) << ", " << Hex(size) << ")");
    EXPECT_FALSE(space->Unreserve(iova, size).ok());
    EXPECT_EQ(DebugString(space->Stats()), DebugString(before));
  }
  EXPECT_TRUE(space->Unreserve(reserved, 4 * kPage).ok());
  EXPECT_TRUE(space->Free(*allocated, 4 * kPage).ok());
  space->ReclaimAllCaches();
  ExpectStatsMatchModel(space->Stats(), SpaceModel(options));
}

TEST(IovaPropertyTest, CreateRefusesBadOptions) {
  struct BadOptions {
    std::string description;
    IovaAllocatorOptions options;
    std::string message_mentions;
  };
  const BadOptions cases[] = {
      {"unaligned aperture_first", Options(0x1001, k48BitLast), "aperture_first"},
      {"unaligned aperture_first value", Options(0x1001, k48BitLast), "0x1001"},
      {"unaligned aperture_last + 1", Options(0, 0x10000), "aperture_last"},
      {"unaligned aperture_last value", Options(0, 0x10000), "0x10000"},
      {"aperture_first above aperture_last", Options(kGiB, kMiB - 1), "aperture"},
      {"unaligned reserved start", Options(0, k48BitLast, {{0x1003, kPage}}), "reserved"},
      {"unaligned reserved start value", Options(0, k48BitLast, {{0x1003, kPage}}), "0x1003"},
      {"unaligned reserved size", Options(0, k48BitLast, {{kPage, 0x1003}}), "reserved"},
  };
  for (const BadOptions& bad : cases) {
    SCOPED_TRACE(bad.description);
    absl::StatusOr<std::unique_ptr<IovaAllocator>> space = IovaAllocator::Create(bad.options);
    ASSERT_FALSE(space.ok());
    EXPECT_EQ(space.status().code(), absl::StatusCode::kInvalidArgument) << space.status();
    EXPECT_THAT(MessageOf(space.status()), HasSubstr(bad.message_mentions));
  }
}

TEST(IovaPropertyTest, CheckedFreeRefusesWhatIsNotAllocatedAndChangesNothing) {
  const IovaAllocatorOptions options = SmallApertureOptions(FreeCheck::kChecked);
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  // 9 and 10 pages share the 10-page class: only the recorded size will do.
  absl::StatusOr<uint64_t> nine = space->Allocate(9 * kPage, kNoLimit);
  absl::StatusOr<uint64_t> one = space->Allocate(kPage, kNoLimit);
  ASSERT_TRUE(nine.ok() && one.ok());
  ASSERT_EQ(FootprintBytes(9 * kPage), FootprintBytes(10 * kPage));
  SpaceModel model(options);
  model.Take(*nine, FootprintBytes(9 * kPage), SpaceModel::Use::kAllocated);
  model.Take(*one, kPage, SpaceModel::Use::kAllocated);
  uint64_t never_allocated = kSmallFirst;
  while (model.Overlap(never_allocated, kPage) != nullptr) never_allocated += kPage;

  const std::pair<uint64_t, uint64_t> wrong[] = {
      {*nine, 10 * kPage},       // same class, wrong size
      {*nine, kPage},            // another class
      {*nine + kPage, kPage},    // inside an allocation
      {never_allocated, kPage},  // free space
  };
  const IovaStats before = space->Stats();
  for (const auto& [iova, size] : wrong) {
    SCOPED_TRACE(testing::Message() << "Free(" << Hex(iova) << ", " << Hex(size) << ")");
    const absl::Status status = space->Free(iova, size);
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(MessageOf(status), HasSubstr(Hex(iova)));
    EXPECT_EQ(DebugString(space->Stats()), DebugString(before));
  }

  ASSERT_TRUE(space->Free(*one, kPage).ok());
  const IovaStats after_free = space->Stats();
  const absl::Status double_free = space->Free(*one, kPage);
  EXPECT_FALSE(double_free.ok());
  EXPECT_THAT(MessageOf(double_free), HasSubstr(Hex(*one)));
  EXPECT_EQ(DebugString(space->Stats()), DebugString(after_free));

  EXPECT_TRUE(space->Free(*nine, 9 * kPage).ok());
  space->ReclaimAllCaches();
  ExpectStatsMatchModel(space->Stats(), SpaceModel(options));
}

TEST(IovaPropertyTest, Full64BitApertureDoesNotOverflow) {
  const IovaAllocatorOptions options = Options(0, kNoLimit);
  std::unique_ptr<IovaAllocator> space = CreateOrNull(options);
  ASSERT_NE(space, nullptr);
  SpaceModel model(options);
  const uint64_t top_page = ~uint64_t{0} - (kPage - 1);

  EXPECT_TRUE(space->Reserve(top_page, kPage).ok());
  model.Take(top_page, kPage, SpaceModel::Use::kReserved);
  EXPECT_EQ(space->Reserve(top_page - kPage, 2 * kPage).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(space->Reserve(top_page, 2 * kPage).ok()) << "wraps past 2^64";
  ExpectStatsMatchModel(space->Stats(), model);

  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (uint64_t size : {kGiB, kPage, 3 * kPage, 2 * kMiB, kGiB - kPage, kGiB}) {
    SCOPED_TRACE(testing::Message() << "size " << Hex(size));
    absl::StatusOr<uint64_t> iova = space->Allocate(size, kNoLimit);
    ASSERT_TRUE(iova.ok()) << iova.status();
    ExpectValidPlacement(model, *iova, size, kNoLimit);
    model.Take(*iova, FootprintBytes(size), SpaceModel::Use::kAllocated);
    live.emplace_back(*iova, size);
    ExpectStatsMatchModel(space->Stats(), model);
  }
  EXPECT_TRUE(space->Unreserve(top_page, kPage).ok());
  model.Give(top_page);
  for (const auto& [iova, size] : live) {
    EXPECT_TRUE(space->Free(iova, size).ok());
    model.Give(iova);
  }
  space->ReclaimAllCaches();
  ExpectStatsMatchModel(space->Stats(), model);
  EXPECT_EQ(space->Stats().largest_free_block_bytes, ~uint64_t{0}) << "2^64, saturated";
}

// Heap bytes in use, including large blocks glibc maps separately.
uint64_t HeapBytesInUse() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

void ReportBytesPerAllocation(const std::string& key, uint64_t before, uint64_t after,
                              uint64_t live) {
  const double per_allocation =
      after > before ? static_cast<double>(after - before) / static_cast<double>(live) : 0.0;
  std::cout << key << ": " << per_allocation << " heap bytes per live allocation (" << live
            << " live)\n";
  testing::Test::RecordProperty(key, std::to_string(per_allocation));
  // Generous: the design keeps no per-allocation metadata in trusted mode.
  EXPECT_LT(per_allocation, 64.0) << key;
}

TEST(IovaPropertyTest, MetadataPerLiveAllocation) {
  if (kSanitizedMalloc) GTEST_SKIP() << "mallinfo2 does not see the sanitizer's heap";
  constexpr uint64_t kLive = 1 << 20;
  std::unique_ptr<IovaAllocator> space = CreateOrNull(Options(0, k48BitLast));
  ASSERT_NE(space, nullptr);
  std::vector<uint64_t> iovas;
  iovas.reserve(kLive);

  const uint64_t before = HeapBytesInUse();
  for (uint64_t i = 0; i < kLive; ++i) {
    absl::StatusOr<uint64_t> iova = space->Allocate(kPage, kNoLimit);
    ASSERT_TRUE(iova.ok()) << iova.status();
    iovas.push_back(*iova);
  }
  ReportBytesPerAllocation("one_page_bytes_per_live_allocation", before, HeapBytesInUse(), kLive);
  FreeAll(*space, iovas, kPage);
}

TEST(IovaPropertyTest, MetadataPerLiveAllocationFragmented) {
  if (kSanitizedMalloc) GTEST_SKIP() << "mallinfo2 does not see the sanitizer's heap";
  constexpr uint64_t kAllocations = 2 << 20;
  const uint64_t seed = 0xf4a6;
  SCOPED_TRACE(testing::Message() << "seed " << Hex(seed));
  std::mt19937_64 rng(seed);
  std::unique_ptr<IovaAllocator> space = CreateOrNull(Options(0, k48BitLast));
  ASSERT_NE(space, nullptr);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  live.reserve(kAllocations);

  const uint64_t before = HeapBytesInUse();
  for (uint64_t i = 0; i < kAllocations; ++i) {
    const uint64_t size = Uniform(rng, 1, 16) * kPage;
    absl::StatusOr<uint64_t> iova = space->Allocate(size, kNoLimit);
    ASSERT_TRUE(iova.ok()) << iova.status();
    live.emplace_back(*iova, size);
  }
  // Free a random half, keeping the survivors at the front without allocating.
  size_t kept = 0;
  for (size_t i = 0; i < live.size(); ++i) {
    if (Percent(rng, 50)) {
      ASSERT_TRUE(space->Free(live[i].first, live[i].second).ok());
    } else {
      live[kept++] = live[i];
    }
  }
  live.resize(kept);
  ReportBytesPerAllocation("fragmented_bytes_per_live_allocation", before, HeapBytesInUse(), kept);
  space->ReclaimAllCaches();
  ReportBytesPerAllocation("fragmented_reclaimed_bytes_per_live_allocation", before,
                           HeapBytesInUse(), kept);
  for (const auto& [iova, size] : live) ASSERT_TRUE(space->Free(iova, size).ok());
}

}  // namespace
}  // namespace iommu_broker
