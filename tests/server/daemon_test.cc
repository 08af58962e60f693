// Runs the real iommu-brokerd binary (IOMMU_BROKERD_PATH) as a child process:
// start-up from the shipped configuration, a gRPC call, graceful stop on
// SIGTERM, refusal of bad flags and config files before serving, and the
// second-signal escape hatch. The broker listens on a Unix socket in a fresh
// temporary directory, so concurrent test runs never race for a port.
//
// Every wait is bounded only to keep a broken daemon from hanging the test;
// no assertion depends on how long anything takes.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/health.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "server/access_policy.h"
#include "tests/child_process.h"
#include "tests/temp_dir.h"

namespace iommu_broker {
namespace {

using ::iommu_broker::client::ServingStatus;
using ::iommu_broker::testing::ChildProcess;
using ::iommu_broker::testing::DescribeWaitStatus;
using ::iommu_broker::testing::ExitCodeOf;
using ::iommu_broker::testing::kChildProcessTimeout;
using ::iommu_broker::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

std::string DeployConfigPath() {
  return absl::StrCat(IOMMU_SOURCE_DIR, "/deploy/iommu-brokerd.textproto");
}

// The daemon's command line with `flags`.
std::vector<std::string> Brokerd(const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {IOMMU_BROKERD_PATH};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return argv;
}

// Whether the daemon on `channel` answers SERVING, waiting for it to start;
// the failure message says what it last answered, and its log.
::testing::AssertionResult Serving(const std::shared_ptr<grpc::Channel>& channel,
                                   const ChildProcess& daemon) {
  absl::StatusOr<ServingStatus> health = client::WaitForServing(channel, "", kChildProcessTimeout);
  if (health.ok() && *health == ServingStatus::kServing) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "not serving: "
         << (health.ok() ? client::ServingStatusName(*health) : health.status().ToString()) << "\n"
         << daemon.Stderr();
}

// A Batch stream that has run one flush and stays open: it holds a drain
// until its next message (an idle Batch stream ends only then).
struct OpenBatchStream {
  std::unique_ptr<v1::IommuBroker::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream;
};

void OpenBatch(const std::shared_ptr<grpc::Channel>& channel, OpenBatchStream* open) {
  open->stub = v1::IommuBroker::NewStub(channel);
  open->stream = open->stub->Batch(&open->context);
  v1::BatchRequest request;
  request.add_operations()->mutable_flush()->set_domain_id("fast");
  ASSERT_TRUE(open->stream->Write(request));
  v1::BatchResponse response;
  ASSERT_TRUE(open->stream->Read(&response)) << "the Batch stream did not answer";
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(response.results(0).status().code(), 0) << response.results(0).status().message();
}

// One unary call with a deadline, so a hung daemon fails the test.
template <typename Request, typename Response>
grpc::Status CallWithDeadline(
    v1::IommuBroker::Stub& stub,
    grpc::Status (v1::IommuBroker::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
    const Request& request, Response* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return (stub.*method)(&context, request, response);
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    address_ = absl::StrCat("unix:", dir_.path(), "/broker.sock");
  }

  // Flags for a daemon that serves on this test's socket, without metrics
  // (whose default port may be taken).
  std::vector<std::string> ServeFlags(std::vector<std::string> more = {}) const {
    std::vector<std::string> flags = {absl::StrCat("--listen=", address_),
                                      "--metrics_listen=none"};
    flags.insert(flags.end(), more.begin(), more.end());
    return flags;
  }

  std::shared_ptr<grpc::Channel> Connect() const {
    return grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  }

  // Runs a daemon expected to refuse its configuration; returns its stderr
  // after checking it exited with `expected_exit` and never served.
  std::string RunRefused(const std::vector<std::string>& flags, int expected_exit) {
    ChildProcess daemon(dir_.path(), "brokerd", Brokerd(flags));
    EXPECT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
    if (!daemon.started()) return "";
    const std::optional<int> status = daemon.WaitForExit();
    const std::string log = daemon.Stderr();
    EXPECT_EQ(ExitCodeOf(status), expected_exit) << DescribeWaitStatus(status) << "\n" << log;
    EXPECT_THAT(log, Not(HasSubstr("event=serving")));
    EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/broker.sock"))
        << "the daemon bound its socket before refusing the configuration";
    return log;
  }

  TempDir dir_{"brokerd_test"};
  std::string address_;
};

TEST_F(DaemonTest, ServesDeployConfigAndStopsOnSigterm) {
  ChildProcess daemon(dir_.path(), "brokerd",
                      Brokerd(ServeFlags({absl::StrCat("--config=", DeployConfigPath())})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();

  std::shared_ptr<grpc::Channel> channel = Connect();
  ASSERT_TRUE(Serving(channel, daemon));
  // The broker's own service is registered with the health service too.
  absl::StatusOr<ServingStatus> service_health =
      client::CheckHealth(channel, "iommu_broker.v1.IommuBroker", absl::Seconds(30));
  ASSERT_TRUE(service_health.ok()) << service_health.status();
  EXPECT_EQ(*service_health, ServingStatus::kServing);

  std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::ListDomainsResponse response;
  const grpc::Status status = stub->ListDomains(&context, v1::ListDomainsRequest(), &response);
  ASSERT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
  ASSERT_EQ(response.domains_size(), 3);
  EXPECT_EQ(response.domains(0).spec().id(), "fast");
  EXPECT_EQ(response.domains(1).spec().id(), "paranoid");
  EXPECT_EQ(response.domains(2).spec().id(), "pt");

  ASSERT_TRUE(daemon.Signal(SIGTERM));
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_EQ(ExitCodeOf(exit_status), 0) << DescribeWaitStatus(exit_status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("event=starting"));
  EXPECT_THAT(log, HasSubstr("event=serving"));
  EXPECT_THAT(log, HasSubstr("event=draining"));
  EXPECT_THAT(log, HasSubstr("event=stopped"));
}

// Clients mapping (paranoid) and mapping then unmapping (fast) while the
// daemon gets SIGTERM: each stops at its first refused call, and the
// daemon's exit lines show every acknowledged map still there and the fast
// domain's flush queue drained.
TEST_F(DaemonTest, SigtermUnderLoadDrainsAndKeepsEveryAcknowledgedOperation) {
  ChildProcess daemon(dir_.path(), "brokerd",
                      Brokerd(ServeFlags({absl::StrCat("--config=", DeployConfigPath())})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  std::shared_ptr<grpc::Channel> channel = Connect();
  ASSERT_TRUE(Serving(channel, daemon));

  struct Load {
    const char* device;
    bool unmaps;  // each acknowledged map is followed by its unmap
    std::atomic<uint64_t> live{0};
    std::atomic<uint64_t> calls{0};
  };
  Load paranoid{"0000:00:01.0", false};
  Load fast{"0000:00:02.0", true};
  const auto run = [&channel](Load& load) {
    std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(channel);
    for (uint64_t i = 0;; ++i) {
      v1::MapRequest map;
      map.set_device_id(load.device);
      map.set_phys(i * 4096);
      map.set_size(4096);
      map.mutable_permissions()->set_read(true);
      v1::MapResponse mapped;
      if (!CallWithDeadline(*stub, &v1::IommuBroker::Stub::Map, map, &mapped).ok()) return;
      load.live.fetch_add(1);
      load.calls.fetch_add(1);
      if (!load.unmaps) continue;
      v1::UnmapRequest unmap;
      unmap.set_device_id(load.device);
      unmap.set_iova(mapped.iova());
      unmap.set_size(4096);
      v1::UnmapResponse unmapped;
      if (!CallWithDeadline(*stub, &v1::IommuBroker::Stub::Unmap, unmap, &unmapped).ok()) return;
      load.live.fetch_sub(1);
      load.calls.fetch_add(1);
    }
  };
  std::thread paranoid_client(run, std::ref(paranoid));
  std::thread fast_client(run, std::ref(fast));
  const absl::Time give_up = absl::Now() + kChildProcessTimeout;
  while ((paranoid.calls.load() < 100 || fast.calls.load() < 100) && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }

  ASSERT_TRUE(daemon.Signal(SIGTERM));
  paranoid_client.join();
  fast_client.join();
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_EQ(ExitCodeOf(exit_status), 0) << DescribeWaitStatus(exit_status) << "\n" << log;
  EXPECT_GE(paranoid.calls.load(), 100u);
  EXPECT_GE(fast.calls.load(), 100u);
  EXPECT_THAT(log, HasSubstr(absl::StrCat("event=domain_at_exit domain=paranoid live_mappings=",
                                          paranoid.live.load(), " ")));
  EXPECT_THAT(log, HasSubstr(absl::StrCat("event=domain_at_exit domain=fast live_mappings=",
                                          fast.live.load(), " ")));
  EXPECT_THAT(log, ::testing::ContainsRegex(
                       "event=domain_at_exit domain=fast [^\n]* pending_invalidations=0"));
}

TEST_F(DaemonTest, SigintAlsoStopsGracefully) {
  ChildProcess daemon(dir_.path(), "brokerd", Brokerd(ServeFlags()));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  ASSERT_TRUE(Serving(Connect(), daemon));

  ASSERT_TRUE(daemon.Signal(SIGINT));
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_EQ(ExitCodeOf(exit_status), 0) << DescribeWaitStatus(exit_status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("event=stopped"));
}

TEST_F(DaemonTest, SecondSigtermDuringGracePeriodExitsAtOnce) {
  // A long grace period, and a Batch stream left open: the first SIGTERM's
  // drain waits for it (an idle Batch stream ends only at its next message).
  ChildProcess daemon(dir_.path(), "brokerd",
                      Brokerd(ServeFlags({absl::StrCat("--config=", DeployConfigPath()),
                                          "--shutdown_grace_period=10m"})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  std::shared_ptr<grpc::Channel> channel = Connect();
  ASSERT_TRUE(Serving(channel, daemon));
  OpenBatchStream batch;
  ASSERT_NO_FATAL_FAILURE(OpenBatch(channel, &batch));

  ASSERT_TRUE(daemon.Signal(SIGTERM));
  ASSERT_TRUE(daemon.WaitForStderr("event=draining")) << daemon.Stderr();
  // Still draining: the open stream holds it for up to 10 minutes.
  EXPECT_FALSE(daemon.WaitForExit(absl::ZeroDuration()).has_value()) << daemon.Stderr();

  ASSERT_TRUE(daemon.Signal(SIGTERM));
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  ASSERT_TRUE(exit_status.has_value()) << "the second SIGTERM did not stop the daemon\n" << log;
  EXPECT_NE(ExitCodeOf(exit_status), 0) << DescribeWaitStatus(exit_status);
  EXPECT_EQ(ExitCodeOf(exit_status), 128 + SIGTERM) << DescribeWaitStatus(exit_status);
  EXPECT_THAT(log, Not(HasSubstr("event=stopped")));

  batch.context.TryCancel();
  batch.stream->Finish();  // CANCELLED or UNAVAILABLE: the daemon is gone
}

TEST_F(DaemonTest, HealthListenerServesOnlyHealthAndFollowsTheDrain) {
  const std::string health_address = absl::StrCat("unix:", dir_.path(), "/health.sock");
  ChildProcess daemon(
      dir_.path(), "brokerd",
      Brokerd(ServeFlags({absl::StrCat("--config=", DeployConfigPath()),
                          absl::StrCat("--health_listen=", health_address),
                          "--shutdown_grace_period=10m"})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  std::shared_ptr<grpc::Channel> channel = Connect();
  ASSERT_TRUE(Serving(channel, daemon));
  std::shared_ptr<grpc::Channel> health =
      grpc::CreateChannel(health_address, grpc::InsecureChannelCredentials());
  for (const std::string service : {"", "iommu_broker.v1.IommuBroker"}) {
    absl::StatusOr<ServingStatus> status = client::CheckHealth(health, service, absl::Seconds(30));
    ASSERT_TRUE(status.ok()) << "service \"" << service << "\": " << status.status();
    EXPECT_EQ(*status, ServingStatus::kServing) << "service \"" << service << "\"";
  }

  // The broker's API is not served there.
  {
    std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(health);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::ListDomainsResponse response;
    EXPECT_EQ(stub->ListDomains(&context, v1::ListDomainsRequest(), &response).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }

  // An open Batch stream holds the drain; meanwhile probes see NOT_SERVING.
  OpenBatchStream batch;
  ASSERT_NO_FATAL_FAILURE(OpenBatch(channel, &batch));
  ASSERT_TRUE(daemon.Signal(SIGTERM));
  ASSERT_TRUE(daemon.WaitForStderr("event=draining")) << daemon.Stderr();
  absl::StatusOr<ServingStatus> draining =
      client::CheckHealth(health, "iommu_broker.v1.IommuBroker", absl::Seconds(30));
  ASSERT_TRUE(draining.ok()) << draining.status();
  EXPECT_EQ(*draining, ServingStatus::kNotServing);

  batch.stream->WritesDone();
  batch.stream->Finish();
  const std::optional<int> exit_status = daemon.WaitForExit();
  EXPECT_EQ(ExitCodeOf(exit_status), 0) << DescribeWaitStatus(exit_status) << "\n"
                                        << daemon.Stderr();
  EXPECT_THAT(daemon.Stderr(), HasSubstr("event=health_listening"));
}

TEST_F(DaemonTest, BadFlagValueExitsWithStatus2NamingTheField) {
  const std::string log = RunRefused(ServeFlags({"--max_batch_operations=0"}), 2);
  EXPECT_THAT(log, HasSubstr("max_batch_operations"));
}

TEST_F(DaemonTest, BadFlagValueOverridesAGoodConfigFile) {
  const std::string log = RunRefused(
      ServeFlags({absl::StrCat("--config=", DeployConfigPath()), "--max_concurrent_streams=0"}),
      2);
  EXPECT_THAT(log, HasSubstr("max_concurrent_streams"));
}

TEST_F(DaemonTest, NegativeDurationFlagExitsWithStatus2) {
  const std::string log = RunRefused(ServeFlags({"--shutdown_grace_period=-1s"}), 2);
  EXPECT_THAT(log, HasSubstr("shutdown_grace_period"));
}

TEST_F(DaemonTest, ConfigSyntaxErrorExitsWithStatus2NamingTheLine) {
  const std::string config = dir_.path() + "/broken.textproto";
  {
    std::ofstream out(config);
    out << "# a comment\n"
           "limits {\n"
           "  max_batch_operations: lots\n"
           "}\n";
  }
  const std::string log = RunRefused(ServeFlags({absl::StrCat("--config=", config)}), 2);
  EXPECT_THAT(log, HasSubstr("line 3 column"));
  EXPECT_THAT(log, HasSubstr(config));
}

TEST_F(DaemonTest, ConfigValueOutOfRangeExitsWithStatus2NamingTheField) {
  const std::string config = dir_.path() + "/limits.json";
  {
    std::ofstream out(config);
    out << R"({"limits": {"watchQueueCapacity": 0}})";
  }
  const std::string log = RunRefused(ServeFlags({absl::StrCat("--config=", config)}), 2);
  EXPECT_THAT(log, HasSubstr("limits.watch_queue_capacity"));
}

TEST_F(DaemonTest, BadStartupDomainExitsWithStatus2) {
  const std::string config = dir_.path() + "/domain.textproto";
  {
    std::ofstream out(config);
    out << "domains { id: \"a\" }\n";  // no policy
  }
  const std::string log = RunRefused(ServeFlags({absl::StrCat("--config=", config)}), 2);
  EXPECT_THAT(log, HasSubstr("domain.policy"));
}

TEST_F(DaemonTest, StartupDeviceOnAnUnknownDomainExitsWithStatus2) {
  const std::string config = dir_.path() + "/device.textproto";
  {
    std::ofstream out(config);
    out << "devices { device { id: \"d\" } attach_to_domain_id: \"nowhere\" }\n";
  }
  const std::string log = RunRefused(ServeFlags({absl::StrCat("--config=", config)}), 2);
  EXPECT_THAT(log, HasSubstr("devices[0]"));
  EXPECT_THAT(log, HasSubstr("nowhere"));
}

TEST_F(DaemonTest, ApiBeyondLoopbackWithoutAuthExitsWithStatus2) {
  const std::string log = RunRefused(ServeFlags({"--listen=0.0.0.0:0"}), 2);
  EXPECT_THAT(log, HasSubstr("listen address 0.0.0.0:0 reaches beyond this host"));
}

TEST_F(DaemonTest, SighupReloadsIdentitiesAndTheAuditLogNamesThem) {
  const std::string config_path = dir_.path() + "/auth.textproto";
  const auto write_config = [&](absl::string_view token) {
    std::ofstream(config_path) << "auth { identities { name: \"ops\" role: ROLE_OPERATOR "
                               << "token_sha256: \"" << Sha256Hex(token) << "\" } }\n";
  };
  write_config("first-secret-token");
  ChildProcess daemon(dir_.path(), "brokerd",
                      Brokerd(ServeFlags({absl::StrCat("--config=", config_path)})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  std::shared_ptr<grpc::Channel> channel = Connect();
  ASSERT_TRUE(Serving(channel, daemon));
  std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(channel);
  const auto create_domain = [&](absl::string_view token, absl::string_view id) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    v1::CreateDomainRequest request;
    request.mutable_domain()->set_id(std::string(id));
    request.mutable_domain()->set_policy(v1::POLICY_FAST);
    v1::Domain domain;
    return stub->CreateDomain(&context, request, &domain).error_code();
  };

  EXPECT_EQ(create_domain("first-secret-token", "d1"), grpc::StatusCode::OK);
  EXPECT_EQ(create_domain("", "d2"), grpc::StatusCode::UNAUTHENTICATED);
  write_config("second-secret-token");
  ASSERT_TRUE(daemon.Signal(SIGHUP));
  ASSERT_TRUE(daemon.WaitForStderr("event=reload identities=1 result=ok")) << daemon.Stderr();
  EXPECT_EQ(create_domain("first-secret-token", "d3"), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(create_domain("second-secret-token", "d4"), grpc::StatusCode::OK);
  // A broken file is refused and the running identities stay.
  std::ofstream(config_path) << "auth { identities { name: \"x\" } }\n";
  ASSERT_TRUE(daemon.Signal(SIGHUP));
  ASSERT_TRUE(daemon.WaitForStderr("event=reload result=INVALID_ARGUMENT")) << daemon.Stderr();
  EXPECT_EQ(create_domain("second-secret-token", "d5"), grpc::StatusCode::OK);

  ASSERT_TRUE(daemon.Signal(SIGTERM));
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_EQ(ExitCodeOf(exit_status), 0) << DescribeWaitStatus(exit_status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("event=create_domain domain=d1 policy=POLICY_FAST identity=ops "
                             "result=ok"));
  EXPECT_THAT(log, HasSubstr("event=access_denied rpc=CreateDomain identity=unauthenticated"));
  EXPECT_THAT(log, HasSubstr("event=create_domain domain=d5 policy=POLICY_FAST identity=ops"));
  EXPECT_THAT(log, Not(HasSubstr("secret-token")));
}

TEST_F(DaemonTest, MissingConfigFileExitsWithStatus2) {
  const std::string config = dir_.path() + "/absent.textproto";
  const std::string log = RunRefused(ServeFlags({absl::StrCat("--config=", config)}), 2);
  EXPECT_THAT(log, HasSubstr(config));
}

TEST_F(DaemonTest, UnknownFlagExitsNonZero) {
  ChildProcess daemon(dir_.path(), "brokerd", Brokerd(ServeFlags({"--no_such_flag=1"})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  const std::optional<int> status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  ASSERT_TRUE(status.has_value()) << log;
  EXPECT_TRUE(WIFEXITED(*status)) << DescribeWaitStatus(status);
  EXPECT_NE(ExitCodeOf(status), 0) << log;
  EXPECT_THAT(log, HasSubstr("no_such_flag"));
  EXPECT_THAT(log, Not(HasSubstr("event=serving")));
}

TEST_F(DaemonTest, UnparsableFlagValueExitsNonZero) {
  ChildProcess daemon(dir_.path(), "brokerd",
                      Brokerd(ServeFlags({"--max_batch_operations=many"})));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  const std::optional<int> status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_NE(ExitCodeOf(status), 0) << DescribeWaitStatus(status) << "\n" << log;
  EXPECT_NE(ExitCodeOf(status), -1) << DescribeWaitStatus(status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("max_batch_operations"));
}

}  // namespace
}  // namespace iommu_broker
