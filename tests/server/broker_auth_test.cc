// Authentication and authorization through the real server in-process
// (docs/SECURITY.md): who may call what, by bearer token and by TLS client
// certificate; per-operation refusals in Batch; a refused call changes
// nothing; SIGHUP-style reloads keep streams going; and the start-up rules
// (no API beyond loopback without identities and TLS, unusable TLS files).
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cpp/health.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/access_policy.h"
#include "tests/server/test_broker.h"

namespace iommu_broker {
namespace {

using ::iommu_broker::testing::CallDeadline;
using ::iommu_broker::testing::TestBroker;
using ::testing::HasSubstr;
using ::testing::Not;
using Stub = v1::IommuBroker::Stub;

constexpr char kOperatorToken[] = "operator-token-1";
constexpr char kDriverToken[] = "driver-token-1";
constexpr char kViewerToken[] = "viewer-token-1";
constexpr char kDriverSan[] = "driver.clients.iommu-broker.test";
constexpr char kOwnDevice[] = "dev-a";     // the driver's, in domain "a"
constexpr char kOtherDevice[] = "dev-b";   // in domain "b"

std::string TlsFile(absl::string_view name) {
  return absl::StrCat(IOMMU_SOURCE_DIR, "/tests/testdata/tls/", name);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream contents;
  contents << in.rdbuf();
  EXPECT_FALSE(contents.str().empty()) << path;
  return contents.str();
}

v1::BrokerConfig ParseConfig(const std::string& text) {
  v1::BrokerConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config)) << text;
  return config;
}

// Two domains with a device each; an operator, a driver of dev-a and a
// viewer, by token.
v1::BrokerConfig AuthConfig(absl::string_view driver_token = kDriverToken) {
  return ParseConfig(absl::StrCat(R"(
    domains { id: "a" policy: POLICY_FAST }
    domains { id: "b" policy: POLICY_FAST }
    devices { device { id: "dev-a" } attach_to_domain_id: "a" }
    devices { device { id: "dev-b" } attach_to_domain_id: "b" }
    auth {
      identities { name: "ops" role: ROLE_OPERATOR token_sha256: ")", Sha256Hex(kOperatorToken), R"(" }
      identities { name: "vm-a" role: ROLE_DRIVER token_sha256: ")", Sha256Hex(driver_token), R"("
                   device_ids: "dev-a" }
      identities { name: "dashboard" role: ROLE_VIEWER token_sha256: ")", Sha256Hex(kViewerToken), R"(" }
    })"));
}

// The driver of dev-a by client certificate too (identities[3]).
v1::Identity CertificateDriver() {
  v1::Identity identity;
  identity.set_name("vm-a-cert");
  identity.set_role(v1::ROLE_DRIVER);
  identity.set_certificate_san(kDriverSan);
  identity.add_device_ids(kOwnDevice);
  return identity;
}

// TLS with the test certificates, and the certificate driver.
v1::BrokerConfig WithTls(v1::BrokerConfig config, bool require_client_certificate) {
  *config.mutable_auth()->add_identities() = CertificateDriver();
  v1::TlsConfig& tls = *config.mutable_tls();
  tls.set_certificate_file(TlsFile("server.crt"));
  tls.set_private_key_file(TlsFile("server.key"));
  tls.set_client_ca_file(TlsFile("ca.crt"));
  tls.set_require_client_certificate(require_client_certificate);
  return config;
}

std::unique_ptr<grpc::ClientContext> ContextWithToken(absl::string_view token) {
  std::unique_ptr<grpc::ClientContext> context = testing::ContextWithDeadline();
  if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
  return context;
}

v1::MapRequest MapOf(absl::string_view device_id) {
  v1::MapRequest request;
  request.set_device_id(std::string(device_id));
  request.set_phys(0x100000);
  request.set_size(0x1000);
  request.mutable_permissions()->set_read(true);
  return request;
}

class BrokerAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = TestBroker::Start(AuthConfig());
    ASSERT_NE(broker_, nullptr);
  }

  // Calls `method` with `token` (none if empty); the status.
  template <typename Request, typename Response>
  grpc::Status Call(absl::string_view token,
                    grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                    const Request& request, Response* response = nullptr) {
    Response ignored;
    return (broker_->stub().*method)(ContextWithToken(token).get(), request,
                                     response ? response : &ignored);
  }

  // The live mappings of `domain_id`, as the operator sees them.
  uint64_t LiveMappings(const std::string& domain_id) {
    v1::GetStatsRequest request;
    request.set_domain_id(domain_id);
    v1::GetStatsResponse stats;
    testing::ExpectOk(Call(kOperatorToken, &Stub::GetStats, request, &stats));
    return stats.domains().at(domain_id).live_mappings();
  }

  std::unique_ptr<TestBroker> broker_;
};

TEST_F(BrokerAuthTest, CallsWithoutAKnownIdentityAreUnauthenticated) {
  for (absl::string_view token : {"", "not-a-token", kOperatorToken + 1}) {
    SCOPED_TRACE(absl::StrCat("token \"", token, "\""));
    EXPECT_EQ(Call(token, &Stub::ListDomains, v1::ListDomainsRequest()).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(Call(token, &Stub::Map, MapOf(kOwnDevice)).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  std::unique_ptr<grpc::ClientContext> basic = testing::ContextWithDeadline();
  basic->AddMetadata("authorization", absl::StrCat("Basic ", kOperatorToken));
  v1::ListDomainsResponse response;
  const grpc::Status status =
      broker_->stub().ListDomains(basic.get(), v1::ListDomainsRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), Not(HasSubstr(kOperatorToken)));
  EXPECT_EQ(LiveMappings("a"), 0u);
}

TEST_F(BrokerAuthTest, HealthNeedsNoIdentity) {
  absl::StatusOr<client::ServingStatus> health =
      client::CheckHealth(broker_->channel(), "iommu_broker.v1.IommuBroker", absl::Seconds(10));
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::ServingStatus::kServing);
}

struct RoleCase {
  std::string who;
  std::string token;
  std::string call;
  grpc::StatusCode expected;
};

class RoleTableTest : public BrokerAuthTest, public ::testing::WithParamInterface<RoleCase> {
 protected:
  grpc::Status Run(const RoleCase& c) {
    v1::CreateDomainRequest create;
    create.mutable_domain()->set_id("new");
    create.mutable_domain()->set_policy(v1::POLICY_FAST);
    v1::GetStatsRequest own_stats;
    own_stats.set_device_id(kOwnDevice);
    v1::FlushRequest flush_a;
    flush_a.set_domain_id("a");
    v1::FlushRequest flush_b;
    flush_b.set_domain_id("b");
    v1::AttachDeviceRequest move;
    move.set_device_id(kOwnDevice);
    move.set_domain_id("b");
    if (c.call == "CreateDomain") return Call(c.token, &Stub::CreateDomain, create);
    if (c.call == "AttachDevice") return Call(c.token, &Stub::AttachDevice, move);
    if (c.call == "ListDomains") return Call(c.token, &Stub::ListDomains, v1::ListDomainsRequest());
    if (c.call == "GetStats") return Call(c.token, &Stub::GetStats, v1::GetStatsRequest());
    if (c.call == "GetStats(own device)") return Call(c.token, &Stub::GetStats, own_stats);
    if (c.call == "Map(own device)") return Call(c.token, &Stub::Map, MapOf(kOwnDevice));
    if (c.call == "Map(other device)") return Call(c.token, &Stub::Map, MapOf(kOtherDevice));
    if (c.call == "Flush(own domain)") return Call(c.token, &Stub::Flush, flush_a);
    if (c.call == "Flush(other domain)") return Call(c.token, &Stub::Flush, flush_b);
    ADD_FAILURE() << "no call " << c.call;
    return grpc::Status::CANCELLED;
  }
};

TEST_P(RoleTableTest, MayMakeOnlyItsCalls) {
  const RoleCase& c = GetParam();
  const grpc::Status status = Run(c);
  EXPECT_EQ(status.error_code(), c.expected)
      << c.who << " calling " << c.call << ": " << status.error_message();
  if (c.expected == grpc::StatusCode::PERMISSION_DENIED) {
    EXPECT_THAT(status.error_message(), HasSubstr("identity"));
  }
}

constexpr grpc::StatusCode kOk = grpc::StatusCode::OK;
constexpr grpc::StatusCode kDenied = grpc::StatusCode::PERMISSION_DENIED;

INSTANTIATE_TEST_SUITE_P(
    Roles, RoleTableTest,
    ::testing::Values(RoleCase{"operator", kOperatorToken, "CreateDomain", kOk},
                      RoleCase{"operator", kOperatorToken, "AttachDevice", kOk},
                      RoleCase{"operator", kOperatorToken, "ListDomains", kOk},
                      RoleCase{"operator", kOperatorToken, "GetStats", kOk},
                      RoleCase{"operator", kOperatorToken, "Map(other device)", kOk},
                      RoleCase{"operator", kOperatorToken, "Flush(other domain)", kOk},
                      RoleCase{"driver", kDriverToken, "CreateDomain", kDenied},
                      RoleCase{"driver", kDriverToken, "AttachDevice", kDenied},
                      RoleCase{"driver", kDriverToken, "ListDomains", kDenied},
                      RoleCase{"driver", kDriverToken, "GetStats", kDenied},
                      RoleCase{"driver", kDriverToken, "GetStats(own device)", kOk},
                      RoleCase{"driver", kDriverToken, "Map(own device)", kOk},
                      RoleCase{"driver", kDriverToken, "Map(other device)", kDenied},
                      RoleCase{"driver", kDriverToken, "Flush(own domain)", kOk},
                      RoleCase{"driver", kDriverToken, "Flush(other domain)", kDenied},
                      RoleCase{"viewer", kViewerToken, "CreateDomain", kDenied},
                      RoleCase{"viewer", kViewerToken, "AttachDevice", kDenied},
                      RoleCase{"viewer", kViewerToken, "ListDomains", kOk},
                      RoleCase{"viewer", kViewerToken, "GetStats", kOk},
                      RoleCase{"viewer", kViewerToken, "Map(own device)", kDenied},
                      RoleCase{"viewer", kViewerToken, "Flush(own domain)", kDenied}));

TEST_F(BrokerAuthTest, RefusedCallsChangeNothing) {
  EXPECT_EQ(Call(kDriverToken, &Stub::Map, MapOf(kOtherDevice)).error_code(), kDenied);
  EXPECT_EQ(LiveMappings("b"), 0u);
  v1::AttachDeviceRequest move;
  move.set_device_id(kOwnDevice);
  move.set_domain_id("b");
  EXPECT_EQ(Call(kViewerToken, &Stub::AttachDevice, move).error_code(), kDenied);
  v1::Device device;
  v1::GetDeviceRequest get;
  get.set_device_id(kOwnDevice);
  testing::ExpectOk(Call(kOperatorToken, &Stub::GetDevice, get, &device));
  EXPECT_EQ(device.domain_id(), "a");
}

TEST_F(BrokerAuthTest, DriverStatsShowOnlyItsDeviceAndDomain) {
  v1::GetStatsRequest request;
  request.set_device_id(kOwnDevice);
  v1::GetStatsResponse stats;
  testing::ExpectOk(Call(kDriverToken, &Stub::GetStats, request, &stats));
  EXPECT_EQ(stats.domains().size(), 1u);
  EXPECT_TRUE(stats.domains().contains("a"));
  EXPECT_EQ(stats.devices().size(), 1u);
  EXPECT_TRUE(stats.devices().contains(kOwnDevice));
  request.set_domain_id("b");
  EXPECT_EQ(Call(kDriverToken, &Stub::GetStats, request).error_code(), kDenied);
}

// Opens a Batch stream carrying `token`.
struct BatchStream {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream;
};

BatchStream OpenBatch(Stub& stub, absl::string_view token) {
  BatchStream batch;
  batch.context = ContextWithToken(token);
  batch.stream = stub.Batch(batch.context.get());
  return batch;
}

// The status codes of one Batch message's results.
std::vector<int> RunBatch(BatchStream& batch, const v1::BatchRequest& request) {
  std::vector<int> codes;
  v1::BatchResponse response;
  if (!batch.stream->Write(request) || !batch.stream->Read(&response)) return codes;
  for (const v1::OperationResult& result : response.results()) {
    codes.push_back(result.status().code());
  }
  return codes;
}

TEST_F(BrokerAuthTest, BatchRefusesEachOperationTheDriverMayNotMake) {
  v1::BatchRequest request;
  *request.add_operations()->mutable_map() = MapOf(kOwnDevice);
  *request.add_operations()->mutable_map() = MapOf(kOtherDevice);
  request.add_operations()->mutable_translate()->set_device_id(kOtherDevice);
  request.add_operations()->mutable_flush()->set_domain_id("b");
  request.add_operations()->mutable_flush()->set_domain_id("a");
  BatchStream batch = OpenBatch(broker_->stub(), kDriverToken);
  EXPECT_THAT(RunBatch(batch, request),
              ::testing::ElementsAre(0, grpc::PERMISSION_DENIED, grpc::PERMISSION_DENIED,
                                     grpc::PERMISSION_DENIED, 0));
  batch.stream->WritesDone();
  testing::ExpectOk(batch.stream->Finish());
  EXPECT_EQ(LiveMappings("a"), 1u);
  EXPECT_EQ(LiveMappings("b"), 0u);
}

TEST_F(BrokerAuthTest, StreamsWithoutAnIdentityAreRefused) {
  BatchStream batch = OpenBatch(broker_->stub(), "");
  v1::BatchRequest request;
  *request.add_operations()->mutable_map() = MapOf(kOwnDevice);
  EXPECT_TRUE(RunBatch(batch, request).empty());
  EXPECT_EQ(batch.stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);

  std::unique_ptr<grpc::ClientContext> context = ContextWithToken(kDriverToken);
  v1::WatchEventsRequest watch;
  watch.set_faults(true);  // a driver must name one of its devices
  std::unique_ptr<grpc::ClientReader<v1::Event>> events =
      broker_->stub().WatchEvents(context.get(), watch);
  v1::Event event;
  EXPECT_FALSE(events->Read(&event));
  EXPECT_EQ(events->Finish().error_code(), kDenied);
  EXPECT_EQ(LiveMappings("a"), 0u);
}

TEST_F(BrokerAuthTest, ReloadSwapsTokensAndKeepsOpenStreams) {
  BatchStream before = OpenBatch(broker_->stub(), kDriverToken);
  v1::BatchRequest request;
  request.add_operations()->mutable_flush()->set_domain_id("a");
  ASSERT_THAT(RunBatch(before, request), ::testing::ElementsAre(0));

  ASSERT_TRUE(broker_->server().Reload(AuthConfig("driver-token-2")).ok());
  EXPECT_EQ(Call(kDriverToken, &Stub::Flush, request.operations(0).flush()).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  testing::ExpectOk(Call("driver-token-2", &Stub::Flush, request.operations(0).flush()));
  // The stream opened before goes on under the identity it started with.
  EXPECT_THAT(RunBatch(before, request), ::testing::ElementsAre(0));
  before.stream->WritesDone();
  testing::ExpectOk(before.stream->Finish());
}

TEST_F(BrokerAuthTest, ReloadOfAnUnusableConfigChangesNothing) {
  v1::BrokerConfig bad = AuthConfig();
  bad.mutable_auth()->mutable_identities(0)->set_role(v1::ROLE_UNSPECIFIED);
  const absl::Status status = broker_->server().Reload(bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("auth.identities[0].role"));
  testing::ExpectOk(Call(kOperatorToken, &Stub::ListDomains, v1::ListDomainsRequest()));
}

// ---- TLS

std::shared_ptr<grpc::Channel> TlsChannel(const TestBroker& broker, absl::string_view client) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadFile(TlsFile("ca.crt"));
  if (!client.empty()) {
    options.pem_cert_chain = ReadFile(TlsFile(absl::StrCat(client, ".crt")));
    options.pem_private_key = ReadFile(TlsFile(absl::StrCat(client, ".key")));
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(broker.target(), grpc::SslCredentials(options), args);
}

grpc::Status MapOver(const std::shared_ptr<grpc::Channel>& channel, absl::string_view token,
                     absl::string_view device_id) {
  std::unique_ptr<grpc::ClientContext> context = ContextWithToken(token);
  context->set_wait_for_ready(false);
  v1::MapResponse response;
  return v1::IommuBroker::NewStub(channel)->Map(context.get(), MapOf(device_id), &response);
}

TEST(BrokerTlsTest, ClientCertificateNamesTheIdentity) {
  std::unique_ptr<TestBroker> broker =
      TestBroker::Start(WithTls(AuthConfig(), /*require_client_certificate=*/false));
  ASSERT_NE(broker, nullptr);
  std::shared_ptr<grpc::Channel> driver = TlsChannel(*broker, "driver");
  testing::ExpectOk(MapOver(driver, "", kOwnDevice));
  EXPECT_EQ(MapOver(driver, "", kOtherDevice).error_code(), kDenied);
  // A certificate of no configured identity, and none with no token.
  EXPECT_EQ(MapOver(TlsChannel(*broker, "viewer"), "", kOwnDevice).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(MapOver(TlsChannel(*broker, ""), "", kOwnDevice).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Without a certificate, a token over TLS.
  testing::ExpectOk(MapOver(TlsChannel(*broker, ""), kOperatorToken, kOtherDevice));
  // A certificate from another CA does not get through the handshake.
  EXPECT_EQ(MapOver(TlsChannel(*broker, "untrusted"), kOperatorToken, kOwnDevice).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // Nor does plaintext.
  EXPECT_EQ(MapOver(broker->channel(), kOperatorToken, kOwnDevice).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST(BrokerTlsTest, RequiredClientCertificateShutsOutTokens) {
  std::unique_ptr<TestBroker> broker =
      TestBroker::Start(WithTls(AuthConfig(), /*require_client_certificate=*/true));
  ASSERT_NE(broker, nullptr);
  testing::ExpectOk(MapOver(TlsChannel(*broker, "driver"), "", kOwnDevice));
  EXPECT_EQ(MapOver(TlsChannel(*broker, ""), kOperatorToken, kOwnDevice).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

// ---- Start-up rules

absl::Status StartStatus(v1::BrokerConfig config) {
  config.set_metrics_listen_address("none");
  Logger log(stderr, LogLevel::kError);
  return BrokerServer::Start(config, log).status();
}

TEST(BrokerSecurityStartTest, NoApiBeyondLoopbackWithoutIdentitiesAndTls) {
  v1::BrokerConfig open;
  open.set_listen_address("0.0.0.0:0");
  absl::Status status = StartStatus(open);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("listen address 0.0.0.0:0 reaches beyond this host"));

  v1::BrokerConfig tokens_in_the_clear = AuthConfig();
  tokens_in_the_clear.set_listen_address("0.0.0.0:0");
  EXPECT_EQ(StartStatus(tokens_in_the_clear).code(), absl::StatusCode::kInvalidArgument);

  v1::BrokerConfig secured = WithTls(AuthConfig(), false);
  secured.set_listen_address("0.0.0.0:0");
  EXPECT_TRUE(StartStatus(secured).ok()) << StartStatus(secured);
}

TEST(BrokerSecurityStartTest, UnusableTlsFilesAreNamed) {
  v1::BrokerConfig mismatched = WithTls(AuthConfig(), false);
  mismatched.set_listen_address("127.0.0.1:0");
  mismatched.mutable_tls()->set_private_key_file(TlsFile("driver.key"));
  absl::Status status = StartStatus(mismatched);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("driver.key does not match tls.certificate_file"));

  v1::BrokerConfig missing = WithTls(AuthConfig(), false);
  missing.set_listen_address("127.0.0.1:0");
  missing.mutable_tls()->set_client_ca_file(TlsFile("no-such-ca.crt"));
  status = StartStatus(missing);
  EXPECT_THAT(status.message(), HasSubstr("tls.client_ca_file"));
  EXPECT_THAT(status.message(), HasSubstr("cannot be read"));

  v1::BrokerConfig san_without_ca = AuthConfig();
  *san_without_ca.mutable_auth()->add_identities() = CertificateDriver();
  san_without_ca.set_listen_address("127.0.0.1:0");
  status = StartStatus(san_without_ca);
  EXPECT_THAT(status.message(),
              HasSubstr("auth.identities[3].certificate_san needs tls.client_ca_file"));
}

}  // namespace
}  // namespace iommu_broker
