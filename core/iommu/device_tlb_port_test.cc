#include "core/iommu/device_tlb_port.h"

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kAckTimeout = absl::Seconds(1);

InvalidationEvent Range(uint64_t iova) {
  return {.scope = InvalidationScope::kRange, .domain_id = "d", .iova = iova, .size = 0x1000};
}

class DeviceTlbPortTest : public ::testing::Test {
 protected:
  std::shared_ptr<Device> device_ =
      std::make_shared<Device>(DeviceConfig{.id = "0000:3b:00.0"}, /*requester=*/1);
  DeviceTlbPort port_{device_, /*capacity=*/4, kAckTimeout};
  absl::Time now_ = absl::Now();
};

TEST_F(DeviceTlbPortTest, NumbersInvalidationsInOrderAndReleasesWaitsOnAcknowledgement) {
  auto first = std::make_shared<Completion>(1);
  auto second = std::make_shared<Completion>(1);
  const std::vector<InvalidationEvent> two = {Range(0x1000), Range(0x2000)};
  ASSERT_TRUE(port_.Send(two, first, now_));
  ASSERT_TRUE(port_.Send({Range(0x3000)}, second, now_));
  std::vector<uint64_t> read;
  while (std::optional<DeviceTlbInvalidation> next = port_.Next()) {
    read.push_back(next->sequence);
    EXPECT_EQ(next->event.iova, 0x1000 * next->sequence);
  }
  EXPECT_EQ(read, (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_TRUE(port_.Acknowledge(1).ok());
  EXPECT_FALSE(first->done());  // waits for the last of its two
  ASSERT_TRUE(port_.Acknowledge(2).ok());
  EXPECT_TRUE(first->done());
  EXPECT_FALSE(second->done());
  ASSERT_TRUE(port_.Acknowledge(3).ok());
  EXPECT_TRUE(second->done());
  EXPECT_TRUE(port_.Acknowledge(1).ok());  // old numbers are harmless
}

TEST_F(DeviceTlbPortTest, RefusesAcknowledgingWhatWasNeverSent) {
  ASSERT_TRUE(port_.Send({Range(0x1000)}, nullptr, now_));
  absl::Status status = port_.Acknowledge(2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("sequence 2"));
  EXPECT_TRUE(port_.status().ok());
}

TEST_F(DeviceTlbPortTest, OverdueAcknowledgementCutsThePortOffAndReleasesItsWaits) {
  auto wait = std::make_shared<Completion>(1);
  int ready_calls = 0;
  port_.SetReadyCallback([&] { ++ready_calls; });
  ASSERT_TRUE(port_.Send({Range(0x1000)}, wait, now_));
  port_.CutOffIfOverdue(now_ + kAckTimeout / 2);
  EXPECT_TRUE(port_.status().ok());
  EXPECT_FALSE(wait->done());
  port_.CutOffIfOverdue(now_ + kAckTimeout);
  EXPECT_EQ(port_.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(port_.status().message(), HasSubstr("0000:3b:00.0"));
  EXPECT_TRUE(wait->done());
  EXPECT_EQ(ready_calls, 2);  // the send, and the cut-off
  EXPECT_FALSE(port_.Next().has_value());  // a cut-off port holds nothing
  EXPECT_FALSE(port_.Send({Range(0x2000)}, nullptr, now_));
}

TEST_F(DeviceTlbPortTest, TooManyUnreadInvalidationsCutThePortOff) {
  auto wait = std::make_shared<Completion>(1);
  ASSERT_TRUE(port_.Send({Range(0x1000), Range(0x2000), Range(0x3000)}, wait, now_));
  EXPECT_FALSE(port_.Send({Range(0x4000), Range(0x5000)}, nullptr, now_));
  EXPECT_EQ(port_.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(wait->done());
}

TEST_F(DeviceTlbPortTest, CloseReleasesWaitsAndStopsDelivery) {
  auto wait = std::make_shared<Completion>(1);
  ASSERT_TRUE(port_.Send({Range(0x1000)}, wait, now_));
  port_.Close();
  EXPECT_TRUE(wait->done());
  EXPECT_EQ(port_.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(port_.Send({Range(0x2000)}, nullptr, now_));
}

}  // namespace
}  // namespace iommu_broker
