#include "server/convert.h"

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

MATCHER_P(IsInvalidArgumentNaming, field, "") {
  if (arg.code() != absl::StatusCode::kInvalidArgument) {
    *result_listener << "code is " << absl::StatusCodeToString(arg.code());
    return false;
  }
  if (arg.message().find(field) == absl::string_view::npos) {
    *result_listener << "message \"" << arg.message() << "\" does not name " << field;
    return false;
  }
  return true;
}

v1::DomainSpec FastSpec(absl::string_view id = "d") {
  v1::DomainSpec spec;
  spec.set_id(std::string(id));
  spec.set_policy(v1::POLICY_FAST);
  return spec;
}

// Enums -------------------------------------------------------------------

TEST(PolicyFromProtoTest, KnownValues) {
  EXPECT_EQ(*PolicyFromProto(v1::POLICY_PARANOID, "policy"), Policy::kParanoid);
  EXPECT_EQ(*PolicyFromProto(v1::POLICY_FAST, "policy"), Policy::kFast);
  EXPECT_EQ(*PolicyFromProto(v1::POLICY_PT, "policy"), Policy::kPassthrough);
}

TEST(PolicyFromProtoTest, UnspecifiedIsRequiredNamingTheField) {
  absl::StatusOr<Policy> policy = PolicyFromProto(v1::POLICY_UNSPECIFIED, "domain.policy");
  EXPECT_THAT(policy.status(), IsInvalidArgumentNaming("domain.policy"));
  EXPECT_THAT(policy.status().message(), HasSubstr("required"));
}

TEST(PolicyFromProtoTest, UnknownValueIsRejectedNamingTheFieldAndValue) {
  // An unknown number arrives when a newer client talks to this broker.
  absl::StatusOr<Policy> policy = PolicyFromProto(static_cast<v1::Policy>(42), "policy");
  EXPECT_THAT(policy.status(), IsInvalidArgumentNaming("policy"));
  EXPECT_THAT(policy.status().message(), HasSubstr("42"));
}

TEST(PolicyToProtoTest, RoundTrips) {
  for (Policy policy : {Policy::kParanoid, Policy::kFast, Policy::kPassthrough}) {
    EXPECT_EQ(*PolicyFromProto(PolicyToProto(policy), "policy"), policy);
  }
}

TEST(AccessFromProtoTest, KnownValues) {
  EXPECT_EQ(*AccessFromProto(v1::ACCESS_READ), Access::kRead);
  EXPECT_EQ(*AccessFromProto(v1::ACCESS_WRITE), Access::kWrite);
}

TEST(AccessFromProtoTest, UnspecifiedIsRequired) {
  absl::StatusOr<Access> access = AccessFromProto(v1::ACCESS_UNSPECIFIED);
  EXPECT_THAT(access.status(), IsInvalidArgumentNaming("access"));
  EXPECT_THAT(access.status().message(), HasSubstr("required"));
}

TEST(AccessFromProtoTest, UnknownValueIsRejected) {
  absl::StatusOr<Access> access = AccessFromProto(static_cast<v1::Access>(7));
  EXPECT_THAT(access.status(), IsInvalidArgumentNaming("access"));
  EXPECT_THAT(access.status().message(), HasSubstr("7"));
}

TEST(MapRequestFromProtoTest, BypassUnspecifiedMeansNone) {
  // The proto documents UNSPECIFIED as "not asking": bypass is opt-in.
  v1::MapRequest request;
  absl::StatusOr<MapRequest> map = MapRequestFromProto(request);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->bypass, BypassMode::kNone);
}

TEST(MapRequestFromProtoTest, BypassKnownValues) {
  v1::MapRequest request;
  request.set_bypass(v1::BYPASS_MODE_NONE);
  EXPECT_EQ(MapRequestFromProto(request)->bypass, BypassMode::kNone);
  request.set_bypass(v1::BYPASS_MODE_PREFER);
  EXPECT_EQ(MapRequestFromProto(request)->bypass, BypassMode::kPrefer);
  request.set_bypass(v1::BYPASS_MODE_REQUIRE);
  EXPECT_EQ(MapRequestFromProto(request)->bypass, BypassMode::kRequire);
}

TEST(MapRequestFromProtoTest, BypassUnknownValueIsRejected) {
  v1::MapRequest request;
  request.set_bypass(static_cast<v1::BypassMode>(9));
  EXPECT_THAT(MapRequestFromProto(request).status(), IsInvalidArgumentNaming("bypass"));
}

TEST(MapRequestFromProtoTest, CopiesEveryField) {
  v1::MapRequest request;
  request.set_device_id("dev");
  request.set_phys(0x20000);
  request.set_size(0x3000);
  request.mutable_permissions()->set_write(true);
  absl::StatusOr<MapRequest> map = MapRequestFromProto(request);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->phys, 0x20000u);
  EXPECT_EQ(map->size, 0x3000u);
  EXPECT_EQ(map->perms, (Perms{.read = false, .write = true}));
  EXPECT_FALSE(map->has_iova);

  request.set_iova(0);  // set to zero is still "map exactly here"
  map = MapRequestFromProto(request);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(map->has_iova);
  EXPECT_EQ(map->iova, 0u);
}

TEST(DomainConfigFromProtoTest, PolicyUnspecifiedIsRejectedNamingDomainPolicy) {
  v1::DomainSpec spec = FastSpec();
  spec.set_policy(v1::POLICY_UNSPECIFIED);
  EXPECT_THAT(DomainConfigFromProto(spec).status(), IsInvalidArgumentNaming("domain.policy"));
}

TEST(DomainConfigFromProtoTest, PolicyUnknownIsRejectedNamingDomainPolicy) {
  v1::DomainSpec spec = FastSpec();
  spec.set_policy(static_cast<v1::Policy>(4));
  EXPECT_THAT(DomainConfigFromProto(spec).status(), IsInvalidArgumentNaming("domain.policy"));
}

TEST(DomainConfigFromProtoTest, PageSizeUnspecifiedIsRejected) {
  v1::DomainSpec spec = FastSpec();
  spec.add_page_sizes(v1::PAGE_SIZE_4K);
  spec.add_page_sizes(v1::PAGE_SIZE_UNSPECIFIED);
  EXPECT_THAT(DomainConfigFromProto(spec).status(), IsInvalidArgumentNaming("domain.page_sizes"));
}

TEST(DomainConfigFromProtoTest, PageSizeUnknownIsRejected) {
  v1::DomainSpec spec = FastSpec();
  spec.add_page_sizes(static_cast<v1::PageSize>(5));
  absl::Status status = DomainConfigFromProto(spec).status();
  EXPECT_THAT(status, IsInvalidArgumentNaming("domain.page_sizes"));
  EXPECT_THAT(status.message(), HasSubstr("5"));
}

// DomainSpec defaults -----------------------------------------------------

TEST(DomainConfigFromProtoTest, UnsetFieldsTakeTheEngineDefaults) {
  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(FastSpec("vm1"));
  ASSERT_TRUE(config.ok()) << config.status();
  const DomainConfig defaults;
  EXPECT_EQ(config->id, "vm1");
  EXPECT_EQ(config->policy, Policy::kFast);
  EXPECT_EQ(config->aperture_first, kPage4K);  // documented: [0x1000, 2^48 - 1]
  EXPECT_EQ(config->aperture_last, (uint64_t{1} << 48) - 1);
  EXPECT_EQ(config->page_sizes, kPage4K | kPage2M | kPage1G);
  EXPECT_EQ(config->iotlb.sets, 64u);
  EXPECT_EQ(config->iotlb.ways, 8u);
  EXPECT_EQ(config->flush_queue.capacity, 256u);
  EXPECT_EQ(config->flush_queue.timeout, absl::Milliseconds(10));
  ASSERT_EQ(config->reserved.size(), 1u);
  EXPECT_EQ(config->reserved[0].start, 0xfee00000u);
  EXPECT_EQ(config->reserved[0].size, 0x100000u);
  EXPECT_EQ(config->reserved[0].name, "msi");
  EXPECT_FALSE(config->identity_first);
  EXPECT_EQ(config->max_mappings, uint64_t{1} << 20);
  EXPECT_EQ(config->bypass_window_base, uint64_t{1} << 59);
  EXPECT_EQ(config->iommu_unit, 0u);
  // And they are the engine's own defaults, not a second copy of them.
  EXPECT_EQ(config->aperture_first, defaults.aperture_first);
  EXPECT_EQ(config->max_mappings, defaults.max_mappings);
}

TEST(DomainConfigFromProtoTest, ExplicitValuesAreKept) {
  v1::DomainSpec spec = FastSpec("vm2");
  spec.set_policy(v1::POLICY_PARANOID);
  spec.set_aperture_first(0x100000);
  spec.set_aperture_last(0xffffffff);
  spec.add_page_sizes(v1::PAGE_SIZE_2M);
  spec.set_iotlb_sets(16);
  spec.set_iotlb_ways(4);
  spec.set_flush_queue_capacity(32);
  spec.mutable_flush_queue_timeout()->set_nanos(500'000);
  v1::ReservedRegion* region = spec.mutable_reserved_regions()->add_regions();
  region->set_start(0x200000);
  region->set_size(0x1000);
  region->set_name("rmrr");
  spec.set_identity_first(true);
  spec.set_max_mappings(100);
  spec.set_bypass_window_base(uint64_t{1} << 50);
  spec.set_iommu_unit(3);

  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->id, "vm2");
  EXPECT_EQ(config->policy, Policy::kParanoid);
  EXPECT_EQ(config->aperture_first, 0x100000u);
  EXPECT_EQ(config->aperture_last, 0xffffffffu);
  EXPECT_EQ(config->page_sizes, kPage4K | kPage2M);  // 4K is always added
  EXPECT_EQ(config->iotlb.sets, 16u);
  EXPECT_EQ(config->iotlb.ways, 4u);
  EXPECT_EQ(config->flush_queue.capacity, 32u);
  EXPECT_EQ(config->flush_queue.timeout, absl::Microseconds(500));
  ASSERT_EQ(config->reserved.size(), 1u);
  EXPECT_EQ(config->reserved[0].start, 0x200000u);
  EXPECT_EQ(config->reserved[0].size, 0x1000u);
  EXPECT_EQ(config->reserved[0].name, "rmrr");
  EXPECT_TRUE(config->identity_first);
  EXPECT_EQ(config->max_mappings, 100u);
  EXPECT_EQ(config->bypass_window_base, uint64_t{1} << 50);
  EXPECT_EQ(config->iommu_unit, 3u);
}

TEST(DomainConfigFromProtoTest, ExplicitZeroIsNotTheDefault) {
  // proto3 `optional`: a set zero is a value (the engine then judges it),
  // never a silent stand-in for the default.
  v1::DomainSpec spec = FastSpec();
  spec.set_aperture_first(0);
  spec.set_max_mappings(0);
  spec.set_flush_queue_capacity(0);
  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->aperture_first, 0u);
  EXPECT_EQ(config->max_mappings, 0u);
  EXPECT_EQ(config->flush_queue.capacity, 0u);
}

TEST(DomainConfigFromProtoTest, ReservedRegionsUnsetMeansMsiWindow) {
  v1::DomainSpec spec = FastSpec();
  ASSERT_FALSE(spec.has_reserved_regions());
  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->reserved.size(), 1u);
  EXPECT_EQ(config->reserved[0].name, "msi");
}

TEST(DomainConfigFromProtoTest, ReservedRegionsSetEmptyMeansNone) {
  v1::DomainSpec spec = FastSpec();
  spec.mutable_reserved_regions();  // present, with no regions
  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->reserved, IsEmpty());
}

TEST(DomainConfigFromProtoTest, ReservedRegionsReplaceTheDefault) {
  v1::DomainSpec spec = FastSpec();
  auto* list = spec.mutable_reserved_regions();
  for (uint64_t start : {0x10000, 0x30000}) {
    v1::ReservedRegion* region = list->add_regions();
    region->set_start(start);
    region->set_size(0x1000);
  }
  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->reserved.size(), 2u);  // no MSI window added
  EXPECT_EQ(config->reserved[0].start, 0x10000u);
  EXPECT_EQ(config->reserved[1].start, 0x30000u);
}

// Durations ---------------------------------------------------------------

TEST(DurationFromProtoTest, AcceptsNonNegativeDurations) {
  google::protobuf::Duration duration;
  EXPECT_EQ(*DurationFromProto(duration, "d"), absl::ZeroDuration());
  duration.set_seconds(2);
  duration.set_nanos(500'000'000);
  EXPECT_EQ(*DurationFromProto(duration, "d"), absl::Milliseconds(2500));
  duration.set_seconds(0);
  duration.set_nanos(999'999'999);
  EXPECT_EQ(*DurationFromProto(duration, "d"), absl::Nanoseconds(999'999'999));
}

TEST(DurationFromProtoTest, NegativeSecondsAreRejectedNamingTheField) {
  google::protobuf::Duration duration;
  duration.set_seconds(-1);
  absl::Status status = DurationFromProto(duration, "shutdown_grace_period").status();
  EXPECT_THAT(status, IsInvalidArgumentNaming("shutdown_grace_period"));
  EXPECT_THAT(status.message(), HasSubstr("-1"));
}

TEST(DurationFromProtoTest, NegativeNanosAreRejected) {
  google::protobuf::Duration duration;
  duration.set_nanos(-1);
  EXPECT_THAT(DurationFromProto(duration, "engine.invalidation.fixed").status(),
              IsInvalidArgumentNaming("engine.invalidation.fixed"));
}

TEST(DurationFromProtoTest, NanosOutOfRangeAreRejected) {
  google::protobuf::Duration duration;
  duration.set_nanos(1'000'000'000);
  absl::Status status = DurationFromProto(duration, "d").status();
  EXPECT_THAT(status, IsInvalidArgumentNaming("d"));
  EXPECT_THAT(status.message(), HasSubstr("1000000000"));
  duration.set_nanos(std::numeric_limits<int32_t>::max());
  EXPECT_THAT(DurationFromProto(duration, "d").status(), IsInvalidArgumentNaming("d"));
}

TEST(DurationFromProtoTest, SecondsAboveProtobufRangeAreRejected) {
  google::protobuf::Duration duration;
  duration.set_seconds(int64_t{315576000000});  // protobuf's own maximum
  EXPECT_TRUE(DurationFromProto(duration, "d").ok());
  duration.set_seconds(int64_t{315576000001});
  EXPECT_THAT(DurationFromProto(duration, "d").status(), IsInvalidArgumentNaming("d"));
  duration.set_seconds(std::numeric_limits<int64_t>::max());
  EXPECT_THAT(DurationFromProto(duration, "d").status(), IsInvalidArgumentNaming("d"));
}

TEST(DurationFromProtoTest, DomainFlushQueueTimeoutErrorsNameTheField) {
  v1::DomainSpec spec = FastSpec();
  spec.mutable_flush_queue_timeout()->set_seconds(-5);
  EXPECT_THAT(DomainConfigFromProto(spec).status(),
              IsInvalidArgumentNaming("domain.flush_queue_timeout"));
}

TEST(DurationToProtoTest, RoundTrips) {
  for (absl::Duration duration :
       {absl::ZeroDuration(), absl::Nanoseconds(1), absl::Microseconds(1500), absl::Seconds(5),
        absl::Seconds(3) + absl::Nanoseconds(999'999'999), absl::Hours(24 * 365)}) {
    google::protobuf::Duration proto;
    DurationToProto(duration, &proto);
    EXPECT_GE(proto.nanos(), 0);
    EXPECT_LE(proto.nanos(), 999'999'999);
    absl::StatusOr<absl::Duration> back = DurationFromProto(proto, "d");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, duration);
  }
}

TEST(DurationToProtoTest, SplitsSecondsAndNanos) {
  google::protobuf::Duration proto;
  DurationToProto(absl::Milliseconds(2500), &proto);
  EXPECT_EQ(proto.seconds(), 2);
  EXPECT_EQ(proto.nanos(), 500'000'000);
}

// Devices -----------------------------------------------------------------

TEST(DeviceConfigFromProtoTest, Defaults) {
  v1::DeviceSpec spec;
  spec.set_id("0000:3b:00.0");
  absl::StatusOr<DeviceConfig> config = DeviceConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->id, "0000:3b:00.0");
  EXPECT_EQ(config->dma_mask_bits, 64);
  EXPECT_FALSE(config->allow_bypass);
}

TEST(DeviceConfigFromProtoTest, ExplicitValues) {
  v1::DeviceSpec spec;
  spec.set_id("dev");
  spec.set_dma_mask_bits(32);
  spec.set_allow_bypass(true);
  absl::StatusOr<DeviceConfig> config = DeviceConfigFromProto(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->dma_mask_bits, 32);
  EXPECT_TRUE(config->allow_bypass);
}

TEST(DeviceConfigFromProtoTest, DmaMaskBitsAbove64AreRejectedNamingTheField) {
  v1::DeviceSpec spec;
  spec.set_id("dev");
  spec.set_dma_mask_bits(64);
  EXPECT_TRUE(DeviceConfigFromProto(spec).ok());
  for (uint32_t bits : {65u, 1000u, std::numeric_limits<uint32_t>::max()}) {
    spec.set_dma_mask_bits(bits);
    absl::Status status = DeviceConfigFromProto(spec).status();
    EXPECT_THAT(status, IsInvalidArgumentNaming("device.dma_mask_bits")) << bits;
    // A huge uint32 must not turn into a negative int on the way.
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat(bits))) << bits;
  }
}

TEST(DeviceUpdateFromProtoTest, UnsetFieldsStayUnset) {
  v1::UpdateDeviceRequest request;
  request.set_device_id("dev");
  absl::StatusOr<DeviceUpdate> update = DeviceUpdateFromProto(request);
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_FALSE(update->dma_mask_bits.has_value());
  EXPECT_FALSE(update->allow_bypass.has_value());
}

TEST(DeviceUpdateFromProtoTest, SetFieldsAreCopied) {
  v1::UpdateDeviceRequest request;
  request.set_dma_mask_bits(40);
  request.set_allow_bypass(false);  // set false is a change, not "unset"
  absl::StatusOr<DeviceUpdate> update = DeviceUpdateFromProto(request);
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_EQ(update->dma_mask_bits, 40);
  EXPECT_EQ(update->allow_bypass, false);
}

TEST(DeviceUpdateFromProtoTest, DmaMaskBitsAbove64AreRejected) {
  v1::UpdateDeviceRequest request;
  request.set_dma_mask_bits(65);
  EXPECT_THAT(DeviceUpdateFromProto(request).status(), IsInvalidArgumentNaming("dma_mask_bits"));
}

TEST(DeviceInfoToProtoTest, FillsEveryField) {
  DeviceInfo info;
  info.config = {.id = "dev", .dma_mask_bits = 36, .allow_bypass = true};
  info.requester = 7;
  info.domain_id = "vm1";
  info.debug.double_unmaps = 3;
  v1::Device device;
  DeviceInfoToProto(info, &device);
  EXPECT_EQ(device.spec().id(), "dev");
  EXPECT_TRUE(device.spec().has_dma_mask_bits());
  EXPECT_EQ(device.spec().dma_mask_bits(), 36u);
  EXPECT_TRUE(device.spec().allow_bypass());
  EXPECT_EQ(device.requester_id(), 7u);
  EXPECT_EQ(device.domain_id(), "vm1");
  EXPECT_EQ(device.debug().double_unmaps(), 3u);
  // And back: the reply's spec recreates the same device.
  absl::StatusOr<DeviceConfig> config = DeviceConfigFromProto(device.spec());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->id, info.config.id);
  EXPECT_EQ(config->dma_mask_bits, info.config.dma_mask_bits);
  EXPECT_EQ(config->allow_bypass, info.config.allow_bypass);
}

// Round trips -------------------------------------------------------------

void ExpectSameConfig(const DomainConfig& a, const DomainConfig& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.policy, b.policy);
  EXPECT_EQ(a.aperture_first, b.aperture_first);
  EXPECT_EQ(a.aperture_last, b.aperture_last);
  EXPECT_EQ(a.page_sizes, b.page_sizes);
  EXPECT_EQ(a.iotlb.sets, b.iotlb.sets);
  EXPECT_EQ(a.iotlb.ways, b.iotlb.ways);
  EXPECT_EQ(a.flush_queue.capacity, b.flush_queue.capacity);
  EXPECT_EQ(a.flush_queue.timeout, b.flush_queue.timeout);
  ASSERT_EQ(a.reserved.size(), b.reserved.size());
  for (size_t i = 0; i < a.reserved.size(); ++i) {
    EXPECT_EQ(a.reserved[i].start, b.reserved[i].start) << i;
    EXPECT_EQ(a.reserved[i].size, b.reserved[i].size) << i;
    EXPECT_EQ(a.reserved[i].name, b.reserved[i].name) << i;
  }
  EXPECT_EQ(a.identity_first, b.identity_first);
  EXPECT_EQ(a.max_mappings, b.max_mappings);
  EXPECT_EQ(a.bypass_window_base, b.bypass_window_base);
  EXPECT_EQ(a.iommu_unit, b.iommu_unit);
}

DomainConfig RoundTrip(const DomainConfig& config) {
  DomainInfo info;
  info.config = config;
  v1::Domain domain;
  DomainInfoToProto(info, &domain);
  absl::StatusOr<DomainConfig> back = DomainConfigFromProto(domain.spec());
  EXPECT_TRUE(back.ok()) << back.status();
  return back.ok() ? *back : DomainConfig{};
}

TEST(DomainRoundTripTest, Defaults) {
  DomainConfig config;
  config.id = "vm1";
  ExpectSameConfig(RoundTrip(config), config);
}

TEST(DomainRoundTripTest, EveryFieldChanged) {
  DomainConfig config;
  config.id = "vm2";
  config.policy = Policy::kPassthrough;
  config.aperture_first = 0x200000;
  config.aperture_last = (uint64_t{1} << 39) - 1;
  config.page_sizes = kPage4K | kPage1G;
  config.iotlb = {.sets = 128, .ways = 2};
  config.flush_queue = {.capacity = 17, .timeout = absl::Seconds(1) + absl::Nanoseconds(3)};
  config.reserved = {{0x1000, 0x2000, "a"}, {0x9000, 0x1000, ""}};
  config.identity_first = true;
  config.max_mappings = 5;
  config.bypass_window_base = uint64_t{1} << 60;
  config.iommu_unit = 2;
  ExpectSameConfig(RoundTrip(config), config);
}

TEST(DomainRoundTripTest, NoReservedRegionsStaysNone) {
  // A reply for a domain without reserved regions must not recreate one with
  // the MSI default: the list is present, and empty.
  DomainConfig config;
  config.id = "bare";
  config.reserved.clear();
  DomainInfo info;
  info.config = config;
  v1::Domain domain;
  DomainInfoToProto(info, &domain);
  EXPECT_TRUE(domain.spec().has_reserved_regions());
  ExpectSameConfig(RoundTrip(config), config);
}

TEST(DomainRoundTripTest, ReplySetsEveryOptionalField) {
  // "in replies every field is set to the value in force".
  DomainInfo info;
  info.config.id = "d";
  v1::Domain domain;
  DomainInfoToProto(info, &domain);
  const v1::DomainSpec& spec = domain.spec();
  EXPECT_TRUE(spec.has_aperture_first());
  EXPECT_TRUE(spec.has_aperture_last());
  EXPECT_TRUE(spec.has_iotlb_sets());
  EXPECT_TRUE(spec.has_iotlb_ways());
  EXPECT_TRUE(spec.has_flush_queue_capacity());
  EXPECT_TRUE(spec.has_flush_queue_timeout());
  EXPECT_TRUE(spec.has_reserved_regions());
  EXPECT_TRUE(spec.has_max_mappings());
  EXPECT_TRUE(spec.has_bypass_window_base());
  EXPECT_THAT(spec.page_sizes(), ElementsAre(v1::PAGE_SIZE_4K, v1::PAGE_SIZE_2M, v1::PAGE_SIZE_1G));
  EXPECT_EQ(spec.flush_queue_timeout().nanos(), 10'000'000);
}

TEST(DomainInfoToProtoTest, CopiesDevicesAndStats) {
  DomainInfo info;
  info.config.id = "d";
  info.device_ids = {"a", "b"};
  info.stats.live_mappings = 4;
  info.stats.iotlb.hits = 9;
  info.stats.flush_queue.pending = 2;
  info.stats.iova.failed_allocations = 1;
  info.stats.debug.leaked_bytes = 4096;
  v1::Domain domain;
  DomainInfoToProto(info, &domain);
  EXPECT_THAT(domain.device_ids(), ElementsAre("a", "b"));
  EXPECT_EQ(domain.stats().live_mappings(), 4u);
  EXPECT_EQ(domain.stats().iotlb().hits(), 9u);
  EXPECT_EQ(domain.stats().flush_queue().pending(), 2u);
  EXPECT_EQ(domain.stats().iova().failed_allocations(), 1u);
  EXPECT_EQ(domain.stats().debug().leaked_bytes(), 4096u);
}

// Results -----------------------------------------------------------------

TEST(TranslateResultToProtoTest, FaultHasNoSegments) {
  TranslateResult result;
  Fault& fault = result.fault.emplace();
  fault.sequence = 5;
  fault.time = absl::FromUnixNanos(1'500'000'000);
  fault.device_id = "dev";
  fault.iova = 0x5000;
  fault.access = Access::kWrite;
  fault.reason = FaultReason::kPermission;
  result.segments.push_back({0x1000, 0x1000});  // ignored when faulted
  v1::TranslateResponse response;
  TranslateResultToProto(result, &response);
  ASSERT_TRUE(response.has_fault());
  EXPECT_THAT(response.segments(), IsEmpty());
  EXPECT_EQ(response.fault().sequence(), 5u);
  EXPECT_EQ(response.fault().time().seconds(), 1);
  EXPECT_EQ(response.fault().time().nanos(), 500'000'000);
  EXPECT_EQ(response.fault().access(), v1::ACCESS_WRITE);
  EXPECT_EQ(response.fault().reason(), v1::FAULT_REASON_PERMISSION);
}

TEST(TranslateResultToProtoTest, SegmentsAndFlags) {
  TranslateResult result;
  result.segments.push_back({0x1000, 0x2000});
  result.segments.push_back({0x8000, 0x1000});
  result.kind = MappingKind::kBypass;
  result.iotlb_hit = true;
  result.stale = true;
  v1::TranslateResponse response;
  TranslateResultToProto(result, &response);
  EXPECT_FALSE(response.has_fault());
  ASSERT_EQ(response.segments_size(), 2);
  EXPECT_EQ(response.segments(1).phys(), 0x8000u);
  EXPECT_EQ(response.kind(), v1::MAPPING_KIND_BYPASS);
  EXPECT_TRUE(response.iotlb_hit());
  EXPECT_TRUE(response.stale());
}

TEST(FaultToProtoTest, EveryReasonHasAValue) {
  for (FaultReason reason :
       {FaultReason::kDeviceNotAttached, FaultReason::kOutsideAperture, FaultReason::kAboveDmaMask,
        FaultReason::kNotMapped, FaultReason::kPermission}) {
    Fault fault;
    fault.reason = reason;
    v1::Fault proto;
    FaultToProto(fault, &proto);
    EXPECT_NE(proto.reason(), v1::FAULT_REASON_UNSPECIFIED) << FaultReasonName(reason);
  }
}

TEST(MapResultToProtoTest, EveryKindHasAValue) {
  for (MappingKind kind :
       {MappingKind::kTranslated, MappingKind::kIdentity, MappingKind::kBypass}) {
    MapResult result;
    result.kind = kind;
    result.leaves_2m = 1;
    v1::MapResponse response;
    MapResultToProto(result, &response);
    EXPECT_NE(response.kind(), v1::MAPPING_KIND_UNSPECIFIED) << MappingKindName(kind);
    EXPECT_EQ(response.leaves_2m(), 1u);
  }
}

}  // namespace
}  // namespace iommu_broker
