// iommuctl end to end: the real iommu-brokerd (IOMMU_BROKERD_PATH) on a Unix
// socket in a fresh temporary directory, driven through the real iommuctl
// binary (IOMMUCTL_PATH) as a user would: domains, devices, map, translate,
// unmap, a fault, events, stats, health, and the exit code of each kind of
// failure.
//
// Every wait is bounded only to keep a broken binary from hanging the test;
// no assertion depends on how long anything takes.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/ascii.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cpp/broker_client.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

extern char** environ;

namespace iommu_broker::iommuctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Generous: under AddressSanitizer on a busy machine start-up can take
// seconds. Only a hung process ever reaches these.
constexpr absl::Duration kProcessTimeout = absl::Seconds(60);
constexpr int kHealthAttempts = 300;  // x 200 ms

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream content;
  content << file.rdbuf();
  return content.str();
}

// A private directory under /tmp: short enough for a Unix socket path.
class TempDir final {
 public:
  TempDir() {
    std::string pattern = "/tmp/iommuctl_test.XXXXXX";
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The environment of this test without IOMMU_BROKER_TARGET (a developer's
// setting must not redirect the tests), plus `extra` (NAME=VALUE).
std::vector<std::string> ChildEnvironment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (!absl::StartsWith(*entry, "IOMMU_BROKER_TARGET=")) env.emplace_back(*entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

// A child process whose stdout and stderr go to files DIR/NAME.out and
// DIR/NAME.err; SIGKILLed and reaped on destruction if still running.
class ChildProcess final {
 public:
  ChildProcess(const std::string& dir, const std::string& name, std::vector<std::string> argv,
               const std::vector<std::string>& extra_env = {})
      : stdout_path_(absl::StrCat(dir, "/", name, ".out")),
        stderr_path_(absl::StrCat(dir, "/", name, ".err")) {
    std::vector<std::string> env = ChildEnvironment(extra_env);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, stdout_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, stderr_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    // The child starts with the default signal mask, whatever gtest's and
    // gRPC's threads have blocked.
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK);
    spawn_error_ = posix_spawn(&pid_, argv[0].c_str(), &actions, &attributes,
                               Pointers(argv).data(), Pointers(env).data());
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    if (spawn_error_ != 0) pid_ = -1;
  }

  ~ChildProcess() {
    if (pid_ > 0 && !status_.has_value()) {
      kill(pid_, SIGKILL);
      int ignored = 0;
      waitpid(pid_, &ignored, 0);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  int spawn_error() const { return spawn_error_; }
  std::string Stdout() const { return ReadFile(stdout_path_); }
  std::string Stderr() const { return ReadFile(stderr_path_); }

  void Signal(int signal_number) const {
    if (pid_ > 0 && !status_.has_value()) kill(pid_, signal_number);
  }

  // The exit code, or -1 if it was killed by a signal or is still running
  // after `timeout`.
  int WaitForExit(absl::Duration timeout = kProcessTimeout) {
    const absl::Time give_up = absl::Now() + timeout;
    while (!status_.has_value() && pid_ > 0) {
      int status = 0;
      const pid_t reaped = waitpid(pid_, &status, WNOHANG);
      if (reaped == pid_) status_ = status;
      if (reaped < 0 || absl::Now() > give_up) break;
      if (reaped == 0) absl::SleepFor(absl::Milliseconds(10));
    }
    return status_.has_value() && WIFEXITED(*status_) ? WEXITSTATUS(*status_) : -1;
  }

  // True once stdout (or stderr) contains `text`; false at the timeout or
  // if the process exits without writing it.
  bool WaitForStdout(absl::string_view text) { return WaitFor(stdout_path_, text); }
  bool WaitForStderr(absl::string_view text) { return WaitFor(stderr_path_, text); }

 private:
  bool WaitFor(const std::string& path, absl::string_view text) {
    const absl::Time give_up = absl::Now() + kProcessTimeout;
    while (absl::Now() <= give_up) {
      if (absl::StrContains(ReadFile(path), text)) return true;
      if (WaitForExit(absl::ZeroDuration()) != -1) return absl::StrContains(ReadFile(path), text);
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }

  std::string stdout_path_;
  std::string stderr_path_;
  pid_t pid_ = -1;
  int spawn_error_ = 0;
  std::optional<int> status_;
};

struct CtlResult {
  int exit_code;
  std::string out;
  std::string err;
};

// gtest prints a failed expectation's result through this.
void PrintTo(const CtlResult& result, std::ostream* out) {
  *out << "exit " << result.exit_code << "\nstdout:\n" << result.out << "stderr:\n" << result.err;
}

// The value of `key` in a two-column listing ("key  value" lines), or
// "<no KEY>".
std::string Value(const std::string& listing, absl::string_view key) {
  std::istringstream lines(listing);
  for (std::string line; std::getline(lines, line);) {
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, key) && absl::StartsWith(rest, "  ")) {
      return std::string(absl::StripLeadingAsciiWhitespace(rest));
    }
  }
  return absl::StrCat("<no ", key, ">");
}

template <typename Message>
Message FromJson(const std::string& json) {
  Message message;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << status.ToString() << "\n" << json;
  return message;
}

class IommuctlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
    target_ = absl::StrCat("unix:", dir_.path(), "/broker.sock");
    broker_ = std::make_unique<ChildProcess>(
        dir_.path(), "brokerd",
        std::vector<std::string>{IOMMU_BROKERD_PATH, absl::StrCat("--listen=", target_),
                                 "--metrics_listen=none"});
    ASSERT_TRUE(broker_->started()) << "posix_spawn: " << broker_->spawn_error();
    WaitUntilServing();
  }

  void TearDown() override {
    if (broker_ == nullptr || !broker_->started()) return;
    broker_->Signal(SIGTERM);
    EXPECT_EQ(broker_->WaitForExit(), 0) << broker_->Stderr();
  }

  void WaitUntilServing() {
    client::ConnectionOptions options;
    options.target = target_;
    options.deadline = absl::Seconds(5);
    absl::StatusOr<std::unique_ptr<client::BrokerClient>> client =
        client::BrokerClient::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<client::ServingStatus> health = absl::UnavailableError("not asked yet");
    for (int attempt = 0; attempt < kHealthAttempts; ++attempt) {
      health = (*client)->CheckHealth();
      if (health.ok() && *health == client::ServingStatus::kServing) return;
      absl::SleepFor(absl::Milliseconds(200));
    }
    FAIL() << "the broker is not serving: "
           << (health.ok() ? "not SERVING" : health.status().ToString()) << "\n"
           << broker_->Stderr();
  }

  // A new iommuctl process with `args` (and --target unless `with_target`
  // is false), not waited for.
  std::unique_ptr<ChildProcess> StartCtl(std::vector<std::string> args, bool with_target = true,
                                         const std::vector<std::string>& env = {}) {
    std::vector<std::string> argv = {IOMMUCTL_PATH};
    if (with_target) argv.push_back(absl::StrCat("--target=", target_));
    argv.insert(argv.end(), args.begin(), args.end());
    auto process = std::make_unique<ChildProcess>(dir_.path(), absl::StrCat("ctl", runs_++),
                                                  std::move(argv), env);
    EXPECT_TRUE(process->started()) << "posix_spawn: " << process->spawn_error();
    return process;
  }

  CtlResult Ctl(std::vector<std::string> args, bool with_target = true,
                const std::vector<std::string>& env = {}) {
    std::unique_ptr<ChildProcess> process = StartCtl(std::move(args), with_target, env);
    const int exit_code = process->WaitForExit();
    return {exit_code, process->Stdout(), process->Stderr()};
  }

  // Runs a command that must succeed; its stdout.
  std::string Ok(std::vector<std::string> args) {
    const CtlResult result = Ctl(std::move(args));
    EXPECT_EQ(result.exit_code, 0) << ::testing::PrintToString(result);
    return result.out;
  }

  // vm1 (paranoid) with dev0 attached.
  void CreateDomainWithDevice() {
    Ok({"domain", "create", "vm1", "--policy", "paranoid"});
    Ok({"device", "register", "dev0"});
    Ok({"device", "attach", "dev0", "vm1"});
  }

  TempDir dir_;
  std::string target_;
  std::unique_ptr<ChildProcess> broker_;
  int runs_ = 0;
};

TEST_F(IommuctlTest, DomainAndDeviceLifecycle) {
  const std::string created = Ok({"domain", "create", "vm1", "--policy", "fast",
                                  "--aperture-first", "64K", "--page-size", "4k,2m"});
  EXPECT_EQ(Value(created, "spec.aperture_first"), "0x10000");
  EXPECT_EQ(Value(created, "spec.page_sizes"), "4k,2m");
  Ok({"domain", "create", "vm0", "--policy", "pt", "--no-reserved"});

  const std::string registered = Ok({"device", "register", "0000:3b:00.0", "--dma-mask-bits",
                                     "32", "--allow-bypass"});
  EXPECT_EQ(Value(registered, "spec.dma_mask_bits"), "32");
  Ok({"device", "attach", "0000:3b:00.0", "vm1"});

  const std::string domains = Ok({"domain", "list"});
  EXPECT_THAT(domains, HasSubstr("ID   POLICY  DEVICES"));
  EXPECT_THAT(domains, HasSubstr("vm1  fast    0000:3b:00.0"));
  EXPECT_THAT(domains, HasSubstr("vm0  pt      -"));

  const auto listed = FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"}));
  ASSERT_EQ(listed.domains_size(), 2);
  EXPECT_EQ(listed.domains(1).spec().id(), "vm1");
  EXPECT_EQ(listed.domains(1).spec().aperture_first(), 0x10000u);
  EXPECT_EQ(listed.domains(0).spec().reserved_regions().regions_size(), 0);

  const auto domain = FromJson<v1::Domain>(Ok({"-o", "json", "domain", "get", "vm1"}));
  EXPECT_EQ(domain.device_ids_size(), 1);
  EXPECT_EQ(Value(Ok({"domain", "policy", "vm1", "paranoid"}), "spec.policy"), "paranoid");

  EXPECT_THAT(Ok({"device", "list", "--domain", "vm1"}), HasSubstr("0000:3b:00.0  vm1"));
  const auto device = FromJson<v1::Device>(Ok({"device", "get", "0000:3b:00.0", "-o", "json"}));
  EXPECT_EQ(device.spec().dma_mask_bits(), 32u);
  EXPECT_TRUE(device.spec().allow_bypass());
  const auto updated = FromJson<v1::Device>(
      Ok({"device", "update", "0000:3b:00.0", "--allow-bypass", "false", "-o", "json"}));
  EXPECT_FALSE(updated.spec().allow_bypass());

  EXPECT_EQ(Value(Ok({"device", "attach", "0000:3b:00.0", "vm0"}), "detached_from_domain_id"),
            "vm1");
  EXPECT_EQ(Value(Ok({"device", "detach", "0000:3b:00.0"}), "domain_id"), "vm0");
  Ok({"device", "unregister", "0000:3b:00.0"});
  Ok({"domain", "destroy", "vm1"});
  const auto remaining = FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"}));
  ASSERT_EQ(remaining.domains_size(), 1);
  EXPECT_EQ(remaining.domains(0).spec().id(), "vm0");
}

TEST_F(IommuctlTest, MapTranslateUnmapAndAFault) {
  CreateDomainWithDevice();
  const auto mapped = FromJson<v1::MapResponse>(Ok({"map", "dev0", "1G", "2M", "-o", "json"}));
  EXPECT_EQ(mapped.kind(), v1::MAPPING_KIND_TRANSLATED);
  EXPECT_EQ(mapped.leaves_2m(), 1u);
  const std::string iova = absl::StrCat("0x", absl::Hex(mapped.iova()));

  const std::string translated = Ok({"translate", "dev0", iova, "4K", "--access", "write"});
  EXPECT_EQ(Value(translated, "segments[0].phys"), "0x40000000");
  EXPECT_EQ(Value(translated, "segments[0].size"), "4K");

  EXPECT_EQ(Value(Ok({"map", "dev0", "0x80000000", "4K", "--iova", "0x10000", "--perm", "r"}),
                  "iova"),
            "0x10000");
  EXPECT_EQ(Value(Ok({"unmap", "dev0", iova, "2M"}), "bytes_unmapped"), "2M");
  Ok({"flush", "vm1"});

  const auto fault = FromJson<v1::TranslateResponse>(Ok({"translate", "dev0", iova, "-o", "json"}));
  EXPECT_EQ(fault.fault().reason(), v1::FAULT_REASON_NOT_MAPPED);
  EXPECT_EQ(fault.fault().iova(), mapped.iova());
  EXPECT_EQ(Value(Ok({"translate", "dev0", iova}), "fault.reason"), "not_mapped");

  const auto stats = FromJson<v1::GetStatsResponse>(Ok({"stats", "--domain", "vm1", "-o", "json"}));
  ASSERT_TRUE(stats.domains().contains("vm1"));
  EXPECT_EQ(stats.domains().at("vm1").maps(), 2u);
  EXPECT_EQ(stats.domains().at("vm1").faults(), 2u);
  const std::string table = Ok({"stats"});
  EXPECT_THAT(table, HasSubstr("DOMAIN  MAPPINGS  MAPS  UNMAPS"));
  EXPECT_THAT(table, HasSubstr("vm1     1         2     1"));
  EXPECT_THAT(table, HasSubstr("UNIT"));
}

TEST_F(IommuctlTest, EventsPrintsAFaultLineUntilInterrupted) {
  CreateDomainWithDevice();
  std::unique_ptr<ChildProcess> events = StartCtl({"events", "--domain", "vm1"});
  // Said once the broker has the subscription: the fault below is not missed.
  ASSERT_TRUE(events->WaitForStderr("watching")) << events->Stderr();
  Ok({"translate", "dev0", "0x5000"});
  ASSERT_TRUE(events->WaitForStdout("\n")) << events->Stderr();
  EXPECT_THAT(events->Stdout(), HasSubstr("fault sequence=1 "));
  EXPECT_THAT(events->Stdout(), HasSubstr("domain_id=vm1 device_id=dev0 iova=0x5000"));
  EXPECT_THAT(events->Stdout(), HasSubstr("reason=not_mapped"));

  events->Signal(SIGINT);
  EXPECT_EQ(events->WaitForExit(), 0) << events->Stderr();
  EXPECT_THAT(events->Stderr(), Not(HasSubstr("CANCELLED")));
}

TEST_F(IommuctlTest, EventsAsJsonIsOneObjectPerLine) {
  CreateDomainWithDevice();
  std::unique_ptr<ChildProcess> events =
      StartCtl({"events", "--device", "dev0", "--faults", "-o", "json"});
  ASSERT_TRUE(events->WaitForStderr("watching faults of every domain, device dev0"))
      << events->Stderr();
  Ok({"translate", "dev0", "0x5000"});
  Ok({"translate", "dev0", "0x6000", "--access", "write"});
  // The JSON mapping writes uint64 as a decimal string.
  ASSERT_TRUE(events->WaitForStdout("\"iova\":\"24576\"")) << events->Stdout();
  events->Signal(SIGTERM);
  EXPECT_EQ(events->WaitForExit(), 0) << events->Stderr();

  std::istringstream lines(events->Stdout());
  std::vector<v1::Event> received;
  for (std::string line; std::getline(lines, line);) {
    received.push_back(FromJson<v1::Event>(line));
  }
  ASSERT_EQ(received.size(), 2u) << events->Stdout();
  EXPECT_EQ(received[0].fault().iova(), 0x5000u);
  EXPECT_EQ(received[1].fault().access(), v1::ACCESS_WRITE);
}

TEST_F(IommuctlTest, HealthExitsZeroWhenServing) {
  const CtlResult health = Ctl({"health"});
  EXPECT_EQ(health.exit_code, 0) << ::testing::PrintToString(health);
  EXPECT_EQ(health.out, "SERVING\n");
  EXPECT_EQ(Ok({"health", "--service", "iommu_broker.v1.IommuBroker", "-o", "json"}),
            "{\"status\":\"SERVING\"}\n");
  EXPECT_EQ(Ctl({"health", "--service", "no.such.Service"}).exit_code, 1);
}

TEST_F(IommuctlTest, TargetComesFromTheEnvironmentWithoutTheFlag) {
  const CtlResult result = Ctl({"domain", "list"}, /*with_target=*/false,
                               {absl::StrCat("IOMMU_BROKER_TARGET=", target_)});
  EXPECT_EQ(result.exit_code, 0) << ::testing::PrintToString(result);
  EXPECT_THAT(result.out, HasSubstr("ID"));
}

TEST_F(IommuctlTest, TheBrokersRefusalExitsOneWithTheCodeName) {
  const CtlResult missing = Ctl({"domain", "get", "vm9"});
  EXPECT_EQ(missing.exit_code, 1) << ::testing::PrintToString(missing);
  EXPECT_THAT(missing.err, HasSubstr("NOT_FOUND: "));
  EXPECT_THAT(missing.err, HasSubstr("vm9"));
  EXPECT_EQ(missing.out, "");

  CreateDomainWithDevice();
  const CtlResult duplicate = Ctl({"domain", "create", "vm1", "--policy", "fast"});
  EXPECT_EQ(duplicate.exit_code, 1);
  EXPECT_THAT(duplicate.err, HasSubstr("ALREADY_EXISTS: "));
  const CtlResult unaligned = Ctl({"map", "dev0", "0x1001", "4K"});
  EXPECT_EQ(unaligned.exit_code, 1);
  EXPECT_THAT(unaligned.err, HasSubstr("INVALID_ARGUMENT: "));
}

TEST_F(IommuctlTest, AnUnreachableBrokerExitsTwo) {
  const std::string dead = absl::StrCat("--target=unix:", dir_.path(), "/nobody.sock");
  const CtlResult list = Ctl({dead, "domain", "list"}, /*with_target=*/false);
  EXPECT_EQ(list.exit_code, 2) << ::testing::PrintToString(list);
  EXPECT_THAT(list.err, HasSubstr("cannot reach the broker at unix:"));
  EXPECT_THAT(list.err, HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(Ctl({dead, "map", "dev0", "0", "4K"}, false).exit_code, 2);
  EXPECT_EQ(Ctl({dead, "health"}, false).exit_code, 2);
  EXPECT_EQ(Ctl({dead, "events"}, false).exit_code, 2);
}

TEST_F(IommuctlTest, InvalidArgumentsExitThreeWithoutCallingTheBroker) {
  const CtlResult size = Ctl({"map", "dev0", "0", "3X"});
  EXPECT_EQ(size.exit_code, 3) << ::testing::PrintToString(size);
  EXPECT_THAT(size.err, HasSubstr("size '3X' is not a size: use bytes or a K/M/G/T suffix"));

  const CtlResult policy = Ctl({"domain", "create", "vm1", "--policy", "fastest"});
  EXPECT_EQ(policy.exit_code, 3);
  EXPECT_THAT(policy.err, HasSubstr("--policy 'fastest' is not one of paranoid, fast, pt"));

  EXPECT_EQ(Ctl({"domain", "create", "vm1"}).exit_code, 3);  // --policy is required
  EXPECT_EQ(Ctl({"no-such-command"}).exit_code, 3);
  EXPECT_EQ(Ctl({"domain"}).exit_code, 3);
  EXPECT_EQ(Ctl({"--timeout", "soon", "domain", "list"}).exit_code, 3);
  EXPECT_EQ(Ctl({"-o", "yaml", "domain", "list"}).exit_code, 3);
  EXPECT_EQ(Ctl({"--tls-ca", "/nonexistent.pem", "domain", "list"}).exit_code, 3);
  // Nothing reached the broker.
  EXPECT_EQ(FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"})).domains_size(),
            0);
}

TEST_F(IommuctlTest, BenchReportsAndCleansUp) {
  const std::string table = Ok({"bench", "--operations", "60", "--threads", "2"});
  EXPECT_EQ(Value(table, "operations"), "60");
  EXPECT_EQ(Value(table, "errors"), "0");
  EXPECT_THAT(table, HasSubstr("LATENCY_US  COUNT"));

  const CtlResult batch = Ctl({"bench", "--mode", "batch", "--operations", "60", "--policy",
                               "paranoid", "--buffers-per-worker", "4", "-o", "json"});
  ASSERT_EQ(batch.exit_code, 0) << ::testing::PrintToString(batch);
  google::protobuf::Struct report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(batch.out, &report).ok()) << batch.out;
  EXPECT_EQ(report.fields().at("operations").number_value(), 60);
  EXPECT_EQ(report.fields().at("cleanup").string_value(), "OK");
  // The run removed its domain and devices.
  EXPECT_EQ(FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"})).domains_size(),
            0);

  const CtlResult invalid = Ctl({"bench", "--threads", "0"});
  EXPECT_EQ(invalid.exit_code, 3) << ::testing::PrintToString(invalid);
  EXPECT_THAT(invalid.err, HasSubstr("threads"));
}

TEST_F(IommuctlTest, HelpIsEverywhereAndExitsZero) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--help"}, {"domain", "--help"}, {"domain", "create", "--help"},
        {"map", "--help"}, {"events", "--help"}}) {
    const CtlResult help = Ctl(args);
    EXPECT_EQ(help.exit_code, 0) << ::testing::PrintToString(help);
    EXPECT_THAT(help.out, HasSubstr("Usage")) << ::testing::PrintToString(help);
  }
}

}  // namespace
}  // namespace iommu_broker::iommuctl
