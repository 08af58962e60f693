// Size classes: every request maps to the smallest class that holds it, with
// at most 25% waste, and footprints carry the alignment the allocator promises.
#include "core/iova/size_class.h"

#include <bit>

#include "gtest/gtest.h"

namespace iommu_broker::size_class {
namespace {

TEST(SizeClassTest, SmallSizesAreExact) {
  for (uint64_t granules = 1; granules <= 8; ++granules) {
    EXPECT_EQ(GranulesOf(IndexOf(granules)), granules) << granules;
  }
}

TEST(SizeClassTest, KnownClasses) {
  EXPECT_EQ(GranulesOf(IndexOf(9)), 10u);
  EXPECT_EQ(GranulesOf(IndexOf(17)), 20u);
  EXPECT_EQ(GranulesOf(IndexOf(100)), 112u);
  EXPECT_EQ(GranulesOf(IndexOf(512)), 512u);
  EXPECT_EQ(IndexOf(kMaxGranules), kCount - 1);
  EXPECT_EQ(GranulesOf(kCount - 1), kMaxGranules);
}

TEST(SizeClassTest, EverySizeGetsTheSmallestFittingClassWithBoundedWaste) {
  for (uint64_t granules = 1; granules <= kMaxGranules; ++granules) {
    const int index = IndexOf(granules);
    ASSERT_GE(index, 0);
    ASSERT_LT(index, kCount);
    const uint64_t footprint = GranulesOf(index);
    ASSERT_GE(footprint, granules) << granules;
    if (index > 0) {
      ASSERT_LT(GranulesOf(index - 1), granules) << granules;
    }
    ASSERT_LE(footprint * 4, granules * 5) << granules;  // at most 25% more
  }
}

TEST(SizeClassTest, AlignmentIsLargestPowerOfTwoNotAboveFootprint) {
  for (int index = 0; index < kCount; ++index) {
    const uint64_t footprint = GranulesOf(index);
    EXPECT_EQ(AlignmentOf(index), std::bit_floor(footprint));
    EXPECT_LT(GranulesOf(index), index + 1 < kCount ? GranulesOf(index + 1) : ~uint64_t{0});
  }
  EXPECT_EQ(AlignmentOf(IndexOf(512)), 512u);  // power-of-two sizes align to themselves
}

}  // namespace
}  // namespace iommu_broker::size_class
