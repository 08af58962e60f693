// MessageFields flattens a reply into (path, value) pairs for iommuctl's
// human output: "spec.aperture_first" -> "0x1000", "segments[0].size" ->
// "4K", "domains[vm1].maps" -> "3". Values read as an operator expects:
// addresses (iova, phys, start, *_first, *_last, *_base) in hex, byte counts
// (size, bytes, *_bytes, bytes_*) with a K/M/G suffix, enums by their short
// name, durations as "10ms", timestamps in RFC 3339 (UTC).
//
// Unset sub-messages, empty strings and empty repeated fields are left out
// (a reply sets every other field); zero numbers and false are kept.
//
//   for (const auto& [path, value] : MessageFields(domain)) ...
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_MESSAGE_FIELDS_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_MESSAGE_FIELDS_H_

#include <string>
#include <utility>
#include <vector>

#include "google/protobuf/message.h"

namespace iommu_broker::iommuctl {

using Field = std::pair<std::string, std::string>;

std::vector<Field> MessageFields(const google::protobuf::Message& message);

// The fields as one line: "path=value path=value".
std::string FieldsLine(const google::protobuf::Message& message);

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_MESSAGE_FIELDS_H_
