#include "client/iommuctl/message_fields.h"

#include <cstdint>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/iommuctl/enum_names.h"
#include "client/iommuctl/sizes.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace iommu_broker::iommuctl {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

bool IsAddress(absl::string_view name) {
  return name == "iova" || name == "phys" || name == "start" || absl::EndsWith(name, "_first") ||
         absl::EndsWith(name, "_last") || absl::EndsWith(name, "_base");
}

bool IsByteCount(absl::string_view name) {
  return name == "size" || name == "bytes" || absl::EndsWith(name, "_bytes") ||
         absl::StartsWith(name, "bytes_");
}

std::string Uint64Value(const FieldDescriptor& field, uint64_t value) {
  if (IsAddress(field.name())) return FormatAddress(value);
  if (IsByteCount(field.name())) return FormatSize(value);
  return absl::StrCat(value);
}

// One value of `field`; `index` for a repeated field, -1 for a singular one.
std::string ScalarValue(const Message& message, const FieldDescriptor& field, int index) {
  const Reflection& reflection = *message.GetReflection();
  const bool repeated = index >= 0;
  switch (field.cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return absl::StrCat(repeated ? reflection.GetRepeatedInt32(message, &field, index)
                                   : reflection.GetInt32(message, &field));
    case FieldDescriptor::CPPTYPE_INT64:
      return absl::StrCat(repeated ? reflection.GetRepeatedInt64(message, &field, index)
                                   : reflection.GetInt64(message, &field));
    case FieldDescriptor::CPPTYPE_UINT32:
      return absl::StrCat(repeated ? reflection.GetRepeatedUInt32(message, &field, index)
                                   : reflection.GetUInt32(message, &field));
    case FieldDescriptor::CPPTYPE_UINT64:
      return Uint64Value(field, repeated ? reflection.GetRepeatedUInt64(message, &field, index)
                                         : reflection.GetUInt64(message, &field));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return absl::StrCat(repeated ? reflection.GetRepeatedDouble(message, &field, index)
                                   : reflection.GetDouble(message, &field));
    case FieldDescriptor::CPPTYPE_FLOAT:
      return absl::StrCat(repeated ? reflection.GetRepeatedFloat(message, &field, index)
                                   : reflection.GetFloat(message, &field));
    case FieldDescriptor::CPPTYPE_BOOL:
      return (repeated ? reflection.GetRepeatedBool(message, &field, index)
                       : reflection.GetBool(message, &field))
                 ? "true"
                 : "false";
    case FieldDescriptor::CPPTYPE_ENUM:
      return EnumValueName(*field.enum_type(),
                           repeated ? reflection.GetRepeatedEnumValue(message, &field, index)
                                    : reflection.GetEnumValue(message, &field));
    case FieldDescriptor::CPPTYPE_STRING:
      return repeated ? reflection.GetRepeatedString(message, &field, index)
                      : reflection.GetString(message, &field);
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return "";
}

// Durations and timestamps read as one value, not as seconds and nanos.
bool IsWellKnownTime(const Descriptor& type) {
  return &type == google::protobuf::Duration::descriptor() ||
         &type == google::protobuf::Timestamp::descriptor();
}

std::string TimeValue(const Message& message) {
  const Descriptor& type = *message.GetDescriptor();
  const Reflection& reflection = *message.GetReflection();
  const int64_t seconds = reflection.GetInt64(message, type.FindFieldByName("seconds"));
  const int32_t nanos = reflection.GetInt32(message, type.FindFieldByName("nanos"));
  const absl::Duration duration = absl::Seconds(seconds) + absl::Nanoseconds(nanos);
  if (&type == google::protobuf::Duration::descriptor()) return absl::FormatDuration(duration);
  return absl::FormatTime(absl::RFC3339_full, absl::UnixEpoch() + duration, absl::UTCTimeZone());
}

void AppendFields(const Message& message, const std::string& prefix, std::vector<Field>* out);

void AppendMessage(const Message& message, const std::string& path, std::vector<Field>* out) {
  if (IsWellKnownTime(*message.GetDescriptor())) {
    out->emplace_back(path, TimeValue(message));
  } else {
    AppendFields(message, absl::StrCat(path, "."), out);
  }
}

// A map entry's sub-fields go under "name[key]".
void AppendMapField(const Message& message, const FieldDescriptor& field,
                    const std::string& path, std::vector<Field>* out) {
  const Reflection& reflection = *message.GetReflection();
  for (int i = 0; i < reflection.FieldSize(message, &field); ++i) {
    const Message& entry = reflection.GetRepeatedMessage(message, &field, i);
    const FieldDescriptor& key = *entry.GetDescriptor()->map_key();
    const FieldDescriptor& value = *entry.GetDescriptor()->map_value();
    const std::string entry_path = absl::StrCat(path, "[", ScalarValue(entry, key, -1), "]");
    if (value.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      AppendMessage(entry.GetReflection()->GetMessage(entry, &value), entry_path, out);
    } else {
      out->emplace_back(entry_path, ScalarValue(entry, value, -1));
    }
  }
}

void AppendRepeatedField(const Message& message, const FieldDescriptor& field,
                         const std::string& path, std::vector<Field>* out) {
  const Reflection& reflection = *message.GetReflection();
  const int size = reflection.FieldSize(message, &field);
  if (field.cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
    std::vector<std::string> values;
    for (int i = 0; i < size; ++i) values.push_back(ScalarValue(message, field, i));
    if (!values.empty()) out->emplace_back(path, absl::StrJoin(values, ","));
    return;
  }
  for (int i = 0; i < size; ++i) {
    AppendMessage(reflection.GetRepeatedMessage(message, &field, i),
                  absl::StrCat(path, "[", i, "]"), out);
  }
}

void AppendField(const Message& message, const FieldDescriptor& field, const std::string& path,
                 std::vector<Field>* out) {
  const Reflection& reflection = *message.GetReflection();
  if (field.is_map()) {
    AppendMapField(message, field, path, out);
  } else if (field.is_repeated()) {
    AppendRepeatedField(message, field, path, out);
  } else if (field.cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    if (reflection.HasField(message, &field)) {
      AppendMessage(reflection.GetMessage(message, &field), path, out);
    }
  } else if (!field.has_presence() || reflection.HasField(message, &field)) {
    std::string value = ScalarValue(message, field, -1);  // empty only for an empty string
    if (!value.empty()) out->emplace_back(path, std::move(value));
  }
}

void AppendFields(const Message& message, const std::string& prefix, std::vector<Field>* out) {
  const Descriptor& type = *message.GetDescriptor();
  for (int i = 0; i < type.field_count(); ++i) {
    const FieldDescriptor& field = *type.field(i);
    AppendField(message, field, absl::StrCat(prefix, field.name()), out);
  }
}

}  // namespace

std::vector<Field> MessageFields(const Message& message) {
  std::vector<Field> fields;
  AppendFields(message, "", &fields);
  return fields;
}

std::string FieldsLine(const Message& message) {
  return absl::StrJoin(MessageFields(message), " ", absl::PairFormatter("="));
}

}  // namespace iommu_broker::iommuctl
