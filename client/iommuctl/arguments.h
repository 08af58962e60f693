// iommuctl's argument types for CLI11: options and positionals that parse
// sizes, addresses, enum names, durations and reserved regions with
// iommuctl's syntax (sizes.h, enum_names.h) and hand the value to a setter,
// usually one writing a request field. A value that does not parse is a
// CLI::ValidationError whose message names the argument and the text, so it
// exits like any other usage error.
//
//   auto request = std::make_shared<v1::UnmapRequest>();
//   AddSizeArgument(*unmap, "size", [request](uint64_t size) { request->set_size(size); },
//                   "Bytes to unmap (4K, 2M, 0x1000)")->required();
//
// Setters run only for arguments given, so unset optional request fields
// stay unset and take the broker's defaults.
//
// Thread-safety: not thread-safe; CLI11 parses on one thread.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_ARGUMENTS_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_ARGUMENTS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/iommuctl/enum_names.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::iommuctl {

// Turns one argument's text into a value; errors name `field`.
template <typename T>
using Parser = std::function<absl::StatusOr<T>(absl::string_view field, absl::string_view text)>;

// "START:SIZE[:NAME]", e.g. "0xfee00000:1M:msi".
absl::StatusOr<v1::ReservedRegion> ParseReservedRegion(absl::string_view field,
                                                       absl::string_view text);
// absl's syntax ("500ms", "10s", "1m"); negative durations are refused.
absl::StatusOr<absl::Duration> ParseDuration(absl::string_view field, absl::string_view text);

namespace arguments_internal {

// What errors call an argument: its last long name, or a positional's name.
std::string FieldName(const std::string& name);

// The value, or the parse error thrown as a CLI11 usage error.
template <typename T>
T ParseOrThrow(const Parser<T>& parse, absl::string_view field, absl::string_view text) {
  absl::StatusOr<T> value = parse(field, text);
  if (!value.ok()) throw CLI::ValidationError(std::string(value.status().message()));
  return *std::move(value);
}

}  // namespace arguments_internal

// An argument given at most once.
template <typename T>
CLI::Option* AddParsedArgument(CLI::App& app, const std::string& name, std::string type_name,
                               Parser<T> parse, std::function<void(T)> set,
                               const std::string& help) {
  const std::string field = arguments_internal::FieldName(name);
  return app
      .add_option_function<std::string>(
          name,
          [parse = std::move(parse), set = std::move(set), field](const std::string& text) {
            set(arguments_internal::ParseOrThrow(parse, field, text));
          },
          help)
      ->type_name(std::move(type_name));
}

// An option that may be repeated, or given a comma-separated list.
template <typename T>
CLI::Option* AddRepeatedArgument(CLI::App& app, const std::string& name, std::string type_name,
                                 Parser<T> parse, std::function<void(T)> set,
                                 const std::string& help) {
  const std::string field = arguments_internal::FieldName(name);
  return app
      .add_option_function<std::vector<std::string>>(
          name,
          [parse = std::move(parse), set = std::move(set),
           field](const std::vector<std::string>& texts) {
            for (const std::string& text : texts) {
              set(arguments_internal::ParseOrThrow(parse, field, text));
            }
          },
          help)
      ->type_name(std::move(type_name))
      ->delimiter(',')
      ->allow_extra_args(false);
}

CLI::Option* AddSizeArgument(CLI::App& app, const std::string& name,
                             std::function<void(uint64_t)> set, const std::string& help);
CLI::Option* AddAddressArgument(CLI::App& app, const std::string& name,
                                std::function<void(uint64_t)> set, const std::string& help);
CLI::Option* AddDurationArgument(CLI::App& app, const std::string& name,
                                 std::function<void(absl::Duration)> set,
                                 const std::string& help);

// The enum's short names (enum_names.h); UNSPECIFIED is not a choice.
template <typename Enum>
CLI::Option* AddEnumArgument(CLI::App& app, const std::string& name,
                             std::function<void(Enum)> set, const std::string& help) {
  return AddParsedArgument<Enum>(
      app, name, absl::StrJoin(EnumValueNames(*google::protobuf::GetEnumDescriptor<Enum>()), "|"),
      ParseEnum<Enum>, std::move(set), help);
}

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_ARGUMENTS_H_
