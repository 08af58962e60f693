// Publisher: delivery to every open subscription, forgetting closed and
// abandoned ones, and the has_subscribers hint that lets the data path skip
// building events nobody reads.
#include "core/iommu/publisher.h"

#include <memory>
#include <optional>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

TEST(PublisherTest, DeliversToEverySubscriberInOrder) {
  Publisher<int> publisher;
  std::shared_ptr<Subscription<int>> first = publisher.Subscribe(4);
  std::shared_ptr<Subscription<int>> second = publisher.Subscribe(4);
  publisher.Publish(1);
  publisher.Publish(2);
  for (const auto& sub : {first, second}) {
    EXPECT_EQ(sub->Next(absl::ZeroDuration()), std::optional<int>(1));
    EXPECT_EQ(sub->Next(absl::ZeroDuration()), std::optional<int>(2));
    EXPECT_EQ(sub->Next(absl::ZeroDuration()), std::nullopt);
  }
}

TEST(PublisherTest, HasSubscribersUntilTheLastOneIsGone) {
  Publisher<int> publisher;
  EXPECT_FALSE(publisher.has_subscribers());
  std::shared_ptr<Subscription<int>> closed = publisher.Subscribe(4);
  std::shared_ptr<Subscription<int>> abandoned = publisher.Subscribe(4);
  EXPECT_TRUE(publisher.has_subscribers());
  closed->Close();
  abandoned.reset();
  publisher.Publish(1);  // notices both are gone
  EXPECT_FALSE(publisher.has_subscribers());
  EXPECT_EQ(closed->Next(absl::ZeroDuration()), std::nullopt);
}

TEST(PublisherTest, AFullSubscriptionDropsWithoutBlockingOthers) {
  Publisher<int> publisher;
  std::shared_ptr<Subscription<int>> small = publisher.Subscribe(1);
  std::shared_ptr<Subscription<int>> large = publisher.Subscribe(8);
  for (int i = 0; i < 3; ++i) publisher.Publish(i);
  EXPECT_EQ(small->dropped(), 2u);
  EXPECT_EQ(small->Next(absl::ZeroDuration()), std::optional<int>(0));  // the oldest kept
  EXPECT_EQ(large->dropped(), 0u);
}

}  // namespace
}  // namespace iommu_broker
