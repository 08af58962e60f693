#include "server/broker_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "server/access_policy.h"
#include "server/convert.h"
#include "server/tls_files.h"

namespace iommu_broker {
namespace {

// Collects the text parser's first error with its position.
class FirstError final : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (error_.empty()) error_ = absl::StrCat("line ", line + 1, " column ", column + 1, ": ", message);
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

absl::Status OutOfRange(absl::string_view field, uint64_t value, uint64_t low, uint64_t high) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, " ", value, " is not in [", low, ", ", high, "]"));
}

}  // namespace

absl::StatusOr<v1::BrokerConfig> ParseTextConfig(absl::string_view text) {
  v1::BrokerConfig config;
  google::protobuf::TextFormat::Parser parser;
  FirstError errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &config)) {
    return absl::InvalidArgumentError(errors.error());
  }
  return config;
}

absl::StatusOr<v1::BrokerConfig> ParseJsonConfig(absl::string_view json) {
  v1::BrokerConfig config;
  const auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &config);
  if (!status.ok()) return absl::InvalidArgumentError(std::string(status.message()));
  return config;
}

absl::StatusOr<v1::BrokerConfig> LoadConfigFile(const std::string& path) {
  // An ifstream opens a directory and then reads nothing, which would pass
  // for an empty file: the broker would start on all defaults.
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", path, " is a directory"));
  }
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("config file ", path, " cannot be read"));
  std::stringstream content;
  content << file.rdbuf();
  absl::StatusOr<v1::BrokerConfig> config = absl::EndsWith(path, ".json")
                                                ? ParseJsonConfig(content.str())
                                                : ParseTextConfig(content.str());
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", path, ": ", config.status().message()));
  }
  return config;
}

absl::StatusOr<IommuOptions> IommuOptionsFromConfig(const v1::BrokerConfig& config) {
  const v1::EngineConfig& engine = config.engine();
  IommuOptions options;
  options.record_flush_latencies = !MetricsListenAddress(config).empty();
  if (engine.has_physical_memory_bytes()) {
    options.physical_memory_bytes = engine.physical_memory_bytes();
  }
  if (engine.has_iommu_units()) options.units = engine.iommu_units();
  if (options.units < 1 || options.units > 64) {
    return OutOfRange("engine.iommu_units", options.units, 1, 64);
  }
  const v1::InvalidationCostModel& cost = engine.invalidation();
  absl::StatusOr<absl::Duration> fixed =
      DurationFromProto(cost.fixed(), "engine.invalidation.fixed");
  if (!fixed.ok()) return fixed.status();
  absl::StatusOr<absl::Duration> per_descriptor =
      DurationFromProto(cost.per_descriptor(), "engine.invalidation.per_descriptor");
  if (!per_descriptor.ok()) return per_descriptor.status();
  // A busy-wait longer than this would stall the broker's own threads.
  if (*fixed > absl::Milliseconds(10) || *per_descriptor > absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine.invalidation cost ", absl::FormatDuration(*fixed), " + ",
                     absl::FormatDuration(*per_descriptor),
                     " per descriptor exceeds 10ms fixed or 1ms per descriptor"));
  }
  options.invalidation.cost = {.fixed = *fixed, .per_descriptor = *per_descriptor};
  if (cost.has_combine()) options.invalidation.combine = cost.combine();
  if (cost.has_max_batch_descriptors()) {
    options.invalidation.max_batch_descriptors = cost.max_batch_descriptors();
  }
  if (engine.has_max_domains()) options.max_domains = engine.max_domains();
  if (engine.has_max_devices()) options.max_devices = engine.max_devices();
  if (engine.has_fault_log_capacity()) options.fault_log_capacity = engine.fault_log_capacity();
  if (engine.has_device_iotlb_ack_timeout()) {
    absl::StatusOr<absl::Duration> ack_timeout =
        DurationFromProto(engine.device_iotlb_ack_timeout(), "engine.device_iotlb_ack_timeout");
    if (!ack_timeout.ok()) return ack_timeout.status();
    if (*ack_timeout < absl::Milliseconds(1) || *ack_timeout > absl::Seconds(60)) {
      return absl::InvalidArgumentError(
          absl::StrCat("engine.device_iotlb_ack_timeout ", absl::FormatDuration(*ack_timeout),
                       " is not in [1ms, 60s]"));
    }
    options.device_tlb.ack_timeout = *ack_timeout;
  }
  return options;
}

absl::StatusOr<ServiceLimits> ServiceLimitsFromConfig(const v1::BrokerConfig& config) {
  const v1::ServerLimits& limits = config.limits();
  ServiceLimits service;
  if (limits.has_max_batch_operations()) service.max_batch_operations = limits.max_batch_operations();
  if (limits.has_max_concurrent_streams()) {
    service.max_concurrent_streams = limits.max_concurrent_streams();
  }
  if (limits.has_watch_queue_capacity()) service.watch_queue_capacity = limits.watch_queue_capacity();
  if (service.max_batch_operations < 1 || service.max_batch_operations > 65536) {
    return OutOfRange("limits.max_batch_operations", service.max_batch_operations, 1, 65536);
  }
  if (service.max_concurrent_streams < 1 || service.max_concurrent_streams > 100000) {
    return OutOfRange("limits.max_concurrent_streams", service.max_concurrent_streams, 1, 100000);
  }
  if (service.watch_queue_capacity < 1 || service.watch_queue_capacity > 65536) {
    return OutOfRange("limits.watch_queue_capacity", service.watch_queue_capacity, 1, 65536);
  }
  const uint32_t message_bytes = MaxMessageBytes(config);
  if (message_bytes < 4096 || message_bytes > 1u << 30) {
    return OutOfRange("limits.max_message_bytes", message_bytes, 4096, 1u << 30);
  }
  return service;
}

uint32_t MaxMessageBytes(const v1::BrokerConfig& config) {
  return config.limits().has_max_message_bytes() ? config.limits().max_message_bytes()
                                                 : kDefaultMaxMessageBytes;
}

absl::StatusOr<absl::Duration> ShutdownGracePeriod(const v1::BrokerConfig& config) {
  if (!config.has_shutdown_grace_period()) return kDefaultShutdownGracePeriod;
  absl::StatusOr<absl::Duration> grace =
      DurationFromProto(config.shutdown_grace_period(), "shutdown_grace_period");
  if (grace.ok() && *grace > absl::Minutes(10)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shutdown_grace_period ", absl::FormatDuration(*grace), " is longer than 10m"));
  }
  return grace;
}

std::string ListenAddress(const v1::BrokerConfig& config) {
  return config.listen_address().empty() ? std::string(kDefaultListenAddress)
                                         : config.listen_address();
}

std::string MetricsListenAddress(const v1::BrokerConfig& config) {
  if (config.metrics_listen_address() == "none") return "";
  return config.metrics_listen_address().empty() ? std::string(kDefaultMetricsListenAddress)
                                                 : config.metrics_listen_address();
}

bool IsLocalAddress(absl::string_view address) {
  if (absl::StartsWith(address, "unix:")) return true;
  const size_t colon = address.rfind(':');
  const absl::string_view host = colon == absl::string_view::npos ? "" : address.substr(0, colon);
  return host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
}

absl::StatusOr<AccessPolicy> SecurityFromConfig(const v1::BrokerConfig& config) {
  absl::StatusOr<AccessPolicy> policy = AccessPolicy::Create(config.auth());
  if (!policy.ok()) return policy.status();
  if (absl::Status status = CheckTlsFiles(config.tls()); !status.ok()) return status;
  for (int i = 0; i < config.auth().identities_size(); ++i) {
    if (!config.auth().identities(i).certificate_san().empty() &&
        config.tls().client_ca_file().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "auth.identities[", i, "].certificate_san needs tls.client_ca_file to verify it"));
    }
  }
  const std::string listen = ListenAddress(config);
  if (!IsLocalAddress(listen) && !(policy->enabled() && TlsEnabled(config.tls()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen address ", listen,
        " reaches beyond this host: serve it with auth identities and tls, or listen on "
        "loopback or a unix: socket"));
  }
  return policy;
}

}  // namespace iommu_broker
