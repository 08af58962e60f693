#include "client/iommuctl/sizes.h"

#include <cstdint>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker::iommuctl {
namespace {

using ::testing::HasSubstr;

TEST(ParseSizeTest, AcceptsDecimalHexAndSuffixes) {
  EXPECT_EQ(*ParseSize("size", "4096"), 4096u);
  EXPECT_EQ(*ParseSize("size", "0x1000"), 0x1000u);
  EXPECT_EQ(*ParseSize("size", "0XfFf"), 0xfffu);
  EXPECT_EQ(*ParseSize("size", "4K"), 4096u);
  EXPECT_EQ(*ParseSize("size", "4k"), 4096u);
  EXPECT_EQ(*ParseSize("size", "2M"), uint64_t{2} << 20);
  EXPECT_EQ(*ParseSize("size", "1G"), uint64_t{1} << 30);
  EXPECT_EQ(*ParseSize("size", "3t"), uint64_t{3} << 40);
  EXPECT_EQ(*ParseSize("size", "0"), 0u);
  EXPECT_EQ(*ParseSize("size", "18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(*ParseSize("size", "0xffffffffffffffff"), UINT64_MAX);
  EXPECT_EQ(*ParseSize("size", "16777215T"), uint64_t{16777215} << 40);
}

TEST(ParseSizeTest, RefusesOtherTextNamingTheFieldAndValue) {
  const absl::Status status = ParseSize("size", "3X").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("size '3X' is not a size: use bytes or a K/M/G/T"));
  for (const char* text : {"", "K", "0x", "-1", "+4", " 4", "4 ", "4KB", "4KK", "0x10K", "1.5M",
                           "0x-1", "0x0x1", "ten"}) {
    EXPECT_FALSE(ParseSize("size", text).ok()) << "'" << text << "'";
  }
}

TEST(ParseSizeTest, RefusesWhatDoesNotFitIn64Bits) {
  EXPECT_THAT(ParseSize("size", "18446744073709551616").status().message(),
              HasSubstr("size '18446744073709551616' is too large"));
  EXPECT_FALSE(ParseSize("size", "0x10000000000000000").ok());
  EXPECT_FALSE(ParseSize("size", "16777216T").ok());
  EXPECT_FALSE(ParseSize("size", "17179869184G").ok());
}

TEST(ParseAddressTest, SameSyntaxWithAnAddressMessage) {
  EXPECT_EQ(*ParseAddress("iova", "0xfee00000"), 0xfee00000u);
  EXPECT_EQ(*ParseAddress("phys", "1G"), uint64_t{1} << 30);
  EXPECT_THAT(ParseAddress("--iova", "0xzz").status().message(),
              HasSubstr("--iova '0xzz' is not an address"));
}

TEST(FormatSizeTest, UsesTheLargestExactSuffix) {
  EXPECT_EQ(FormatSize(0), "0");
  EXPECT_EQ(FormatSize(1), "1");
  EXPECT_EQ(FormatSize(4095), "4095");
  EXPECT_EQ(FormatSize(4096), "4K");
  EXPECT_EQ(FormatSize(6144), "6K");
  EXPECT_EQ(FormatSize(uint64_t{2} << 20), "2M");
  EXPECT_EQ(FormatSize(uint64_t{3} << 29), "1536M");
  EXPECT_EQ(FormatSize(uint64_t{1} << 30), "1G");
  EXPECT_EQ(FormatSize(uint64_t{1} << 48), "256T");
  EXPECT_EQ(FormatSize(UINT64_MAX), "18446744073709551615");
}

TEST(FormatSizeTest, RoundTripsThroughParseSize) {
  for (uint64_t bytes : {uint64_t{0}, uint64_t{5000}, uint64_t{1} << 12, uint64_t{3} << 21,
                         (uint64_t{1} << 48) - 4096, UINT64_MAX}) {
    EXPECT_EQ(*ParseSize("size", FormatSize(bytes)), bytes) << FormatSize(bytes);
  }
}

TEST(FormatAddressTest, IsLowerCaseHex) {
  EXPECT_EQ(FormatAddress(0), "0x0");
  EXPECT_EQ(FormatAddress(0xFEE00000), "0xfee00000");
  EXPECT_EQ(*ParseAddress("iova", FormatAddress(0x7fffffe00000)), 0x7fffffe00000u);
}

}  // namespace
}  // namespace iommu_broker::iommuctl
