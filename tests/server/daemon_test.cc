// Runs the real iommu-brokerd binary (IOMMU_BROKERD_PATH) as a child process:
// start-up from the shipped configuration, a gRPC call, graceful stop on
// SIGTERM, refusal of bad flags and config files before serving, and the
// second-signal escape hatch. The broker listens on a Unix socket in a fresh
// temporary directory, so concurrent test runs never race for a port.
//
// Every wait is bounded only to keep a broken daemon from hanging the test;
// no assertion depends on how long anything takes.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/server/health_check.h"

extern char** environ;

namespace iommu_broker {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Generous: under AddressSanitizer on a busy 2-core machine start-up can
// take seconds. Only a hung daemon ever reaches these.
constexpr absl::Duration kExitTimeout = absl::Seconds(60);
constexpr absl::Duration kLogTimeout = absl::Seconds(60);
constexpr int kHealthAttempts = 300;  // x 200 ms

std::string DeployConfigPath() {
  return absl::StrCat(IOMMU_SOURCE_DIR, "/deploy/iommu-brokerd.textproto");
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream content;
  content << file.rdbuf();
  return content.str();
}

// A private directory under /tmp: short enough for a Unix socket path
// (108 bytes), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/brokerd_test.XXXXXX";
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    if (!path_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(path_, ignored);
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One iommu-brokerd process; SIGKILLed and reaped on destruction if the test
// did not wait for it.
class Daemon {
 public:
  Daemon(const std::string& dir, const std::vector<std::string>& flags)
      : stderr_path_(dir + "/stderr.log") {
    std::vector<std::string> args = {IOMMU_BROKERD_PATH};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    const std::string stdout_path = dir + "/stdout.log";
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    // The child starts with the default signal mask, whatever gtest's
    // threads have blocked.
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
    spawn_error_ = posix_spawn(&pid_, argv[0], &actions, &attributes, argv.data(), environ);
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    if (spawn_error_ != 0) pid_ = -1;
  }

  ~Daemon() {
    if (pid_ > 0 && !exit_status_.has_value()) {
      kill(pid_, SIGKILL);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }

  bool started() const { return pid_ > 0; }
  int spawn_error() const { return spawn_error_; }

  void Signal(int signal_number) {
    ASSERT_GT(pid_, 0);
    ASSERT_FALSE(exit_status_.has_value()) << "the daemon already exited";
    ASSERT_EQ(kill(pid_, signal_number), 0);
  }

  // The raw wait status, or nullopt if the daemon is still running after
  // `timeout`.
  std::optional<int> WaitForExit(absl::Duration timeout = kExitTimeout) {
    if (exit_status_.has_value() || pid_ <= 0) return exit_status_;
    const absl::Time give_up = absl::Now() + timeout;
    while (true) {
      int status = 0;
      const pid_t reaped = waitpid(pid_, &status, WNOHANG);
      if (reaped == pid_) {
        exit_status_ = status;
        return exit_status_;
      }
      if (reaped < 0 || absl::Now() > give_up) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  // True once stderr contains `text`; false if it does not within `timeout`
  // or the daemon exits without writing it.
  bool WaitForLog(absl::string_view text, absl::Duration timeout = kLogTimeout) {
    const absl::Time give_up = absl::Now() + timeout;
    while (absl::Now() <= give_up) {
      if (absl::StrContains(Stderr(), text)) return true;
      if (WaitForExit(absl::ZeroDuration()).has_value()) {
        return absl::StrContains(Stderr(), text);
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  std::string Stderr() const { return ReadFile(stderr_path_); }

 private:
  std::string stderr_path_;
  pid_t pid_ = -1;
  int spawn_error_ = 0;
  std::optional<int> exit_status_;
};

std::string DescribeStatus(std::optional<int> status) {
  if (!status.has_value()) return "still running";
  if (WIFEXITED(*status)) return absl::StrCat("exited with status ", WEXITSTATUS(*status));
  if (WIFSIGNALED(*status)) return absl::StrCat("killed by signal ", WTERMSIG(*status));
  return absl::StrCat("wait status ", *status);
}

// The exit status of a daemon that exited by itself, -1 otherwise.
int ExitCode(std::optional<int> status) {
  return status.has_value() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
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
    Daemon daemon(dir_.path(), flags);
    EXPECT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
    if (!daemon.started()) return "";
    const std::optional<int> status = daemon.WaitForExit();
    const std::string log = daemon.Stderr();
    EXPECT_EQ(ExitCode(status), expected_exit) << DescribeStatus(status) << "\n" << log;
    EXPECT_THAT(log, Not(HasSubstr("event=serving")));
    EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/broker.sock"))
        << "the daemon bound its socket before refusing the configuration";
    return log;
  }

  TempDir dir_;
  std::string address_;
};

TEST_F(DaemonTest, ServesDeployConfigAndStopsOnSigterm) {
  Daemon daemon(dir_.path(), ServeFlags({absl::StrCat("--config=", DeployConfigPath())}));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();

  std::shared_ptr<grpc::Channel> channel = Connect();
  absl::StatusOr<health_check::ServingStatus> health =
      health_check::WaitForServing(channel, "", kHealthAttempts);
  ASSERT_TRUE(health.ok() && *health == health_check::ServingStatus::kServing)
      << (health.ok() ? "not serving" : health.status().ToString()) << "\n"
      << daemon.Stderr();
  // The broker's own service is registered with the health service too.
  absl::StatusOr<health_check::ServingStatus> service_health =
      health_check::CheckHealth(channel, "iommu_broker.v1.IommuBroker");
  ASSERT_TRUE(service_health.ok()) << service_health.status();
  EXPECT_EQ(*service_health, health_check::ServingStatus::kServing);

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

  daemon.Signal(SIGTERM);
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_EQ(ExitCode(exit_status), 0) << DescribeStatus(exit_status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("event=starting"));
  EXPECT_THAT(log, HasSubstr("event=serving"));
  EXPECT_THAT(log, HasSubstr("event=draining"));
  EXPECT_THAT(log, HasSubstr("event=stopped"));
}

TEST_F(DaemonTest, SigintAlsoStopsGracefully) {
  Daemon daemon(dir_.path(), ServeFlags());
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  absl::StatusOr<health_check::ServingStatus> health =
      health_check::WaitForServing(Connect(), "", kHealthAttempts);
  ASSERT_TRUE(health.ok() && *health == health_check::ServingStatus::kServing)
      << daemon.Stderr();

  daemon.Signal(SIGINT);
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_EQ(ExitCode(exit_status), 0) << DescribeStatus(exit_status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("event=stopped"));
}

TEST_F(DaemonTest, SecondSigtermDuringGracePeriodExitsAtOnce) {
  // A long grace period, and a Batch stream left open: the first SIGTERM's
  // drain waits for it (an idle Batch stream ends only at its next message).
  Daemon daemon(dir_.path(), ServeFlags({absl::StrCat("--config=", DeployConfigPath()),
                                         "--shutdown_grace_period=10m"}));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  std::shared_ptr<grpc::Channel> channel = Connect();
  absl::StatusOr<health_check::ServingStatus> health =
      health_check::WaitForServing(channel, "", kHealthAttempts);
  ASSERT_TRUE(health.ok() && *health == health_check::ServingStatus::kServing)
      << daemon.Stderr();

  std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(channel);
  grpc::ClientContext context;
  auto stream = stub->Batch(&context);
  v1::BatchRequest request;
  request.add_operations()->mutable_flush()->set_domain_id("fast");
  ASSERT_TRUE(stream->Write(request));
  v1::BatchResponse response;
  ASSERT_TRUE(stream->Read(&response)) << "the Batch stream did not answer";
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_EQ(response.results(0).status().code(), 0) << response.results(0).status().message();

  daemon.Signal(SIGTERM);
  ASSERT_TRUE(daemon.WaitForLog("event=draining")) << daemon.Stderr();
  // Still draining: the open stream holds it for up to 10 minutes.
  EXPECT_FALSE(daemon.WaitForExit(absl::ZeroDuration()).has_value()) << daemon.Stderr();

  daemon.Signal(SIGTERM);
  const std::optional<int> exit_status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  ASSERT_TRUE(exit_status.has_value()) << "the second SIGTERM did not stop the daemon\n" << log;
  EXPECT_NE(ExitCode(exit_status), 0) << DescribeStatus(exit_status);
  EXPECT_EQ(ExitCode(exit_status), 128 + SIGTERM) << DescribeStatus(exit_status);
  EXPECT_THAT(log, Not(HasSubstr("event=stopped")));

  context.TryCancel();
  stream->Finish();  // CANCELLED or UNAVAILABLE: the daemon is gone
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

TEST_F(DaemonTest, MissingConfigFileExitsWithStatus2) {
  const std::string config = dir_.path() + "/absent.textproto";
  const std::string log = RunRefused(ServeFlags({absl::StrCat("--config=", config)}), 2);
  EXPECT_THAT(log, HasSubstr(config));
}

TEST_F(DaemonTest, UnknownFlagExitsNonZero) {
  Daemon daemon(dir_.path(), ServeFlags({"--no_such_flag=1"}));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  const std::optional<int> status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  ASSERT_TRUE(status.has_value()) << log;
  EXPECT_TRUE(WIFEXITED(*status)) << DescribeStatus(status);
  EXPECT_NE(ExitCode(status), 0) << log;
  EXPECT_THAT(log, HasSubstr("no_such_flag"));
  EXPECT_THAT(log, Not(HasSubstr("event=serving")));
}

TEST_F(DaemonTest, UnparsableFlagValueExitsNonZero) {
  Daemon daemon(dir_.path(), ServeFlags({"--max_batch_operations=many"}));
  ASSERT_TRUE(daemon.started()) << "posix_spawn: " << daemon.spawn_error();
  const std::optional<int> status = daemon.WaitForExit();
  const std::string log = daemon.Stderr();
  EXPECT_NE(ExitCode(status), 0) << DescribeStatus(status) << "\n" << log;
  EXPECT_NE(ExitCode(status), -1) << DescribeStatus(status) << "\n" << log;
  EXPECT_THAT(log, HasSubstr("max_batch_operations"));
}

}  // namespace
}  // namespace iommu_broker
