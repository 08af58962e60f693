// libFuzzer target: the broker's configuration file (server/broker_config.h).
// The first input byte picks the syntax (even: protobuf text format, odd:
// JSON), the rest is the file. A file that parses is validated as
// iommu-brokerd validates it before serving (engine options, service limits,
// grace period, message size, addresses, identities and listeners); if the
// engine options pass, the engine is created and the file's start-up domains
// and devices are created and attached, as BrokerServer::Start does before
// it listens.
//
// Besides crashes, sanitizer findings and leaks, an input fails (a message,
// then abort) when a parse or validation error is not INVALID_ARGUMENT or
// has no message, or when the engine or a start-up object is refused with a
// code the API does not document for it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/iommu/iommu.h"
#include "google/protobuf/stubs/logging.h"
#include "iommu_broker/v1/config.pb.h"
#include "server/broker_config.h"
#include "server/convert.h"

namespace iommu_broker {
namespace {

[[noreturn]] void Fail(absl::string_view what, const absl::Status& status) {
  std::fprintf(stderr, "broker_config_fuzzer: %.*s: %s\n", static_cast<int>(what.size()),
               what.data(), status.ToString().c_str());
  std::abort();
}

// A configuration error: INVALID_ARGUMENT, saying what is wrong.
void CheckRefusal(absl::string_view what, const absl::Status& status) {
  if (status.ok()) return;
  if (status.code() != absl::StatusCode::kInvalidArgument || status.message().empty()) {
    Fail(what, status);
  }
}

// A start-up domain or device refused as the API would refuse the request.
void CheckStartupRefusal(absl::string_view what, const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      if (!status.message().empty()) return;
      break;
    default:
      break;
  }
  Fail(what, status);
}

// The engine from `config`, with its start-up domains and devices.
void StartEngine(const v1::BrokerConfig& config, IommuOptions options) {
  // No thread, no busy-waiting: they change timing, not what is accepted.
  options.maintenance_interval = absl::ZeroDuration();
  options.invalidation.cost = {};
  absl::StatusOr<std::unique_ptr<Iommu>> iommu = Iommu::Create(options);
  CheckRefusal("Iommu::Create", iommu.status());
  if (!iommu.ok()) return;
  for (const v1::DomainSpec& spec : config.domains()) {
    absl::StatusOr<DomainConfig> domain = DomainConfigFromProto(spec);
    CheckStartupRefusal("domains", domain.ok() ? (*iommu)->CreateDomain(*domain) : domain.status());
  }
  for (const v1::StartupDevice& startup : config.devices()) {
    absl::StatusOr<DeviceConfig> device = DeviceConfigFromProto(startup.device());
    absl::Status status = device.ok() ? (*iommu)->AddDevice(*device) : device.status();
    if (status.ok() && !startup.attach_to_domain_id().empty()) {
      status = (*iommu)->Attach(device->id, startup.attach_to_domain_id()).status();
    }
    CheckStartupRefusal("devices", status);
  }
}

void RunOne(absl::string_view input) {
  if (input.empty()) return;
  const bool json = (static_cast<uint8_t>(input[0]) & 1) != 0;
  input.remove_prefix(1);
  absl::StatusOr<v1::BrokerConfig> config = json ? ParseJsonConfig(input) : ParseTextConfig(input);
  CheckRefusal(json ? "ParseJsonConfig" : "ParseTextConfig", config.status());
  if (!config.ok()) return;
  CheckRefusal("ServiceLimitsFromConfig", ServiceLimitsFromConfig(*config).status());
  CheckRefusal("ShutdownGracePeriod", ShutdownGracePeriod(*config).status());
  // Without the TLS files: checking them opens whatever paths the input
  // names (/dev/zero, a FIFO), which is the operator's business, not the
  // parser's.
  v1::BrokerConfig without_files = *config;
  without_files.clear_tls();
  CheckRefusal("SecurityFromConfig", SecurityFromConfig(without_files).status());
  MaxMessageBytes(*config);
  ListenAddress(*config);
  MetricsListenAddress(*config);
  absl::StatusOr<IommuOptions> options = IommuOptionsFromConfig(*config);
  CheckRefusal("IommuOptionsFromConfig", options.status());
  if (options.ok()) StartEngine(*config, *options);
}

}  // namespace
}  // namespace iommu_broker

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // Strings that are not UTF-8 fail to parse, and protobuf logs each one.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  iommu_broker::RunOne(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
