#include "core/iommu/id.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace iommu_broker {

absl::Status ValidateId(absl::string_view kind, absl::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(kind, " must be 1 to ", kMaxIdLength, " bytes long, got ", id.size()));
  }
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(kind, " \"", absl::CHexEscape(id),
                                                     "\" must be printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

}  // namespace iommu_broker
