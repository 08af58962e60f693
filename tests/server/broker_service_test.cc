// Integration tests of the iommu_broker.v1.IommuBroker gRPC service: a real
// BrokerServer in-process, called through the generated stubs. They check
// behaviour as the API (protos/iommu_broker/v1/iommu_broker.proto) states
// it: each RPC's result, each error code of the convention with a message
// naming the field and value, that a refused request changed nothing, the
// Batch and WatchEvents streams, health, reflection and graceful shutdown.
//
// Every call has a deadline (test_broker.h) so that a server bug fails a
// test instead of hanging it; no test asserts on time.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/client_callback.h"
#include "grpcpp/support/sync_stream.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/server/rpc_helpers.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::testing {
namespace {

using ::grpc::StatusCode;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kDomain[] = "vm1";
constexpr char kOtherDomain[] = "vm2";
constexpr char kDevice[] = "0000:3b:00.0";
constexpr char kOtherDevice[] = "0000:3c:00.0";
constexpr uint64_t kPage = 0x1000;
constexpr uint64_t k2M = uint64_t{2} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kPhysicalMemory = uint64_t{16} << 30;  // the engine's default
constexpr uint64_t kBypassWindowBase = uint64_t{1} << 59;  // the domain default
constexpr uint64_t kMsiStart = 0xfee00000;                 // the default reserved window

// ---------------------------------------------------------------------------
// Streams

// A LinkDeviceIotlb stream and the context it lives in.
using IotlbLinkStream =
    grpc::ClientReaderWriter<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations>;
struct IotlbLink {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<IotlbLinkStream> stream;
};

// Opens a link for `device` and reads the broker's first, empty message:
// from then on invalidations reach the cache.
IotlbLink LinkIotlb(Stub& stub, const std::string& device) {
  IotlbLink link;
  link.context = ContextWithDeadline();
  link.stream = stub.LinkDeviceIotlb(link.context.get());
  v1::DeviceIotlbRequest request;
  request.mutable_link()->set_device_id(device);
  link.stream->Write(request);
  v1::DeviceIotlbInvalidations confirmation;
  EXPECT_TRUE(link.stream->Read(&confirmation));
  EXPECT_EQ(confirmation.invalidations_size(), 0);
  return link;
}

void AcknowledgeUpTo(IotlbLinkStream& stream, uint64_t sequence) {
  v1::DeviceIotlbRequest ack;
  ack.set_acknowledged_sequence(sequence);
  ASSERT_TRUE(stream.Write(ack));
}

// ---------------------------------------------------------------------------
// Health and reflection helpers

// The channel's state once it stops connecting: READY, or TRANSIENT_FAILURE
// (or whatever it was when the deadline passed).
grpc_connectivity_state SettledState(grpc::Channel& channel) {
  const auto deadline = CallDeadline();
  grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY && state != GRPC_CHANNEL_TRANSIENT_FAILURE) {
    if (!channel.WaitForStateChange(state, deadline)) break;
    state = channel.GetState(/*try_to_connect=*/true);
  }
  return state;
}

// Channel arguments that make gRPC's client-side health checking (gRFC A17)
// watch grpc.health.v1.Health for `service`: the channel is READY only
// while the server's health service answers SERVING for it.
grpc::ChannelArguments HealthCheckedArgs(const std::string& service) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(absl::StrCat(
      R"({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ")",
      service, R"("}})"));
  return args;
}

using ProtoMessage = google::protobuf::Message;
using GenericProtoStub = grpc::TemplatedGenericStub<ProtoMessage, ProtoMessage>;

// A static string: gRPC may keep a pointer to the method name for the call.
constexpr char kReflectionMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

// A message of one of the reflection service's types. libgrpc++_reflection
// (linked for the server) holds their generated code and registers their
// descriptors, but Debian installs no header for them; the generated
// factory hands out instances of those generated classes.
std::unique_ptr<ProtoMessage> NewReflectionMessage(const std::string& type) {
  const google::protobuf::Descriptor* descriptor =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(
          absl::StrCat("grpc.reflection.v1alpha.", type));
  if (descriptor == nullptr) return nullptr;
  return std::unique_ptr<ProtoMessage>(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(descriptor)->New());
}

// One request and one response on the reflection stream.
class ReflectionCall final : public grpc::ClientBidiReactor<ProtoMessage, ProtoMessage> {
 public:
  ReflectionCall(GenericProtoStub& stub, const ProtoMessage& request, ProtoMessage* response) {
    context_.set_deadline(CallDeadline());
    stub.PrepareBidiStreamingCall(&context_, kReflectionMethod, grpc::StubOptions(), this);
    StartWriteLast(&request, grpc::WriteOptions());
    StartRead(response);
    StartCall();
  }

  // The call's status, once it is done; `*read` says whether a response came.
  grpc::Status Await(bool* read) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_changed_.wait(lock, [this] { return done_; });
    *read = read_;
    return status_;
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mutex_);
    read_ = ok;
  }
  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    status_ = status;
    done_ = true;
    done_changed_.notify_all();
  }

 private:
  grpc::ClientContext context_;
  std::mutex mutex_;
  std::condition_variable done_changed_;
  bool read_ = false;
  bool done_ = false;
  grpc::Status status_;
};

// ---------------------------------------------------------------------------
// The fixture: a broker with the default configuration, restartable with
// another, and helpers for the set-up calls that must succeed.

class BrokerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartBroker(v1::BrokerConfig()); }

  void StartBroker(const v1::BrokerConfig& config) {
    broker_.reset();
    broker_ = TestBroker::Start(config);
    ASSERT_NE(broker_, nullptr);
  }

  Stub& stub() { return broker_->stub(); }

  v1::Domain CreateDomain(const v1::DomainSpec& spec) {
    v1::CreateDomainRequest request;
    *request.mutable_domain() = spec;
    Reply<v1::Domain> reply = Call(stub(), &Stub::CreateDomain, request);
    EXPECT_THAT(reply.status, IsOk()) << spec.DebugString();
    return reply.response;
  }
  v1::Domain CreateDomain(const std::string& id, v1::Policy policy) {
    return CreateDomain(DomainSpec(id, policy));
  }
  // A fast domain whose flush queue never times out during a test, so a
  // stale translation stays observable until an explicit Flush.
  void CreateSlowFlushingFastDomain(const std::string& id) {
    v1::DomainSpec spec = DomainSpec(id, v1::POLICY_FAST);
    spec.mutable_flush_queue_timeout()->set_seconds(10);
    CreateDomain(spec);
  }

  v1::Device RegisterDevice(const v1::DeviceSpec& spec) {
    v1::RegisterDeviceRequest request;
    *request.mutable_device() = spec;
    Reply<v1::Device> reply = Call(stub(), &Stub::RegisterDevice, request);
    EXPECT_THAT(reply.status, IsOk()) << spec.DebugString();
    return reply.response;
  }
  v1::Device RegisterDevice(const std::string& id, bool allow_bypass = false) {
    return RegisterDevice(DeviceSpec(id, allow_bypass));
  }

  Reply<v1::AttachDeviceResponse> TryAttach(const std::string& device, const std::string& domain) {
    v1::AttachDeviceRequest request;
    request.set_device_id(device);
    request.set_domain_id(domain);
    return Call(stub(), &Stub::AttachDevice, request);
  }
  v1::AttachDeviceResponse Attach(const std::string& device, const std::string& domain) {
    Reply<v1::AttachDeviceResponse> reply = TryAttach(device, domain);
    EXPECT_THAT(reply.status, IsOk());
    return reply.response;
  }

  // kDevice attached to kDomain of `policy`.
  void SetUpAttachedDevice(v1::Policy policy, bool allow_bypass = false) {
    CreateDomain(kDomain, policy);
    RegisterDevice(kDevice, allow_bypass);
    Attach(kDevice, kDomain);
  }

  Reply<v1::MapResponse> Map(const v1::MapRequest& request) {
    return Call(stub(), &Stub::Map, request);
  }
  v1::MapResponse MustMap(const v1::MapRequest& request) {
    Reply<v1::MapResponse> reply = Map(request);
    EXPECT_THAT(reply.status, IsOk()) << request.DebugString();
    return reply.response;
  }
  Reply<v1::UnmapResponse> Unmap(const v1::UnmapRequest& request) {
    return Call(stub(), &Stub::Unmap, request);
  }
  Reply<v1::TranslateResponse> Translate(const v1::TranslateRequest& request) {
    return Call(stub(), &Stub::Translate, request);
  }
  v1::TranslateResponse MustTranslate(const v1::TranslateRequest& request) {
    Reply<v1::TranslateResponse> reply = Translate(request);
    EXPECT_THAT(reply.status, IsOk()) << request.DebugString();
    return reply.response;
  }

  Reply<v1::Domain> GetDomain(const std::string& id) {
    v1::GetDomainRequest request;
    request.set_domain_id(id);
    return Call(stub(), &Stub::GetDomain, request);
  }
  Reply<v1::Device> GetDevice(const std::string& id) {
    v1::GetDeviceRequest request;
    request.set_device_id(id);
    return Call(stub(), &Stub::GetDevice, request);
  }
  std::vector<std::string> DomainIds() {
    Reply<v1::ListDomainsResponse> reply =
        Call(stub(), &Stub::ListDomains, v1::ListDomainsRequest());
    EXPECT_THAT(reply.status, IsOk());
    std::vector<std::string> ids;
    for (const v1::Domain& domain : reply.response.domains()) ids.push_back(domain.spec().id());
    return ids;
  }
  std::vector<std::string> DeviceIds(const std::string& domain_filter = "") {
    v1::ListDevicesRequest request;
    request.set_domain_id(domain_filter);
    Reply<v1::ListDevicesResponse> reply = Call(stub(), &Stub::ListDevices, request);
    EXPECT_THAT(reply.status, IsOk());
    std::vector<std::string> ids;
    for (const v1::Device& device : reply.response.devices()) ids.push_back(device.spec().id());
    return ids;
  }
  v1::DomainStats StatsOf(const std::string& id) {
    Reply<v1::Domain> reply = GetDomain(id);
    EXPECT_THAT(reply.status, IsOk());
    return reply.response.stats();
  }

  // Everything a refused request must leave as it was, as the API shows
  // it: every domain (spec, devices, counters) and every device. Left out
  // are the counters that move by themselves: the flush queue's (timeouts
  // on the maintenance thread) and the IOVA allocator's per-thread caches.
  std::string State() {
    Reply<v1::ListDomainsResponse> domains =
        Call(stub(), &Stub::ListDomains, v1::ListDomainsRequest());
    EXPECT_THAT(domains.status, IsOk());
    for (v1::Domain& domain : *domains.response.mutable_domains()) {
      v1::DomainStats* stats = domain.mutable_stats();
      stats->clear_flush_queue();
      stats->mutable_iova()->clear_cached_bytes();
      stats->mutable_iova()->clear_free_bytes();
      stats->mutable_iova()->clear_largest_free_block_bytes();
    }
    Reply<v1::ListDevicesResponse> devices =
        Call(stub(), &Stub::ListDevices, v1::ListDevicesRequest());
    EXPECT_THAT(devices.status, IsOk());
    return absl::StrCat(domains.response.DebugString(), devices.response.DebugString());
  }

  std::unique_ptr<TestBroker> broker_;
};

// ===========================================================================
// Domains

TEST_F(BrokerServiceTest, CreateDomainFillsEveryDefaultInTheReply) {
  const v1::Domain domain = CreateDomain(kDomain, v1::POLICY_FAST);

  const v1::DomainSpec& spec = domain.spec();
  EXPECT_EQ(spec.id(), kDomain);
  EXPECT_EQ(spec.policy(), v1::POLICY_FAST);
  ASSERT_TRUE(spec.has_aperture_first() && spec.has_aperture_last());
  EXPECT_EQ(spec.aperture_first(), 0x1000u);
  EXPECT_EQ(spec.aperture_last(), (uint64_t{1} << 48) - 1);
  EXPECT_THAT(spec.page_sizes(),
              ElementsAre(v1::PAGE_SIZE_4K, v1::PAGE_SIZE_2M, v1::PAGE_SIZE_1G));
  EXPECT_EQ(spec.iotlb_sets(), 64u);
  EXPECT_EQ(spec.iotlb_ways(), 8u);
  EXPECT_EQ(spec.flush_queue_capacity(), 256u);
  EXPECT_EQ(spec.flush_queue_timeout().seconds(), 0);
  EXPECT_EQ(spec.flush_queue_timeout().nanos(), 10'000'000);
  ASSERT_TRUE(spec.has_reserved_regions());
  ASSERT_EQ(spec.reserved_regions().regions_size(), 1);
  EXPECT_EQ(spec.reserved_regions().regions(0).start(), kMsiStart);
  EXPECT_EQ(spec.reserved_regions().regions(0).size(), 0x100000u);
  EXPECT_EQ(spec.reserved_regions().regions(0).name(), "msi");
  EXPECT_FALSE(spec.identity_first());
  EXPECT_EQ(spec.max_mappings(), 1048576u);
  EXPECT_EQ(spec.bypass_window_base(), kBypassWindowBase);
  EXPECT_EQ(spec.iommu_unit(), 0u);
  EXPECT_THAT(domain.device_ids(), IsEmpty());
  EXPECT_EQ(domain.stats().live_mappings(), 0u);
  EXPECT_EQ(domain.stats().iova().reserved_bytes(), 0x100000u);
}

TEST_F(BrokerServiceTest, CreateDomainKeepsExplicitValues) {
  v1::DomainSpec spec = DomainSpec(kDomain, v1::POLICY_PARANOID);
  spec.set_aperture_first(0x10000);
  spec.set_aperture_last(0xffffffff);
  spec.add_page_sizes(v1::PAGE_SIZE_2M);
  spec.set_iotlb_sets(16);
  spec.set_iotlb_ways(4);
  spec.set_flush_queue_capacity(32);
  spec.mutable_flush_queue_timeout()->set_seconds(1);
  spec.mutable_reserved_regions();  // set and empty: no reserved region at all
  spec.set_max_mappings(10);
  spec.set_bypass_window_base(uint64_t{1} << 40);

  const v1::Domain created = CreateDomain(spec);

  v1::DomainSpec expected = spec;
  expected.clear_page_sizes();  // 4K is always added
  expected.add_page_sizes(v1::PAGE_SIZE_4K);
  expected.add_page_sizes(v1::PAGE_SIZE_2M);
  expected.set_identity_first(false);
  expected.set_iommu_unit(0);
  EXPECT_EQ(created.spec().DebugString(), expected.DebugString());
  Reply<v1::Domain> got = GetDomain(kDomain);
  ASSERT_THAT(got.status, IsOk());
  EXPECT_EQ(got.response.spec().DebugString(), expected.DebugString());
  EXPECT_EQ(got.response.stats().iova().reserved_bytes(), 0u);
}

TEST_F(BrokerServiceTest, ListDomainsIsSortedById) {
  CreateDomain("c", v1::POLICY_FAST);
  CreateDomain("a", v1::POLICY_PARANOID);
  CreateDomain("b", v1::POLICY_PT);

  EXPECT_THAT(DomainIds(), ElementsAre("a", "b", "c"));
  Reply<v1::Domain> b = GetDomain("b");
  ASSERT_THAT(b.status, IsOk());
  EXPECT_EQ(b.response.spec().policy(), v1::POLICY_PT);
}

TEST_F(BrokerServiceTest, SetDomainPolicyRepliesWithTheNewPolicy) {
  CreateDomain(kDomain, v1::POLICY_FAST);
  v1::SetDomainPolicyRequest request;
  request.set_domain_id(kDomain);
  request.set_policy(v1::POLICY_PARANOID);

  Reply<v1::Domain> reply = Call(stub(), &Stub::SetDomainPolicy, request);

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_EQ(reply.response.spec().policy(), v1::POLICY_PARANOID);
  EXPECT_EQ(GetDomain(kDomain).response.spec().policy(), v1::POLICY_PARANOID);
}

TEST_F(BrokerServiceTest, DestroyDomainRemovesIt) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  v1::DestroyDomainRequest request;
  request.set_domain_id(kDomain);

  Reply<v1::DestroyDomainResponse> reply = Call(stub(), &Stub::DestroyDomain, request);

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_THAT(reply.response.detached_device_ids(), IsEmpty());
  EXPECT_EQ(reply.response.leaked().mappings(), 0u);
  EXPECT_THAT(GetDomain(kDomain).status, StatusIs(StatusCode::NOT_FOUND, HasSubstr(kDomain)));
  EXPECT_THAT(DomainIds(), IsEmpty());
}

TEST_F(BrokerServiceTest, ForcedDestroyDetachesDevicesAndReportsLeaks) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  RegisterDevice(kOtherDevice);
  Attach(kOtherDevice, kDomain);
  MustMap(MapAnywhere(kDevice, 0x100000, 2 * kPage));
  v1::DestroyDomainRequest request;
  request.set_domain_id(kDomain);
  request.set_force(true);

  Reply<v1::DestroyDomainResponse> reply = Call(stub(), &Stub::DestroyDomain, request);

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_THAT(reply.response.detached_device_ids(), ElementsAre(kDevice, kOtherDevice));
  EXPECT_EQ(reply.response.leaked().mappings(), 1u);
  EXPECT_EQ(reply.response.leaked().bytes(), 2 * kPage);
  EXPECT_EQ(GetDevice(kDevice).response.domain_id(), "");
  EXPECT_EQ(GetDevice(kOtherDevice).response.domain_id(), "");
  EXPECT_THAT(DomainIds(), IsEmpty());
}

// ===========================================================================
// Devices

TEST_F(BrokerServiceTest, RegisterDeviceFillsDefaultsAndKeepsExplicitValues) {
  const v1::Device plain = RegisterDevice(kDevice);
  v1::DeviceSpec explicit_spec = DeviceSpec(kOtherDevice, /*allow_bypass=*/true);
  explicit_spec.set_dma_mask_bits(32);
  const v1::Device custom = RegisterDevice(explicit_spec);

  EXPECT_EQ(plain.spec().id(), kDevice);
  ASSERT_TRUE(plain.spec().has_dma_mask_bits());
  EXPECT_EQ(plain.spec().dma_mask_bits(), 64u);
  EXPECT_FALSE(plain.spec().allow_bypass());
  EXPECT_EQ(plain.domain_id(), "");
  EXPECT_GE(plain.requester_id(), 1u);
  EXPECT_LE(plain.requester_id(), 4095u);
  EXPECT_EQ(custom.spec().dma_mask_bits(), 32u);
  EXPECT_TRUE(custom.spec().allow_bypass());
  EXPECT_NE(custom.requester_id(), plain.requester_id());
  EXPECT_EQ(GetDevice(kOtherDevice).response.DebugString(), custom.DebugString());
}

TEST_F(BrokerServiceTest, UpdateDeviceChangesOnlyWhatIsSet) {
  SetUpAttachedDevice(v1::POLICY_FAST);
  v1::UpdateDeviceRequest bypass;
  bypass.set_device_id(kDevice);
  bypass.set_allow_bypass(true);

  Reply<v1::Device> attached = Call(stub(), &Stub::UpdateDevice, bypass);

  ASSERT_THAT(attached.status, IsOk());  // allow_bypass may change while attached
  EXPECT_TRUE(attached.response.spec().allow_bypass());
  EXPECT_EQ(attached.response.spec().dma_mask_bits(), 64u);
  EXPECT_EQ(attached.response.domain_id(), kDomain);

  ASSERT_THAT(Call(stub(), &Stub::DetachDevice, [] {
                v1::DetachDeviceRequest request;
                request.set_device_id(kDevice);
                return request;
              }()).status,
              IsOk());
  v1::UpdateDeviceRequest mask;
  mask.set_device_id(kDevice);
  mask.set_dma_mask_bits(32);

  Reply<v1::Device> detached = Call(stub(), &Stub::UpdateDevice, mask);

  ASSERT_THAT(detached.status, IsOk());
  EXPECT_EQ(detached.response.spec().dma_mask_bits(), 32u);
  EXPECT_TRUE(detached.response.spec().allow_bypass());  // unset: unchanged
  EXPECT_EQ(GetDevice(kDevice).response.spec().dma_mask_bits(), 32u);
}

TEST_F(BrokerServiceTest, UnregisterDeviceReportsItsLeaks) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  MustMap(MapAnywhere(kDevice, 0x100000, kPage));
  MustMap(MapAnywhere(kDevice, 0x200000, 2 * kPage));
  RegisterDevice(kOtherDevice);
  v1::UnregisterDeviceRequest request;
  request.set_device_id(kDevice);

  Reply<v1::UnregisterDeviceResponse> reply = Call(stub(), &Stub::UnregisterDevice, request);

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_EQ(reply.response.detached_from_domain_id(), kDomain);
  EXPECT_EQ(reply.response.leaked().mappings(), 2u);
  EXPECT_EQ(reply.response.leaked().bytes(), 3 * kPage);
  EXPECT_THAT(GetDevice(kDevice).status, StatusIs(StatusCode::NOT_FOUND, HasSubstr(kDevice)));
  EXPECT_THAT(GetDomain(kDomain).response.device_ids(), IsEmpty());

  request.set_device_id(kOtherDevice);  // never attached: nothing to report
  Reply<v1::UnregisterDeviceResponse> detached = Call(stub(), &Stub::UnregisterDevice, request);
  ASSERT_THAT(detached.status, IsOk());
  EXPECT_EQ(detached.response.detached_from_domain_id(), "");
  EXPECT_EQ(detached.response.leaked().mappings(), 0u);
  EXPECT_THAT(DeviceIds(), IsEmpty());
}

TEST_F(BrokerServiceTest, AttachMovesADeviceAndReportsWhatItLeftBehind) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_FAST);
  RegisterDevice(kDevice);

  const v1::AttachDeviceResponse first = Attach(kDevice, kDomain);
  EXPECT_EQ(first.detached_from_domain_id(), "");
  EXPECT_EQ(first.leaked().mappings(), 0u);
  MustMap(MapAnywhere(kDevice, 0x100000, kPage));

  const v1::AttachDeviceResponse moved = Attach(kDevice, kOtherDomain);

  EXPECT_EQ(moved.detached_from_domain_id(), kDomain);
  EXPECT_EQ(moved.leaked().mappings(), 1u);
  EXPECT_EQ(moved.leaked().bytes(), kPage);
  EXPECT_EQ(GetDevice(kDevice).response.domain_id(), kOtherDomain);
  EXPECT_THAT(GetDomain(kDomain).response.device_ids(), IsEmpty());
  EXPECT_THAT(GetDomain(kOtherDomain).response.device_ids(), ElementsAre(kDevice));
  // The mapping stays in the domain the device left.
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), 1u);
}

TEST_F(BrokerServiceTest, DetachDeviceReportsTheDomainAndLeaks) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  MustMap(MapAnywhere(kDevice, 0x100000, kPage));
  v1::DetachDeviceRequest request;
  request.set_device_id(kDevice);

  Reply<v1::DetachDeviceResponse> reply = Call(stub(), &Stub::DetachDevice, request);

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_EQ(reply.response.domain_id(), kDomain);
  EXPECT_EQ(reply.response.leaked().mappings(), 1u);
  EXPECT_EQ(reply.response.leaked().bytes(), kPage);
  const v1::Device device = GetDevice(kDevice).response;
  EXPECT_EQ(device.domain_id(), "");
  EXPECT_EQ(device.debug().leaked_mappings(), 1u);
  EXPECT_EQ(device.debug().leaked_bytes(), kPage);
}

TEST_F(BrokerServiceTest, ListDevicesIsSortedAndFiltersByDomain) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_PARANOID);
  for (const char* id : {"c", "a", "b", "d"}) RegisterDevice(id);
  Attach("c", kDomain);
  Attach("a", kDomain);
  Attach("b", kOtherDomain);

  EXPECT_THAT(DeviceIds(), ElementsAre("a", "b", "c", "d"));
  EXPECT_THAT(DeviceIds(kDomain), ElementsAre("a", "c"));
  EXPECT_THAT(DeviceIds(kOtherDomain), ElementsAre("b"));
}

// ===========================================================================
// Data path

TEST_F(BrokerServiceTest, MapAllocatesAnIovaThatTranslatesToThePhysicalRange) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);

  const v1::MapResponse mapped = MustMap(MapAnywhere(kDevice, 0x100000, 2 * kPage));

  EXPECT_EQ(mapped.kind(), v1::MAPPING_KIND_TRANSLATED);
  EXPECT_EQ(mapped.iova() % kPage, 0u);
  EXPECT_GE(mapped.iova(), 0x1000u);
  EXPECT_EQ(mapped.leaves_4k(), 2u);
  EXPECT_EQ(mapped.bypass_refusal(), "");
  const v1::TranslateResponse translated =
      MustTranslate(TranslateOf(kDevice, mapped.iova() + 0x10, kPage));
  EXPECT_FALSE(translated.has_fault());
  ASSERT_EQ(translated.segments_size(), 1);
  EXPECT_EQ(translated.segments(0).phys(), 0x100010u);
  EXPECT_EQ(translated.segments(0).size(), kPage);
  EXPECT_EQ(translated.kind(), v1::MAPPING_KIND_TRANSLATED);
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), 1u);
}

TEST_F(BrokerServiceTest, MapAtAFixedIovaAndTranslateAcrossMappings) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);

  const v1::MapResponse first = MustMap(MapAt(kDevice, 0x10000, 0x200000, kPage));
  const v1::MapResponse second = MustMap(MapAt(kDevice, 0x11000, 0x500000, kPage));
  const v1::MapResponse third = MustMap(MapAt(kDevice, 0x12000, 0x501000, kPage));

  EXPECT_EQ(first.iova(), 0x10000u);
  EXPECT_EQ(second.iova(), 0x11000u);
  EXPECT_EQ(third.iova(), 0x12000u);
  // Three pages, two physical runs: adjacent physical pieces are merged.
  const v1::TranslateResponse translated =
      MustTranslate(TranslateOf(kDevice, 0x10800, 0x2000, v1::ACCESS_WRITE));
  ASSERT_EQ(translated.segments_size(), 2);
  EXPECT_EQ(translated.segments(0).phys(), 0x200800u);
  EXPECT_EQ(translated.segments(0).size(), 0x800u);
  EXPECT_EQ(translated.segments(1).phys(), 0x500000u);
  EXPECT_EQ(translated.segments(1).size(), 0x1800u);
}

TEST_F(BrokerServiceTest, AlignedTwoMegabyteMapUsesOneHugeLeaf) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);

  const v1::MapResponse huge = MustMap(MapAt(kDevice, kGiB, 2 * k2M, k2M));
  const v1::MapResponse unaligned = MustMap(MapAt(kDevice, 2 * kGiB + kPage, 2 * k2M, k2M));

  EXPECT_EQ(huge.leaves_2m(), 1u);
  EXPECT_EQ(huge.leaves_4k(), 0u);
  EXPECT_EQ(huge.leaves_1g(), 0u);
  EXPECT_EQ(unaligned.leaves_2m(), 0u);
  EXPECT_EQ(unaligned.leaves_4k(), 512u);
  const v1::TranslateResponse translated = MustTranslate(TranslateOf(kDevice, kGiB + 0x1234, 8));
  ASSERT_EQ(translated.segments_size(), 1);
  EXPECT_EQ(translated.segments(0).phys(), 2 * k2M + 0x1234);
}

TEST_F(BrokerServiceTest, BypassIsGrantedOnFastWithAllowBypass) {
  SetUpAttachedDevice(v1::POLICY_FAST, /*allow_bypass=*/true);

  for (v1::BypassMode mode : {v1::BYPASS_MODE_PREFER, v1::BYPASS_MODE_REQUIRE}) {
    const v1::MapResponse mapped = MustMap(MapBypass(kDevice, 0x300000, kPage, mode));
    EXPECT_EQ(mapped.kind(), v1::MAPPING_KIND_BYPASS) << v1::BypassMode_Name(mode);
    EXPECT_EQ(mapped.iova(), kBypassWindowBase + 0x300000);
    EXPECT_EQ(mapped.bypass_refusal(), "");
    EXPECT_EQ(mapped.leaves_4k() + mapped.leaves_2m() + mapped.leaves_1g(), 0u);
  }
  const v1::TranslateResponse translated =
      MustTranslate(TranslateOf(kDevice, kBypassWindowBase + 0x300000, kPage));
  EXPECT_EQ(translated.kind(), v1::MAPPING_KIND_BYPASS);
  ASSERT_EQ(translated.segments_size(), 1);
  EXPECT_EQ(translated.segments(0).phys(), 0x300000u);
  const v1::DomainStats stats = StatsOf(kDomain);
  EXPECT_EQ(stats.bypass_maps(), 2u);
  EXPECT_EQ(stats.live_mappings(), 0u);  // bypass writes no PTE
}

TEST_F(BrokerServiceTest, RefusedPreferredBypassIsTranslatedAndSaysWhy) {
  SetUpAttachedDevice(v1::POLICY_FAST, /*allow_bypass=*/false);

  const v1::MapResponse mapped =
      MustMap(MapBypass(kDevice, 0x300000, kPage, v1::BYPASS_MODE_PREFER));

  EXPECT_EQ(mapped.kind(), v1::MAPPING_KIND_TRANSLATED);
  EXPECT_THAT(mapped.bypass_refusal(), HasSubstr("allow_bypass"));
  EXPECT_LT(mapped.iova(), kBypassWindowBase);
  EXPECT_EQ(mapped.leaves_4k(), 1u);
}

TEST_F(BrokerServiceTest, UnmapRemovesEveryMappingInsideTheRange) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  MustMap(MapAt(kDevice, 0x14000, 0x200000, 2 * kPage));

  Reply<v1::UnmapResponse> reply = Unmap(UnmapOf(kDevice, 0x10000, 0x10000));

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_EQ(reply.response.bytes_unmapped(), 3 * kPage);
  EXPECT_EQ(reply.response.mappings_removed(), 2u);
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), 0u);
  const v1::TranslateResponse gone = MustTranslate(TranslateOf(kDevice, 0x14000, 1));
  EXPECT_EQ(gone.fault().reason(), v1::FAULT_REASON_NOT_MAPPED);
}

TEST_F(BrokerServiceTest, UnmapOfNothingMappedSucceedsWithZeroBytes) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);

  Reply<v1::UnmapResponse> reply = Unmap(UnmapOf(kDevice, 0x40000, 9 * kPage));

  ASSERT_THAT(reply.status, IsOk());
  EXPECT_EQ(reply.response.bytes_unmapped(), 0u);
  EXPECT_EQ(reply.response.mappings_removed(), 0u);
  // Counted as DMA-API misuse (a double unmap), though not refused.
  EXPECT_EQ(GetDevice(kDevice).response.debug().double_unmaps(), 1u);
}

TEST_F(BrokerServiceTest, TranslateOfAnUnmappedIovaIsAFaultNotAnError) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);

  const v1::TranslateResponse translated =
      MustTranslate(TranslateOf(kDevice, 0x77000, 16, v1::ACCESS_WRITE));

  ASSERT_TRUE(translated.has_fault());
  EXPECT_THAT(translated.segments(), IsEmpty());
  const v1::Fault& fault = translated.fault();
  EXPECT_EQ(fault.reason(), v1::FAULT_REASON_NOT_MAPPED);
  EXPECT_EQ(fault.domain_id(), kDomain);
  EXPECT_EQ(fault.device_id(), kDevice);
  EXPECT_EQ(fault.iova(), 0x77000u);
  EXPECT_EQ(fault.access(), v1::ACCESS_WRITE);
  EXPECT_GT(fault.time().seconds(), 0);
  const v1::DomainStats stats = StatsOf(kDomain);
  EXPECT_EQ(stats.faults(), 1u);
  EXPECT_EQ(stats.debug().dma_after_unmap(), 1u);
}

TEST_F(BrokerServiceTest, TranslateOfADetachedDeviceFaults) {
  RegisterDevice(kDevice);

  const v1::TranslateResponse translated = MustTranslate(TranslateOf(kDevice, 0x1000, 1));

  EXPECT_EQ(translated.fault().reason(), v1::FAULT_REASON_DEVICE_NOT_ATTACHED);
  EXPECT_EQ(translated.fault().domain_id(), "");
}

TEST_F(BrokerServiceTest, FastServesAStaleTranslationUntilFlush) {
  CreateSlowFlushingFastDomain(kDomain);
  RegisterDevice(kDevice);
  Attach(kDevice, kDomain);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  ASSERT_FALSE(MustTranslate(TranslateOf(kDevice, 0x10000, 8)).has_fault());  // fills the IOTLB
  ASSERT_THAT(Unmap(UnmapOf(kDevice, 0x10000, kPage)).status, IsOk());

  const v1::TranslateResponse stale = MustTranslate(TranslateOf(kDevice, 0x10000, 8));

  EXPECT_FALSE(stale.has_fault());
  EXPECT_TRUE(stale.stale());
  EXPECT_TRUE(stale.iotlb_hit());
  ASSERT_EQ(stale.segments_size(), 1);
  EXPECT_EQ(stale.segments(0).phys(), 0x100000u);
  EXPECT_EQ(StatsOf(kDomain).stale_translations(), 1u);
  EXPECT_EQ(StatsOf(kDomain).flush_queue().pending(), 1u);

  ASSERT_THAT(Call(stub(), &Stub::Flush, FlushOf(kDomain)).status, IsOk());

  const v1::TranslateResponse flushed = MustTranslate(TranslateOf(kDevice, 0x10000, 8));
  EXPECT_EQ(flushed.fault().reason(), v1::FAULT_REASON_NOT_MAPPED);
  EXPECT_FALSE(flushed.stale());
  const v1::DomainStats stats = StatsOf(kDomain);
  EXPECT_EQ(stats.flush_queue().pending(), 0u);
  EXPECT_GE(stats.flush_queue().explicit_flushes(), 1u);
}

TEST_F(BrokerServiceTest, GetStatsFiltersAndReportsUnits) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_FAST);
  RegisterDevice(kOtherDevice);
  const uint64_t iova = MustMap(MapAnywhere(kDevice, 0x100000, 2 * kPage)).iova();
  constexpr uint64_t kUnmapped = 0x80000000;
  ASSERT_LT(iova + 2 * kPage, kUnmapped);  // the allocator starts low
  MustTranslate(TranslateOf(kDevice, iova, 1));
  MustTranslate(TranslateOf(kDevice, kUnmapped, 1));                    // a fault
  ASSERT_THAT(Unmap(UnmapOf(kDevice, kUnmapped, kPage)).status, IsOk());  // a double unmap

  Reply<v1::GetStatsResponse> all = Call(stub(), &Stub::GetStats, v1::GetStatsRequest());

  ASSERT_THAT(all.status, IsOk());
  EXPECT_EQ(all.response.domains_size(), 2);
  EXPECT_EQ(all.response.devices_size(), 2);
  const v1::DomainStats& stats = all.response.domains().at(kDomain);
  EXPECT_EQ(stats.live_mappings(), 1u);
  EXPECT_EQ(stats.maps(), 1u);
  EXPECT_EQ(stats.translations(), 2u);
  EXPECT_EQ(stats.faults(), 1u);
  // Sizes are in bytes.
  EXPECT_EQ(stats.iova().aperture_bytes(), (uint64_t{1} << 48) - 0x1000);
  EXPECT_EQ(stats.iova().reserved_bytes(), 0x100000u);
  EXPECT_EQ(stats.iova().allocated_bytes(), 2 * kPage);
  EXPECT_EQ(all.response.devices().at(kDevice).double_unmaps(), 1u);
  EXPECT_EQ(all.response.devices().at(kDevice).dma_after_unmap(), 1u);
  ASSERT_EQ(all.response.units_size(), 1);
  const v1::InvalidationUnitStats& unit = all.response.units(0);
  EXPECT_EQ(unit.unit(), 0u);
  EXPECT_GE(unit.calls(), 1u);  // attach invalidates the device's IOTLB entries
  EXPECT_GE(unit.batches(), 1u);
  EXPECT_GE(unit.busy().nanos(), 0);
  EXPECT_LT(unit.busy().nanos(), 1'000'000'000);
  EXPECT_GE(unit.wait().nanos(), 0);
  EXPECT_LT(unit.wait().nanos(), 1'000'000'000);

  v1::GetStatsRequest by_domain;
  by_domain.set_domain_id(kOtherDomain);
  Reply<v1::GetStatsResponse> domain_only = Call(stub(), &Stub::GetStats, by_domain);
  ASSERT_THAT(domain_only.status, IsOk());
  EXPECT_EQ(domain_only.response.domains_size(), 1);
  EXPECT_TRUE(domain_only.response.domains().contains(kOtherDomain));

  v1::GetStatsRequest by_device;
  by_device.set_device_id(kOtherDevice);
  Reply<v1::GetStatsResponse> device_only = Call(stub(), &Stub::GetStats, by_device);
  ASSERT_THAT(device_only.status, IsOk());
  EXPECT_EQ(device_only.response.devices_size(), 1);
  EXPECT_TRUE(device_only.response.devices().contains(kOtherDevice));
}

// ===========================================================================
// Errors: each code of the convention, a message naming the field and the
// value, and no change.

TEST_F(BrokerServiceTest, InvalidArgumentForUnalignedMaps) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  const std::string before = State();

  EXPECT_THAT(Map(MapAt(kDevice, 0x10800, 0x100000, kPage)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("iova"), HasSubstr("0x10800"))));
  EXPECT_THAT(Map(MapAnywhere(kDevice, 0x100800, kPage)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("phys"), HasSubstr("0x100800"))));
  EXPECT_THAT(Map(MapAnywhere(kDevice, 0x100000, 0x1234)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("size"), HasSubstr("0x1234"))));
  EXPECT_THAT(Map(MapAnywhere(kDevice, 0x100000, 0)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("size"), HasSubstr("0x0"))));
  EXPECT_THAT(Unmap(UnmapOf(kDevice, 0x10800, kPage)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("iova"), HasSubstr("0x10800"))));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, InvalidArgumentForUnspecifiedAndUnknownEnums) {
  SetUpAttachedDevice(v1::POLICY_FAST);
  const std::string before = State();

  v1::CreateDomainRequest unspecified;
  *unspecified.mutable_domain() = DomainSpec(kOtherDomain, v1::POLICY_UNSPECIFIED);
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, unspecified).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, HasSubstr("domain.policy is required")));
  v1::CreateDomainRequest unknown_page_size;
  *unknown_page_size.mutable_domain() = DomainSpec(kOtherDomain, v1::POLICY_FAST);
  unknown_page_size.mutable_domain()->add_page_sizes(static_cast<v1::PageSize>(7));
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, unknown_page_size).status,
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("domain.page_sizes"), HasSubstr("7"))));

  v1::SetDomainPolicyRequest unknown_policy;
  unknown_policy.set_domain_id(kDomain);
  unknown_policy.set_policy(static_cast<v1::Policy>(99));
  EXPECT_THAT(Call(stub(), &Stub::SetDomainPolicy, unknown_policy).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("policy"), HasSubstr("99"))));
  v1::SetDomainPolicyRequest unspecified_policy;
  unspecified_policy.set_domain_id(kDomain);
  EXPECT_THAT(Call(stub(), &Stub::SetDomainPolicy, unspecified_policy).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, HasSubstr("policy is required")));

  EXPECT_THAT(Translate(TranslateOf(kDevice, 0x1000, 1, v1::ACCESS_UNSPECIFIED)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, HasSubstr("access is required")));
  EXPECT_THAT(Translate(TranslateOf(kDevice, 0x1000, 1, static_cast<v1::Access>(99))).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("access"), HasSubstr("99"))));
  EXPECT_THAT(
      Map(MapBypass(kDevice, 0x100000, kPage, static_cast<v1::BypassMode>(99))).status,
      StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("bypass"), HasSubstr("99"))));

  EXPECT_EQ(State(), before);
  EXPECT_EQ(GetDomain(kDomain).response.spec().policy(), v1::POLICY_FAST);
}

TEST_F(BrokerServiceTest, InvalidArgumentForBadIdsAndValues) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  const std::string before = State();

  v1::CreateDomainRequest empty_id;
  *empty_id.mutable_domain() = DomainSpec("", v1::POLICY_FAST);
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, empty_id).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, AllOf(HasSubstr("domain id"), HasSubstr("0"))));
  v1::RegisterDeviceRequest spaced_id;
  *spaced_id.mutable_device() = DeviceSpec("has space");
  EXPECT_THAT(Call(stub(), &Stub::RegisterDevice, spaced_id).status,
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("device id"), HasSubstr("has space"))));
  v1::RegisterDeviceRequest wide_mask;
  *wide_mask.mutable_device() = DeviceSpec(kOtherDevice);
  wide_mask.mutable_device()->set_dma_mask_bits(65);
  EXPECT_THAT(Call(stub(), &Stub::RegisterDevice, wide_mask).status,
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("dma_mask_bits"), HasSubstr("65"))));
  v1::UpdateDeviceRequest update_wide;
  update_wide.set_device_id(kDevice);
  update_wide.set_dma_mask_bits(65);
  EXPECT_THAT(Call(stub(), &Stub::UpdateDevice, update_wide).status,
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("dma_mask_bits"), HasSubstr("65"))));
  v1::UpdateDeviceRequest update_narrow;
  update_narrow.set_device_id(kDevice);
  update_narrow.set_dma_mask_bits(11);
  update_narrow.set_allow_bypass(true);  // all or nothing: this must not apply either
  EXPECT_THAT(Call(stub(), &Stub::UpdateDevice, update_narrow).status,
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("dma_mask_bits"), HasSubstr("11"))));
  EXPECT_THAT(Translate(TranslateOf(kDevice, 0x1000, 0)).status,
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("translate size 0x0"), HasSubstr("0x1000"))));
  v1::MapRequest no_permissions = MapAnywhere(kDevice, 0x100000, kPage);
  no_permissions.clear_permissions();
  EXPECT_THAT(Map(no_permissions).status,
              StatusIs(StatusCode::INVALID_ARGUMENT, HasSubstr("perms")));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, NotFoundForUnknownDomainsAndDevices) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  const std::string before = State();
  const auto names = [](const std::string& kind, const std::string& id) {
    return StatusIs(StatusCode::NOT_FOUND, AllOf(HasSubstr(kind), HasSubstr(id)));
  };

  EXPECT_THAT(GetDomain("vm9").status, names("domain", "vm9"));
  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id("vm9");
  EXPECT_THAT(Call(stub(), &Stub::DestroyDomain, destroy).status, names("domain", "vm9"));
  v1::SetDomainPolicyRequest policy;
  policy.set_domain_id("vm9");
  policy.set_policy(v1::POLICY_FAST);
  EXPECT_THAT(Call(stub(), &Stub::SetDomainPolicy, policy).status, names("domain", "vm9"));
  EXPECT_THAT(Call(stub(), &Stub::Flush, FlushOf("vm9")).status, names("domain", "vm9"));
  v1::ListDevicesRequest list;
  list.set_domain_id("vm9");
  EXPECT_THAT(Call(stub(), &Stub::ListDevices, list).status, names("domain", "vm9"));
  v1::GetStatsRequest stats_of_domain;
  stats_of_domain.set_domain_id("vm9");
  EXPECT_THAT(Call(stub(), &Stub::GetStats, stats_of_domain).status, names("domain", "vm9"));
  // A refused attach leaves the device where it was.
  EXPECT_THAT(TryAttach(kDevice, "vm9").status, names("domain", "vm9"));
  EXPECT_EQ(GetDevice(kDevice).response.domain_id(), kDomain);

  EXPECT_THAT(GetDevice("dev9").status, names("device", "dev9"));
  EXPECT_THAT(TryAttach("dev9", kDomain).status, names("device", "dev9"));
  v1::DetachDeviceRequest detach;
  detach.set_device_id("dev9");
  EXPECT_THAT(Call(stub(), &Stub::DetachDevice, detach).status, names("device", "dev9"));
  v1::UpdateDeviceRequest update;
  update.set_device_id("dev9");
  update.set_allow_bypass(true);
  EXPECT_THAT(Call(stub(), &Stub::UpdateDevice, update).status, names("device", "dev9"));
  v1::UnregisterDeviceRequest unregister;
  unregister.set_device_id("dev9");
  EXPECT_THAT(Call(stub(), &Stub::UnregisterDevice, unregister).status, names("device", "dev9"));
  EXPECT_THAT(Map(MapAnywhere("dev9", 0x100000, kPage)).status, names("device", "dev9"));
  EXPECT_THAT(Unmap(UnmapOf("dev9", 0x10000, kPage)).status, names("device", "dev9"));
  EXPECT_THAT(Translate(TranslateOf("dev9", 0x10000, 1)).status, names("device", "dev9"));
  v1::GetStatsRequest stats_of_device;
  stats_of_device.set_device_id("dev9");
  EXPECT_THAT(Call(stub(), &Stub::GetStats, stats_of_device).status, names("device", "dev9"));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, AlreadyExistsForDuplicateIds) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  RegisterDevice(kDevice);
  const std::string before = State();

  v1::CreateDomainRequest domain;
  *domain.mutable_domain() = DomainSpec(kDomain, v1::POLICY_FAST);
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, domain).status,
              StatusIs(StatusCode::ALREADY_EXISTS, AllOf(HasSubstr("domain"), HasSubstr(kDomain))));
  v1::RegisterDeviceRequest device;
  *device.mutable_device() = DeviceSpec(kDevice, /*allow_bypass=*/true);
  EXPECT_THAT(Call(stub(), &Stub::RegisterDevice, device).status,
              StatusIs(StatusCode::ALREADY_EXISTS, AllOf(HasSubstr("device"), HasSubstr(kDevice))));

  EXPECT_EQ(State(), before);  // the first domain and device are untouched
}

TEST_F(BrokerServiceTest, AlreadyExistsForAnOverlappingFixedMap) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, 4 * kPage));
  const std::string before = State();

  EXPECT_THAT(Map(MapAt(kDevice, 0x12000, 0x300000, 4 * kPage)).status,
              StatusIs(StatusCode::ALREADY_EXISTS,
                       AllOf(HasSubstr("[0x12000, 0x16000)"), HasSubstr("overlaps a mapping"))));

  EXPECT_EQ(State(), before);
  // The first mapping still translates as before.
  const v1::TranslateResponse translated = MustTranslate(TranslateOf(kDevice, 0x12000, 8));
  ASSERT_EQ(translated.segments_size(), 1);
  EXPECT_EQ(translated.segments(0).phys(), 0x102000u);
}

// The API puts "overlap with a reserved region" under ALREADY_EXISTS.
TEST_F(BrokerServiceTest, MapOverTheReservedMsiWindowIsRefused) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  const std::string before = State();

  const grpc::Status status = Map(MapAt(kDevice, kMsiStart + 0x10000, 0x100000, kPage)).status;

  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("reserved region msi"),
                                            HasSubstr("0xfee10000")));
  EXPECT_EQ(State(), before);
  EXPECT_EQ(status.error_code(), StatusCode::ALREADY_EXISTS) << status.error_message();
}

TEST_F(BrokerServiceTest, FailedPreconditionForMapOnAnUnattachedDevice) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  RegisterDevice(kDevice);
  const std::string before = State();

  EXPECT_THAT(Map(MapAnywhere(kDevice, 0x100000, kPage)).status,
              StatusIs(StatusCode::FAILED_PRECONDITION,
                       AllOf(HasSubstr(kDevice), HasSubstr("not attached"))));
  v1::DetachDeviceRequest detach;
  detach.set_device_id(kDevice);
  EXPECT_THAT(Call(stub(), &Stub::DetachDevice, detach).status,
              StatusIs(StatusCode::FAILED_PRECONDITION,
                       AllOf(HasSubstr(kDevice), HasSubstr("not attached"))));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, FailedPreconditionForAnUnmapThatWouldSplitAMapping) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, 4 * kPage));

  EXPECT_THAT(Unmap(UnmapOf(kDevice, 0x10000, kPage)).status,
              StatusIs(StatusCode::FAILED_PRECONDITION,
                       AllOf(HasSubstr("[0x10000, 0x11000)"), HasSubstr("split"))));

  const v1::DomainStats stats = StatsOf(kDomain);
  EXPECT_EQ(stats.live_mappings(), 1u);
  EXPECT_EQ(stats.unmaps(), 0u);
  EXPECT_EQ(stats.debug().wrong_size_unmaps(), 1u);  // refused, but counted as misuse
  const v1::TranslateResponse translated = MustTranslate(TranslateOf(kDevice, 0x10000, 4 * kPage));
  ASSERT_EQ(translated.segments_size(), 1);
  EXPECT_EQ(translated.segments(0).size(), 4 * kPage);
}

TEST_F(BrokerServiceTest, FailedPreconditionForDestroyingABusyDomain) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  MustMap(MapAnywhere(kDevice, 0x100000, kPage));
  const std::string before = State();
  v1::DestroyDomainRequest request;
  request.set_domain_id(kDomain);

  EXPECT_THAT(Call(stub(), &Stub::DestroyDomain, request).status,
              StatusIs(StatusCode::FAILED_PRECONDITION,
                       AllOf(HasSubstr(kDomain), HasSubstr(kDevice), HasSubstr("force"))));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, FailedPreconditionForADmaMaskChangeWhileAttached) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  const std::string before = State();
  v1::UpdateDeviceRequest request;
  request.set_device_id(kDevice);
  request.set_dma_mask_bits(32);
  request.set_allow_bypass(true);  // all or nothing: must not apply either

  EXPECT_THAT(Call(stub(), &Stub::UpdateDevice, request).status,
              StatusIs(StatusCode::FAILED_PRECONDITION,
                       AllOf(HasSubstr(kDevice), HasSubstr("dma_mask_bits"))));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, OutOfRangeOutsideApertureMaskOrMemory) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  v1::DeviceSpec narrow = DeviceSpec(kDevice);
  narrow.set_dma_mask_bits(32);
  RegisterDevice(narrow);
  Attach(kDevice, kDomain);
  const std::string before = State();

  EXPECT_THAT(Map(MapAt(kDevice, uint64_t{1} << 48, 0x100000, kPage)).status,
              StatusIs(StatusCode::OUT_OF_RANGE,
                       AllOf(HasSubstr("aperture"), HasSubstr("0x1000000000000"))));
  EXPECT_THAT(Map(MapAt(kDevice, uint64_t{1} << 32, 0x100000, kPage)).status,
              StatusIs(StatusCode::OUT_OF_RANGE,
                       AllOf(HasSubstr("DMA mask"), HasSubstr("0x100000000"))));
  EXPECT_THAT(Map(MapAnywhere(kDevice, kPhysicalMemory, kPage)).status,
              StatusIs(StatusCode::OUT_OF_RANGE,
                       AllOf(HasSubstr("phys"), HasSubstr("0x400000000"))));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, PermissionDeniedForRequiredBypass) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_FAST);
  RegisterDevice(kDevice, /*allow_bypass=*/true);
  RegisterDevice(kOtherDevice, /*allow_bypass=*/false);
  Attach(kDevice, kDomain);
  Attach(kOtherDevice, kOtherDomain);
  const std::string before = State();

  EXPECT_THAT(Map(MapBypass(kDevice, 0x100000, kPage, v1::BYPASS_MODE_REQUIRE)).status,
              StatusIs(StatusCode::PERMISSION_DENIED,
                       AllOf(HasSubstr(kDomain), HasSubstr("paranoid"))));
  EXPECT_THAT(Map(MapBypass(kOtherDevice, 0x100000, kPage, v1::BYPASS_MODE_REQUIRE)).status,
              StatusIs(StatusCode::PERMISSION_DENIED,
                       AllOf(HasSubstr(kOtherDevice), HasSubstr("allow_bypass"))));

  EXPECT_EQ(State(), before);
}

TEST_F(BrokerServiceTest, ResourceExhaustedPastMaxDomains) {
  v1::BrokerConfig config;
  config.mutable_engine()->set_max_domains(2);
  StartBroker(config);
  CreateDomain("a", v1::POLICY_FAST);
  CreateDomain("b", v1::POLICY_FAST);
  const std::string before = State();

  v1::CreateDomainRequest request;
  *request.mutable_domain() = DomainSpec("c", v1::POLICY_FAST);
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, request).status,
              StatusIs(StatusCode::RESOURCE_EXHAUSTED,
                       AllOf(HasSubstr("limit of 2 domains"))));

  EXPECT_EQ(State(), before);
  EXPECT_THAT(DomainIds(), ElementsAre("a", "b"));
}

TEST_F(BrokerServiceTest, ResourceExhaustedPastMaxMappings) {
  v1::DomainSpec spec = DomainSpec(kDomain, v1::POLICY_PARANOID);
  spec.set_max_mappings(2);
  CreateDomain(spec);
  RegisterDevice(kDevice);
  Attach(kDevice, kDomain);
  MustMap(MapAnywhere(kDevice, 0x100000, kPage));
  MustMap(MapAnywhere(kDevice, 0x200000, kPage));
  const std::string before = State();

  EXPECT_THAT(Map(MapAnywhere(kDevice, 0x300000, kPage)).status,
              StatusIs(StatusCode::RESOURCE_EXHAUSTED,
                       AllOf(HasSubstr(kDomain), HasSubstr("2 mappings"),
                             HasSubstr("max_mappings"))));

  EXPECT_EQ(State(), before);
}

// ===========================================================================
// Batch

TEST_F(BrokerServiceTest, BatchAnswersEachOperationInOrder) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  v1::BatchRequest request;
  *request.add_operations() = MapOp(MapAt(kDevice, 0x10000, 0x100000, kPage));      // ok
  *request.add_operations() = MapOp(MapAt(kDevice, 0x20000, 0x100800, kPage));      // unaligned
  *request.add_operations() = TranslateOp(TranslateOf(kDevice, 0x10000, 8));        // ok
  *request.add_operations() = UnmapOp(UnmapOf("dev9", 0x10000, kPage));             // unknown
  request.add_operations();                                                         // empty
  *request.add_operations() = FlushOp(kDomain);                                     // ok
  *request.add_operations() = MapOp(MapAt(kDevice, 0x10000, 0x200000, kPage));      // overlap
  BatchStream batch = OpenBatch(stub());

  std::optional<v1::BatchResponse> response = RoundTrip(*batch.stream, request);
  ASSERT_TRUE(response.has_value());
  batch.stream->WritesDone();
  EXPECT_THAT(batch.stream->Finish(), IsOk());

  ASSERT_EQ(response->results_size(), 7);
  const auto& results = response->results();
  EXPECT_THAT(results[0].status(), OperationStatusIs(StatusCode::OK, ""));
  ASSERT_TRUE(results[0].has_map());
  EXPECT_EQ(results[0].map().iova(), 0x10000u);
  EXPECT_THAT(results[1].status(),
              OperationStatusIs(StatusCode::INVALID_ARGUMENT, HasSubstr("phys 0x100800")));
  EXPECT_EQ(results[1].result_case(), v1::OperationResult::RESULT_NOT_SET);
  EXPECT_THAT(results[2].status(), OperationStatusIs(StatusCode::OK, ""));
  ASSERT_TRUE(results[2].has_translate());
  ASSERT_EQ(results[2].translate().segments_size(), 1);
  EXPECT_EQ(results[2].translate().segments(0).phys(), 0x100000u);
  EXPECT_THAT(results[3].status(), OperationStatusIs(StatusCode::NOT_FOUND, HasSubstr("dev9")));
  EXPECT_EQ(results[3].result_case(), v1::OperationResult::RESULT_NOT_SET);
  EXPECT_THAT(results[4].status(),
              OperationStatusIs(StatusCode::INVALID_ARGUMENT,
                                AllOf(HasSubstr("operation"), HasSubstr("map"))));
  EXPECT_EQ(results[4].result_case(), v1::OperationResult::RESULT_NOT_SET);
  EXPECT_THAT(results[5].status(), OperationStatusIs(StatusCode::OK, ""));
  EXPECT_TRUE(results[5].has_flush());
  EXPECT_THAT(results[6].status(),
              OperationStatusIs(StatusCode::ALREADY_EXISTS, HasSubstr("0x10000")));
  EXPECT_EQ(results[6].result_case(), v1::OperationResult::RESULT_NOT_SET);
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), 1u);  // only the good map
}

TEST_F(BrokerServiceTest, BatchStreamCarriesSeveralMessages) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  BatchStream batch = OpenBatch(stub());

  v1::BatchRequest map;
  *map.add_operations() = MapOp(MapAnywhere(kDevice, 0x100000, kPage));
  *map.add_operations() = MapOp(MapAnywhere(kDevice, 0x200000, kPage));
  std::optional<v1::BatchResponse> mapped = RoundTrip(*batch.stream, map);
  ASSERT_TRUE(mapped.has_value());
  ASSERT_EQ(mapped->results_size(), 2);
  const uint64_t iova = mapped->results(1).map().iova();

  v1::BatchRequest translate;
  *translate.add_operations() = TranslateOp(TranslateOf(kDevice, iova, kPage));
  std::optional<v1::BatchResponse> translated = RoundTrip(*batch.stream, translate);
  ASSERT_TRUE(translated.has_value());
  ASSERT_EQ(translated->results_size(), 1);
  ASSERT_EQ(translated->results(0).translate().segments_size(), 1);
  EXPECT_EQ(translated->results(0).translate().segments(0).phys(), 0x200000u);

  v1::BatchRequest unmap;
  *unmap.add_operations() = UnmapOp(UnmapOf(kDevice, iova, kPage));
  std::optional<v1::BatchResponse> unmapped = RoundTrip(*batch.stream, unmap);
  ASSERT_TRUE(unmapped.has_value());
  ASSERT_EQ(unmapped->results_size(), 1);
  EXPECT_EQ(unmapped->results(0).unmap().bytes_unmapped(), kPage);

  batch.stream->WritesDone();
  EXPECT_THAT(batch.stream->Finish(), IsOk());
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), 1u);
}

TEST_F(BrokerServiceTest, BatchAboveTheLimitEndsTheStreamAndRunsNothing) {
  v1::BrokerConfig config;
  config.mutable_limits()->set_max_batch_operations(4);
  StartBroker(config);
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  const std::string before = State();
  BatchStream batch = OpenBatch(stub());

  v1::BatchRequest at_limit;  // four operations are fine
  for (int i = 0; i < 4; ++i) *at_limit.add_operations() = FlushOp(kDomain);
  std::optional<v1::BatchResponse> answered = RoundTrip(*batch.stream, at_limit);
  ASSERT_TRUE(answered.has_value());
  EXPECT_EQ(answered->results_size(), 4);

  v1::BatchRequest too_big;
  for (int i = 0; i < 5; ++i) {
    *too_big.add_operations() = MapOp(MapAnywhere(kDevice, 0x100000 * (i + 1), kPage));
  }
  EXPECT_FALSE(RoundTrip(*batch.stream, too_big).has_value());
  EXPECT_THAT(batch.stream->Finish(),
              StatusIs(StatusCode::RESOURCE_EXHAUSTED,
                       AllOf(HasSubstr("batch of 5 operations"), HasSubstr("limit of 4"))));

  EXPECT_EQ(State(), before);  // none of its maps ran
}

TEST_F(BrokerServiceTest, StreamsPastTheLimitAreRefusedAndEndedOnesGiveTheirSlotBack) {
  v1::BrokerConfig config;
  config.mutable_limits()->set_max_concurrent_streams(2);
  StartBroker(config);
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  const auto over_limit = [] {
    return StatusIs(StatusCode::RESOURCE_EXHAUSTED, HasSubstr("at most 2 streams"));
  };

  // Two streams, one of each kind, fill the limit.
  ServedBatch cancelled = OpenServedBatch(stub());
  ASSERT_TRUE(cancelled.served) << cancelled.refusal.error_message();
  EventStream watcher = Watch(stub(), WatchFaults(kDomain));
  ServedBatch refused = OpenServedBatch(stub());
  EXPECT_FALSE(refused.served);
  EXPECT_THAT(refused.refusal, over_limit());
  EXPECT_THAT(RefusedWatch(stub(), WatchFaults(kDomain)), over_limit());

  // A cancelled stream gives its slot back.
  cancelled.batch.context->TryCancel();
  EXPECT_THAT(cancelled.batch.stream->Finish(), StatusIs(StatusCode::CANCELLED, ::testing::_));
  ServedBatch closed = OpenServedBatchEventually(stub());
  ASSERT_TRUE(closed.served) << closed.refusal.error_message();

  // So does a stream the client closes.
  closed.batch.stream->WritesDone();
  EXPECT_THAT(closed.batch.stream->Finish(), IsOk());

  // And a client that goes away without closing its stream: its own
  // connection is dropped with the stream still open.
  {
    std::shared_ptr<grpc::Channel> channel = broker_->NewChannel();
    std::unique_ptr<Stub> own_stub = v1::IommuBroker::NewStub(channel);
    ServedBatch abandoned = OpenServedBatchEventually(*own_stub);
    ASSERT_TRUE(abandoned.served) << abandoned.refusal.error_message();
    own_stub.reset();
    channel.reset();
    // `abandoned` is destroyed here: no WritesDone, no Finish.
  }
  ServedBatch last = OpenServedBatchEventually(stub());
  ASSERT_TRUE(last.served) << last.refusal.error_message();

  // Back at the limit (the watcher and `last`): refused again, so no slot
  // was given back twice.
  ServedBatch over = OpenServedBatch(stub());
  EXPECT_FALSE(over.served);
  EXPECT_THAT(over.refusal, over_limit());

  // The broker still serves unary calls and the streams it holds.
  EXPECT_THAT(DomainIds(), ElementsAre(kDomain));
  EXPECT_TRUE(RoundTrip(*last.batch.stream, v1::BatchRequest()).has_value());
  last.batch.stream->WritesDone();
  EXPECT_THAT(last.batch.stream->Finish(), IsOk());
  watcher.context->TryCancel();
  EXPECT_THAT(watcher.stream->Finish(), StatusIs(StatusCode::CANCELLED, ::testing::_));
}

// ===========================================================================
// WatchEvents

TEST_F(BrokerServiceTest, WatchDeliversAFaultOfATranslation) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  EventStream events = Watch(stub(), WatchFaults());

  MustTranslate(TranslateOf(kDevice, 0x55000, 4, v1::ACCESS_WRITE));

  v1::Event event;
  ASSERT_TRUE(events.stream->Read(&event));
  ASSERT_TRUE(event.has_fault());
  EXPECT_EQ(event.fault().reason(), v1::FAULT_REASON_NOT_MAPPED);
  EXPECT_EQ(event.fault().domain_id(), kDomain);
  EXPECT_EQ(event.fault().device_id(), kDevice);
  EXPECT_EQ(event.fault().iova(), 0x55000u);
  EXPECT_EQ(event.fault().access(), v1::ACCESS_WRITE);
  EXPECT_EQ(event.dropped_before(), 0u);
  events.context->TryCancel();
  EXPECT_THAT(events.stream->Finish(), StatusIs(StatusCode::CANCELLED, ::testing::_));
}

// Each filter test faults the excluded side first: were it delivered, it
// would be the first event read.
TEST_F(BrokerServiceTest, WatchDomainFilterExcludesOtherDomains) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_PARANOID);
  RegisterDevice(kOtherDevice);
  Attach(kOtherDevice, kOtherDomain);
  EventStream events = Watch(stub(), WatchFaults(kDomain));

  MustTranslate(TranslateOf(kOtherDevice, 0x66000, 1));
  MustTranslate(TranslateOf(kDevice, 0x55000, 1));

  v1::Event event;
  ASSERT_TRUE(events.stream->Read(&event));
  EXPECT_EQ(event.fault().domain_id(), kDomain);
  EXPECT_EQ(event.fault().iova(), 0x55000u);
  events.context->TryCancel();
  events.stream->Finish();
}

TEST_F(BrokerServiceTest, WatchDeviceFilterExcludesOtherDevices) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  RegisterDevice(kOtherDevice);
  Attach(kOtherDevice, kDomain);
  EventStream events = Watch(stub(), WatchFaults(kDomain, kDevice));

  MustTranslate(TranslateOf(kOtherDevice, 0x66000, 1));
  MustTranslate(TranslateOf(kDevice, 0x55000, 1));

  v1::Event event;
  ASSERT_TRUE(events.stream->Read(&event));
  EXPECT_EQ(event.fault().device_id(), kDevice);
  EXPECT_EQ(event.fault().iova(), 0x55000u);
  events.context->TryCancel();
  events.stream->Finish();
}

// The API numbers faults broker-wide, the same number wherever a fault is
// seen: Translate's reply, a domain-filtered watcher, an unfiltered one.
TEST_F(BrokerServiceTest, FaultSequenceIsPerBroker) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_PARANOID);
  RegisterDevice(kOtherDevice);
  Attach(kOtherDevice, kOtherDomain);
  EventStream all = Watch(stub(), WatchFaults());
  EventStream one_domain = Watch(stub(), WatchFaults(kDomain));

  MustTranslate(TranslateOf(kOtherDevice, 0x66000, 1));
  const v1::Fault translated = MustTranslate(TranslateOf(kDevice, 0x55000, 1)).fault();

  v1::Event first;
  v1::Event second;
  v1::Event filtered;
  ASSERT_TRUE(all.stream->Read(&first));
  ASSERT_TRUE(all.stream->Read(&second));
  ASSERT_TRUE(one_domain.stream->Read(&filtered));
  ASSERT_EQ(second.fault().domain_id(), kDomain);
  ASSERT_EQ(filtered.fault().domain_id(), kDomain);
  all.context->TryCancel();
  all.stream->Finish();
  one_domain.context->TryCancel();
  one_domain.stream->Finish();
  EXPECT_GE(first.fault().sequence(), 1u);
  EXPECT_EQ(second.fault().sequence(), first.fault().sequence() + 1);

  EXPECT_EQ(filtered.fault().sequence(), second.fault().sequence());
  EXPECT_EQ(translated.sequence(), second.fault().sequence());
}

v1::WatchEventsRequest WatchInvalidations(const std::string& domain = "",
                                          const std::string& device = "") {
  v1::WatchEventsRequest request;
  request.set_domain_id(domain);
  request.set_device_id(device);
  request.set_invalidations(true);
  return request;
}

TEST_F(BrokerServiceTest, WatchDeliversAParanoidUnmapsInvalidation) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  EventStream events = Watch(stub(), WatchInvalidations(kDomain));
  MustMap(MapAt(kDevice, 0x10000, 0x100000, 2 * kPage));
  ASSERT_THAT(Unmap(UnmapOf(kDevice, 0x10000, 2 * kPage)).status, IsOk());

  v1::Event event;
  ASSERT_TRUE(events.stream->Read(&event));
  ASSERT_TRUE(event.has_invalidation()) << event.DebugString();
  EXPECT_EQ(event.invalidation().scope(), v1::Invalidation::SCOPE_RANGE);
  EXPECT_EQ(event.invalidation().domain_id(), kDomain);
  EXPECT_EQ(event.invalidation().iova(), 0x10000u);
  EXPECT_EQ(event.invalidation().size(), 2 * kPage);
  events.context->TryCancel();
  events.stream->Finish();
}

// Under fast the invalidation travels with the batch flush, not the unmap:
// the first event after the unmap is the flush's, read only after Flush.
TEST_F(BrokerServiceTest, WatchDeliversAFastUnmapsInvalidationWithTheFlush) {
  CreateSlowFlushingFastDomain(kDomain);
  RegisterDevice(kDevice);
  Attach(kDevice, kDomain);
  EventStream events = Watch(stub(), WatchInvalidations(kDomain, kDevice));
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  ASSERT_THAT(Unmap(UnmapOf(kDevice, 0x10000, kPage)).status, IsOk());
  EXPECT_EQ(StatsOf(kDomain).flush_queue().pending(), 1u);  // not invalidated yet
  ASSERT_THAT(Call(stub(), &Stub::Flush, FlushOf(kDomain)).status, IsOk());

  v1::Event event;
  ASSERT_TRUE(events.stream->Read(&event));
  EXPECT_EQ(event.invalidation().scope(), v1::Invalidation::SCOPE_RANGE);
  EXPECT_EQ(event.invalidation().iova(), 0x10000u);
  events.context->TryCancel();
  events.stream->Finish();
}

TEST_F(BrokerServiceTest, WatchDeliversDeviceAndDomainInvalidations) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  RegisterDevice(kOtherDevice);
  EventStream events = Watch(stub(), WatchInvalidations("", kDevice));
  Attach(kOtherDevice, kDomain);  // another device: filtered out
  v1::DetachDeviceRequest detach;
  detach.set_device_id(kDevice);
  ASSERT_THAT(Call(stub(), &Stub::DetachDevice, detach).status, IsOk());
  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id(kDomain);
  destroy.set_force(true);
  ASSERT_THAT(Call(stub(), &Stub::DestroyDomain, destroy).status, IsOk());

  v1::Event event;
  ASSERT_TRUE(events.stream->Read(&event));
  EXPECT_EQ(event.invalidation().scope(), v1::Invalidation::SCOPE_DEVICE) << event.DebugString();
  EXPECT_EQ(event.invalidation().device_id(), kDevice);
  EXPECT_EQ(event.invalidation().domain_id(), kDomain);
  EXPECT_GE(event.invalidation().requester_id(), 1u);
  ASSERT_TRUE(events.stream->Read(&event));
  // The other device's detach (forced by destroy) is filtered out too.
  EXPECT_EQ(event.invalidation().scope(), v1::Invalidation::SCOPE_DOMAIN) << event.DebugString();
  EXPECT_EQ(event.invalidation().domain_id(), kDomain);
  events.context->TryCancel();
  events.stream->Finish();
}

// A device filter passes the range invalidations of the device's own
// domain only, and follows the device when it moves.
TEST_F(BrokerServiceTest, WatchDeviceFilterFollowsTheDeviceFromDomainToDomain) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  CreateDomain(kOtherDomain, v1::POLICY_PARANOID);
  RegisterDevice(kOtherDevice);
  Attach(kOtherDevice, kOtherDomain);
  EventStream events = Watch(stub(), WatchInvalidations("", kDevice));
  const auto map_and_unmap = [this](const std::string& device, uint64_t iova) {
    MustMap(MapAt(device, iova, 0x100000, kPage));
    ASSERT_THAT(Unmap(UnmapOf(device, iova, kPage)).status, IsOk());
  };
  map_and_unmap(kOtherDevice, 0x10000);  // the other domain: filtered out
  map_and_unmap(kDevice, 0x20000);
  Attach(kDevice, kOtherDomain);  // a move: now the other domain is the device's
  map_and_unmap(kOtherDevice, 0x30000);

  const auto next = [&events] {
    v1::Event event;
    EXPECT_TRUE(events.stream->Read(&event));
    return event.invalidation();
  };
  v1::Invalidation invalidation = next();
  EXPECT_EQ(invalidation.scope(), v1::Invalidation::SCOPE_RANGE);
  EXPECT_EQ(invalidation.domain_id(), kDomain);
  EXPECT_EQ(invalidation.iova(), 0x20000u);
  for (const char* domain : {kDomain, kOtherDomain}) {  // the move: left, then joined
    invalidation = next();
    EXPECT_EQ(invalidation.scope(), v1::Invalidation::SCOPE_DEVICE);
    EXPECT_EQ(invalidation.domain_id(), domain);
  }
  invalidation = next();
  EXPECT_EQ(invalidation.scope(), v1::Invalidation::SCOPE_RANGE);
  EXPECT_EQ(invalidation.domain_id(), kOtherDomain);
  EXPECT_EQ(invalidation.iova(), 0x30000u);
  events.context->TryCancel();
  events.stream->Finish();
}

TEST_F(BrokerServiceTest, WatchRefusesNothingToWatchAndUnknownIds) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);

  v1::WatchEventsRequest nothing = WatchFaults(kDomain);
  nothing.set_faults(false);
  EXPECT_THAT(RefusedWatch(stub(), nothing),
              StatusIs(StatusCode::INVALID_ARGUMENT,
                       AllOf(HasSubstr("faults"), HasSubstr("invalidations"))));
  EXPECT_THAT(RefusedWatch(stub(), WatchFaults("vm9")),
              StatusIs(StatusCode::NOT_FOUND, AllOf(HasSubstr("domain"), HasSubstr("vm9"))));
  EXPECT_THAT(RefusedWatch(stub(), WatchFaults(kDomain, "dev9")),
              StatusIs(StatusCode::NOT_FOUND, AllOf(HasSubstr("device"), HasSubstr("dev9"))));
}

TEST_F(BrokerServiceTest, WatchEndsWithOkWhenTheBrokerShutsDown) {
  CreateDomain(kDomain, v1::POLICY_PARANOID);
  EventStream events = Watch(stub(), WatchFaults(kDomain));

  std::thread shutdown([this] { broker_->server().Shutdown(absl::Seconds(5)); });
  v1::Event event;
  const bool got_event = events.stream->Read(&event);
  const grpc::Status status = events.stream->Finish();
  shutdown.join();

  EXPECT_FALSE(got_event) << event.DebugString();
  EXPECT_THAT(status, IsOk());
}

// ===========================================================================
// Device-side IOTLB links

TEST_F(BrokerServiceTest, ParanoidUnmapRepliesOnlyOnceTheLinkedCacheAcknowledged) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  IotlbLink link = LinkIotlb(stub(), kDevice);
  const uint64_t iova = MustMap(MapAnywhere(kDevice, 0x100000, 2 * kPage)).iova();
  std::atomic<bool> replied{false};
  Reply<v1::UnmapResponse> unmapped;
  std::thread unmapper([&] {
    unmapped = Unmap(UnmapOf(kDevice, iova, 2 * kPage));
    replied.store(true);
  });

  v1::DeviceIotlbInvalidations sent;
  ASSERT_TRUE(link.stream->Read(&sent));
  ASSERT_EQ(sent.invalidations_size(), 1);
  const v1::DeviceIotlbInvalidation& invalidation = sent.invalidations(0);
  EXPECT_EQ(invalidation.sequence(), 1u);
  EXPECT_EQ(invalidation.invalidation().scope(), v1::Invalidation::SCOPE_RANGE);
  EXPECT_EQ(invalidation.invalidation().iova(), iova);
  EXPECT_EQ(invalidation.invalidation().size(), 2 * kPage);
  EXPECT_FALSE(replied.load());
  // The IOVA stays taken until the cache dropped it.
  EXPECT_EQ(StatsOf(kDomain).iova().allocated_bytes(), 2 * kPage);
  AcknowledgeUpTo(*link.stream, invalidation.sequence());
  unmapper.join();
  ASSERT_THAT(unmapped.status, IsOk());
  EXPECT_EQ(unmapped.response.bytes_unmapped(), 2 * kPage);
  link.context->TryCancel();
}

TEST_F(BrokerServiceTest, BatchWithAParanoidUnmapAnswersOnceTheCacheAcknowledged) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  IotlbLink link = LinkIotlb(stub(), kDevice);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  BatchStream batch = OpenBatch(stub());
  v1::BatchRequest request;
  *request.add_operations() = UnmapOp(UnmapOf(kDevice, 0x10000, kPage));
  *request.add_operations() = TranslateOp(TranslateOf(kDevice, 0x10000, kPage));
  ASSERT_TRUE(batch.stream->Write(request));

  v1::DeviceIotlbInvalidations sent;
  ASSERT_TRUE(link.stream->Read(&sent));
  ASSERT_EQ(sent.invalidations_size(), 1);
  AcknowledgeUpTo(*link.stream, sent.invalidations(0).sequence());
  v1::BatchResponse response;
  ASSERT_TRUE(batch.stream->Read(&response));
  ASSERT_EQ(response.results_size(), 2);
  EXPECT_EQ(response.results(0).unmap().bytes_unmapped(), kPage);
  EXPECT_TRUE(response.results(1).translate().has_fault());
  batch.stream->WritesDone();
  EXPECT_THAT(batch.stream->Finish(), IsOk());
  link.context->TryCancel();
}

TEST_F(BrokerServiceTest, SilentCacheIsCutOffAndTheUnmapCompletes) {
  v1::BrokerConfig config;
  config.mutable_engine()->mutable_device_iotlb_ack_timeout()->set_nanos(20 * 1000 * 1000);
  StartBroker(config);
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  IotlbLink link = LinkIotlb(stub(), kDevice);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  ASSERT_THAT(Unmap(UnmapOf(kDevice, 0x10000, kPage)).status, IsOk());
  v1::DeviceIotlbInvalidations sent;
  while (link.stream->Read(&sent)) {
  }
  EXPECT_THAT(link.stream->Finish(),
              StatusIs(grpc::StatusCode::DEADLINE_EXCEEDED, HasSubstr(kDevice)));
  // The device may link again.
  IotlbLink again = LinkIotlb(stub(), kDevice);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  again.context->TryCancel();
}

TEST_F(BrokerServiceTest, FastSendsTheCacheItsInvalidationsWithTheFlush) {
  CreateSlowFlushingFastDomain(kDomain);
  RegisterDevice(kDevice);
  Attach(kDevice, kDomain);
  IotlbLink link = LinkIotlb(stub(), kDevice);
  MustMap(MapAt(kDevice, 0x10000, 0x100000, kPage));
  ASSERT_THAT(Unmap(UnmapOf(kDevice, 0x10000, kPage)).status, IsOk());  // waits for nobody
  ASSERT_THAT(Call(stub(), &Stub::Flush, FlushOf(kDomain)).status, IsOk());
  v1::DeviceIotlbInvalidations sent;
  ASSERT_TRUE(link.stream->Read(&sent));
  ASSERT_EQ(sent.invalidations_size(), 1);
  EXPECT_EQ(sent.invalidations(0).invalidation().iova(), 0x10000u);
  link.context->TryCancel();
}

TEST_F(BrokerServiceTest, LinkRefusesBadFirstMessagesUnknownDevicesAndSecondCaches) {
  RegisterDevice(kDevice);
  const auto ended = [&](const v1::DeviceIotlbRequest& first) {
    std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
    std::unique_ptr<IotlbLinkStream> stream = stub().LinkDeviceIotlb(context.get());
    stream->Write(first);
    v1::DeviceIotlbInvalidations ignored;
    while (stream->Read(&ignored)) {
    }
    return stream->Finish();
  };
  v1::DeviceIotlbRequest ack_first;
  ack_first.set_acknowledged_sequence(1);
  EXPECT_THAT(ended(ack_first), StatusIs(grpc::StatusCode::INVALID_ARGUMENT, HasSubstr("link")));
  v1::DeviceIotlbRequest unknown;
  unknown.mutable_link()->set_device_id("0000:99:00.0");
  EXPECT_THAT(ended(unknown), StatusIs(grpc::StatusCode::NOT_FOUND, HasSubstr("0000:99:00.0")));
  v1::DeviceIotlbRequest empty;
  empty.mutable_link();
  EXPECT_THAT(ended(empty), StatusIs(grpc::StatusCode::INVALID_ARGUMENT, HasSubstr("device_id")));

  IotlbLink link = LinkIotlb(stub(), kDevice);
  v1::DeviceIotlbRequest second;
  second.mutable_link()->set_device_id(kDevice);
  EXPECT_THAT(ended(second), StatusIs(grpc::StatusCode::ALREADY_EXISTS, HasSubstr(kDevice)));
  // Acknowledging what was never sent ends the link.
  AcknowledgeUpTo(*link.stream, 5);
  v1::DeviceIotlbInvalidations ignored;
  while (link.stream->Read(&ignored)) {
  }
  EXPECT_THAT(link.stream->Finish(),
              StatusIs(grpc::StatusCode::INVALID_ARGUMENT, HasSubstr("sequence 5")));
}

TEST_F(BrokerServiceTest, LinkEndsWithOkWhenTheBrokerShutsDown) {
  RegisterDevice(kDevice);
  IotlbLink link = LinkIotlb(stub(), kDevice);
  std::thread shutdown([this] { broker_->server().Shutdown(absl::Seconds(5)); });
  v1::DeviceIotlbInvalidations ignored;
  while (link.stream->Read(&ignored)) {
  }
  const grpc::Status status = link.stream->Finish();
  shutdown.join();
  EXPECT_THAT(status, IsOk());
}

// ===========================================================================
// Health and reflection

TEST_F(BrokerServiceTest, HealthIsServingForTheServerAndTheService) {
  for (const std::string service : {"", "iommu_broker.v1.IommuBroker"}) {
    std::shared_ptr<grpc::Channel> channel = broker_->NewChannel(HealthCheckedArgs(service));
    EXPECT_EQ(SettledState(*channel), GRPC_CHANNEL_READY) << "service \"" << service << "\"";
    std::unique_ptr<Stub> checked = v1::IommuBroker::NewStub(channel);
    EXPECT_THAT(Call(*checked, &Stub::ListDomains, v1::ListDomainsRequest()).status, IsOk());
  }
  // The control: for a service the broker does not serve, the health
  // service answers SERVICE_UNKNOWN and gRPC keeps the channel unusable.
  // This is what shows that READY above came from the health service.
  std::shared_ptr<grpc::Channel> unknown = broker_->NewChannel(HealthCheckedArgs("no.such.Service"));
  EXPECT_EQ(SettledState(*unknown), GRPC_CHANNEL_TRANSIENT_FAILURE);
}

TEST_F(BrokerServiceTest, ReflectionListsTheService) {
  std::unique_ptr<ProtoMessage> request = NewReflectionMessage("ServerReflectionRequest");
  std::unique_ptr<ProtoMessage> response = NewReflectionMessage("ServerReflectionResponse");
  ASSERT_NE(request, nullptr) << "grpc++_reflection's descriptors are not linked in";
  ASSERT_NE(response, nullptr);
  const google::protobuf::Reflection* reflection = request->GetReflection();
  reflection->SetString(request.get(), request->GetDescriptor()->FindFieldByName("list_services"),
                        "*");
  GenericProtoStub generic(broker_->channel());

  ReflectionCall call(generic, *request, response.get());
  bool read = false;
  const grpc::Status status = call.Await(&read);

  ASSERT_THAT(status, IsOk());
  ASSERT_TRUE(read);
  const google::protobuf::FieldDescriptor* list_field =
      response->GetDescriptor()->FindFieldByName("list_services_response");
  ASSERT_NE(list_field, nullptr);
  ASSERT_TRUE(response->GetReflection()->HasField(*response, list_field))
      << response->DebugString();
  const ProtoMessage& list = response->GetReflection()->GetMessage(*response, list_field);
  const google::protobuf::FieldDescriptor* services = list.GetDescriptor()->FindFieldByName("service");
  std::vector<std::string> names;
  for (int i = 0; i < list.GetReflection()->FieldSize(list, services); ++i) {
    const ProtoMessage& service = list.GetReflection()->GetRepeatedMessage(list, services, i);
    names.push_back(service.GetReflection()->GetString(
        service, service.GetDescriptor()->FindFieldByName("name")));
  }
  EXPECT_THAT(names, ::testing::Contains("iommu_broker.v1.IommuBroker"));
  EXPECT_THAT(names, ::testing::Contains("grpc.health.v1.Health"));
}

// ===========================================================================
// Shutdown

TEST_F(BrokerServiceTest, BatchStreamEndsUnavailableOnceTheBrokerDrains) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  BatchStream batch = OpenBatch(stub());
  ASSERT_TRUE(RoundTrip(*batch.stream, v1::BatchRequest()).has_value());

  std::thread shutdown([this] { broker_->server().Shutdown(absl::Seconds(10)); });
  // Messages sent before the drain are answered; the first after it ends
  // the stream without running. Sending until the stream ends reaches it.
  v1::BatchRequest map;
  *map.add_operations() = MapOp(MapAnywhere(kDevice, 0x100000, kPage));
  int answered = 0;
  while (RoundTrip(*batch.stream, map).has_value()) ++answered;
  const grpc::Status status = batch.stream->Finish();
  shutdown.join();

  EXPECT_THAT(status, StatusIs(StatusCode::UNAVAILABLE, HasSubstr("shutting down")));
  EXPECT_EQ(broker_->server().iommu().DescribeDomain(kDomain)->stats.live_mappings,
            static_cast<uint64_t>(answered));
}

TEST_F(BrokerServiceTest, GracefulShutdownUnderLoadKeepsEveryAcknowledgedMap) {
  SetUpAttachedDevice(v1::POLICY_PARANOID);
  constexpr int kThreads = 2;
  constexpr int kMapsBeforeShutdown = 50;
  // Bounds a thread's loop should shutdown never refuse its calls.
  constexpr int kMaxMapsPerThread = 20000;
  std::atomic<int> acknowledged{0};
  std::vector<grpc::Status> last_error(kThreads);
  std::vector<std::thread> mappers;
  for (int t = 0; t < kThreads; ++t) {
    mappers.emplace_back([&, t] {
      for (int i = 0; i < kMaxMapsPerThread; ++i) {
        const uint64_t phys = (static_cast<uint64_t>(t) << 30) + static_cast<uint64_t>(i) * kPage;
        Reply<v1::MapResponse> reply = Map(MapAnywhere(kDevice, phys, kPage));
        if (!reply.status.ok()) {
          last_error[t] = reply.status;
          return;
        }
        acknowledged.fetch_add(1);
      }
    });
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (acknowledged.load() < kMapsBeforeShutdown && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }

  broker_->server().Shutdown(absl::Seconds(5));
  for (std::thread& mapper : mappers) mapper.join();

  // Once the broker stopped, every thread's next call was refused: by the
  // closed port (UNAVAILABLE) or, for a call that reached the server after
  // its shutdown began, by gRPC, which cancels it before any handler runs.
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_THAT(last_error[t].error_code(),
                ::testing::AnyOf(StatusCode::UNAVAILABLE, StatusCode::CANCELLED))
        << "thread " << t << ": " << last_error[t].error_message();
  }
  absl::StatusOr<DomainInfo> domain = broker_->server().iommu().DescribeDomain(kDomain);
  ASSERT_TRUE(domain.ok()) << domain.status();
  EXPECT_GE(acknowledged.load(), kMapsBeforeShutdown);
  EXPECT_EQ(domain->stats.live_mappings, static_cast<uint64_t>(acknowledged.load()));
}

}  // namespace
}  // namespace iommu_broker::testing
