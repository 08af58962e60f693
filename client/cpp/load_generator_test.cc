// Tests of RunLoad against the real broker in-process (TestBroker): exact
// operation counts in each mode and policy with nothing left behind on the
// broker, duration runs with progress, a stop from another thread, cleanup
// after a failed set-up, a broker lost mid-run, and option validation naming
// the field. No test asserts on time or throughput.
#include "client/cpp/load_generator.h"

#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::client {

// gtest names a test's mode by this rather than by its bytes.
void PrintTo(LoadMode mode, std::ostream* out) {
  *out << (mode == LoadMode::kUnary ? "unary" : "batch");
}

namespace {

using ::iommu_broker::testing::ContextWithDeadline;
using ::iommu_broker::testing::TestBroker;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Small and quick: 3 workers, 2 translations per map (4 operations a cycle).
LoadOptions SmallRun() {
  LoadOptions options;
  options.threads = 3;
  options.translate_per_map = 2;
  options.buffers_per_worker = 8;
  options.streams = 2;
  options.batch_size = 16;
  options.operations = 400;  // 100 cycles
  options.name_prefix = "bench";
  return options;
}

class LoadGeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = TestBroker::Start();
    ASSERT_NE(broker_, nullptr);
  }

  v1::ListDomainsResponse ListDomains() {
    v1::ListDomainsResponse domains;
    const grpc::Status status = broker_->stub().ListDomains(ContextWithDeadline().get(),
                                                            v1::ListDomainsRequest(), &domains);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return domains;
  }

  v1::ListDevicesResponse ListDevices() {
    v1::ListDevicesResponse devices;
    const grpc::Status status = broker_->stub().ListDevices(ContextWithDeadline().get(),
                                                            v1::ListDevicesRequest(), &devices);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return devices;
  }

  // Expects the broker to hold no domain and no device.
  void ExpectBrokerEmpty() {
    EXPECT_THAT(ListDomains().domains(), IsEmpty());
    EXPECT_THAT(ListDevices().devices(), IsEmpty());
  }

  std::unique_ptr<TestBroker> broker_;
};

class LoadGeneratorModeTest
    : public LoadGeneratorTest,
      public ::testing::WithParamInterface<std::tuple<LoadMode, v1::Policy>> {};

TEST_P(LoadGeneratorModeTest, RunsExactlyTheOperationsAskedAndLeavesNothing) {
  LoadOptions options = SmallRun();
  options.mode = std::get<0>(GetParam());
  options.policy = std::get<1>(GetParam());
  absl::StatusOr<LoadReport> report = RunLoad(broker_->channel(), options);
  ASSERT_TRUE(report.ok()) << report.status();

  EXPECT_EQ(report->operations, 400u);
  EXPECT_EQ(report->maps, 100u);
  EXPECT_EQ(report->translations, 200u);
  EXPECT_EQ(report->unmaps, 100u);
  EXPECT_EQ(report->errors, 0u) << ::testing::PrintToString(report->first_error_message);
  EXPECT_THAT(report->errors_by_code, IsEmpty());
  EXPECT_EQ(report->faults, 0u);
  EXPECT_EQ(report->stale_translations, 0u);
  EXPECT_EQ(report->latency.count, 400u);
  EXPECT_EQ(report->map_latency.count, 100u);
  EXPECT_LE(report->latency.p50, report->latency.p99);
  EXPECT_LE(report->latency.p99, report->latency.max);
  EXPECT_TRUE(report->cleanup.ok()) << report->cleanup;
  EXPECT_FALSE(report->interrupted);
  ExpectBrokerEmpty();
}

INSTANTIATE_TEST_SUITE_P(
    ModesAndPolicies, LoadGeneratorModeTest,
    ::testing::Combine(::testing::Values(LoadMode::kUnary, LoadMode::kBatch),
                       ::testing::Values(v1::POLICY_PARANOID, v1::POLICY_FAST, v1::POLICY_PT)),
    [](const ::testing::TestParamInfo<std::tuple<LoadMode, v1::Policy>>& info) {
      return absl::StrCat(std::get<0>(info.param) == LoadMode::kUnary ? "Unary" : "Batch",
                          v1::Policy_Name(std::get<1>(info.param)));
    });

TEST_F(LoadGeneratorTest, OperationCountsRoundUpToWholeCycles) {
  LoadOptions options = SmallRun();
  options.operations = 401;  // 100.25 cycles
  absl::StatusOr<LoadReport> report = RunLoad(broker_->channel(), options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->operations, 404u);
  EXPECT_EQ(report->maps, report->unmaps);
}

TEST_F(LoadGeneratorTest, ADurationRunReportsProgressAndFinishesItsCycles) {
  LoadOptions options = SmallRun();
  options.mode = LoadMode::kBatch;
  options.operations.reset();
  // Longer than the progress interval: at least one snapshot is due.
  options.duration = absl::Milliseconds(1500);
  int snapshots = 0;
  uint64_t last_operations = 0;
  absl::StatusOr<LoadReport> report =
      RunLoad(broker_->channel(), options, [&](const LoadProgress& progress) {
        ++snapshots;
        EXPECT_GE(progress.operations, last_operations);
        last_operations = progress.operations;
      });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GE(snapshots, 1);
  EXPECT_GT(report->maps, 0u);
  EXPECT_EQ(report->unmaps, report->maps);
  EXPECT_EQ(report->translations, 2 * report->maps);
  EXPECT_EQ(report->errors, 0u) << ::testing::PrintToString(report->first_error_message);
  ExpectBrokerEmpty();
}

TEST_F(LoadGeneratorTest, AStopFromAnotherThreadEndsARunWithWholeCyclesAndNothingLeft) {
  for (LoadMode mode : {LoadMode::kUnary, LoadMode::kBatch}) {
    SCOPED_TRACE(mode == LoadMode::kUnary ? "unary" : "batch");
    LoadOptions options = SmallRun();
    options.mode = mode;
    options.operations.reset();
    options.duration = absl::Seconds(60);  // far longer than the test waits to stop it
    // The stopper waits for operations to have run, so that the stop lands
    // mid-run rather than before the first cycle.
    absl::Notification working;
    absl::Notification stop;
    std::thread stopper([&working, &stop] {
      working.WaitForNotification();
      stop.Notify();
    });
    absl::StatusOr<LoadReport> report = RunLoad(
        broker_->channel(), options,
        [&working](const LoadProgress& progress) {
          if (progress.operations > 0 && !working.HasBeenNotified()) working.Notify();
        },
        &stop);
    if (!working.HasBeenNotified()) working.Notify();  // frees the stopper if no progress came
    stopper.join();
    ASSERT_TRUE(report.ok()) << report.status();

    EXPECT_TRUE(report->interrupted);
    EXPECT_GT(report->maps, 0u);
    EXPECT_EQ(report->unmaps, report->maps);
    EXPECT_EQ(report->translations, 2 * report->maps);
    EXPECT_EQ(report->errors, 0u) << ::testing::PrintToString(report->first_error_message);
    EXPECT_TRUE(report->cleanup.ok()) << report->cleanup;
    ExpectBrokerEmpty();
  }
}

TEST_F(LoadGeneratorTest, AStopBeforeTheRunStartsNoCycleAndCleansUp) {
  absl::Notification stop;
  stop.Notify();
  absl::StatusOr<LoadReport> report = RunLoad(broker_->channel(), SmallRun(), nullptr, &stop);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->interrupted);
  EXPECT_EQ(report->operations, 0u);
  EXPECT_TRUE(report->cleanup.ok()) << report->cleanup;
  ExpectBrokerEmpty();
}

TEST_F(LoadGeneratorTest, AFailedSetUpRemovesOnlyWhatItCreated) {
  // Someone else's device holds the name of the run's second device.
  v1::RegisterDeviceRequest registration;
  registration.mutable_device()->set_id("bench-1");
  v1::Device device;
  ASSERT_TRUE(
      broker_->stub().RegisterDevice(ContextWithDeadline().get(), registration, &device).ok());

  absl::StatusOr<LoadReport> report = RunLoad(broker_->channel(), SmallRun());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(report.status().message(), HasSubstr("registering device bench-1"));

  EXPECT_THAT(ListDomains().domains(), IsEmpty());
  const v1::ListDevicesResponse devices = ListDevices();
  ASSERT_EQ(devices.devices_size(), 1);
  EXPECT_EQ(devices.devices(0).spec().id(), "bench-1");
}

TEST_F(LoadGeneratorTest, ABrokerLostMidRunEndsTheRunWithErrors) {
  for (LoadMode mode : {LoadMode::kUnary, LoadMode::kBatch}) {
    std::unique_ptr<TestBroker> broker = TestBroker::Start();
    ASSERT_NE(broker, nullptr);
    LoadOptions options = SmallRun();
    options.mode = mode;
    options.operations.reset();
    options.duration = absl::Hours(1);  // only the lost broker ends it
    absl::StatusOr<LoadReport> report =
        RunLoad(broker->channel(), options,
                [&](const LoadProgress&) { broker->server().Shutdown(absl::ZeroDuration()); });
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_GT(report->errors, 0u);
    EXPECT_FALSE(report->cleanup.ok());
  }
}

TEST(LoadOptionsTest, InvalidOptionsNameTheFieldAndValue) {
  struct Case {
    std::string name;
    void (*change)(LoadOptions&);
    std::string message;
  };
  const Case cases[] = {
      {"threads", [](LoadOptions& o) { o.threads = 0; }, "threads 0"},
      {"batch_size", [](LoadOptions& o) { o.batch_size = 5000; }, "batch_size 5000"},
      {"streams", [](LoadOptions& o) { o.streams = 5; }, "streams 5"},
      {"buffers", [](LoadOptions& o) { o.buffers_per_worker = 0; }, "buffers_per_worker 0"},
      {"translate", [](LoadOptions& o) { o.translate_per_map = -1; }, "translate_per_map -1"},
      {"map_bytes", [](LoadOptions& o) { o.map_bytes = 5000; }, "map_bytes 5000"},
      {"map_bytes zero", [](LoadOptions& o) { o.map_bytes = 0; }, "map_bytes 0"},
      {"policy", [](LoadOptions& o) { o.policy = v1::POLICY_UNSPECIFIED; }, "policy"},
      {"operations", [](LoadOptions& o) { o.operations = 0; }, "operations 0"},
      {"duration", [](LoadOptions& o) { o.duration = absl::ZeroDuration(); }, "duration 0"},
      {"name_prefix", [](LoadOptions& o) { o.name_prefix = "a b"; }, "name_prefix \"a b\""},
  };
  for (const Case& test : cases) {
    LoadOptions options;
    test.change(options);
    absl::Status status = ValidateLoadOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << test.name;
    EXPECT_THAT(status.message(), HasSubstr(test.message)) << test.name;
  }
  EXPECT_TRUE(ValidateLoadOptions(LoadOptions()).ok());
}

TEST_F(LoadGeneratorTest, BadOptionsTouchNothing) {
  LoadOptions options = SmallRun();
  options.threads = 0;
  EXPECT_EQ(RunLoad(broker_->channel(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  ExpectBrokerEmpty();
}

}  // namespace
}  // namespace iommu_broker::client
