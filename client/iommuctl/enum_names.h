// The names iommuctl gives the API's enum values: the protobuf name without
// the enum's prefix, in lower case (POLICY_FAST is "fast", PAGE_SIZE_2M is
// "2m", Invalidation::SCOPE_RANGE is "range"). The prefix is the one of the
// enum's UNSPECIFIED value, which every API enum has (docs/API.md).
//
//   EnumName(v1::POLICY_FAST) == "fast"
//   absl::StatusOr<v1::Policy> policy = ParseEnum<v1::Policy>("policy", "Paranoid");
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_ENUM_NAMES_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_ENUM_NAMES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/generated_enum_reflection.h"

namespace iommu_broker::iommuctl {

// `number`'s short name, or the number itself if the enum has no such value
// (a newer broker's addition).
std::string EnumValueName(const google::protobuf::EnumDescriptor& type, int number);
// Every value but UNSPECIFIED, by short name, in declaration order.
std::vector<std::string> EnumValueNames(const google::protobuf::EnumDescriptor& type);
// The value named `text` (any case); INVALID_ARGUMENT naming `field` and
// listing the names otherwise. UNSPECIFIED is never a choice.
absl::StatusOr<int> ParseEnumValue(const google::protobuf::EnumDescriptor& type,
                                   absl::string_view field, absl::string_view text);

template <typename Enum>
std::string EnumName(Enum value) {
  return EnumValueName(*google::protobuf::GetEnumDescriptor<Enum>(), static_cast<int>(value));
}

template <typename Enum>
absl::StatusOr<Enum> ParseEnum(absl::string_view field, absl::string_view text) {
  absl::StatusOr<int> number =
      ParseEnumValue(*google::protobuf::GetEnumDescriptor<Enum>(), field, text);
  if (!number.ok()) return number.status();
  return static_cast<Enum>(*number);
}

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_ENUM_NAMES_H_
