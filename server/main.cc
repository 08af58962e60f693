// iommu-brokerd: the broker daemon. Flags override the optional config
// file (--config); see `iommu-brokerd --help`. A bad flag or config value
// exits with status 2 and a message naming it, before serving. SIGHUP
// re-reads the config file and applies its auth identities. SIGTERM or
// SIGINT drains and exits 0; a second signal exits at once.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include <pthread.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/broker_config.h"
#include "server/broker_server.h"
#include "server/convert.h"
#include "server/log.h"

ABSL_FLAG(std::string, config, "",
          "Config file: a BrokerConfig (protos/iommu_broker/v1/config.proto) in text format, or "
          "JSON if the name ends in .json. Flags below override it.");
// Unset optional flags leave the config file's value (or its default).
ABSL_FLAG(std::optional<std::string>, listen, std::nullopt,
          "gRPC listen address: host:port, or unix:/path for a Unix socket "
          "(default 127.0.0.1:50051).");
ABSL_FLAG(std::optional<std::string>, metrics_listen, std::nullopt,
          "Prometheus /metrics listen address (host:port), or \"none\" (default "
          "127.0.0.1:9464).");
ABSL_FLAG(std::optional<std::string>, health_listen, std::nullopt,
          "An extra listener serving only the grpc.health.v1 health service (host:port or "
          "unix:/path), for probes that cannot reach --listen; \"none\" disables it (default "
          "none).");
ABSL_FLAG(std::optional<bool>, metrics_domain_label, std::nullopt,
          "Add a domain label to the domain-scoped metrics (default false: with many domains "
          "it multiplies the series).");
ABSL_FLAG(std::optional<uint64_t>, physical_memory_bytes, std::nullopt,
          "Size of the emulated machine's memory; physical ranges beyond it are refused "
          "(default 17179869184, 16 GiB).");
ABSL_FLAG(std::optional<absl::Duration>, invalidation_fixed_cost, std::nullopt,
          "Busy-wait per invalidation batch, as hardware makes a driver wait, e.g. 1us "
          "(default 0).");
ABSL_FLAG(std::optional<absl::Duration>, invalidation_descriptor_cost, std::nullopt,
          "Busy-wait per invalidation descriptor, e.g. 100ns (default 0).");
ABSL_FLAG(std::optional<uint32_t>, max_domains, std::nullopt,
          "Most domains the broker holds (default 1024).");
ABSL_FLAG(std::optional<uint32_t>, max_devices, std::nullopt,
          "Most devices the broker holds, at most 4095: requester ids are 12 bits (default 4095).");
ABSL_FLAG(std::optional<uint32_t>, max_batch_operations, std::nullopt,
          "Most operations in one Batch message (default 4096).");
ABSL_FLAG(std::optional<uint32_t>, max_concurrent_streams, std::nullopt,
          "Most Batch and WatchEvents streams at once (default 256).");
ABSL_FLAG(std::optional<uint32_t>, max_message_bytes, std::nullopt,
          "Largest gRPC message accepted or sent (default 4194304).");
ABSL_FLAG(std::optional<absl::Duration>, shutdown_grace_period, std::nullopt,
          "How long SIGTERM waits for in-flight calls before cancelling them (default 5s).");

namespace iommu_broker {
namespace {

absl::Status DurationFlag(absl::string_view name, const std::optional<absl::Duration>& value,
                          google::protobuf::Duration* out) {
  if (!value.has_value()) return absl::OkStatus();
  if (*value < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", absl::FormatDuration(*value), " is negative"));
  }
  DurationToProto(*value, out);
  return absl::OkStatus();
}

// The config file with every flag given on the command line applied.
absl::StatusOr<v1::BrokerConfig> ConfigFromFlags() {
  v1::BrokerConfig config;
  if (const std::string path = absl::GetFlag(FLAGS_config); !path.empty()) {
    absl::StatusOr<v1::BrokerConfig> loaded = LoadConfigFile(path);
    if (!loaded.ok()) return loaded.status();
    config = *std::move(loaded);
  }
  if (auto value = absl::GetFlag(FLAGS_listen)) config.set_listen_address(*value);
  if (auto value = absl::GetFlag(FLAGS_metrics_listen)) config.set_metrics_listen_address(*value);
  if (auto value = absl::GetFlag(FLAGS_health_listen)) {
    config.set_health_listen_address(*value == "none" ? "" : *value);
  }
  if (auto value = absl::GetFlag(FLAGS_metrics_domain_label)) {
    config.set_metrics_domain_label(*value);
  }
  v1::EngineConfig& engine = *config.mutable_engine();
  if (auto value = absl::GetFlag(FLAGS_physical_memory_bytes)) {
    engine.set_physical_memory_bytes(*value);
  }
  if (auto value = absl::GetFlag(FLAGS_max_domains)) engine.set_max_domains(*value);
  if (auto value = absl::GetFlag(FLAGS_max_devices)) engine.set_max_devices(*value);
  v1::ServerLimits& limits = *config.mutable_limits();
  if (auto value = absl::GetFlag(FLAGS_max_batch_operations)) {
    limits.set_max_batch_operations(*value);
  }
  if (auto value = absl::GetFlag(FLAGS_max_concurrent_streams)) {
    limits.set_max_concurrent_streams(*value);
  }
  if (auto value = absl::GetFlag(FLAGS_max_message_bytes)) limits.set_max_message_bytes(*value);
  absl::Status status = DurationFlag("invalidation_fixed_cost",
                                     absl::GetFlag(FLAGS_invalidation_fixed_cost),
                                     engine.mutable_invalidation()->mutable_fixed());
  status.Update(DurationFlag("invalidation_descriptor_cost",
                             absl::GetFlag(FLAGS_invalidation_descriptor_cost),
                             engine.mutable_invalidation()->mutable_per_descriptor()));
  status.Update(DurationFlag("shutdown_grace_period", absl::GetFlag(FLAGS_shutdown_grace_period),
                             config.mutable_shutdown_grace_period()));
  if (!status.ok()) return status;
  return config;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "iommu-brokerd: the iommu-broker daemon.\n"
      "Owns emulated IOMMU domains and serves iommu_broker.v1.IommuBroker over gRPC.\n"
      "Usage: iommu-brokerd [--config=FILE] [--listen=ADDR] [flags]");
  absl::ParseCommandLine(argc, argv);
  Logger log(stderr);

  // Signals are taken by sigwait below, never by a handler on a gRPC thread:
  // block them before any thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<v1::BrokerConfig> config = ConfigFromFlags();
  absl::StatusOr<absl::Duration> grace =
      config.ok() ? ShutdownGracePeriod(*config) : config.status();
  if (!grace.ok()) {
    log.Error("bad_configuration", {{"error", grace.status().message()}});
    return 2;
  }
  log.Info("starting", {{"version", IOMMU_BROKER_VERSION},
                        {"config", absl::GetFlag(FLAGS_config)},
                        {"domains", config->domains_size()},
                        {"devices", config->devices_size()}});
  absl::StatusOr<std::unique_ptr<BrokerServer>> server = BrokerServer::Start(*config, log);
  if (!server.ok()) {
    log.Error("start_failed", {{"error", server.status().message()}});
    // Only an address that cannot be bound is not the configuration's fault.
    return server.status().code() == absl::StatusCode::kUnavailable ? 1 : 2;
  }

  int signal_number = 0;
  for (;;) {
    sigwait(&signals, &signal_number);
    log.Info("signal", {{"signal", strsignal(signal_number)}});
    if (signal_number != SIGHUP) break;
    // A bad file is logged and leaves the running configuration as it is.
    absl::StatusOr<v1::BrokerConfig> reloaded = ConfigFromFlags();
    if (!reloaded.ok()) {
      log.Error("reload", {{"result", absl::StatusCodeToString(reloaded.status().code())},
                           {"error", reloaded.status().message()}});
      continue;
    }
    (*server)->Reload(*reloaded).IgnoreError();  // it logs the outcome
  }
  std::thread second_signal([] {
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    int again = 0;
    sigwait(&stop, &again);
    std::_Exit(128 + again);
  });
  second_signal.detach();
  (*server)->Shutdown(*grace);
  return 0;
}

}  // namespace
}  // namespace iommu_broker

int main(int argc, char** argv) { return iommu_broker::Run(argc, argv); }
