#include "core/util/per_thread.h"

#include <atomic>
#include <cstdint>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

struct alignas(64) Count {
  std::atomic<int64_t> value{0};
};

int64_t Sum(const PerThread<Count>& counts) {
  int64_t sum = 0;
  counts.ForEach([&](const Count& slot) { sum += slot.value.load(); });
  return sum;
}

int Slots(const PerThread<Count>& counts) {
  int slots = 0;
  counts.ForEach([&](const Count&) { ++slots; });
  return slots;
}

TEST(PerThreadTest, OneSlotPerThread) {
  PerThread<Count> counts;
  Count& mine = counts.Local();
  EXPECT_EQ(&counts.Local(), &mine);
  Count* theirs = nullptr;
  std::thread([&] { theirs = &counts.Local(); }).join();
  EXPECT_NE(theirs, &mine);
  EXPECT_EQ(Slots(counts), 2);
}

TEST(PerThreadTest, ForEachCanChangeEverySlot) {
  PerThread<Count> counts;
  counts.Local().value.store(1);
  std::thread([&] { counts.Local().value.store(2); }).join();
  counts.ForEach([](Count& slot) { slot.value.store(slot.value.load() * 10); });
  EXPECT_EQ(Sum(counts), 30);
}

TEST(PerThreadTest, CountsOutliveTheirThreadAndSlotsAreReused) {
  PerThread<Count> counts;
  for (int round = 0; round < 10; ++round) {
    std::thread([&] { AddOwned(counts.Local().value, 5); }).join();
  }
  EXPECT_EQ(Sum(counts), 50);
  EXPECT_EQ(Slots(counts), 1);  // each thread took over the exited one's slot
}

TEST(PerThreadTest, OwnersUsedInTurnKeepTheirOwnSlots) {
  PerThread<Count> a;
  PerThread<Count> b;
  for (int i = 0; i < 100; ++i) {
    AddOwned(a.Local().value, 1);
    AddOwned(b.Local().value, 2);
  }
  EXPECT_EQ(Sum(a), 100);
  EXPECT_EQ(Sum(b), 200);
}

TEST(PerThreadTest, AnOwnerAtARecycledAddressStartsEmpty) {
  for (int round = 0; round < 20; ++round) {
    auto counts = std::make_unique<PerThread<Count>>();
    EXPECT_EQ(counts->Local().value.load(), 0) << "round " << round;
    AddOwned(counts->Local().value, 7);
    EXPECT_EQ(Sum(*counts), 7);
  }
}

TEST(PerThreadTest, SumsAreExactOnceWritersAreDone) {
  constexpr int kThreads = 4;
  constexpr int kAdds = 100000;
  PerThread<Count> counts;
  std::atomic<bool> done{false};
  std::latch start(kThreads + 1);
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < kAdds; ++i) AddOwned(counts.Local().value, 1);
    });
  }
  std::thread reader([&] {
    start.arrive_and_wait();
    int64_t last = 0;
    while (!done.load()) {
      const int64_t now = Sum(counts);
      EXPECT_GE(now, last);  // every slot only grows
      last = now;
    }
  });
  for (std::thread& writer : writers) writer.join();
  done = true;
  reader.join();
  EXPECT_EQ(Sum(counts), int64_t{kThreads} * kAdds);
}

}  // namespace
}  // namespace iommu_broker
