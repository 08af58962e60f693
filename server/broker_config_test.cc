#include "server/broker_config.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/cpp/health.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "server/broker_server.h"
#include "server/log.h"

namespace iommu_broker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

MATCHER_P(IsInvalidArgumentNaming, field, "") {
  if (arg.code() != absl::StatusCode::kInvalidArgument) {
    *result_listener << "code is " << absl::StatusCodeToString(arg.code()) << ": "
                     << arg.message();
    return false;
  }
  if (arg.message().find(field) == absl::string_view::npos) {
    *result_listener << "message \"" << arg.message() << "\" does not name " << field;
    return false;
  }
  return true;
}

std::string DeployConfigPath() {
  return absl::StrCat(IOMMU_SOURCE_DIR, "/deploy/iommu-brokerd.textproto");
}

// A file in the test's temporary directory, removed when it goes out of scope.
class TempFile {
 public:
  TempFile(absl::string_view name, absl::string_view content)
      : path_(absl::StrCat(::testing::TempDir(), "/broker_config_test_", getpid(), "_", name)) {
    std::ofstream out(path_);
    out << content;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Parsing -----------------------------------------------------------------

TEST(ParseTextConfigTest, ParsesEveryPart) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(R"pb(
    listen_address: "unix:/run/broker.sock"
    metrics_listen_address: "none"
    shutdown_grace_period { seconds: 2 nanos: 500000000 }
    engine {
      physical_memory_bytes: 4294967296
      iommu_units: 2
      invalidation { fixed { nanos: 1000 } combine: false }
    }
    limits { max_batch_operations: 16 }
    domains { id: "a" policy: POLICY_FAST }
    domains { id: "b" policy: POLICY_PARANOID iommu_unit: 1 }
    devices { device { id: "dev" dma_mask_bits: 32 } attach_to_domain_id: "a" }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen_address(), "unix:/run/broker.sock");
  EXPECT_EQ(config->engine().iommu_units(), 2u);
  EXPECT_TRUE(config->engine().invalidation().has_combine());
  EXPECT_FALSE(config->engine().invalidation().combine());
  EXPECT_EQ(config->limits().max_batch_operations(), 16u);
  EXPECT_FALSE(config->limits().has_max_concurrent_streams());
  ASSERT_EQ(config->domains_size(), 2);
  EXPECT_EQ(config->domains(1).policy(), v1::POLICY_PARANOID);
  ASSERT_EQ(config->devices_size(), 1);
  EXPECT_EQ(config->devices(0).device().dma_mask_bits(), 32u);
  EXPECT_EQ(*ShutdownGracePeriod(*config), absl::Milliseconds(2500));
}

TEST(ParseTextConfigTest, EmptyTextIsAllDefaults) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig("");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ListenAddress(*config), "127.0.0.1:50051");
}

TEST(ParseTextConfigTest, SyntaxErrorNamesLineAndColumn) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(
      "listen_address: \"127.0.0.1:1\"\n"
      "\n"
      "limits { max_batch_operations: oops }\n");
  EXPECT_THAT(config.status(), IsInvalidArgumentNaming("line 3 column 32"));
}

TEST(ParseTextConfigTest, UnknownFieldNamesLineAndField) {
  absl::StatusOr<v1::BrokerConfig> config =
      ParseTextConfig("engine {\n  max_domain: 3\n}\n");
  EXPECT_THAT(config.status(), IsInvalidArgumentNaming("line 2 column"));
  EXPECT_THAT(config.status().message(), HasSubstr("max_domain"));
}

TEST(ParseTextConfigTest, UnknownEnumValueIsAnError) {
  absl::StatusOr<v1::BrokerConfig> config =
      ParseTextConfig("domains { id: \"a\" policy: POLICY_FASTEST }");
  EXPECT_THAT(config.status(), IsInvalidArgumentNaming("line 1 column"));
  EXPECT_THAT(config.status().message(), HasSubstr("POLICY_FASTEST"));
}

TEST(ParseJsonConfigTest, ParsesProtobufJsonMapping) {
  // Both JSON names (lowerCamelCase) and proto names are accepted;
  // durations are strings.
  absl::StatusOr<v1::BrokerConfig> config = ParseJsonConfig(R"json({
    "listenAddress": "127.0.0.1:7000",
    "metrics_listen_address": "none",
    "shutdownGracePeriod": "1.5s",
    "engine": {"maxDomains": 8, "invalidation": {"perDescriptor": "0.000000100s"}},
    "limits": {"maxBatchOperations": 64},
    "domains": [{"id": "a", "policy": "POLICY_PT", "reservedRegions": {}}],
    "devices": [{"device": {"id": "d", "allowBypass": true}, "attachToDomainId": "a"}]
  })json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ListenAddress(*config), "127.0.0.1:7000");
  EXPECT_EQ(MetricsListenAddress(*config), "");
  EXPECT_EQ(*ShutdownGracePeriod(*config), absl::Milliseconds(1500));
  EXPECT_EQ(config->engine().max_domains(), 8u);
  EXPECT_EQ(config->engine().invalidation().per_descriptor().nanos(), 100);
  EXPECT_EQ(config->limits().max_batch_operations(), 64u);
  ASSERT_EQ(config->domains_size(), 1);
  EXPECT_EQ(config->domains(0).policy(), v1::POLICY_PT);
  // An empty object is still "set": the domain has no reserved regions.
  EXPECT_TRUE(config->domains(0).has_reserved_regions());
  EXPECT_TRUE(config->devices(0).device().allow_bypass());
}

TEST(ParseJsonConfigTest, MalformedJsonIsInvalidArgument) {
  EXPECT_EQ(ParseJsonConfig("{\"listenAddress\": ").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseJsonConfig("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ParseJsonConfigTest, UnknownFieldIsNamed) {
  // A misspelt field must not be silently ignored: the operator would run
  // with a default they meant to change.
  absl::Status status = ParseJsonConfig(R"({"limits": {"maxBatchOps": 1}})").status();
  EXPECT_THAT(status, IsInvalidArgumentNaming("maxBatchOps"));
}

TEST(ParseJsonConfigTest, NegativeValueForUnsignedIsAnError) {
  EXPECT_EQ(ParseJsonConfig(R"({"limits": {"maxBatchOperations": -1}})").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LoadConfigFileTest, TextFile) {
  TempFile file("a.textproto", "listen_address: \"127.0.0.1:1234\"\n");
  absl::StatusOr<v1::BrokerConfig> config = LoadConfigFile(file.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen_address(), "127.0.0.1:1234");
}

TEST(LoadConfigFileTest, JsonFileByExtension) {
  TempFile file("a.json", R"({"listenAddress": "127.0.0.1:4321"})");
  absl::StatusOr<v1::BrokerConfig> config = LoadConfigFile(file.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen_address(), "127.0.0.1:4321");
}

TEST(LoadConfigFileTest, OtherExtensionsAreTextFormat) {
  // JSON content in a file not named .json is read as text format: an error.
  TempFile file("a.pbtxt", R"({"listenAddress": "127.0.0.1:4321"})");
  EXPECT_THAT(LoadConfigFile(file.path()).status(), IsInvalidArgumentNaming("line 1 column"));
}

TEST(LoadConfigFileTest, TextErrorNamesFileLineAndColumn) {
  TempFile file("bad.textproto", "engine {\n  iommu_units: 1\n  iommu_units 2 3\n}\n");
  absl::Status status = LoadConfigFile(file.path()).status();
  EXPECT_THAT(status, IsInvalidArgumentNaming(file.path()));
  EXPECT_THAT(status.message(), HasSubstr("line 3 column"));
}

TEST(LoadConfigFileTest, JsonErrorNamesFile) {
  TempFile file("bad.json", "{\"engine\": [}");
  absl::Status status = LoadConfigFile(file.path()).status();
  EXPECT_THAT(status, IsInvalidArgumentNaming(file.path()));
}

TEST(LoadConfigFileTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/no_such_config.textproto");
  absl::Status status = LoadConfigFile(path).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr(path));
}

TEST(LoadConfigFileTest, DirectoryIsAnError) {
  // Opening a directory "succeeds" on Linux; reading it must not yield an
  // empty (all-defaults) configuration.
  absl::Status status = LoadConfigFile(::testing::TempDir()).status();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(::testing::TempDir()));
}

// Defaults ----------------------------------------------------------------

TEST(ConfigDefaultsTest, Addresses) {
  v1::BrokerConfig config;
  EXPECT_EQ(ListenAddress(config), "127.0.0.1:50051");
  EXPECT_EQ(MetricsListenAddress(config), "127.0.0.1:9464");
  config.set_listen_address("unix:/tmp/b.sock");
  config.set_metrics_listen_address("0.0.0.0:9000");
  EXPECT_EQ(ListenAddress(config), "unix:/tmp/b.sock");
  EXPECT_EQ(MetricsListenAddress(config), "0.0.0.0:9000");
}

TEST(ConfigDefaultsTest, MetricsNoneDisablesMetrics) {
  v1::BrokerConfig config;
  config.set_metrics_listen_address("none");
  EXPECT_EQ(MetricsListenAddress(config), "");
}

TEST(ConfigDefaultsTest, GracePeriod) {
  v1::BrokerConfig config;
  EXPECT_EQ(*ShutdownGracePeriod(config), absl::Seconds(5));
  config.mutable_shutdown_grace_period();  // set to zero: stop at once
  EXPECT_EQ(*ShutdownGracePeriod(config), absl::ZeroDuration());
  config.mutable_shutdown_grace_period()->set_seconds(600);
  EXPECT_EQ(*ShutdownGracePeriod(config), absl::Minutes(10));
}

TEST(ConfigDefaultsTest, EngineOptions) {
  absl::StatusOr<IommuOptions> options = IommuOptionsFromConfig(v1::BrokerConfig());
  ASSERT_TRUE(options.ok()) << options.status();
  const IommuOptions defaults;
  EXPECT_EQ(options->physical_memory_bytes, uint64_t{16} << 30);
  EXPECT_EQ(options->units, 1u);
  EXPECT_EQ(options->max_domains, 1024u);
  EXPECT_EQ(options->max_devices, 4095u);
  EXPECT_EQ(options->fault_log_capacity, 1024u);
  EXPECT_EQ(options->invalidation.cost.fixed, absl::ZeroDuration());
  EXPECT_EQ(options->invalidation.cost.per_descriptor, absl::ZeroDuration());
  EXPECT_EQ(options->invalidation.combine, defaults.invalidation.combine);
  EXPECT_TRUE(options->invalidation.combine);
  EXPECT_EQ(options->invalidation.max_batch_descriptors, 64u);
}

TEST(ConfigDefaultsTest, EngineOptionsFromConfig) {
  v1::BrokerConfig config;
  v1::EngineConfig& engine = *config.mutable_engine();
  engine.set_physical_memory_bytes(uint64_t{1} << 30);
  engine.set_iommu_units(4);
  engine.mutable_invalidation()->mutable_fixed()->set_nanos(1000);
  engine.mutable_invalidation()->mutable_per_descriptor()->set_nanos(100);
  engine.mutable_invalidation()->set_combine(false);
  engine.mutable_invalidation()->set_max_batch_descriptors(8);
  engine.set_max_domains(3);
  engine.set_max_devices(5);
  engine.set_fault_log_capacity(7);
  engine.mutable_device_iotlb_ack_timeout()->set_nanos(250000000);
  absl::StatusOr<IommuOptions> options = IommuOptionsFromConfig(config);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->physical_memory_bytes, uint64_t{1} << 30);
  EXPECT_EQ(options->units, 4u);
  EXPECT_EQ(options->invalidation.cost.fixed, absl::Microseconds(1));
  EXPECT_EQ(options->invalidation.cost.per_descriptor, absl::Nanoseconds(100));
  EXPECT_FALSE(options->invalidation.combine);
  EXPECT_EQ(options->invalidation.max_batch_descriptors, 8u);
  EXPECT_EQ(options->max_domains, 3u);
  EXPECT_EQ(options->max_devices, 5u);
  EXPECT_EQ(options->fault_log_capacity, 7u);
  EXPECT_EQ(options->device_tlb.ack_timeout, absl::Milliseconds(250));
}

TEST(ConfigDefaultsTest, ServiceLimits) {
  v1::BrokerConfig config;
  absl::StatusOr<ServiceLimits> limits = ServiceLimitsFromConfig(config);
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->max_batch_operations, 4096u);
  EXPECT_EQ(limits->max_concurrent_streams, 256u);
  EXPECT_EQ(limits->watch_queue_capacity, 4096u);
  EXPECT_EQ(MaxMessageBytes(config), 4u << 20);
  config.mutable_limits()->set_max_batch_operations(1);
  config.mutable_limits()->set_max_concurrent_streams(2);
  config.mutable_limits()->set_watch_queue_capacity(3);
  config.mutable_limits()->set_max_message_bytes(4096);
  limits = ServiceLimitsFromConfig(config);
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->max_batch_operations, 1u);
  EXPECT_EQ(limits->max_concurrent_streams, 2u);
  EXPECT_EQ(limits->watch_queue_capacity, 3u);
  EXPECT_EQ(MaxMessageBytes(config), 4096u);
}

// Limits out of range -----------------------------------------------------

struct LimitCase {
  std::string name;
  std::string text;   // a BrokerConfig in text format
  std::string field;  // what the error must name
};

class LimitOutOfRangeTest : public ::testing::TestWithParam<LimitCase> {};

TEST_P(LimitOutOfRangeTest, ConfigIsRefusedNamingTheField) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(GetParam().text);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::Status status = IommuOptionsFromConfig(*config).status();
  if (status.ok()) status = ServiceLimitsFromConfig(*config).status();
  if (status.ok()) status = ShutdownGracePeriod(*config).status();
  EXPECT_THAT(status, IsInvalidArgumentNaming(GetParam().field));
}

TEST_P(LimitOutOfRangeTest, ServerDoesNotStart) {
  // The same check through BrokerServer::Start, which is what iommu-brokerd
  // maps to exit status 2: nothing is bound.
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(GetParam().text);
  ASSERT_TRUE(config.ok()) << config.status();
  config->set_listen_address("127.0.0.1:0");
  config->set_metrics_listen_address("none");
  Logger log(stderr);
  absl::StatusOr<std::unique_ptr<BrokerServer>> server = BrokerServer::Start(*config, log);
  EXPECT_THAT(server.status(), IsInvalidArgumentNaming(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(
    Limits, LimitOutOfRangeTest,
    ::testing::Values(
        LimitCase{"batch_operations_zero", "limits { max_batch_operations: 0 }",
                  "limits.max_batch_operations"},
        LimitCase{"batch_operations_high", "limits { max_batch_operations: 65537 }",
                  "limits.max_batch_operations"},
        LimitCase{"streams_zero", "limits { max_concurrent_streams: 0 }",
                  "limits.max_concurrent_streams"},
        LimitCase{"streams_high", "limits { max_concurrent_streams: 100001 }",
                  "limits.max_concurrent_streams"},
        LimitCase{"watch_queue_zero", "limits { watch_queue_capacity: 0 }",
                  "limits.watch_queue_capacity"},
        LimitCase{"watch_queue_high", "limits { watch_queue_capacity: 65537 }",
                  "limits.watch_queue_capacity"},
        LimitCase{"message_bytes_low", "limits { max_message_bytes: 4095 }",
                  "limits.max_message_bytes"},
        LimitCase{"message_bytes_high", "limits { max_message_bytes: 1073741825 }",
                  "limits.max_message_bytes"},
        LimitCase{"iommu_units_zero", "engine { iommu_units: 0 }", "engine.iommu_units"},
        LimitCase{"iommu_units_high", "engine { iommu_units: 65 }", "engine.iommu_units"},
        LimitCase{"fixed_cost_high", "engine { invalidation { fixed { nanos: 10000001 } } }",
                  "engine.invalidation"},
        LimitCase{"descriptor_cost_high",
                  "engine { invalidation { per_descriptor { nanos: 1000001 } } }",
                  "engine.invalidation"},
        LimitCase{"fixed_cost_negative", "engine { invalidation { fixed { seconds: -1 } } }",
                  "engine.invalidation.fixed"},
        LimitCase{"descriptor_cost_bad_nanos",
                  "engine { invalidation { per_descriptor { nanos: -5 } } }",
                  "engine.invalidation.per_descriptor"},
        LimitCase{"grace_negative", "shutdown_grace_period { seconds: -1 }",
                  "shutdown_grace_period"},
        LimitCase{"grace_too_long", "shutdown_grace_period { seconds: 601 }",
                  "shutdown_grace_period"},
        LimitCase{"grace_bad_nanos", "shutdown_grace_period { nanos: 1000000000 }",
                  "shutdown_grace_period"}),
    [](const ::testing::TestParamInfo<LimitCase>& info) { return info.param.name; });

TEST(LimitBoundsTest, EdgesAreAccepted) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(R"pb(
    engine {
      iommu_units: 64
      invalidation { fixed { nanos: 10000000 } per_descriptor { nanos: 1000000 } }
    }
    limits {
      max_batch_operations: 65536
      max_concurrent_streams: 100000
      watch_queue_capacity: 65536
      max_message_bytes: 1073741824
    }
    shutdown_grace_period { seconds: 600 }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(IommuOptionsFromConfig(*config).ok()) << IommuOptionsFromConfig(*config).status();
  EXPECT_TRUE(ServiceLimitsFromConfig(*config).ok()) << ServiceLimitsFromConfig(*config).status();
  EXPECT_TRUE(ShutdownGracePeriod(*config).ok()) << ShutdownGracePeriod(*config).status();
}

// Limits the engine checks (Iommu::Create): the error still names the field,
// and Start reports it as INVALID_ARGUMENT (exit status 2 in the daemon).
class EngineLimitTest : public ::testing::TestWithParam<LimitCase> {};

TEST_P(EngineLimitTest, ServerDoesNotStart) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(GetParam().text);
  ASSERT_TRUE(config.ok()) << config.status();
  config->set_listen_address("127.0.0.1:0");
  config->set_metrics_listen_address("none");
  Logger log(stderr);
  EXPECT_THAT(BrokerServer::Start(*config, log).status(),
              IsInvalidArgumentNaming(GetParam().field));
}

INSTANTIATE_TEST_SUITE_P(
    Engine, EngineLimitTest,
    ::testing::Values(
        LimitCase{"memory_zero", "engine { physical_memory_bytes: 0 }", "physical_memory_bytes"},
        LimitCase{"memory_unaligned", "engine { physical_memory_bytes: 4097 }",
                  "physical_memory_bytes"},
        LimitCase{"devices_zero", "engine { max_devices: 0 }", "max_devices"},
        LimitCase{"devices_high", "engine { max_devices: 4096 }", "max_devices"},
        LimitCase{"domains_zero", "engine { max_domains: 0 }", "max_domains"},
        LimitCase{"fault_log_zero", "engine { fault_log_capacity: 0 }", "fault_log_capacity"},
        LimitCase{"ack_timeout_zero", "engine { device_iotlb_ack_timeout {} }",
                  "device_iotlb_ack_timeout"},
        LimitCase{"ack_timeout_long", "engine { device_iotlb_ack_timeout { seconds: 61 } }",
                  "device_iotlb_ack_timeout"},
        LimitCase{"batch_descriptors_zero",
                  "engine { invalidation { max_batch_descriptors: 0 } }",
                  "max_batch_descriptors"}),
    [](const ::testing::TestParamInfo<LimitCase>& info) { return info.param.name; });

// Start-up objects --------------------------------------------------------

TEST(StartupObjectsTest, BadDomainNamesItsIndex) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(R"pb(
    listen_address: "127.0.0.1:0"
    metrics_listen_address: "none"
    domains { id: "a" policy: POLICY_FAST }
    domains { id: "b" }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  Logger log(stderr);
  absl::Status status = BrokerServer::Start(*config, log).status();
  EXPECT_THAT(status, IsInvalidArgumentNaming("domains[1]"));
  EXPECT_THAT(status.message(), HasSubstr("domain.policy"));
}

TEST(StartupObjectsTest, AttachToUnknownDomainNamesTheDevice) {
  absl::StatusOr<v1::BrokerConfig> config = ParseTextConfig(R"pb(
    listen_address: "127.0.0.1:0"
    metrics_listen_address: "none"
    devices { device { id: "d" } attach_to_domain_id: "nowhere" }
  )pb");
  ASSERT_TRUE(config.ok()) << config.status();
  Logger log(stderr);
  absl::Status status = BrokerServer::Start(*config, log).status();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr("devices[0]"));
}

// The shipped configuration ------------------------------------------------

TEST(DeployConfigTest, Parses) {
  absl::StatusOr<v1::BrokerConfig> config = LoadConfigFile(DeployConfigPath());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ListenAddress(*config), "127.0.0.1:50051");
  EXPECT_EQ(MetricsListenAddress(*config), "127.0.0.1:9464");
  EXPECT_EQ(*ShutdownGracePeriod(*config), absl::Seconds(5));
  ASSERT_TRUE(IommuOptionsFromConfig(*config).ok());
  EXPECT_EQ(IommuOptionsFromConfig(*config)->invalidation.cost.fixed, absl::Microseconds(1));
  EXPECT_TRUE(ServiceLimitsFromConfig(*config).ok());
  EXPECT_EQ(config->domains_size(), 3);
  EXPECT_EQ(config->devices_size(), 4);
}

TEST(DeployConfigTest, StartsAndServes) {
  absl::StatusOr<v1::BrokerConfig> config = LoadConfigFile(DeployConfigPath());
  ASSERT_TRUE(config.ok()) << config.status();
  // The shipped addresses may be taken on a test machine.
  config->set_listen_address("127.0.0.1:0");
  config->set_metrics_listen_address("none");
  Logger log(stderr);
  absl::StatusOr<std::unique_ptr<BrokerServer>> server = BrokerServer::Start(*config, log);
  ASSERT_TRUE(server.ok()) << server.status();
  BrokerServer& broker = **server;
  EXPECT_GT(broker.port(), 0);

  std::vector<std::string> domains = broker.iommu().DomainIds();
  EXPECT_THAT(domains, UnorderedElementsAre("paranoid", "fast", "pt"));
  std::vector<std::string> devices = broker.iommu().DeviceIds();
  EXPECT_THAT(devices, UnorderedElementsAre("0000:00:01.0", "0000:00:02.0", "0000:00:02.1",
                                            "0000:00:03.0"));
  absl::StatusOr<DeviceInfo> bypass = broker.iommu().DescribeDevice("0000:00:02.1");
  ASSERT_TRUE(bypass.ok()) << bypass.status();
  EXPECT_EQ(bypass->domain_id, "fast");
  EXPECT_EQ(bypass->config.dma_mask_bits, 32);
  EXPECT_TRUE(bypass->config.allow_bypass);
  absl::StatusOr<DomainInfo> fast = broker.iommu().DescribeDomain("fast");
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_EQ(fast->config.policy, Policy::kFast);
  EXPECT_THAT(fast->device_ids, ElementsAre("0000:00:02.0", "0000:00:02.1"));

  // And over gRPC: healthy, and the same three domains.
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(
      absl::StrCat("127.0.0.1:", broker.port()), grpc::InsecureChannelCredentials());
  absl::StatusOr<client::ServingStatus> health =
      client::WaitForServing(channel, "", absl::Seconds(10));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::ServingStatus::kServing);
  EXPECT_EQ(*client::CheckHealth(channel, kServiceName, absl::Seconds(10)),
            client::ServingStatus::kServing);

  std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::ListDomainsResponse response;
  grpc::Status status = stub->ListDomains(&context, v1::ListDomainsRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.domains_size(), 3);
  EXPECT_EQ(response.domains(0).spec().id(), "fast");  // sorted by id
  EXPECT_EQ(response.domains(1).spec().id(), "paranoid");
  EXPECT_EQ(response.domains(2).spec().id(), "pt");

  broker.Shutdown(absl::ZeroDuration());
}

}  // namespace
}  // namespace iommu_broker
