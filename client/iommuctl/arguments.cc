#include "client/iommuctl/arguments.h"

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/iommuctl/sizes.h"

namespace iommu_broker::iommuctl {

absl::StatusOr<v1::ReservedRegion> ParseReservedRegion(absl::string_view field,
                                                       absl::string_view text) {
  const std::vector<absl::string_view> parts = absl::StrSplit(text, absl::MaxSplits(':', 2));
  if (parts.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", text, "' is not a region: use START:SIZE[:NAME], e.g. 0xfee00000:1M:msi"));
  }
  absl::StatusOr<uint64_t> start = ParseAddress(absl::StrCat(field, " start"), parts[0]);
  if (!start.ok()) return start.status();
  absl::StatusOr<uint64_t> size = ParseSize(absl::StrCat(field, " size"), parts[1]);
  if (!size.ok()) return size.status();
  v1::ReservedRegion region;
  region.set_start(*start);
  region.set_size(*size);
  if (parts.size() == 3) region.set_name(std::string(parts[2]));
  return region;
}

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view field, absl::string_view text) {
  absl::Duration duration;
  if (!absl::ParseDuration(text, &duration) || duration < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " '", text, "' is not a duration: use a number with a unit, e.g. 500ms, 10s, 1m"));
  }
  return duration;
}

namespace arguments_internal {

std::string FieldName(const std::string& name) {
  const size_t comma = name.rfind(',');
  return comma == std::string::npos ? name : name.substr(comma + 1);
}

}  // namespace arguments_internal

CLI::Option* AddSizeArgument(CLI::App& app, const std::string& name,
                             std::function<void(uint64_t)> set, const std::string& help) {
  return AddParsedArgument<uint64_t>(app, name, "SIZE", ParseSize, std::move(set), help);
}

CLI::Option* AddAddressArgument(CLI::App& app, const std::string& name,
                                std::function<void(uint64_t)> set, const std::string& help) {
  return AddParsedArgument<uint64_t>(app, name, "ADDRESS", ParseAddress, std::move(set), help);
}

CLI::Option* AddDurationArgument(CLI::App& app, const std::string& name,
                                 std::function<void(absl::Duration)> set,
                                 const std::string& help) {
  return AddParsedArgument<absl::Duration>(app, name, "DURATION", ParseDuration, std::move(set),
                                           help);
}

}  // namespace iommu_broker::iommuctl
