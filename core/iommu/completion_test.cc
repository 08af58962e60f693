#include "core/iommu/completion.h"

#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

TEST(CompletionTest, FiresOnceAfterTheLastPartyWithTheActionFirst) {
  std::vector<int> order;
  Completion completion(2, [&] { order.push_back(0); });
  completion.OnDone([&] { order.push_back(1); });
  completion.Arrive();
  EXPECT_FALSE(completion.done());
  EXPECT_TRUE(order.empty());
  completion.Arrive();
  EXPECT_TRUE(completion.done());
  completion.Arrive();  // extra arrivals change nothing
  EXPECT_EQ(order, (std::vector<int>{0, 1}));
}

TEST(CompletionTest, CallbackAddedAfterCompletionRunsAtOnce) {
  Completion completion(1);
  completion.Arrive();
  bool ran = false;
  completion.OnDone([&] { ran = true; });
  EXPECT_TRUE(ran);
  completion.Wait();  // does not block
}

TEST(CompletionTest, WaitReturnsOnceArrivalsFromOtherThreadsComplete) {
  constexpr int kParties = 8;
  int action_runs = 0;
  Completion completion(kParties, [&] { ++action_runs; });
  std::vector<std::thread> threads;
  for (int i = 0; i < kParties; ++i) threads.emplace_back([&] { completion.Arrive(); });
  completion.Wait();
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(action_runs, 1);
}

TEST(CompletionTest, AllOfFiresAfterEveryPart) {
  EXPECT_EQ(Completion::AllOf({}), nullptr);
  auto first = std::make_shared<Completion>(1);
  EXPECT_EQ(Completion::AllOf({first}), first);
  auto second = std::make_shared<Completion>(1);
  std::shared_ptr<Completion> all = Completion::AllOf({first, second});
  second->Arrive();
  EXPECT_FALSE(all->done());
  first->Arrive();
  EXPECT_TRUE(all->done());
}

}  // namespace
}  // namespace iommu_broker
