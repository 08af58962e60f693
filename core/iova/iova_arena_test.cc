// The buddy arena: exact power-of-two fits, placement below an end, taking
// arbitrary ranges, and full coalescing back to one block.
#include "core/iova/iova_arena.h"

#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

TEST(IovaArenaTest, ReleasedRangeCoalescesIntoMaximalBlocks) {
  IovaArena arena;
  arena.Release(0, 1024);
  EXPECT_EQ(arena.free_granules(), 1024u);
  EXPECT_EQ(arena.largest_free_block(), 1024u);
  EXPECT_EQ(arena.free_blocks(), 1u);
}

TEST(IovaArenaTest, UnalignedRangeSplitsIntoAlignedBlocks) {
  IovaArena arena;
  arena.Release(3, 10);  // [3, 13) = 3 | 4-7 | 8-11 | 12
  EXPECT_EQ(arena.free_granules(), 10u);
  EXPECT_EQ(arena.largest_free_block(), 4u);
  EXPECT_EQ(arena.free_blocks(), 4u);
}

TEST(IovaArenaTest, TakePlacesHighestAlignedBelowEnd) {
  IovaArena arena;
  arena.Release(0, 1024);
  std::optional<uint64_t> first = arena.Take(4, 4, 100);
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(*first, 96u);
  EXPECT_EQ(arena.free_granules(), 1020u);
  std::optional<uint64_t> odd = arena.Take(3, 2, 1024);
  ASSERT_TRUE(odd.has_value());
  EXPECT_EQ(*odd % 2, 0u);
  EXPECT_LE(*odd + 3, 1024u);
}

TEST(IovaArenaTest, TakeFailsWhenNothingFitsBelowEnd) {
  IovaArena arena;
  arena.Release(100, 28);  // [100, 128)
  EXPECT_FALSE(arena.Take(4, 4, 100).has_value());
  EXPECT_FALSE(arena.Take(64, 64, 1 << 20).has_value());
  EXPECT_EQ(arena.free_granules(), 28u);
}

TEST(IovaArenaTest, FreeingEverythingRestoresOneBlock) {
  IovaArena arena;
  arena.Release(0, 256);
  std::vector<uint64_t> taken;
  while (std::optional<uint64_t> first = arena.Take(1, 1, 256)) taken.push_back(*first);
  EXPECT_EQ(taken.size(), 256u);
  EXPECT_EQ(arena.free_granules(), 0u);
  for (uint64_t first : taken) arena.Release(first, 1);
  EXPECT_EQ(arena.free_blocks(), 1u);
  EXPECT_EQ(arena.largest_free_block(), 256u);
}

TEST(IovaArenaTest, TakeRangeIsAllOrNothing) {
  IovaArena arena;
  arena.Release(0, 64);
  ASSERT_TRUE(arena.TakeRange(10, 5));
  EXPECT_EQ(arena.free_granules(), 59u);
  EXPECT_FALSE(arena.TakeRange(8, 4));  // 10 and 11 are taken
  EXPECT_EQ(arena.free_granules(), 59u);
  EXPECT_FALSE(arena.TakeRange(60, 8));  // runs past the end
  arena.Release(10, 5);
  EXPECT_EQ(arena.free_blocks(), 1u);
}

TEST(IovaArenaTest, HugeAddressesDoNotOverflow) {
  IovaArena arena;
  const uint64_t end = uint64_t{1} << 52;  // a full 64-bit aperture in granules
  arena.Release(0, end);
  EXPECT_EQ(arena.largest_free_block(), end);
  std::optional<uint64_t> top = arena.Take(1, 1, end);
  ASSERT_TRUE(top.has_value());
  EXPECT_EQ(*top, end - 1);
}

}  // namespace
}  // namespace iommu_broker
