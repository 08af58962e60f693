// Hex formats an address or size the way error messages and logs quote them:
// "0x1003". Every core error that names an IOVA, a physical address or a size
// uses it, so messages read alike.
#ifndef IOMMU_BROKER_CORE_UTIL_HEX_H_
#define IOMMU_BROKER_CORE_UTIL_HEX_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"

namespace iommu_broker {

inline std::string Hex(uint64_t value) { return absl::StrFormat("0x%x", value); }

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_HEX_H_
