#include "bench/cpu_clock.h"

#include <optional>

#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

// Bounds far wider than any core's clock, loaded or not: what they catch is a
// reading in the wrong unit (MHz), or a loop the compiler shortened.
TEST(CpuClockTest, ReadsAClockInGigahertz) {
  const std::optional<double> ghz = MeasureCpuClockGhz();
#if defined(__x86_64__) || defined(__aarch64__)
  ASSERT_TRUE(ghz.has_value());
  EXPECT_GT(*ghz, 0.05);
  EXPECT_LT(*ghz, 20.0);
#else
  EXPECT_FALSE(ghz.has_value());
#endif
}

}  // namespace
}  // namespace iommu_broker
