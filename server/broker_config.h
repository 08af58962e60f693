// The broker's configuration: a v1::BrokerConfig (protos/.../config.proto)
// read from a text-format or JSON file, and what the engine and the service
// make of it. Unset fields take the defaults the .proto documents; a value
// the engine or service cannot use is INVALID_ARGUMENT naming the field.
//
//   absl::StatusOr<v1::BrokerConfig> config = LoadConfigFile("/etc/iommu-broker/config.textproto");
//   absl::StatusOr<IommuOptions> engine = IommuOptionsFromConfig(*config);
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_SERVER_BROKER_CONFIG_H_
#define IOMMU_BROKER_SERVER_BROKER_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/iommu/iommu.h"
#include "iommu_broker/v1/config.pb.h"
#include "server/access_policy.h"
#include "server/broker_service.h"

namespace iommu_broker {

inline constexpr absl::string_view kDefaultListenAddress = "127.0.0.1:50051";
inline constexpr absl::string_view kDefaultMetricsListenAddress = "127.0.0.1:9464";
inline constexpr uint32_t kDefaultMaxMessageBytes = 4 << 20;
inline constexpr absl::Duration kDefaultShutdownGracePeriod = absl::Seconds(5);

// JSON when the name ends in .json, text format otherwise. Errors name the
// file and, for parse errors, the line and column.
absl::StatusOr<v1::BrokerConfig> LoadConfigFile(const std::string& path);
absl::StatusOr<v1::BrokerConfig> ParseTextConfig(absl::string_view text);
absl::StatusOr<v1::BrokerConfig> ParseJsonConfig(absl::string_view json);

absl::StatusOr<IommuOptions> IommuOptionsFromConfig(const v1::BrokerConfig& config);
absl::StatusOr<ServiceLimits> ServiceLimitsFromConfig(const v1::BrokerConfig& config);
uint32_t MaxMessageBytes(const v1::BrokerConfig& config);
absl::StatusOr<absl::Duration> ShutdownGracePeriod(const v1::BrokerConfig& config);
std::string ListenAddress(const v1::BrokerConfig& config);
// Empty when metrics are disabled ("none").
std::string MetricsListenAddress(const v1::BrokerConfig& config);

// Whether `address` (host:port or unix:/path) reaches only this host: a
// Unix socket, localhost, 127.0.0.0/8 or [::1].
bool IsLocalAddress(absl::string_view address);
// The config's access policy, once its auth, TLS and listeners are found
// to fit together: identities valid, TLS files usable, certificate
// identities only with a client CA, and a listen address beyond this host
// only with identities and TLS (tokens and data must not cross a network
// in the clear, and without identities anyone who can connect may do
// anything).
absl::StatusOr<AccessPolicy> SecurityFromConfig(const v1::BrokerConfig& config);

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_BROKER_CONFIG_H_
