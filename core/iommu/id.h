// ValidateId checks the name of a domain or device as clients give it:
// 1 to 256 bytes of printable ASCII without spaces (a PCI address such as
// "0000:3b:00.0" qualifies), so it can appear in logs, metrics labels and
// error messages unquoted.
#ifndef IOMMU_BROKER_CORE_IOMMU_ID_H_
#define IOMMU_BROKER_CORE_IOMMU_ID_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace iommu_broker {

inline constexpr size_t kMaxIdLength = 256;

// INVALID_ARGUMENT naming `kind` ("device id", "domain id") otherwise.
absl::Status ValidateId(absl::string_view kind, absl::string_view id);

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_ID_H_
