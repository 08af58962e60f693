// Conversions between the API's messages (protos/iommu_broker/v1) and the
// engine's values (core/iommu). Requests are checked for what only the wire
// format can get wrong (an UNSPECIFIED or unknown enum, a malformed
// duration); the engine checks the rest. Errors are INVALID_ARGUMENT naming
// the field, e.g. "domain.policy is required".
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_SERVER_CONVERT_H_
#define IOMMU_BROKER_SERVER_CONVERT_H_

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/iommu/iommu.h"
#include "core/iommu/types.h"
#include "google/protobuf/duration.pb.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker {

// `field` names the duration in errors (negative or malformed).
absl::StatusOr<absl::Duration> DurationFromProto(const google::protobuf::Duration& duration,
                                                 absl::string_view field);
void DurationToProto(absl::Duration duration, google::protobuf::Duration* out);

// `field` names the policy in errors ("policy", "domain.policy").
absl::StatusOr<Policy> PolicyFromProto(v1::Policy policy, absl::string_view field);
v1::Policy PolicyToProto(Policy policy);

absl::StatusOr<DomainConfig> DomainConfigFromProto(const v1::DomainSpec& spec);
void DomainInfoToProto(const DomainInfo& info, v1::Domain* out);
void DomainStatsToProto(const DomainStats& stats, v1::DomainStats* out);
void DebugCountsToProto(const DmaDebugCounts& counts, v1::DmaDebugCounts* out);
void LeaksToProto(const LiveMappings& leaked, v1::Leaks* out);

absl::StatusOr<DeviceConfig> DeviceConfigFromProto(const v1::DeviceSpec& spec);
absl::StatusOr<DeviceUpdate> DeviceUpdateFromProto(const v1::UpdateDeviceRequest& request);
void DeviceInfoToProto(const DeviceInfo& info, v1::Device* out);

absl::StatusOr<MapRequest> MapRequestFromProto(const v1::MapRequest& request);
void MapResultToProto(const MapResult& result, v1::MapResponse* out);
void UnmapResultToProto(const UnmapResult& result, v1::UnmapResponse* out);
absl::StatusOr<Access> AccessFromProto(v1::Access access);
void TranslateResultToProto(const TranslateResult& result, v1::TranslateResponse* out);
void FaultToProto(const Fault& fault, v1::Fault* out);
void InvalidationToProto(const InvalidationEvent& event, v1::Invalidation* out);

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_CONVERT_H_
