#include "core/iommu/types.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace iommu_broker {

absl::string_view PolicyName(Policy policy) {
  switch (policy) {
    case Policy::kParanoid:
      return "paranoid";
    case Policy::kFast:
      return "fast";
    case Policy::kPassthrough:
      return "pt";
  }
  return "unknown";
}

absl::StatusOr<Policy> ParsePolicy(absl::string_view name) {
  for (Policy policy : {Policy::kParanoid, Policy::kFast, Policy::kPassthrough}) {
    if (name == PolicyName(policy)) return policy;
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "policy \"%s\" is not one of \"paranoid\", \"fast\", \"pt\"", absl::CHexEscape(name)));
}

absl::string_view MappingKindName(MappingKind kind) {
  switch (kind) {
    case MappingKind::kTranslated:
      return "translated";
    case MappingKind::kIdentity:
      return "identity";
    case MappingKind::kBypass:
      return "bypass";
  }
  return "unknown";
}

absl::string_view FaultReasonName(FaultReason reason) {
  switch (reason) {
    case FaultReason::kDeviceNotAttached:
      return "device_not_attached";
    case FaultReason::kOutsideAperture:
      return "outside_aperture";
    case FaultReason::kAboveDmaMask:
      return "above_dma_mask";
    case FaultReason::kNotMapped:
      return "not_mapped";
    case FaultReason::kPermission:
      return "permission";
  }
  return "unknown";
}

}  // namespace iommu_broker
