// FaultLog: the bounded ring, sequence numbers and timestamps, Recent,
// subscriptions (ordering, drops, Close) and forwarding to a parent log.
#include "core/iommu/fault_log.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/iommu/types.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

Fault MakeFault(uint64_t iova, std::string device_id = "dev0") {
  Fault fault;
  fault.domain_id = "dom0";
  fault.device_id = std::move(device_id);
  fault.iova = iova;
  fault.access = Access::kWrite;
  fault.reason = FaultReason::kNotMapped;
  return fault;
}

std::vector<uint64_t> Sequences(const std::vector<Fault>& faults) {
  std::vector<uint64_t> sequences;
  for (const Fault& fault : faults) sequences.push_back(fault.sequence);
  return sequences;
}

TEST(FaultLogTest, StartsEmpty) {
  FaultLog log(4);
  EXPECT_EQ(log.total(), 0u);
  EXPECT_TRUE(log.Recent().empty());
}

TEST(FaultLogTest, SequencesStartAtOneAndIncrease) {
  FaultLog log(8);
  for (uint64_t i = 0; i < 3; ++i) {
    Fault fault = MakeFault(0x1000 * i);
    fault.sequence = 77;  // whatever the caller put there is replaced
    log.Record(fault);
  }
  const std::vector<Fault> recent = log.Recent();
  EXPECT_EQ(Sequences(recent), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(recent[2].iova, 0x2000u);
  EXPECT_EQ(recent[2].device_id, "dev0");
  EXPECT_EQ(recent[2].domain_id, "dom0");
  EXPECT_EQ(recent[2].access, Access::kWrite);
  EXPECT_EQ(recent[2].reason, FaultReason::kNotMapped);
  EXPECT_EQ(log.total(), 3u);
}

TEST(FaultLogTest, StampsTimeOnlyWhenUnset) {
  FaultLog log(8);
  const absl::Time before = absl::Now();
  log.Record(MakeFault(0x1000));
  const absl::Time after = absl::Now();
  Fault dated = MakeFault(0x2000);
  dated.time = absl::FromUnixSeconds(1234);
  log.Record(dated);

  const std::vector<Fault> recent = log.Recent();
  ASSERT_EQ(recent.size(), 2u);
  EXPECT_GE(recent[0].time, before);
  EXPECT_LE(recent[0].time, after);
  EXPECT_EQ(recent[1].time, absl::FromUnixSeconds(1234));
}

TEST(FaultLogTest, RingKeepsOnlyTheLastCapacityFaults) {
  FaultLog log(3);
  for (uint64_t i = 1; i <= 5; ++i) log.Record(MakeFault(i * 0x1000));
  const std::vector<Fault> recent = log.Recent();
  EXPECT_EQ(Sequences(recent), (std::vector<uint64_t>{3, 4, 5}));
  EXPECT_EQ(recent.front().iova, 0x3000u);
  EXPECT_EQ(log.total(), 5u);
}

TEST(FaultLogTest, ZeroCapacityKeepsOneFault) {
  FaultLog log(0);
  log.Record(MakeFault(0x1000));
  log.Record(MakeFault(0x2000));
  EXPECT_EQ(Sequences(log.Recent()), (std::vector<uint64_t>{2}));
}

TEST(FaultLogTest, RecentReturnsFaultsAfterSequence) {
  FaultLog log(4);
  for (uint64_t i = 1; i <= 6; ++i) log.Record(MakeFault(i * 0x1000));
  // Kept: 3..6.
  EXPECT_EQ(Sequences(log.Recent(0)), (std::vector<uint64_t>{3, 4, 5, 6}));
  EXPECT_EQ(Sequences(log.Recent(1)), (std::vector<uint64_t>{3, 4, 5, 6}));
  EXPECT_EQ(Sequences(log.Recent(4)), (std::vector<uint64_t>{5, 6}));
  EXPECT_TRUE(log.Recent(6).empty());
  EXPECT_TRUE(log.Recent(100).empty());
}

TEST(FaultLogTest, SubscriberGetsFaultsInOrder) {
  FaultLog log(2);  // the ring is smaller than what the subscriber keeps
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(16);
  for (uint64_t i = 1; i <= 5; ++i) log.Record(MakeFault(i * 0x1000));
  for (uint64_t i = 1; i <= 5; ++i) {
    std::optional<Fault> fault = sub->Next(absl::ZeroDuration());
    ASSERT_TRUE(fault.has_value());
    EXPECT_EQ(fault->sequence, i);
    EXPECT_EQ(fault->iova, i * 0x1000);
  }
  EXPECT_FALSE(sub->Next(absl::ZeroDuration()).has_value());
  EXPECT_EQ(sub->dropped(), 0u);
}

TEST(FaultLogTest, SubscriberSeesOnlyFaultsAfterSubscribing) {
  FaultLog log(8);
  log.Record(MakeFault(0x1000));
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(8);
  log.Record(MakeFault(0x2000));
  std::optional<Fault> fault = sub->Next(absl::ZeroDuration());
  ASSERT_TRUE(fault.has_value());
  EXPECT_EQ(fault->sequence, 2u);
  EXPECT_FALSE(sub->Next(absl::ZeroDuration()).has_value());
}

TEST(FaultLogTest, EverySubscriberGetsEveryFault) {
  FaultLog log(8);
  std::shared_ptr<FaultSubscription> a = log.Subscribe(8);
  std::shared_ptr<FaultSubscription> b = log.Subscribe(8);
  log.Record(MakeFault(0x1000));
  for (const std::shared_ptr<FaultSubscription>& sub : {a, b}) {
    std::optional<Fault> fault = sub->Next(absl::ZeroDuration());
    ASSERT_TRUE(fault.has_value());
    EXPECT_EQ(fault->sequence, 1u);
  }
}

TEST(FaultLogTest, SlowSubscriberKeepsOldestAndCountsDrops) {
  FaultLog log(16);
  std::shared_ptr<FaultSubscription> slow = log.Subscribe(2);
  for (uint64_t i = 1; i <= 5; ++i) log.Record(MakeFault(i * 0x1000));
  EXPECT_EQ(slow->dropped(), 3u);
  std::optional<Fault> first = slow->Next(absl::ZeroDuration());
  std::optional<Fault> second = slow->Next(absl::ZeroDuration());
  ASSERT_TRUE(first.has_value());
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(first->sequence, 1u);
  EXPECT_EQ(second->sequence, 2u);
  EXPECT_FALSE(slow->Next(absl::ZeroDuration()).has_value());

  // Room again: delivery resumes, the drop count stays.
  log.Record(MakeFault(0x6000));
  std::optional<Fault> sixth = slow->Next(absl::ZeroDuration());
  ASSERT_TRUE(sixth.has_value());
  EXPECT_EQ(sixth->sequence, 6u);
  EXPECT_EQ(slow->dropped(), 3u);
  // The log itself lost nothing.
  EXPECT_EQ(log.Recent().size(), 6u);
}

TEST(FaultLogTest, NextTimesOutWhenNothingArrives) {
  FaultLog log(4);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(4);
  EXPECT_FALSE(sub->Next(absl::Milliseconds(1)).has_value());
  EXPECT_FALSE(sub->Next(absl::ZeroDuration()).has_value());
  EXPECT_FALSE(sub->Next(-absl::Seconds(1)).has_value());
}

TEST(FaultLogTest, ClosedSubscriptionDrainsThenStops) {
  FaultLog log(8);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(8);
  log.Record(MakeFault(0x1000));
  EXPECT_FALSE(sub->closed());
  sub->Close();
  EXPECT_TRUE(sub->closed());
  log.Record(MakeFault(0x2000));  // not delivered: closed

  std::optional<Fault> queued = sub->Next(absl::InfiniteDuration());
  ASSERT_TRUE(queued.has_value());
  EXPECT_EQ(queued->sequence, 1u);
  // Empty and closed: returns at once even with no deadline.
  EXPECT_FALSE(sub->Next(absl::InfiniteDuration()).has_value());
  EXPECT_EQ(sub->dropped(), 0u);
}

TEST(FaultLogTest, ReleasedSubscriptionIsForgotten) {
  FaultLog log(8);
  std::shared_ptr<FaultSubscription> kept = log.Subscribe(8);
  log.Subscribe(8).reset();
  log.Record(MakeFault(0x1000));
  log.Record(MakeFault(0x2000));
  EXPECT_TRUE(kept->Next(absl::ZeroDuration()).has_value());
  EXPECT_TRUE(kept->Next(absl::ZeroDuration()).has_value());
}

TEST(FaultLogTest, CloseWakesBlockedNext) {
  FaultLog log(4);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(4);
  std::latch waiting(1);
  std::optional<Fault> result = MakeFault(0xdead);
  std::thread reader([&] {
    waiting.count_down();
    // No deadline: only Close can end this wait.
    result = sub->Next(absl::InfiniteDuration());
  });
  waiting.wait();
  // Not a timing assertion: the reader returns nullopt whether or not it was
  // already blocked, but the pause makes the blocked case the usual one.
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  sub->Close();
  reader.join();
  EXPECT_FALSE(result.has_value());
}

TEST(FaultLogTest, BlockedNextWakesForNewFault) {
  FaultLog log(4);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(4);
  std::latch waiting(1);
  std::optional<Fault> result;
  std::thread reader([&] {
    waiting.count_down();
    result = sub->Next(absl::InfiniteDuration());
  });
  waiting.wait();
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  log.Record(MakeFault(0x5000));
  reader.join();
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->iova, 0x5000u);
  EXPECT_EQ(result->sequence, 1u);
}

TEST(FaultLogTest, ConsumerReadsEverythingAProducerRecords) {
  constexpr uint64_t kFaults = 2000;
  FaultLog log(64);
  // A small queue: the consumer may fall behind and lose faults, but what it
  // gets is in order, and received plus dropped is everything.
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(32);
  std::thread producer([&log] {
    for (uint64_t i = 1; i <= kFaults; ++i) log.Record(MakeFault(i * 0x1000));
  });
  std::vector<Fault> received;
  uint64_t last_sequence = 0;
  while (true) {
    std::optional<Fault> fault = sub->Next(absl::Milliseconds(50));
    if (!fault.has_value()) {
      if (log.total() < kFaults) continue;
      // Everything is recorded (and so delivered): drain what is left.
      fault = sub->Next(absl::ZeroDuration());
      if (!fault.has_value()) break;
    }
    EXPECT_GT(fault->sequence, last_sequence);
    EXPECT_EQ(fault->iova, fault->sequence * 0x1000);
    last_sequence = fault->sequence;
    received.push_back(*std::move(fault));
  }
  producer.join();
  EXPECT_EQ(received.size() + sub->dropped(), kFaults);
  EXPECT_EQ(log.total(), kFaults);
  EXPECT_EQ(log.Recent().size(), 64u);
  EXPECT_EQ(log.Recent().back().sequence, kFaults);
}

TEST(FaultLogTest, ConcurrentRecordersDeliverInSequenceOrder) {
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 500;
  constexpr uint64_t kFaults = kThreads * kPerThread;
  FaultLog log(kFaults);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(kFaults);
  std::latch start(kThreads + 1);
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&log, &start, t] {
      start.arrive_and_wait();
      for (uint64_t i = 0; i < kPerThread; ++i) {
        log.Record(MakeFault(i * 0x1000, absl::StrCat("dev", t)));
      }
    });
  }
  start.arrive_and_wait();
  // Consume while the producers run; with a large enough queue nothing drops.
  uint64_t expected = 1;
  std::vector<uint64_t> next_iova(kThreads, 0);
  while (expected <= kFaults) {
    std::optional<Fault> fault = sub->Next(absl::InfiniteDuration());
    ASSERT_TRUE(fault.has_value());
    EXPECT_EQ(fault->sequence, expected);
    // Each producer's faults arrive in the order it recorded them.
    const int t = fault->device_id.back() - '0';
    ASSERT_GE(t, 0);
    ASSERT_LT(t, kThreads);
    EXPECT_EQ(fault->iova, next_iova[t]);
    next_iova[t] += 0x1000;
    ++expected;
  }
  for (std::thread& producer : producers) producer.join();
  EXPECT_EQ(sub->dropped(), 0u);
  EXPECT_EQ(log.total(), kFaults);
  const std::vector<Fault> recent = log.Recent();
  ASSERT_EQ(recent.size(), kFaults);
  for (uint64_t i = 0; i < kFaults; ++i) EXPECT_EQ(recent[i].sequence, i + 1);
}

TEST(FaultLogTest, TheRootNumbersFaultsBrokerWide) {
  FaultLog iommu_log(16);
  FaultLog domain_a(16, &iommu_log);
  FaultLog domain_b(16, &iommu_log);
  std::shared_ptr<FaultSubscription> iommu_sub = iommu_log.Subscribe(16);

  EXPECT_EQ(domain_a.Record(MakeFault(0x1000, "a")), 1u);
  EXPECT_EQ(domain_b.Record(MakeFault(0x3000, "b")), 2u);
  EXPECT_EQ(domain_a.Record(MakeFault(0x2000, "a")), 3u);

  // A child's numbers increase and skip the other children's.
  EXPECT_EQ(Sequences(domain_a.Recent()), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(Sequences(domain_b.Recent()), (std::vector<uint64_t>{2}));
  EXPECT_EQ(Sequences(domain_a.Recent(/*after_sequence=*/1)), (std::vector<uint64_t>{3}));
  EXPECT_EQ(domain_a.total(), 2u);
  const std::vector<Fault> all = iommu_log.Recent();
  EXPECT_EQ(Sequences(all), (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].device_id, "a");
  EXPECT_EQ(all[1].device_id, "b");
  EXPECT_EQ(all[1].iova, 0x3000u);
  EXPECT_EQ(all[2].device_id, "a");
  // The parent keeps the time the child stamped.
  EXPECT_EQ(all[0].time, domain_a.Recent()[0].time);
  EXPECT_EQ(all[1].time, domain_b.Recent()[0].time);
  EXPECT_EQ(iommu_log.total(), 3u);

  // The parent's subscribers see forwarded faults with the same numbers.
  for (uint64_t i = 1; i <= 3; ++i) {
    std::optional<Fault> fault = iommu_sub->Next(absl::ZeroDuration());
    ASSERT_TRUE(fault.has_value());
    EXPECT_EQ(fault->sequence, i);
  }

  // Recording on the parent directly does not reach the children.
  iommu_log.Record(MakeFault(0x4000, "iommu"));
  EXPECT_EQ(iommu_log.total(), 4u);
  EXPECT_EQ(domain_a.total(), 2u);
  EXPECT_EQ(domain_b.total(), 1u);
}

TEST(FaultLogTest, ReadyCallbackRunsAfterEachQueuedFaultAndCanTakeIt) {
  FaultLog log(/*capacity=*/8);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(/*queue_capacity=*/8);
  std::vector<uint64_t> taken;
  sub->SetReadyCallback([&] {
    // A non-blocking reader: the fault is already queued when it runs.
    std::optional<Fault> fault = sub->Next(absl::ZeroDuration());
    ASSERT_TRUE(fault.has_value());
    taken.push_back(fault->iova);
  });
  log.Record(MakeFault(0x1000));
  log.Record(MakeFault(0x2000));
  EXPECT_EQ(taken, (std::vector<uint64_t>{0x1000, 0x2000}));
}

TEST(FaultLogTest, ReadyCallbackDoesNotRunForDroppedFaults) {
  FaultLog log(/*capacity=*/8);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(/*queue_capacity=*/1);
  int calls = 0;
  sub->SetReadyCallback([&] { ++calls; });
  log.Record(MakeFault(0x1000));
  log.Record(MakeFault(0x2000));  // queue full: dropped
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(sub->dropped(), 1u);
}

TEST(FaultLogTest, CloseStopsTheReadyCallback) {
  FaultLog log(/*capacity=*/8);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(/*queue_capacity=*/8);
  int calls = 0;
  sub->SetReadyCallback([&] { ++calls; });
  sub->Close();
  log.Record(MakeFault(0x1000));
  EXPECT_EQ(calls, 0);
}

TEST(FaultLogTest, CloseWaitsForARunningReadyCallback) {
  FaultLog log(/*capacity=*/8);
  std::shared_ptr<FaultSubscription> sub = log.Subscribe(/*queue_capacity=*/8);
  std::latch callback_started(1);
  std::atomic<bool> release{false};
  std::atomic<bool> callback_finished{false};
  sub->SetReadyCallback([&] {
    callback_started.count_down();
    while (!release.load()) std::this_thread::yield();
    callback_finished.store(true);
  });
  std::thread recorder([&] { log.Record(MakeFault(0x1000)); });
  callback_started.wait();
  std::thread closer([&] {
    sub->Close();
    // Close returned: the callback must have finished.
    EXPECT_TRUE(callback_finished.load());
  });
  release.store(true);
  closer.join();
  recorder.join();
}

TEST(FaultLogTest, FaultReasonNames) {
  EXPECT_EQ(FaultReasonName(FaultReason::kDeviceNotAttached), "device_not_attached");
  EXPECT_EQ(FaultReasonName(FaultReason::kOutsideAperture), "outside_aperture");
  EXPECT_EQ(FaultReasonName(FaultReason::kAboveDmaMask), "above_dma_mask");
  EXPECT_EQ(FaultReasonName(FaultReason::kNotMapped), "not_mapped");
  EXPECT_EQ(FaultReasonName(FaultReason::kPermission), "permission");
}

}  // namespace
}  // namespace iommu_broker
