// BrokerClient against a real broker in-process (tests/server/test_broker.h):
// each method's reply, the broker's error codes and messages kept, the
// deadline applied, read-only calls retried on UNAVAILABLE and state-changing
// calls never, WatchEvents and the health check.
//
// Retries are counted through the client's sleep hook, which never sleeps
// here, and deadlines read from the calls gRPC starts; no test asserts on
// how long anything takes.
#include "client/cpp/broker_client.h"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "gtest/gtest.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::client {
namespace {

using ::iommu_broker::testing::TestBroker;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr char kDomain[] = "vm1";
constexpr char kDevice[] = "0000:3b:00.0";
constexpr uint64_t kPage = 0x1000;
constexpr uint64_t kPhys = 0x40000000;

// A target where nothing listens: connecting fails at once.
constexpr char kDeadTarget[] = "unix:/nonexistent/iommu-broker-test.sock";

v1::CreateDomainRequest CreateDomainRequest(const std::string& id, v1::Policy policy) {
  v1::CreateDomainRequest request;
  request.mutable_domain()->set_id(id);
  request.mutable_domain()->set_policy(policy);
  return request;
}

v1::MapRequest MapRequest(uint64_t phys, uint64_t size) {
  v1::MapRequest request;
  request.set_device_id(kDevice);
  request.set_phys(phys);
  request.set_size(size);
  request.mutable_permissions()->set_read(true);
  request.mutable_permissions()->set_write(true);
  return request;
}

v1::TranslateRequest TranslateRequest(uint64_t iova) {
  v1::TranslateRequest request;
  request.set_device_id(kDevice);
  request.set_iova(iova);
  request.set_size(8);
  request.set_access(v1::ACCESS_READ);
  return request;
}

struct CallDeadline {
  std::string method;
  absl::Time deadline;
};

// Notes each call's method and deadline as gRPC starts it, adding no
// interceptor to the call.
class DeadlineRecorder final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit DeadlineRecorder(std::vector<CallDeadline>* calls) : calls_(calls) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    std::lock_guard<std::mutex> lock(mutex_);
    calls_->push_back({info->method(), absl::FromChrono(info->client_context()->deadline())});
    return nullptr;
  }

 private:
  std::mutex mutex_;
  std::vector<CallDeadline>* calls_;
};

std::shared_ptr<grpc::Channel> ChannelRecordingDeadlines(const std::string& target,
                                                         std::vector<CallDeadline>* calls) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> recorders;
  recorders.push_back(std::make_unique<DeadlineRecorder>(calls));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), std::move(recorders));
}

class BrokerClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = TestBroker::Start();
    ASSERT_NE(broker_, nullptr);
    client_ = std::make_unique<BrokerClient>(broker_->channel(), ConnectionOptions());
  }

  // kDomain (fast) with kDevice attached.
  void CreateDomainWithDevice() {
    ASSERT_TRUE(client_->CreateDomain(CreateDomainRequest(kDomain, v1::POLICY_FAST)).ok());
    v1::RegisterDeviceRequest device;
    device.mutable_device()->set_id(kDevice);
    ASSERT_TRUE(client_->RegisterDevice(device).ok());
    v1::AttachDeviceRequest attach;
    attach.set_device_id(kDevice);
    attach.set_domain_id(kDomain);
    ASSERT_TRUE(client_->AttachDevice(attach).ok());
  }

  std::unique_ptr<TestBroker> broker_;
  std::unique_ptr<BrokerClient> client_;
};

// A client of kDeadTarget that records each backoff instead of sleeping.
class DeadTargetTest : public ::testing::Test {
 protected:
  std::unique_ptr<BrokerClient> Client(ConnectionOptions options) {
    options.target = kDeadTarget;
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(options);
    EXPECT_TRUE(channel.ok()) << channel.status();
    return std::make_unique<BrokerClient>(
        *std::move(channel), options,
        [this](absl::Duration backoff) { backoffs_.push_back(backoff); });
  }

  std::vector<absl::Duration> backoffs_;
};

TEST_F(BrokerClientTest, DomainMethodsReturnTheBrokersReplies) {
  absl::StatusOr<v1::Domain> created =
      client_->CreateDomain(CreateDomainRequest(kDomain, v1::POLICY_FAST));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->spec().id(), kDomain);
  EXPECT_EQ(created->spec().aperture_first(), kPage);  // a default, filled in

  v1::GetDomainRequest get;
  get.set_domain_id(kDomain);
  absl::StatusOr<v1::Domain> domain = client_->GetDomain(get);
  ASSERT_TRUE(domain.ok()) << domain.status();
  EXPECT_EQ(domain->spec().policy(), v1::POLICY_FAST);

  ASSERT_TRUE(client_->CreateDomain(CreateDomainRequest("vm0", v1::POLICY_PT)).ok());
  absl::StatusOr<v1::ListDomainsResponse> list = client_->ListDomains({});
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_THAT(list->domains(), SizeIs(2));
  EXPECT_EQ(list->domains(0).spec().id(), "vm0");
  EXPECT_EQ(list->domains(1).spec().id(), kDomain);

  v1::SetDomainPolicyRequest policy;
  policy.set_domain_id(kDomain);
  policy.set_policy(v1::POLICY_PARANOID);
  absl::StatusOr<v1::Domain> changed = client_->SetDomainPolicy(policy);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(changed->spec().policy(), v1::POLICY_PARANOID);

  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id(kDomain);
  absl::StatusOr<v1::DestroyDomainResponse> destroyed = client_->DestroyDomain(destroy);
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_THAT(destroyed->detached_device_ids(), IsEmpty());
  EXPECT_EQ(client_->GetDomain(get).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(BrokerClientTest, DeviceMethodsReturnTheBrokersReplies) {
  ASSERT_TRUE(client_->CreateDomain(CreateDomainRequest(kDomain, v1::POLICY_FAST)).ok());
  v1::RegisterDeviceRequest registration;
  registration.mutable_device()->set_id(kDevice);
  absl::StatusOr<v1::Device> registered = client_->RegisterDevice(registration);
  ASSERT_TRUE(registered.ok()) << registered.status();
  EXPECT_EQ(registered->spec().dma_mask_bits(), 64u);
  EXPECT_GT(registered->requester_id(), 0u);

  v1::UpdateDeviceRequest update;
  update.set_device_id(kDevice);
  update.set_dma_mask_bits(32);
  absl::StatusOr<v1::Device> updated = client_->UpdateDevice(update);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->spec().dma_mask_bits(), 32u);

  v1::AttachDeviceRequest attach;
  attach.set_device_id(kDevice);
  attach.set_domain_id(kDomain);
  absl::StatusOr<v1::AttachDeviceResponse> attached = client_->AttachDevice(attach);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ(attached->detached_from_domain_id(), "");

  v1::GetDeviceRequest get;
  get.set_device_id(kDevice);
  absl::StatusOr<v1::Device> device = client_->GetDevice(get);
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->domain_id(), kDomain);

  v1::ListDevicesRequest list_request;
  list_request.set_domain_id(kDomain);
  absl::StatusOr<v1::ListDevicesResponse> list = client_->ListDevices(list_request);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_THAT(list->devices(), SizeIs(1));
  EXPECT_EQ(list->devices(0).spec().id(), kDevice);

  v1::DetachDeviceRequest detach;
  detach.set_device_id(kDevice);
  absl::StatusOr<v1::DetachDeviceResponse> detached = client_->DetachDevice(detach);
  ASSERT_TRUE(detached.ok()) << detached.status();
  EXPECT_EQ(detached->domain_id(), kDomain);

  v1::UnregisterDeviceRequest unregister;
  unregister.set_device_id(kDevice);
  absl::StatusOr<v1::UnregisterDeviceResponse> unregistered =
      client_->UnregisterDevice(unregister);
  ASSERT_TRUE(unregistered.ok()) << unregistered.status();
  EXPECT_EQ(unregistered->detached_from_domain_id(), "");
  EXPECT_EQ(client_->GetDevice(get).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(BrokerClientTest, DataPathMethodsReturnTheBrokersReplies) {
  CreateDomainWithDevice();
  absl::StatusOr<v1::MapResponse> mapped = client_->Map(MapRequest(kPhys, kPage));
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(mapped->kind(), v1::MAPPING_KIND_TRANSLATED);
  EXPECT_EQ(mapped->leaves_4k(), 1u);

  absl::StatusOr<v1::TranslateResponse> translated =
      client_->Translate(TranslateRequest(mapped->iova()));
  ASSERT_TRUE(translated.ok()) << translated.status();
  ASSERT_THAT(translated->segments(), SizeIs(1));
  EXPECT_EQ(translated->segments(0).phys(), kPhys);

  v1::UnmapRequest unmap;
  unmap.set_device_id(kDevice);
  unmap.set_iova(mapped->iova());
  unmap.set_size(kPage);
  absl::StatusOr<v1::UnmapResponse> unmapped = client_->Unmap(unmap);
  ASSERT_TRUE(unmapped.ok()) << unmapped.status();
  EXPECT_EQ(unmapped->bytes_unmapped(), kPage);

  v1::FlushRequest flush;
  flush.set_domain_id(kDomain);
  ASSERT_TRUE(client_->Flush(flush).ok());
  absl::StatusOr<v1::TranslateResponse> fault =
      client_->Translate(TranslateRequest(mapped->iova()));
  ASSERT_TRUE(fault.ok()) << fault.status();
  EXPECT_EQ(fault->fault().reason(), v1::FAULT_REASON_NOT_MAPPED);

  v1::GetStatsRequest stats_request;
  stats_request.set_domain_id(kDomain);
  absl::StatusOr<v1::GetStatsResponse> stats = client_->GetStats(stats_request);
  ASSERT_TRUE(stats.ok()) << stats.status();
  ASSERT_TRUE(stats->domains().contains(kDomain));
  EXPECT_EQ(stats->domains().at(kDomain).maps(), 1u);
  EXPECT_EQ(stats->domains().at(kDomain).faults(), 1u);
}

TEST_F(BrokerClientTest, ErrorsKeepTheBrokersCodeAndMessage) {
  v1::GetDomainRequest unknown;
  unknown.set_domain_id("vm9");
  const absl::Status not_found = client_->GetDomain(unknown).status();
  EXPECT_EQ(not_found.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(not_found.message(), HasSubstr("vm9"));

  ASSERT_TRUE(client_->CreateDomain(CreateDomainRequest(kDomain, v1::POLICY_FAST)).ok());
  const absl::Status exists =
      client_->CreateDomain(CreateDomainRequest(kDomain, v1::POLICY_FAST)).status();
  EXPECT_EQ(exists.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(exists.message(), HasSubstr(kDomain));

  const absl::Status invalid =
      client_->CreateDomain(CreateDomainRequest("vm2", v1::POLICY_UNSPECIFIED)).status();
  EXPECT_EQ(invalid.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(invalid.message(), HasSubstr("policy"));
}

TEST_F(BrokerClientTest, FailedPreconditionKeepsItsMessage) {
  CreateDomainWithDevice();
  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id(kDomain);
  const absl::Status busy = client_->DestroyDomain(destroy).status();
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(busy.message(), HasSubstr(kDomain));
}

TEST_F(BrokerClientTest, EveryCallCarriesTheDeadline) {
  constexpr absl::Duration kDeadline = absl::Seconds(42);
  std::vector<CallDeadline> calls;
  ConnectionOptions options;
  options.deadline = kDeadline;
  BrokerClient client(ChannelRecordingDeadlines(broker_->target(), &calls), options);
  const absl::Time before = absl::Now();
  ASSERT_TRUE(client.ListDomains({}).ok());
  ASSERT_TRUE(client.CreateDomain(CreateDomainRequest(kDomain, v1::POLICY_FAST)).ok());
  ASSERT_TRUE(client.CheckHealth().ok());
  const absl::Time after = absl::Now();

  ASSERT_THAT(calls, SizeIs(3));
  EXPECT_EQ(calls[0].method, "/iommu_broker.v1.IommuBroker/ListDomains");
  EXPECT_EQ(calls[1].method, "/iommu_broker.v1.IommuBroker/CreateDomain");
  EXPECT_EQ(calls[2].method, "/grpc.health.v1.Health/Check");
  // Set from the clock when each call starts (the slack is the clock's
  // rounding through std::chrono).
  for (const CallDeadline& call : calls) {
    EXPECT_GE(call.deadline, before + kDeadline - absl::Microseconds(1)) << call.method;
    EXPECT_LE(call.deadline, after + kDeadline + absl::Microseconds(1)) << call.method;
  }
}

TEST_F(BrokerClientTest, ConnectUsesTheOptionsTarget) {
  ConnectionOptions options;
  options.target = broker_->target();
  absl::StatusOr<std::unique_ptr<BrokerClient>> client = BrokerClient::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->ListDomains({}).ok());
}

TEST(BrokerClientConnectTest, RefusesAnEmptyTarget) {
  ConnectionOptions options;
  options.target = "";
  EXPECT_EQ(BrokerClient::Connect(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BrokerClientTest, HealthCheckAnswersServing) {
  absl::StatusOr<ServingStatus> broker = client_->CheckHealth();
  ASSERT_TRUE(broker.ok()) << broker.status();
  EXPECT_EQ(*broker, ServingStatus::kServing);
  absl::StatusOr<ServingStatus> service = client_->CheckHealth("iommu_broker.v1.IommuBroker");
  ASSERT_TRUE(service.ok()) << service.status();
  EXPECT_EQ(*service, ServingStatus::kServing);
  EXPECT_EQ(ServingStatusName(*service), "SERVING");
  // The service name reached the broker intact: an unknown one is refused.
  EXPECT_EQ(client_->CheckHealth("no.such.Service").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(BrokerClientTest, WatchEventsDeliversAFaultUntilCancelled) {
  CreateDomainWithDevice();
  v1::WatchEventsRequest request;
  request.set_domain_id(kDomain);
  request.set_faults(true);
  absl::StatusOr<std::unique_ptr<EventWatch>> watch = client_->WatchEvents(request);
  ASSERT_TRUE(watch.ok()) << watch.status();

  // Subscribed once WatchEvents returned: this fault cannot be missed.
  ASSERT_TRUE(client_->Translate(TranslateRequest(0x5000)).ok());
  v1::Event event;
  ASSERT_TRUE((*watch)->Next(&event));
  EXPECT_EQ(event.fault().iova(), 0x5000u);
  EXPECT_EQ(event.fault().device_id(), kDevice);

  (*watch)->Cancel();
  EXPECT_FALSE((*watch)->Next(&event));
  EXPECT_EQ((*watch)->Finish().code(), absl::StatusCode::kCancelled);
}

TEST_F(BrokerClientTest, WatchEventsKeepsTheBrokersRefusal) {
  v1::WatchEventsRequest nothing;  // neither faults nor invalidations
  absl::StatusOr<std::unique_ptr<EventWatch>> watch = client_->WatchEvents(nothing);
  ASSERT_TRUE(watch.ok()) << watch.status();
  v1::Event event;
  EXPECT_FALSE((*watch)->Next(&event));
  EXPECT_EQ((*watch)->Finish().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DeadTargetTest, ReadOnlyCallIsRetriedWithExponentialBackoff) {
  ConnectionOptions options;
  options.read_retries = 5;
  options.initial_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(40);
  std::unique_ptr<BrokerClient> client = Client(options);
  EXPECT_EQ(client->ListDomains({}).status().code(), absl::StatusCode::kUnavailable);
  // Six attempts, five waits between them, doubling up to the cap.
  EXPECT_THAT(backoffs_, ElementsAre(absl::Milliseconds(10), absl::Milliseconds(20),
                                     absl::Milliseconds(40), absl::Milliseconds(40),
                                     absl::Milliseconds(40)));
}

TEST_F(DeadTargetTest, EveryReadOnlyCallIsRetried) {
  ConnectionOptions options;
  options.read_retries = 1;
  std::unique_ptr<BrokerClient> client = Client(options);
  EXPECT_EQ(client->GetDomain({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->ListDomains({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->GetDevice({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->ListDevices({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Translate({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->GetStats({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(backoffs_, SizeIs(6));
}

TEST_F(DeadTargetTest, NoRetriesWhenReadRetriesIsZero) {
  ConnectionOptions options;
  options.read_retries = 0;
  std::unique_ptr<BrokerClient> client = Client(options);
  EXPECT_EQ(client->ListDomains({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(backoffs_, IsEmpty());
}

TEST_F(DeadTargetTest, StateChangingCallsAreNeverRetried) {
  std::unique_ptr<BrokerClient> client = Client(ConnectionOptions());
  EXPECT_EQ(client->Map(MapRequest(kPhys, kPage)).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Unmap({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Flush({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->CreateDomain({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->DestroyDomain({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->SetDomainPolicy({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->RegisterDevice({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->UpdateDevice({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->UnregisterDevice({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->AttachDevice({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->DetachDevice({}).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(backoffs_, IsEmpty());
}

TEST_F(DeadTargetTest, HealthCheckAndWatchReportUnavailable) {
  std::unique_ptr<BrokerClient> client = Client(ConnectionOptions());
  EXPECT_EQ(client->CheckHealth().status().code(), absl::StatusCode::kUnavailable);
  v1::WatchEventsRequest request;
  request.set_faults(true);
  EXPECT_EQ(client->WatchEvents(request).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(BrokerClientTest, RefusalsOtherThanUnavailableAreNotRetried) {
  int waits = 0;
  BrokerClient client(broker_->channel(), ConnectionOptions(),
                      [&waits](absl::Duration) { ++waits; });
  v1::GetDomainRequest unknown;
  unknown.set_domain_id("vm9");
  EXPECT_EQ(client.GetDomain(unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(waits, 0);
}

}  // namespace
}  // namespace iommu_broker::client
