#include "client/iommuctl/enum_names.h"

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::iommuctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(EnumNameTest, DropsThePrefixAndLowersTheCase) {
  EXPECT_EQ(EnumName(v1::POLICY_FAST), "fast");
  EXPECT_EQ(EnumName(v1::PAGE_SIZE_2M), "2m");
  EXPECT_EQ(EnumName(v1::FAULT_REASON_NOT_MAPPED), "not_mapped");
  EXPECT_EQ(EnumName(v1::MAPPING_KIND_TRANSLATED), "translated");
  EXPECT_EQ(EnumName(v1::Invalidation::SCOPE_RANGE), "range");
  EXPECT_EQ(EnumName(v1::ACCESS_UNSPECIFIED), "unspecified");
}

TEST(EnumNameTest, UnknownNumbersPrintAsNumbers) {
  EXPECT_EQ(EnumName(static_cast<v1::Policy>(42)), "42");
}

TEST(EnumValueNamesTest, ListsEveryValueButUnspecified) {
  EXPECT_THAT(EnumValueNames(*v1::Policy_descriptor()), ElementsAre("paranoid", "fast", "pt"));
  EXPECT_THAT(EnumValueNames(*v1::BypassMode_descriptor()),
              ElementsAre("none", "prefer", "require"));
}

TEST(ParseEnumTest, AcceptsShortNamesInAnyCase) {
  EXPECT_EQ(*ParseEnum<v1::Policy>("policy", "paranoid"), v1::POLICY_PARANOID);
  EXPECT_EQ(*ParseEnum<v1::Policy>("policy", "PT"), v1::POLICY_PT);
  EXPECT_EQ(*ParseEnum<v1::PageSize>("page-size", "1G"), v1::PAGE_SIZE_1G);
  EXPECT_EQ(*ParseEnum<v1::Access>("access", "Write"), v1::ACCESS_WRITE);
}

TEST(ParseEnumTest, RefusesUnknownNamesListingTheChoices) {
  const absl::Status status = ParseEnum<v1::Policy>("--policy", "fastest").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "--policy 'fastest' is not one of paranoid, fast, pt");
  EXPECT_FALSE(ParseEnum<v1::Policy>("--policy", "unspecified").ok());
  EXPECT_FALSE(ParseEnum<v1::Policy>("--policy", "POLICY_FAST").ok());
  EXPECT_FALSE(ParseEnum<v1::Policy>("--policy", "2").ok());
}

}  // namespace
}  // namespace iommu_broker::iommuctl
