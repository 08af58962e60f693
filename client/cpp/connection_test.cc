// MakeChannel's credentials, seen from the server's side: an in-process fake
// broker records each call's `authorization` metadata and TLS client
// certificate SANs. The bearer token arrives on unary and streaming calls,
// over loopback TCP, a Unix socket and mutual TLS; TLS uses the committed
// test certificates (tests/testdata/tls/make_certs.sh), and a client without
// a trusted certificate is refused.
#include "client/cpp/connection.h"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/cpp/bearer_token.h"
#include "client/cpp/broker_client.h"
#include "gmock/gmock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_context.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/temp_dir.h"

namespace iommu_broker::client {
namespace {

using ::iommu_broker::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kToken[] = "s3cret-T0ken_value.~+/=";
constexpr char kDriverSan[] = "driver.clients.iommu-broker.test";

std::string TlsFile(absl::string_view name) {
  return absl::StrCat(IOMMU_SOURCE_DIR, "/tests/testdata/tls/", name);
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

// What the server saw of one call.
struct SeenCall {
  std::string method;
  std::vector<std::string> authorization;  // every value sent under the key
  std::vector<std::string> sans;           // the TLS client certificate's
};

// A WatchEvents stream that ends at once, without events. The callback API
// has it delete itself once gRPC is done with it.
class EndedEventStream final : public grpc::ServerWriteReactor<v1::Event> {
 public:
  EndedEventStream() { Finish(grpc::Status::OK); }
  void OnDone() override { delete this; }
};

// Answers ListDomains (unary) and WatchEvents (server streaming), noting
// each call's credentials; every other method is UNIMPLEMENTED.
class RecordingService final : public v1::IommuBroker::CallbackService {
 public:
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext* context,
                                        const v1::ListDomainsRequest* /*request*/,
                                        v1::ListDomainsResponse* /*response*/) override {
    Record("ListDomains", *context);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<v1::Event>* WatchEvents(
      grpc::CallbackServerContext* context, const v1::WatchEventsRequest* /*request*/) override {
    Record("WatchEvents", *context);
    return new EndedEventStream();
  }

  std::vector<SeenCall> calls() const {
    absl::MutexLock lock(&mutex_);
    return calls_;
  }

 private:
  void Record(const std::string& method, const grpc::CallbackServerContext& context) {
    SeenCall call;
    call.method = method;
    auto [first, last] = context.client_metadata().equal_range(kAuthorizationMetadataKey);
    for (auto it = first; it != last; ++it) {
      call.authorization.emplace_back(it->second.data(), it->second.size());
    }
    for (const grpc::string_ref& san :
         context.auth_context()->FindPropertyValues("x509_subject_alternative_name")) {
      call.sans.emplace_back(san.data(), san.size());
    }
    absl::MutexLock lock(&mutex_);
    calls_.push_back(std::move(call));
  }

  mutable absl::Mutex mutex_;
  std::vector<SeenCall> calls_ ABSL_GUARDED_BY(mutex_);
};

// RecordingService served in-process on `address` (127.0.0.1:0 for an
// ephemeral port, or unix:/path).
class FakeBroker {
 public:
  explicit FakeBroker(
      const std::string& address,
      std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials()) {
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, std::move(credentials), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    target_ = absl::StartsWith(address, "unix:") ? address : absl::StrCat("127.0.0.1:", port);
  }
  ~FakeBroker() {
    if (server_ != nullptr) server_->Shutdown();
  }

  bool started() const { return server_ != nullptr; }
  const std::string& target() const { return target_; }
  std::vector<SeenCall> calls() const { return service_.calls(); }

 private:
  RecordingService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string target_;
};

// The test CA's broker certificate; client certificates signed by the test
// CA are required.
std::shared_ptr<grpc::ServerCredentials> MutualTlsServerCredentials() {
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = ReadFile(TlsFile("ca.crt"));
  options.pem_key_cert_pairs.push_back(
      {ReadFile(TlsFile("server.key")), ReadFile(TlsFile("server.crt"))});
  return grpc::SslServerCredentials(options);
}

ConnectionOptions Options(const std::string& target) {
  ConnectionOptions options;
  options.target = target;
  options.token_file.clear();  // whatever IOMMU_BROKER_TOKEN_FILE says
  options.read_retries = 0;    // a refusal is the answer, not a blip
  return options;
}

// One unary and one streaming call through a BrokerClient on `options`.
void CallUnaryAndStream(const ConnectionOptions& options) {
  absl::StatusOr<std::unique_ptr<BrokerClient>> client = BrokerClient::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<v1::ListDomainsResponse> domains = (*client)->ListDomains({});
  ASSERT_TRUE(domains.ok()) << domains.status();
  absl::StatusOr<std::unique_ptr<EventWatch>> watch = (*client)->WatchEvents({});
  ASSERT_TRUE(watch.ok()) << watch.status();
  v1::Event event;
  EXPECT_FALSE((*watch)->Next(&event));
  EXPECT_TRUE((*watch)->Finish().ok());
}

void ExpectHeaderOnBothCalls(const std::vector<SeenCall>& calls, const std::string& expected) {
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].method, "ListDomains");
  EXPECT_THAT(calls[0].authorization, ElementsAre(expected));
  EXPECT_EQ(calls[1].method, "WatchEvents");
  EXPECT_THAT(calls[1].authorization, ElementsAre(expected));
}

TEST(ConnectionTest, BearerTokenIsSentOnUnaryAndStreamingCalls) {
  FakeBroker broker("127.0.0.1:0");
  ASSERT_TRUE(broker.started());
  ConnectionOptions options = Options(broker.target());
  options.bearer_token = kToken;
  CallUnaryAndStream(options);
  ExpectHeaderOnBothCalls(broker.calls(), absl::StrCat("Bearer ", kToken));
}

TEST(ConnectionTest, NoTokenSendsNoAuthorization) {
  FakeBroker broker("127.0.0.1:0");
  ASSERT_TRUE(broker.started());
  CallUnaryAndStream(Options(broker.target()));
  const std::vector<SeenCall> calls = broker.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_THAT(calls[0].authorization, IsEmpty());
  EXPECT_THAT(calls[1].authorization, IsEmpty());
}

TEST(ConnectionTest, TokenFileIsReadAndSentOverUnixSocket) {
  TempDir dir("connection_test");
  ASSERT_FALSE(dir.path().empty()) << "mkdtemp failed";
  const std::string token_file = absl::StrCat(dir.path(), "/token");
  std::ofstream(token_file) << kToken << "\n";
  FakeBroker broker(absl::StrCat("unix:", dir.path(), "/broker.sock"));
  ASSERT_TRUE(broker.started());
  ConnectionOptions options = Options(broker.target());
  options.token_file = token_file;
  CallUnaryAndStream(options);
  ExpectHeaderOnBothCalls(broker.calls(), absl::StrCat("Bearer ", kToken));
}

TEST(ConnectionTest, TokenFileDefaultsToEnvironment) {
  TempDir dir("connection_test");
  ASSERT_FALSE(dir.path().empty()) << "mkdtemp failed";
  const std::string token_file = absl::StrCat(dir.path(), "/token");
  std::ofstream(token_file) << kToken << "\n";
  ASSERT_EQ(setenv(kTokenFileEnvironmentVariable, token_file.c_str(), /*overwrite=*/1), 0);
  ConnectionOptions from_environment;
  ASSERT_EQ(unsetenv(kTokenFileEnvironmentVariable), 0);
  EXPECT_EQ(from_environment.token_file, token_file);
  EXPECT_THAT(ConnectionOptions().token_file, IsEmpty());

  FakeBroker broker("127.0.0.1:0");
  ASSERT_TRUE(broker.started());
  from_environment.target = broker.target();
  CallUnaryAndStream(from_environment);
  ExpectHeaderOnBothCalls(broker.calls(), absl::StrCat("Bearer ", kToken));
}

TEST(ConnectionTest, BearerTokenTakesPrecedenceOverTokenFile) {
  FakeBroker broker("127.0.0.1:0");
  ASSERT_TRUE(broker.started());
  ConnectionOptions options = Options(broker.target());
  options.bearer_token = kToken;
  options.token_file = "/nonexistent/token";  // never read
  CallUnaryAndStream(options);
  ExpectHeaderOnBothCalls(broker.calls(), absl::StrCat("Bearer ", kToken));
}

TEST(ConnectionTest, InvalidBearerTokenIsRefusedWithoutEchoingIt) {
  ConnectionOptions options = Options("127.0.0.1:1");
  options.bearer_token = absl::StrCat(kToken, " trailing");
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(options);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(channel.status().message(), HasSubstr("bearer token"));
  EXPECT_THAT(channel.status().message(), Not(HasSubstr(kToken)));
}

TEST(ConnectionTest, UnreadableTokenFileIsNamed) {
  ConnectionOptions options = Options("127.0.0.1:1");
  options.token_file = "/nonexistent/token";
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(options);
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(channel.status().message(), HasSubstr("/nonexistent/token"));
}

TEST(ConnectionTest, MutualTlsClientCertificateReachesServerWithToken) {
  FakeBroker broker("127.0.0.1:0", MutualTlsServerCredentials());
  ASSERT_TRUE(broker.started());
  ConnectionOptions options = Options(broker.target());
  options.tls = TlsFiles{.root_certificates = TlsFile("ca.crt"),
                         .certificate_chain = TlsFile("driver.crt"),
                         .private_key = TlsFile("driver.key")};
  options.bearer_token = kToken;
  CallUnaryAndStream(options);
  const std::vector<SeenCall> calls = broker.calls();
  ExpectHeaderOnBothCalls(calls, absl::StrCat("Bearer ", kToken));
  for (const SeenCall& call : calls) EXPECT_THAT(call.sans, ElementsAre(kDriverSan)) << call.method;
}

TEST(ConnectionTest, MutualTlsWithoutTrustedClientCertificateIsRefused) {
  FakeBroker broker("127.0.0.1:0", MutualTlsServerCredentials());
  ASSERT_TRUE(broker.started());
  TlsFiles no_certificate;
  no_certificate.root_certificates = TlsFile("ca.crt");
  const TlsFiles untrusted_certificate{.root_certificates = TlsFile("ca.crt"),
                                       .certificate_chain = TlsFile("untrusted.crt"),
                                       .private_key = TlsFile("untrusted.key")};
  for (const TlsFiles& files : {no_certificate, untrusted_certificate}) {
    SCOPED_TRACE(files.certificate_chain);
    ConnectionOptions options = Options(broker.target());
    options.tls = files;
    absl::StatusOr<std::unique_ptr<BrokerClient>> client = BrokerClient::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    EXPECT_EQ((*client)->ListDomains({}).status().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_THAT(broker.calls(), IsEmpty());
}

}  // namespace
}  // namespace iommu_broker::client
