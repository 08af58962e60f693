// iommuctl end to end: the real iommu-brokerd (IOMMU_BROKERD_PATH) on a Unix
// socket in a fresh temporary directory, driven through the real iommuctl
// binary (IOMMUCTL_PATH) as a user would: domains, devices, map, translate,
// unmap, a fault, events, stats, health, bench (run out and interrupted), the
// exit code of each kind of failure, and --token-file against a broker that
// authenticates every call.
//
// Every wait is bounded only to keep a broken binary from hanging the test;
// no assertion depends on how long anything takes.
#include <signal.h>

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/cpp/connection.h"
#include "client/cpp/health.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "tests/child_process.h"
#include "tests/temp_dir.h"

namespace iommu_broker::iommuctl {
namespace {

using ::iommu_broker::testing::ChildProcess;
using ::iommu_broker::testing::CurrentEnvironment;
using ::iommu_broker::testing::DescribeWaitStatus;
using ::iommu_broker::testing::ExitCodeOf;
using ::iommu_broker::testing::kChildProcessTimeout;
using ::iommu_broker::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

// The environment of this test without IOMMU_BROKER_TARGET and
// IOMMU_BROKER_TOKEN_FILE (a developer's settings must not redirect the
// tests), plus `extra` (NAME=VALUE).
std::vector<std::string> ChildEnvironment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (std::string& entry : CurrentEnvironment()) {
    if (!absl::StartsWith(entry, "IOMMU_BROKER_TARGET=") &&
        !absl::StartsWith(entry, "IOMMU_BROKER_TOKEN_FILE=")) {
      env.push_back(std::move(entry));
    }
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

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
    std::vector<std::string> argv = {IOMMU_BROKERD_PATH, absl::StrCat("--listen=", target_),
                                     "--metrics_listen=none"};
    const std::string config = BrokerConfig();
    if (!config.empty()) {
      const std::string config_path = WriteFile("broker.textproto", config);
      argv.push_back(absl::StrCat("--config=", config_path));
    }
    broker_ = std::make_unique<ChildProcess>(dir_.path(), "brokerd", std::move(argv),
                                             ChildEnvironment({}));
    ASSERT_TRUE(broker_->started()) << "posix_spawn: " << broker_->spawn_error();
    WaitUntilServing();
  }

  void TearDown() override {
    if (broker_ == nullptr || !broker_->started()) return;
    EXPECT_TRUE(broker_->Signal(SIGTERM));
    const std::optional<int> status = broker_->WaitForExit();
    EXPECT_EQ(ExitCodeOf(status), 0) << DescribeWaitStatus(status) << "\n" << broker_->Stderr();
  }

  // The broker's config file (text format), if any.
  virtual std::string BrokerConfig() { return ""; }

  // Writes `contents` to NAME in the test's directory; its path.
  std::string WriteFile(const std::string& name, const std::string& contents) {
    const std::string path = absl::StrCat(dir_.path(), "/", name);
    std::ofstream(path) << contents;
    return path;
  }

  void WaitUntilServing() {
    client::ConnectionOptions options;
    options.target = target_;
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = client::MakeChannel(options);
    ASSERT_TRUE(channel.ok()) << channel.status();
    absl::StatusOr<client::ServingStatus> health =
        client::WaitForServing(*channel, "", kChildProcessTimeout);
    ASSERT_TRUE(health.ok() && *health == client::ServingStatus::kServing)
        << "the broker is not serving: "
        << (health.ok() ? client::ServingStatusName(*health) : health.status().ToString()) << "\n"
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
                                                  std::move(argv), ChildEnvironment(env));
    EXPECT_TRUE(process->started()) << "posix_spawn: " << process->spawn_error();
    return process;
  }

  CtlResult Ctl(std::vector<std::string> args, bool with_target = true,
                const std::vector<std::string>& env = {}) {
    std::unique_ptr<ChildProcess> process = StartCtl(std::move(args), with_target, env);
    const int exit_code = ExitCodeOf(process->WaitForExit());
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

  TempDir dir_{"iommuctl_test"};
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

  ASSERT_TRUE(events->Signal(SIGINT));
  EXPECT_EQ(ExitCodeOf(events->WaitForExit()), 0) << events->Stderr();
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
  ASSERT_TRUE(events->Signal(SIGTERM));
  EXPECT_EQ(ExitCodeOf(events->WaitForExit()), 0) << events->Stderr();

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
  const CtlResult token_file = Ctl({"--token-file", "/nonexistent/token", "domain", "list"});
  EXPECT_EQ(token_file.exit_code, 3) << ::testing::PrintToString(token_file);
  EXPECT_THAT(token_file.err, HasSubstr("token file /nonexistent/token cannot be read"));
  const CtlResult token_env =
      Ctl({"domain", "create", "vm1", "--policy", "fast"},
          /*with_target=*/true, {"IOMMU_BROKER_TOKEN_FILE=/nonexistent/token"});
  EXPECT_EQ(token_env.exit_code, 3) << ::testing::PrintToString(token_env);
  EXPECT_THAT(token_env.err, HasSubstr("/nonexistent/token"));
  const std::string invalid_token = WriteFile("token", "not-a secret\n");
  const CtlResult invalid = Ctl({"--token-file", invalid_token, "health"});
  EXPECT_EQ(invalid.exit_code, 3) << ::testing::PrintToString(invalid);
  EXPECT_THAT(invalid.err, HasSubstr(invalid_token));
  EXPECT_THAT(invalid.err, Not(HasSubstr("secret")));
  EXPECT_EQ(Ctl({"--token", "secret", "domain", "list"}).exit_code, 3);  // never on argv
  // Nothing reached the broker.
  EXPECT_EQ(FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"})).domains_size(),
            0);
}

// A broker that authenticates every call: the token of --token-file (or
// IOMMU_BROKER_TOKEN_FILE) must reach it on every call, unary and streaming.
class AuthenticatedIommuctlTest : public IommuctlTest {
 protected:
  static constexpr char kToken[] = "iommuctl-e2e-token";

  std::string BrokerConfig() override {
    token_file_ = WriteFile("token", absl::StrCat(kToken, "\n"));
    // printf %s iommuctl-e2e-token | sha256sum
    return R"(auth { identities { name: "ops" role: ROLE_OPERATOR
        token_sha256: "620ae4b2933e1cc03a04bc58e320f32a11a7d94411d01939e7a0a246952aeaa2" } })";
  }

  std::string token_file_;
};

TEST_F(AuthenticatedIommuctlTest, EveryCommandSendsTheTokenOfTheTokenFile) {
  const CtlResult anonymous = Ctl({"domain", "list"});
  EXPECT_EQ(anonymous.exit_code, 1) << ::testing::PrintToString(anonymous);
  EXPECT_THAT(anonymous.err, HasSubstr("UNAUTHENTICATED"));

  const std::string token = absl::StrCat("--token-file=", token_file_);
  Ok({token, "domain", "create", "vm1", "--policy", "paranoid"});
  Ok({token, "device", "register", "dev0"});
  Ok({token, "device", "attach", "dev0", "vm1"});
  // A server stream (WatchEvents), the token from the environment.
  std::unique_ptr<ChildProcess> events =
      StartCtl({"events", "--domain", "vm1"}, /*with_target=*/true,
               {absl::StrCat("IOMMU_BROKER_TOKEN_FILE=", token_file_)});
  ASSERT_TRUE(events->WaitForStderr("watching")) << events->Stderr();
  Ok({token, "translate", "dev0", "0x5000"});
  ASSERT_TRUE(events->WaitForStdout("\n")) << events->Stderr();
  EXPECT_THAT(events->Stdout(), HasSubstr("fault sequence=1 "));
  ASSERT_TRUE(events->Signal(SIGINT));
  EXPECT_EQ(ExitCodeOf(events->WaitForExit()), 0) << events->Stderr();
  // Batch streams.
  const CtlResult batch = Ctl(
      {token, "bench", "--mode", "batch", "--operations", "30", "--threads", "1", "-o", "json"});
  ASSERT_EQ(batch.exit_code, 0) << ::testing::PrintToString(batch);
  google::protobuf::Struct report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(batch.out, &report).ok()) << batch.out;
  EXPECT_EQ(report.fields().at("errors").number_value(), 0) << batch.out;
  EXPECT_EQ(report.fields().at("cleanup").string_value(), "OK");
  EXPECT_EQ(Ok({token, "health"}), "SERVING\n");
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

TEST_F(IommuctlTest, AnInterruptedBenchReportsWhatRanRemovesItsDomainAndExits130) {
  // -o json: the progress lines go to stderr, stdout gets the report alone.
  std::unique_ptr<ChildProcess> bench =
      StartCtl({"bench", "--duration", "60s", "--threads", "2", "-o", "json"});
  // A progress line comes once the run has set up and its workers run.
  ASSERT_TRUE(bench->WaitForStderr(" ops/s ")) << bench->Stderr();
  const auto during = FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"}));
  ASSERT_EQ(during.domains_size(), 1);
  EXPECT_EQ(during.domains(0).spec().id(), "iommuctl-bench");

  ASSERT_TRUE(bench->Signal(SIGINT));
  const std::optional<int> status = bench->WaitForExit();
  EXPECT_EQ(ExitCodeOf(status), 130) << DescribeWaitStatus(status) << "\n" << bench->Stderr();
  google::protobuf::Struct report;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(bench->Stdout(), &report).ok())
      << bench->Stdout();
  EXPECT_TRUE(report.fields().at("interrupted").bool_value());
  EXPECT_GT(report.fields().at("operations").number_value(), 0);
  EXPECT_EQ(report.fields().at("errors").number_value(), 0) << bench->Stdout();
  EXPECT_EQ(report.fields().at("cleanup").string_value(), "OK");
  EXPECT_EQ(FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"})).domains_size(),
            0);

  // SIGTERM too; the table says the run was interrupted.
  std::unique_ptr<ChildProcess> table =
      StartCtl({"bench", "--duration", "60s", "--threads", "1", "--mode", "batch"});
  ASSERT_TRUE(table->WaitForStdout(" ops/s ")) << table->Stderr();
  ASSERT_TRUE(table->Signal(SIGTERM));
  EXPECT_EQ(ExitCodeOf(table->WaitForExit()), 130) << table->Stderr();
  EXPECT_THAT(table->Stdout(), HasSubstr("\ninterrupted: "));
  EXPECT_EQ(Value(table->Stdout(), "errors"), "0");
  EXPECT_EQ(FromJson<v1::ListDomainsResponse>(Ok({"domain", "list", "-o", "json"})).domains_size(),
            0);

  EXPECT_THAT(Ok({"bench", "--help"}), HasSubstr("130"));
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
