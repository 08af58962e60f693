// The argument types through a real CLI11 parse: values reach the setter,
// unset options never call it, and bad text is a usage error naming it.
#include "client/iommuctl/arguments.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker::iommuctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Parses `args` (without the program name) with `app`; the error text of a
// refused command line, or "" when it parsed.
std::string Parse(CLI::App& app, std::vector<std::string> args) {
  std::reverse(args.begin(), args.end());  // CLI11 takes them last first
  try {
    app.parse(args);
  } catch (const CLI::ParseError& error) {
    return error.what();
  }
  return "";
}

TEST(ArgumentsTest, SizesAndAddressesReachTheSetter) {
  CLI::App app;
  std::optional<uint64_t> size;
  std::optional<uint64_t> iova;
  AddSizeArgument(app, "size", [&size](uint64_t value) { size = value; }, "");
  AddAddressArgument(app, "--iova", [&iova](uint64_t value) { iova = value; }, "");
  EXPECT_EQ(Parse(app, {"2M", "--iova", "0xfee00000"}), "");
  EXPECT_EQ(size, uint64_t{2} << 20);
  EXPECT_EQ(iova, 0xfee00000u);
}

TEST(ArgumentsTest, AnUnsetOptionNeverCallsItsSetter) {
  CLI::App app;
  bool called = false;
  AddAddressArgument(app, "--iova", [&called](uint64_t) { called = true; }, "");
  EXPECT_EQ(Parse(app, {}), "");
  EXPECT_FALSE(called);
}

TEST(ArgumentsTest, BadTextIsAUsageErrorNamingTheArgument) {
  CLI::App app;
  AddSizeArgument(app, "size", [](uint64_t) {}, "");
  EXPECT_THAT(Parse(app, {"3X"}), HasSubstr("size '3X' is not a size"));
}

TEST(ArgumentsTest, EnumsTakeShortNames) {
  CLI::App app;
  std::optional<v1::Policy> policy;
  AddEnumArgument<v1::Policy>(app, "--policy", [&policy](v1::Policy value) { policy = value; },
                              "");
  EXPECT_EQ(Parse(app, {"--policy", "paranoid"}), "");
  EXPECT_EQ(policy, v1::POLICY_PARANOID);
  CLI::App refused;
  AddEnumArgument<v1::Policy>(refused, "--policy", [](v1::Policy) {}, "");
  EXPECT_THAT(Parse(refused, {"--policy", "strict"}),
              HasSubstr("--policy 'strict' is not one of paranoid, fast, pt"));
}

TEST(ArgumentsTest, RepeatedArgumentsTakeRepeatsAndLists) {
  CLI::App app;
  std::vector<v1::PageSize> sizes;
  std::string id;
  app.add_option("id", id)->required();
  AddRepeatedArgument<v1::PageSize>(app, "--page-size", "", ParseEnum<v1::PageSize>,
                                    [&sizes](v1::PageSize size) { sizes.push_back(size); }, "");
  // The positional after a repeated option is not taken as another value.
  EXPECT_EQ(Parse(app, {"--page-size", "4k,2m", "--page-size", "1g", "vm1"}), "");
  EXPECT_THAT(sizes, ElementsAre(v1::PAGE_SIZE_4K, v1::PAGE_SIZE_2M, v1::PAGE_SIZE_1G));
  EXPECT_EQ(id, "vm1");
}

TEST(ArgumentsTest, DurationsUseAbslSyntax) {
  CLI::App app;
  absl::Duration timeout;
  AddDurationArgument(app, "--timeout", [&timeout](absl::Duration value) { timeout = value; },
                      "");
  EXPECT_EQ(Parse(app, {"--timeout", "250ms"}), "");
  EXPECT_EQ(timeout, absl::Milliseconds(250));
  EXPECT_EQ(*ParseDuration("--timeout", "0"), absl::ZeroDuration());
  EXPECT_THAT(ParseDuration("--timeout", "10").status().message(),
              HasSubstr("--timeout '10' is not a duration"));
  EXPECT_FALSE(ParseDuration("--timeout", "-1s").ok());
}

TEST(ParseReservedRegionTest, StartSizeAndOptionalName) {
  absl::StatusOr<v1::ReservedRegion> msi = ParseReservedRegion("--reserved", "0xfee00000:1M:msi");
  ASSERT_TRUE(msi.ok()) << msi.status();
  EXPECT_EQ(msi->start(), 0xfee00000u);
  EXPECT_EQ(msi->size(), uint64_t{1} << 20);
  EXPECT_EQ(msi->name(), "msi");
  absl::StatusOr<v1::ReservedRegion> unnamed = ParseReservedRegion("--reserved", "1G:4K");
  ASSERT_TRUE(unnamed.ok()) << unnamed.status();
  EXPECT_EQ(unnamed->name(), "");
}

TEST(ParseReservedRegionTest, RefusalsNameThePart) {
  EXPECT_THAT(ParseReservedRegion("--reserved", "0xfee00000").status().message(),
              HasSubstr("--reserved '0xfee00000' is not a region: use START:SIZE[:NAME]"));
  EXPECT_THAT(ParseReservedRegion("--reserved", "x:1M").status().message(),
              HasSubstr("--reserved start 'x' is not an address"));
  EXPECT_THAT(ParseReservedRegion("--reserved", "0:1Q").status().message(),
              HasSubstr("--reserved size '1Q' is not a size"));
}

}  // namespace
}  // namespace iommu_broker::iommuctl
