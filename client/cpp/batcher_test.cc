// Tests of Batcher against the real broker in-process (TestBroker): results
// of concurrent submitters, per-operation errors, order, the time bound,
// backpressure and callbacks that submit, stream failure and reopening,
// and destruction with operations queued.
//
// Waiting on a future is bounded by kCallTimeout so that a bug fails a test
// instead of hanging it; no test asserts on time.
#include "client/cpp/batcher.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::client {
namespace {

using ::iommu_broker::testing::kCallTimeout;
using ::iommu_broker::testing::TestBroker;
using ::testing::HasSubstr;

constexpr char kDomain[] = "vm1";
constexpr uint64_t kPage = 0x1000;
constexpr uint64_t kPhysBase = uint64_t{1} << 32;

std::string DeviceName(int index) { return absl::StrCat("dev", index); }

// A broker with one paranoid domain and `devices` devices attached to it.
v1::BrokerConfig ConfigWithDevices(int devices) {
  v1::BrokerConfig config;
  v1::DomainSpec* domain = config.add_domains();
  domain->set_id(kDomain);
  domain->set_policy(v1::POLICY_PARANOID);
  for (int i = 0; i < devices; ++i) {
    v1::StartupDevice* device = config.add_devices();
    device->mutable_device()->set_id(DeviceName(i));
    device->set_attach_to_domain_id(kDomain);
  }
  return config;
}

v1::MapRequest MapOf(const std::string& device, uint64_t phys) {
  v1::MapRequest request;
  request.set_device_id(device);
  request.set_phys(phys);
  request.set_size(kPage);
  request.mutable_permissions()->set_read(true);
  request.mutable_permissions()->set_write(true);
  return request;
}

v1::MapRequest MapAt(const std::string& device, uint64_t iova, uint64_t phys) {
  v1::MapRequest request = MapOf(device, phys);
  request.set_iova(iova);
  return request;
}

v1::UnmapRequest UnmapOf(const std::string& device, uint64_t iova) {
  v1::UnmapRequest request;
  request.set_device_id(device);
  request.set_iova(iova);
  request.set_size(kPage);
  return request;
}

v1::TranslateRequest TranslateOf(const std::string& device, uint64_t iova) {
  v1::TranslateRequest request;
  request.set_device_id(device);
  request.set_iova(iova);
  request.set_size(kPage);
  request.set_access(v1::ACCESS_READ);
  return request;
}

v1::Operation MapOperation(const std::string& device, uint64_t phys) {
  v1::Operation operation;
  *operation.mutable_map() = MapOf(device, phys);
  return operation;
}

// The future's value, or DEADLINE_EXCEEDED (failing the test) if it is not
// ready within kCallTimeout.
template <typename T>
absl::StatusOr<T> Await(std::future<absl::StatusOr<T>>& future) {
  if (future.wait_for(kCallTimeout) != std::future_status::ready) {
    ADD_FAILURE() << "a future was not ready within " << kCallTimeout.count() << " s";
    return absl::DeadlineExceededError("not ready");
  }
  return future.get();
}

template <typename T>
absl::StatusOr<T> Await(std::future<absl::StatusOr<T>>&& future) {
  return Await(future);
}

std::unique_ptr<Batcher> MakeBatcher(const std::shared_ptr<grpc::Channel>& channel,
                                     const BatcherOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<Batcher>> batcher = Batcher::Create(channel, options);
  EXPECT_TRUE(batcher.ok()) << batcher.status();
  return batcher.ok() ? *std::move(batcher) : nullptr;
}

class BatcherTest : public ::testing::Test {
 protected:
  void StartBroker(v1::BrokerConfig config = ConfigWithDevices(1)) {
    broker_ = TestBroker::Start(std::move(config));
    ASSERT_NE(broker_, nullptr);
  }

  std::unique_ptr<TestBroker> broker_;
};

TEST(BatcherOptionsTest, InvalidOptionsNameTheFieldAndValue) {
  BatcherOptions too_large;
  too_large.max_operations_per_message = 5000;
  EXPECT_THAT(ValidateBatcherOptions(too_large).message(),
              HasSubstr("max_operations_per_message 5000"));
  BatcherOptions no_pipeline;
  no_pipeline.max_in_flight_messages = 0;
  EXPECT_EQ(ValidateBatcherOptions(no_pipeline).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ValidateBatcherOptions(no_pipeline).message(), HasSubstr("max_in_flight_messages 0"));
  BatcherOptions negative_delay;
  negative_delay.max_delay = absl::Microseconds(-1);
  EXPECT_THAT(ValidateBatcherOptions(negative_delay).message(), HasSubstr("max_delay"));
  EXPECT_EQ(Batcher::Create(nullptr, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BatcherTest, ConcurrentSubmittersEachGetTheirOwnResults) {
  constexpr int kThreads = 8;
  constexpr int kBuffers = 64;
  constexpr int kRounds = 4;
  StartBroker(ConfigWithDevices(kThreads));
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel());
  ASSERT_NE(batcher, nullptr);

  std::vector<std::thread> threads;
  for (int thread = 0; thread < kThreads; ++thread) {
    threads.emplace_back([&batcher, thread] {
      const std::string device = DeviceName(thread);
      for (int round = 0; round < kRounds; ++round) {
        std::vector<std::future<absl::StatusOr<v1::MapResponse>>> maps;
        for (int buffer = 0; buffer < kBuffers; ++buffer) {
          maps.push_back(
              batcher->Map(MapOf(device, kPhysBase + (thread * kBuffers + buffer) * kPage)));
        }
        std::vector<uint64_t> iovas;
        for (auto& map : maps) {
          absl::StatusOr<v1::MapResponse> mapped = Await(map);
          ASSERT_TRUE(mapped.ok()) << mapped.status();
          iovas.push_back(mapped->iova());
        }
        std::vector<std::future<absl::StatusOr<v1::TranslateResponse>>> translations;
        std::vector<std::future<absl::StatusOr<v1::UnmapResponse>>> unmaps;
        for (uint64_t iova : iovas) {
          translations.push_back(batcher->Translate(TranslateOf(device, iova)));
          unmaps.push_back(batcher->Unmap(UnmapOf(device, iova)));
        }
        for (int buffer = 0; buffer < kBuffers; ++buffer) {
          absl::StatusOr<v1::TranslateResponse> translated = Await(translations[buffer]);
          ASSERT_TRUE(translated.ok()) << translated.status();
          ASSERT_FALSE(translated->has_fault()) << translated->fault().DebugString();
          ASSERT_EQ(translated->segments_size(), 1);
          EXPECT_EQ(translated->segments(0).phys(),
                    kPhysBase + (thread * kBuffers + buffer) * kPage);
          absl::StatusOr<v1::UnmapResponse> unmapped = Await(unmaps[buffer]);
          ASSERT_TRUE(unmapped.ok()) << unmapped.status();
          EXPECT_EQ(unmapped->bytes_unmapped(), kPage);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
}

TEST_F(BatcherTest, OneFailingOperationFailsAlone) {
  StartBroker();
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel());
  ASSERT_NE(batcher, nullptr);
  const std::string device = DeviceName(0);

  auto mapped = batcher->Map(MapOf(device, kPhysBase));
  auto unaligned = batcher->Unmap(UnmapOf(device, 0x1003));
  auto unknown_device = batcher->Map(MapOf("no-such-device", kPhysBase));
  auto flushed = batcher->Flush([] {
    v1::FlushRequest request;
    request.set_domain_id(kDomain);
    return request;
  }());

  absl::StatusOr<v1::MapResponse> map = Await(mapped);
  ASSERT_TRUE(map.ok()) << map.status();
  absl::StatusOr<v1::UnmapResponse> unmap = Await(unaligned);
  EXPECT_EQ(unmap.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unmap.status().message(), HasSubstr("0x1003"));
  EXPECT_EQ(Await(unknown_device).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Await(flushed).ok());
  EXPECT_TRUE(Await(batcher->Translate(TranslateOf(device, map->iova()))).ok());
}

TEST_F(BatcherTest, OperationsRunInSubmissionOrder) {
  StartBroker();
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel());
  ASSERT_NE(batcher, nullptr);
  const std::string device = DeviceName(0);
  constexpr uint64_t kIova = 0x40000000;

  // Submitted back to back, without waiting: each sees the one before.
  auto mapped = batcher->Map(MapAt(device, kIova, kPhysBase));
  auto before_unmap = batcher->Translate(TranslateOf(device, kIova));
  auto unmapped = batcher->Unmap(UnmapOf(device, kIova));
  auto after_unmap = batcher->Translate(TranslateOf(device, kIova));

  EXPECT_TRUE(Await(mapped).ok());
  absl::StatusOr<v1::TranslateResponse> before = Await(before_unmap);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_FALSE(before->has_fault());
  absl::StatusOr<v1::UnmapResponse> unmap = Await(unmapped);
  ASSERT_TRUE(unmap.ok()) << unmap.status();
  EXPECT_EQ(unmap->bytes_unmapped(), kPage);
  absl::StatusOr<v1::TranslateResponse> after = Await(after_unmap);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->fault().reason(), v1::FAULT_REASON_NOT_MAPPED);  // paranoid: never stale
}

TEST_F(BatcherTest, ALoneOperationIsSentByTheTimeBound) {
  StartBroker();
  BatcherOptions options;
  options.max_operations_per_message = kMaxBatchOperations;  // never fills
  options.max_delay = absl::Milliseconds(1);
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel(), options);
  ASSERT_NE(batcher, nullptr);

  auto mapped = batcher->Map(MapOf(DeviceName(0), kPhysBase));
  EXPECT_TRUE(Await(mapped).ok());
  // And again once the stream is idle.
  auto again = batcher->Map(MapOf(DeviceName(0), kPhysBase + kPage));
  EXPECT_TRUE(Await(again).ok());
}

TEST_F(BatcherTest, BackpressureAndCallbacksThatSubmitDoNotDeadlock) {
  StartBroker();
  BatcherOptions options;  // the smallest queue: one operation in flight, one waiting
  options.max_operations_per_message = 1;
  options.max_in_flight_messages = 1;
  options.max_delay = absl::ZeroDuration();
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel(), options);
  ASSERT_NE(batcher, nullptr);

  // A chain of 50 maps, each submitted by the previous one's callback,
  // alongside submitters that keep the queue full.
  constexpr int kChain = 50;
  std::promise<absl::Status> chain_done;
  std::function<void(int)> submit_link = [&](int link) {
    batcher->Submit(MapOperation(DeviceName(0), kPhysBase + link * kPage),
                    [&, link](absl::StatusOr<v1::OperationResult> result) {
                      if (!result.ok() || link + 1 == kChain) {
                        chain_done.set_value(result.status());
                        return;
                      }
                      submit_link(link + 1);
                    });
  };
  std::vector<std::future<absl::StatusOr<v1::OperationResult>>> others;
  std::thread flooder([&] {
    for (int i = 0; i < 200; ++i) {
      others.push_back(
          batcher->Submit(MapOperation(DeviceName(0), kPhysBase + (kChain + i) * kPage)));
    }
  });
  submit_link(0);
  flooder.join();
  std::future<absl::Status> chain = chain_done.get_future();
  ASSERT_EQ(chain.wait_for(kCallTimeout), std::future_status::ready);
  EXPECT_TRUE(chain.get().ok());
  for (auto& other : others) EXPECT_TRUE(Await(other).ok());
}

TEST_F(BatcherTest, AStreamFailureFailsItsOperationsAndTheNextSubmitReopens) {
  v1::BrokerConfig config = ConfigWithDevices(1);
  config.mutable_limits()->set_max_batch_operations(4);
  StartBroker(config);
  BatcherOptions options;  // more than the broker takes: the stream ends
  options.max_operations_per_message = 8;
  options.max_delay = absl::Seconds(1);  // the 8th operation sends the message
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel(), options);
  ASSERT_NE(batcher, nullptr);

  std::vector<std::future<absl::StatusOr<v1::OperationResult>>> refused;
  for (int i = 0; i < 8; ++i) {
    refused.push_back(batcher->Submit(MapOperation(DeviceName(0), kPhysBase + i * kPage)));
  }
  for (auto& future : refused) {
    absl::StatusOr<v1::OperationResult> result = Await(future);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("batch of 8 operations"));
  }
  auto reopened = batcher->Map(MapOf(DeviceName(0), kPhysBase));
  EXPECT_TRUE(Await(reopened).ok());
}

TEST_F(BatcherTest, BrokerShutdownCompletesEveryOperation) {
  constexpr int kThreads = 4;
  StartBroker(ConfigWithDevices(kThreads));
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel());
  ASSERT_NE(batcher, nullptr);

  std::atomic<bool> stop{false};
  std::vector<std::vector<std::future<absl::StatusOr<v1::OperationResult>>>> submitted(kThreads);
  std::vector<std::thread> threads;
  for (int thread = 0; thread < kThreads; ++thread) {
    threads.emplace_back([&, thread] {
      // Until the broker is gone, and at least once after.
      for (uint64_t i = 0; !stop.load(); ++i) {
        submitted[thread].push_back(
            batcher->Submit(MapOperation(DeviceName(thread), kPhysBase + (i % 1024) * kPage)));
      }
      submitted[thread].push_back(batcher->Submit(MapOperation(DeviceName(thread), kPhysBase)));
    });
  }
  // Let some operations through before the broker goes.
  ASSERT_TRUE(Await(batcher->Map(MapOf(DeviceName(0), kPhysBase - kPage))).ok());
  broker_->server().Shutdown(absl::ZeroDuration());
  stop.store(true);
  for (std::thread& thread : threads) thread.join();

  // Every future completes; those submitted after the shutdown fail.
  for (auto& futures : submitted) {
    absl::Status last;
    for (auto& future : futures) last = Await(future).status();
    EXPECT_FALSE(last.ok());
  }
  absl::StatusOr<v1::MapResponse> after = Await(batcher->Map(MapOf(DeviceName(0), kPhysBase)));
  EXPECT_FALSE(after.ok());
}

TEST_F(BatcherTest, DestructionSendsWhatIsQueuedAndCompletesEveryFuture) {
  StartBroker();
  BatcherOptions options;
  options.max_delay = absl::Seconds(1);  // nothing leaves before the destructor
  options.max_operations_per_message = kMaxBatchOperations;
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel(), options);
  ASSERT_NE(batcher, nullptr);

  std::vector<std::future<absl::StatusOr<v1::MapResponse>>> maps;
  for (int i = 0; i < 100; ++i)
    maps.push_back(batcher->Map(MapOf(DeviceName(0), kPhysBase + i * kPage)));
  batcher.reset();
  for (auto& map : maps) {
    ASSERT_EQ(map.wait_for(std::chrono::seconds(0)), std::future_status::ready);
    absl::StatusOr<v1::MapResponse> mapped = map.get();
    EXPECT_TRUE(mapped.ok()) << mapped.status();
  }
}

TEST_F(BatcherTest, DestructionAfterTheBrokerIsGoneDoesNotHang) {
  StartBroker();
  std::unique_ptr<Batcher> batcher = MakeBatcher(broker_->channel());
  ASSERT_NE(batcher, nullptr);
  ASSERT_TRUE(Await(batcher->Map(MapOf(DeviceName(0), kPhysBase))).ok());
  broker_.reset();
  auto orphan = batcher->Map(MapOf(DeviceName(0), kPhysBase + kPage));
  batcher.reset();
  ASSERT_EQ(orphan.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_FALSE(orphan.get().ok());
}

}  // namespace
}  // namespace iommu_broker::client
