// IovaAllocator's contract on one thread: alignment, limits, reserved ranges,
// Reserve/Unreserve, stats accounting, checked frees and cache shrinking.
#include "core/iova/iova_allocator.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kAll = ~uint64_t{0};

std::unique_ptr<IovaAllocator> MakeAllocator(IovaAllocatorOptions options = {}) {
  absl::StatusOr<std::unique_ptr<IovaAllocator>> allocator = IovaAllocator::Create(options);
  EXPECT_TRUE(allocator.ok()) << allocator.status();
  return *std::move(allocator);
}

TEST(IovaAllocatorTest, PowerOfTwoSizesAreSizeAligned) {
  auto allocator = MakeAllocator();
  for (uint64_t size = kPage; size <= kMaxIovaAllocation; size *= 2) {
    absl::StatusOr<uint64_t> iova = allocator->Allocate(size, kAll);
    ASSERT_TRUE(iova.ok()) << iova.status();
    EXPECT_EQ(*iova % size, 0u) << size;
  }
}

TEST(IovaAllocatorTest, OtherSizesAlignToLargestPowerOfTwoBelow) {
  auto allocator = MakeAllocator();
  for (uint64_t pages : {3, 5, 7, 9, 100, 511, 513}) {
    absl::StatusOr<uint64_t> iova = allocator->Allocate(pages * kPage, kAll);
    ASSERT_TRUE(iova.ok()) << iova.status();
    EXPECT_EQ(*iova % (std::bit_floor(pages) * kPage), 0u) << pages;
  }
}

TEST(IovaAllocatorTest, RespectsLimitAndAperture) {
  IovaAllocatorOptions options;
  options.aperture_first = 0x100000;
  auto allocator = MakeAllocator(options);
  absl::StatusOr<uint64_t> low = allocator->Allocate(2 * kPage, 0xffffffff);
  ASSERT_TRUE(low.ok());
  EXPECT_LE(*low + 2 * kPage - 1, 0xffffffffu);
  EXPECT_GE(*low, 0x100000u);
  absl::StatusOr<uint64_t> below_aperture = allocator->Allocate(kPage, 0xfffff);
  EXPECT_EQ(below_aperture.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(below_aperture.status().message(), HasSubstr("0xfffff"));
}

TEST(IovaAllocatorTest, NeverTouchesReservedRanges) {
  IovaAllocatorOptions options;
  options.aperture_first = 0;
  options.aperture_last = (16 << 20) - 1;     // 16 MiB
  options.reserved = {{0x400000, 0x800000}};  // the middle half
  auto allocator = MakeAllocator(options);
  int allocated = 0;
  while (true) {
    absl::StatusOr<uint64_t> iova = allocator->Allocate(kPage, kAll);
    if (!iova.ok()) {
      EXPECT_EQ(iova.status().code(), absl::StatusCode::kResourceExhausted);
      break;
    }
    EXPECT_TRUE(*iova < 0x400000 || *iova >= 0xc00000) << std::hex << *iova;
    ++allocated;
  }
  EXPECT_EQ(allocated, 2048);  // 8 MiB of pages
}

TEST(IovaAllocatorTest, StatsAccountForEveryByte) {
  IovaAllocatorOptions options;
  options.aperture_last = (1 << 30) - 1;
  options.reserved = {{0, 1 << 20}};
  auto allocator = MakeAllocator(options);
  absl::StatusOr<uint64_t> a = allocator->Allocate(3 * kPage, kAll);
  absl::StatusOr<uint64_t> b = allocator->Allocate(9 * kPage, kAll);  // class of 10 pages
  ASSERT_TRUE(a.ok() && b.ok());
  IovaStats stats = allocator->Stats();
  EXPECT_EQ(stats.aperture_bytes, uint64_t{1} << 30);
  EXPECT_EQ(stats.reserved_bytes, uint64_t{1} << 20);
  EXPECT_EQ(stats.allocated_bytes, 13 * kPage);
  EXPECT_EQ(stats.reserved_bytes + stats.allocated_bytes + stats.cached_bytes + stats.free_bytes,
            stats.aperture_bytes);
  ASSERT_TRUE(allocator->Free(*a, 3 * kPage).ok());
  ASSERT_TRUE(allocator->Free(*b, 9 * kPage).ok());
  allocator->ReclaimAllCaches();
  stats = allocator->Stats();
  EXPECT_EQ(stats.allocated_bytes, 0u);
  EXPECT_EQ(stats.cached_bytes, 0u);
  EXPECT_EQ(stats.free_bytes, (uint64_t{1} << 30) - (uint64_t{1} << 20));
  EXPECT_EQ(stats.largest_free_block_bytes, uint64_t{1} << 29);
}

TEST(IovaAllocatorTest, FreedRangeIsServedFromTheThreadCache) {
  auto allocator = MakeAllocator();
  absl::StatusOr<uint64_t> first = allocator->Allocate(kPage, kAll);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(allocator->Free(*first, kPage).ok());
  absl::StatusOr<uint64_t> again = allocator->Allocate(kPage, kAll);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *first);
  EXPECT_GE(allocator->Stats().fast_path_allocations, 1u);
}

TEST(IovaAllocatorTest, ReserveTakesExactlyThatRange) {
  auto allocator = MakeAllocator();
  ASSERT_TRUE(allocator->Reserve(0x10000, 0x4000).ok());
  EXPECT_EQ(allocator->Reserve(0x12000, 0x4000).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(allocator->Unreserve(0x10000, 0x1000).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(allocator->Unreserve(0x10000, 0x4000).ok());
  EXPECT_TRUE(allocator->Reserve(0x12000, 0x4000).ok());
}

TEST(IovaAllocatorTest, ReserveOfCachedRangeReclaimsIt) {
  auto allocator = MakeAllocator();
  absl::StatusOr<uint64_t> iova = allocator->Allocate(kPage, kAll);
  ASSERT_TRUE(iova.ok());
  EXPECT_EQ(allocator->Reserve(*iova, kPage).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(allocator->Free(*iova, kPage).ok());  // now only cached, so reservable
  EXPECT_TRUE(allocator->Reserve(*iova, kPage).ok());
}

TEST(IovaAllocatorTest, ReserveOutsideApertureIsOutOfRange) {
  IovaAllocatorOptions options;
  options.aperture_last = (1 << 20) - 1;
  auto allocator = MakeAllocator(options);
  absl::Status status = allocator->Reserve(0xff000, 0x2000);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(status.message(), HasSubstr("0xff000"));
}

TEST(IovaAllocatorTest, ReserveOverlappingFixedRegionNamesIt) {
  IovaAllocatorOptions options;
  options.reserved = {{0xfee00000, 0x100000}};
  auto allocator = MakeAllocator(options);
  absl::Status status = allocator->Reserve(0xfef00000 - kPage, 2 * kPage);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr("0xfee00000"));
}

TEST(IovaAllocatorTest, BadSizesAreRefusedWithTheValue) {
  auto allocator = MakeAllocator();
  EXPECT_EQ(allocator->Allocate(0, kAll).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status unaligned = allocator->Allocate(0x1003, kAll).status();
  EXPECT_EQ(unaligned.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unaligned.message(), HasSubstr("0x1003"));
  EXPECT_EQ(allocator->Allocate(kMaxIovaAllocation * 2, kAll).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(allocator->Free(0x1003, kPage).message(), HasSubstr("0x1003"));
}

TEST(IovaAllocatorTest, CheckedModeRefusesDoubleAndWrongSizeFree) {
  IovaAllocatorOptions options;
  options.free_check = FreeCheck::kChecked;
  auto allocator = MakeAllocator(options);
  absl::StatusOr<uint64_t> iova = allocator->Allocate(2 * kPage, kAll);
  ASSERT_TRUE(iova.ok());
  EXPECT_EQ(allocator->Free(*iova, kPage).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(allocator->Free(*iova, 2 * kPage).ok());
  absl::Status twice = allocator->Free(*iova, 2 * kPage);
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(twice.message(), HasSubstr("not allocated"));
  EXPECT_EQ(allocator->Stats().allocated_bytes, 0u);
}

// More ranges than a thread's two magazines hold, of two classes: the batch
// overflows into new magazines and every range comes back.
TEST(IovaAllocatorTest, FreeAllReturnsEveryRangeOfTheBatch) {
  auto allocator = MakeAllocator();
  std::vector<IovaRange> ranges;
  for (int i = 0; i < 600; ++i) {
    const uint64_t size = (i % 2 == 0 ? 1 : 3) * kPage;
    absl::StatusOr<uint64_t> iova = allocator->Allocate(size, kAll);
    ASSERT_TRUE(iova.ok()) << iova.status();
    ranges.push_back({*iova, size});
  }
  ASSERT_GT(allocator->Stats().allocated_bytes, 0u);
  ASSERT_TRUE(allocator->FreeAll(ranges).ok());
  EXPECT_EQ(allocator->Stats().allocated_bytes, 0u);
  absl::StatusOr<uint64_t> again = allocator->Allocate(kPage, kAll);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, ranges[598].start);  // the last 4 KiB range freed, from the cache
  allocator->ReclaimAllCaches();
  EXPECT_EQ(allocator->Stats().cached_bytes, 0u);
}

TEST(IovaAllocatorTest, FreeAllOfABadRangeFreesNothing) {
  auto allocator = MakeAllocator();
  absl::StatusOr<uint64_t> iova = allocator->Allocate(kPage, kAll);
  ASSERT_TRUE(iova.ok());
  const IovaRange good{*iova, kPage};
  const IovaRange unaligned{0x1003, kPage};
  absl::Status refused = allocator->FreeAll({good, unaligned});
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.message(), HasSubstr("0x1003"));
  EXPECT_EQ(allocator->FreeAll({good, {0x2000, 3}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(allocator->Stats().allocated_bytes, kPage);
}

TEST(IovaAllocatorTest, CheckedFreeAllRefusesTheWholeBatchForOneBadRange) {
  IovaAllocatorOptions options;
  options.free_check = FreeCheck::kChecked;
  auto allocator = MakeAllocator(options);
  absl::StatusOr<uint64_t> a = allocator->Allocate(kPage, kAll);
  absl::StatusOr<uint64_t> b = allocator->Allocate(2 * kPage, kAll);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::Status wrong_size = allocator->FreeAll({{*a, kPage}, {*b, kPage}});
  EXPECT_EQ(wrong_size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_size.message(), HasSubstr("ranges[1]"));
  absl::Status twice = allocator->FreeAll({{*a, kPage}, {*a, kPage}});
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator->Stats().allocated_bytes, 3 * kPage);
  // Both are still recorded as allocated: each can be freed once.
  ASSERT_TRUE(allocator->FreeAll({{*a, kPage}, {*b, 2 * kPage}}).ok());
  EXPECT_EQ(allocator->Free(*a, kPage).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator->Stats().allocated_bytes, 0u);
}

TEST(IovaAllocatorTest, CreateRefusesBadOptions) {
  IovaAllocatorOptions unaligned_first;
  unaligned_first.aperture_first = 0x1001;
  EXPECT_THAT(IovaAllocator::Create(unaligned_first).status().message(),
              HasSubstr("aperture_first 0x1001"));
  IovaAllocatorOptions inverted;
  inverted.aperture_first = 0x2000;
  inverted.aperture_last = 0xfff;
  EXPECT_EQ(IovaAllocator::Create(inverted).status().code(), absl::StatusCode::kInvalidArgument);
  IovaAllocatorOptions bad_reserved;
  bad_reserved.reserved = {{0x1000, 0}};
  EXPECT_EQ(IovaAllocator::Create(bad_reserved).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(IovaAllocatorTest, ShrinkIdleCachesReturnsOnlyIdleCaches) {
  auto allocator = MakeAllocator();
  absl::StatusOr<uint64_t> iova = allocator->Allocate(kPage, kAll);
  ASSERT_TRUE(iova.ok());
  ASSERT_TRUE(allocator->Free(*iova, kPage).ok());
  ASSERT_GT(allocator->Stats().cached_bytes, 0u);
  allocator->ShrinkIdleCaches();  // this thread was active since the last call
  EXPECT_GT(allocator->Stats().cached_bytes, 0u);
  allocator->ShrinkIdleCaches();  // and idle since
  EXPECT_EQ(allocator->Stats().cached_bytes, 0u);
}

TEST(IovaAllocatorTest, ExitingThreadReturnsItsCache) {
  auto allocator = MakeAllocator();
  std::thread([&] {
    absl::StatusOr<uint64_t> iova = allocator->Allocate(kPage, kAll);
    ASSERT_TRUE(iova.ok());
    ASSERT_TRUE(allocator->Free(*iova, kPage).ok());
  }).join();
  IovaStats stats = allocator->Stats();
  EXPECT_EQ(stats.cached_bytes, 0u);
  EXPECT_EQ(stats.thread_caches, 0u);
}

TEST(IovaAllocatorTest, FullSixtyFourBitAperture) {
  IovaAllocatorOptions options;
  options.aperture_last = kAll;
  auto allocator = MakeAllocator(options);
  absl::StatusOr<uint64_t> iova = allocator->Allocate(kMaxIovaAllocation, kAll);
  ASSERT_TRUE(iova.ok());
  EXPECT_EQ(*iova, kAll - kMaxIovaAllocation + 1);
  EXPECT_EQ(allocator->Stats().aperture_bytes, kAll);  // saturated
}

}  // namespace
}  // namespace iommu_broker
