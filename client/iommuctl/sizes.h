// Byte quantities on iommuctl's command line and in its tables: sizes and
// addresses written as decimal ("4096"), hex ("0x1000") or with a binary
// suffix ("4K", "2M", "1G", "1T"; either case).
//
//   absl::StatusOr<uint64_t> size = ParseSize("size", "2M");      // 0x200000
//   absl::StatusOr<uint64_t> iova = ParseAddress("iova", "0x5000");
//   FormatSize(0x200000) == "2M";  FormatAddress(0x5000) == "0x5000"
//
// Errors are INVALID_ARGUMENT naming the field and the text.
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_SIZES_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_SIZES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace iommu_broker::iommuctl {

absl::StatusOr<uint64_t> ParseSize(absl::string_view field, absl::string_view text);
absl::StatusOr<uint64_t> ParseAddress(absl::string_view field, absl::string_view text);

// The largest binary suffix that divides `bytes` exactly ("2M", "12K"),
// else plain decimal: exact, and accepted back by ParseSize.
std::string FormatSize(uint64_t bytes);
// Lower-case hex with 0x.
std::string FormatAddress(uint64_t address);

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_SIZES_H_
