#include "client/iommuctl/enum_names.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace iommu_broker::iommuctl {
namespace {

using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;

constexpr absl::string_view kUnspecified = "UNSPECIFIED";

// "POLICY_" for Policy: the zero value's name up to UNSPECIFIED.
absl::string_view Prefix(const EnumDescriptor& type) {
  const EnumValueDescriptor* zero = type.FindValueByNumber(0);
  if (zero == nullptr) return "";
  absl::string_view name = zero->name();
  return absl::EndsWith(name, kUnspecified) ? name.substr(0, name.size() - kUnspecified.size())
                                            : "";
}

std::string ShortName(const EnumValueDescriptor& value) {
  absl::string_view name = value.name();
  absl::ConsumePrefix(&name, Prefix(*value.type()));
  return absl::AsciiStrToLower(name);
}

}  // namespace

std::string EnumValueName(const EnumDescriptor& type, int number) {
  const EnumValueDescriptor* value = type.FindValueByNumber(number);
  return value == nullptr ? absl::StrCat(number) : ShortName(*value);
}

std::vector<std::string> EnumValueNames(const EnumDescriptor& type) {
  std::vector<std::string> names;
  for (int i = 0; i < type.value_count(); ++i) {
    if (type.value(i)->number() != 0) names.push_back(ShortName(*type.value(i)));
  }
  return names;
}

absl::StatusOr<int> ParseEnumValue(const EnumDescriptor& type, absl::string_view field,
                                   absl::string_view text) {
  for (int i = 0; i < type.value_count(); ++i) {
    const EnumValueDescriptor& value = *type.value(i);
    if (value.number() != 0 && absl::EqualsIgnoreCase(ShortName(value), text)) {
      return value.number();
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(field, " '", text, "' is not one of ",
                                                 absl::StrJoin(EnumValueNames(type), ", ")));
}

}  // namespace iommu_broker::iommuctl
