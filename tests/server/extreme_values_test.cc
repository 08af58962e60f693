// Every numeric field of every request message at its extremes (0, 1, 2^63,
// 2^64-1 and the type's own limits, unaligned values, ranges whose end
// overflows 64 bits) sent to a real broker in-process (TestBroker). A value
// the API refuses must be answered with the code it documents, almost
// always INVALID_ARGUMENT or OUT_OF_RANGE, and have no effect: the broker's
// domains, devices, mappings and statistics (broker_state.h) are the same
// after it. The data-path rows run both as unary calls and as a Batch
// operation. Extremes that are valid values (a physical address of 0, a
// translation at the top of the address space, which faults) are listed
// with the answer the API documents for them.
//
// Messages without numeric fields (ids, flags, filters) have nothing here;
// WatchEventsRequest is one. A failure names the message, the fields set
// and their values.
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/sync_stream.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/server/broker_state.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::testing {
namespace {

using ::google::protobuf::FieldDescriptor;
using ::google::protobuf::Message;
using ::google::protobuf::Reflection;
using ::grpc::StatusCode;
using Stub = v1::IommuBroker::Stub;

constexpr uint64_t kPage = 0x1000;

// A value as failure messages name it. A field takes it in its own type: a
// signed field reads `bits` as two's complement (kMinusOne), and a value a
// field cannot hold is a mistake in the table.
struct Value {
  const char* text;
  uint64_t bits;
};
constexpr Value kZero{"0", 0};
constexpr Value kOne{"1", 1};
constexpr Value kTwoTo63{"2^63", uint64_t{1} << 63};
constexpr Value kMax64{"2^64-1", ~uint64_t{0}};
constexpr Value kTopPage{"2^64-4096", ~uint64_t{0} - (kPage - 1)};
constexpr Value kMax32{"2^32-1", 0xffffffff};
constexpr Value kTwoTo31{"2^31", uint64_t{1} << 31};
constexpr Value kMaxInt32{"2^31-1", 0x7fffffff};
constexpr Value kMaxInt64{"2^63-1", (uint64_t{1} << 63) - 1};
constexpr Value kMinusOne{"-1", ~uint64_t{0}};
constexpr Value kTwoPages{"0x2000", 2 * kPage};

// The broker every test starts from: a domain per policy ("p", "f", "t"),
// a device on each ("dp", "df", "dt"; df may bypass) and one detached
// ("dx"), and a two-page mapping at IOVA 0x100000 on each domain.
constexpr char kMappedDevice[] = "dp";
constexpr uint64_t kMappedIova = 0x100000;

std::string CodeName(int code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// The requests the table sends, each from a valid base request.
enum class Rpc {
  kCreateDomain,     // {id "x", policy fast}
  kSetDomainPolicy,  // {"p", paranoid}: what it has already
  kRegisterDevice,   // {id "y"}
  kUpdateDevice,     // {"dx", 64 bits}: what it has already
  kMapAt,            // dp: 0x200000 + 0x1000 at IOVA 0x400000, read-write
  kMapAnywhere,      // the same, the broker picking the IOVA
  kUnmap,            // dp: [1 GiB, + 0x1000), where nothing is mapped
  kTranslate,        // dp: [0x100000, + 0x1000), read: mapped
};

const char* RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kCreateDomain:
      return "CreateDomainRequest";
    case Rpc::kSetDomainPolicy:
      return "SetDomainPolicyRequest";
    case Rpc::kRegisterDevice:
      return "RegisterDeviceRequest";
    case Rpc::kUpdateDevice:
      return "UpdateDeviceRequest";
    case Rpc::kMapAt:
      return "MapRequest (fixed iova)";
    case Rpc::kMapAnywhere:
      return "MapRequest";
    case Rpc::kUnmap:
      return "UnmapRequest";
    case Rpc::kTranslate:
      return "TranslateRequest";
  }
  return "?";
}

bool IsDataPath(Rpc rpc) {
  return rpc == Rpc::kMapAt || rpc == Rpc::kMapAnywhere || rpc == Rpc::kUnmap ||
         rpc == Rpc::kTranslate;
}

std::unique_ptr<Message> BaseRequest(Rpc rpc) {
  switch (rpc) {
    case Rpc::kCreateDomain: {
      auto request = std::make_unique<v1::CreateDomainRequest>();
      request->mutable_domain()->set_id("x");
      request->mutable_domain()->set_policy(v1::POLICY_FAST);
      return request;
    }
    case Rpc::kSetDomainPolicy: {
      auto request = std::make_unique<v1::SetDomainPolicyRequest>();
      request->set_domain_id("p");
      request->set_policy(v1::POLICY_PARANOID);
      return request;
    }
    case Rpc::kRegisterDevice: {
      auto request = std::make_unique<v1::RegisterDeviceRequest>();
      request->mutable_device()->set_id("y");
      return request;
    }
    case Rpc::kUpdateDevice: {
      auto request = std::make_unique<v1::UpdateDeviceRequest>();
      request->set_device_id("dx");
      request->set_dma_mask_bits(64);
      return request;
    }
    case Rpc::kMapAt:
    case Rpc::kMapAnywhere: {
      auto request = std::make_unique<v1::MapRequest>();
      request->set_device_id(kMappedDevice);
      request->set_phys(0x200000);
      request->set_size(kPage);
      request->mutable_permissions()->set_read(true);
      request->mutable_permissions()->set_write(true);
      if (rpc == Rpc::kMapAt) request->set_iova(0x400000);
      return request;
    }
    case Rpc::kUnmap: {
      auto request = std::make_unique<v1::UnmapRequest>();
      request->set_device_id(kMappedDevice);
      request->set_iova(uint64_t{1} << 30);
      request->set_size(kPage);
      return request;
    }
    case Rpc::kTranslate: {
      auto request = std::make_unique<v1::TranslateRequest>();
      request->set_device_id(kMappedDevice);
      request->set_iova(kMappedIova);
      request->set_size(kPage);
      request->set_access(v1::ACCESS_READ);
      return request;
    }
  }
  return nullptr;
}

// One row: a base request with fields set to extreme values, and the code
// the API documents for it.
struct Row {
  Rpc rpc;
  std::vector<std::pair<const char*, Value>> fields;  // path from the request
  StatusCode want;

  std::string Name() const {
    return absl::StrCat(RpcName(rpc), " ",
                        absl::StrJoin(fields, ", ", [](std::string* out, const auto& field) {
                          absl::StrAppend(out, field.first, " = ", field.second.text);
                        }));
  }
};

// Sets the scalar at `path` ("domain.iotlb_sets"; through a repeated
// message, its first element; a repeated scalar becomes that one element).
// False if there is no such field or it cannot hold `value`.
bool SetField(Message& message, absl::string_view path, Value value) {
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  Message* at = &message;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const FieldDescriptor* field = at->GetDescriptor()->FindFieldByName(parts[i]);
    if (field == nullptr || field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) return false;
    const Reflection* reflection = at->GetReflection();
    if (!field->is_repeated()) {
      at = reflection->MutableMessage(at, field);
    } else if (reflection->FieldSize(*at, field) > 0) {
      at = reflection->MutableRepeatedMessage(at, field, 0);
    } else {
      at = reflection->AddMessage(at, field);
    }
  }
  const FieldDescriptor* field = at->GetDescriptor()->FindFieldByName(parts.back());
  if (field == nullptr) return false;
  const Reflection* reflection = at->GetReflection();
  if (field->is_repeated()) reflection->ClearField(at, field);
  const auto as_signed = static_cast<int64_t>(value.bits);
  const bool fits_int32 = as_signed >= std::numeric_limits<int32_t>::min() &&
                          as_signed <= std::numeric_limits<int32_t>::max();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_UINT64:
      if (field->is_repeated()) return false;
      reflection->SetUInt64(at, field, value.bits);
      return true;
    case FieldDescriptor::CPPTYPE_UINT32:
      if (field->is_repeated() || value.bits > std::numeric_limits<uint32_t>::max()) return false;
      reflection->SetUInt32(at, field, static_cast<uint32_t>(value.bits));
      return true;
    case FieldDescriptor::CPPTYPE_INT64:
      if (field->is_repeated()) return false;
      reflection->SetInt64(at, field, as_signed);
      return true;
    case FieldDescriptor::CPPTYPE_INT32:
      if (field->is_repeated() || !fits_int32) return false;
      reflection->SetInt32(at, field, static_cast<int32_t>(as_signed));
      return true;
    case FieldDescriptor::CPPTYPE_BOOL:
      if (field->is_repeated() || value.bits > 1) return false;
      reflection->SetBool(at, field, value.bits == 1);
      return true;
    case FieldDescriptor::CPPTYPE_ENUM:
      if (!fits_int32) return false;
      if (field->is_repeated()) {
        reflection->AddEnumValue(at, field, static_cast<int>(as_signed));
      } else {
        reflection->SetEnumValue(at, field, static_cast<int>(as_signed));
      }
      return true;
    default:
      return false;
  }
}

// Refused extremes: each answered `want` with no effect.
std::vector<Row> RefusedRows() {
  constexpr StatusCode kInvalid = StatusCode::INVALID_ARGUMENT;
  constexpr StatusCode kOutOfRange = StatusCode::OUT_OF_RANGE;
  const Value kUnalignedPhys{"0x200800", 0x200800};
  const Value kUnalignedIova{"0x400800", 0x400800};
  const Value kUnalignedAperture{"0x1800", 0x1800};
  std::vector<Row> rows = {
      // ---- CreateDomainRequest.domain
      {Rpc::kCreateDomain, {{"domain.policy", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.policy", {"4", 4}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.policy", kMinusOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.policy", kMaxInt32}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_first", kOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_first", kUnalignedAperture}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_first", kTwoTo63}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_first", kMax64}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_first", kTopPage}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_last", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_last", kOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_last", {"0xfff", 0xfff}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_last", kTwoTo63}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_last", kMax64}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.aperture_last", {"2^48", uint64_t{1} << 48}}}, kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.aperture_first", kTopPage}, {"domain.aperture_last", kMax64}},
       kInvalid},
      {Rpc::kCreateDomain, {{"domain.page_sizes", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.page_sizes", {"4", 4}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.page_sizes", kMinusOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.page_sizes", kMaxInt32}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_sets", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_sets", {"3", 3}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_sets", {"2^17", 1 << 17}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_sets", kTwoTo31}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_sets", kMax32}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_ways", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_ways", {"65", 65}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iotlb_ways", kMax32}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_capacity", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_capacity", {"65537", 65537}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_capacity", kMax32}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.seconds", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.seconds", kMinusOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.seconds", {"11", 11}}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.seconds", kMaxInt64}}, kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.flush_queue_timeout.seconds", {"-2^63", uint64_t{1} << 63}}},
       kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.nanos", kMinusOne}}, kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.flush_queue_timeout.nanos", {"10^9", 1'000'000'000}}},
       kInvalid},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.nanos", kMaxInt32}}, kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.flush_queue_timeout.seconds", {"10", 10}},
        {"domain.flush_queue_timeout.nanos", kOne}},
       kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kOne},
        {"domain.reserved_regions.regions.size", {"0x1000", kPage}}},
       kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kMax64},
        {"domain.reserved_regions.regions.size", {"0x1000", kPage}}},
       kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kTopPage},
        {"domain.reserved_regions.regions.size", kTwoPages}},
       kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kTwoTo63},
        {"domain.reserved_regions.regions.size", {"2^63+4096", (uint64_t{1} << 63) + kPage}}},
       kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kTwoPages},
        {"domain.reserved_regions.regions.size", kTopPage}},
       kInvalid},
      {Rpc::kCreateDomain, {{"domain.reserved_regions.regions.size", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.reserved_regions.regions.size", kOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.reserved_regions.regions.size", kMax64}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.max_mappings", kZero}}, kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.max_mappings", {"2^40+1", (uint64_t{1} << 40) + 1}}},
       kInvalid},
      {Rpc::kCreateDomain, {{"domain.max_mappings", kTwoTo63}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.max_mappings", kMax64}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.bypass_window_base", kZero}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.bypass_window_base", kOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.bypass_window_base", kMax64}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.bypass_window_base", kTopPage}}, kInvalid},
      {Rpc::kCreateDomain,
       {{"domain.bypass_window_base", {"2^48-4096", (uint64_t{1} << 48) - kPage}}},
       kInvalid},
      {Rpc::kCreateDomain, {{"domain.iommu_unit", kOne}}, kInvalid},
      {Rpc::kCreateDomain, {{"domain.iommu_unit", kMax32}}, kInvalid},
      // ---- SetDomainPolicyRequest
      {Rpc::kSetDomainPolicy, {{"policy", kZero}}, kInvalid},
      {Rpc::kSetDomainPolicy, {{"policy", {"4", 4}}}, kInvalid},
      {Rpc::kSetDomainPolicy, {{"policy", kMinusOne}}, kInvalid},
      {Rpc::kSetDomainPolicy, {{"policy", kMaxInt32}}, kInvalid},
      // ---- MapRequest
      {Rpc::kMapAt, {{"iova", kZero}}, kOutOfRange},  // below the aperture
      {Rpc::kMapAt, {{"iova", kOne}}, kInvalid},
      {Rpc::kMapAt, {{"iova", kUnalignedIova}}, kInvalid},
      {Rpc::kMapAt, {{"iova", kTwoTo63}}, kOutOfRange},
      {Rpc::kMapAt, {{"iova", kMax64}}, kInvalid},
      {Rpc::kMapAt, {{"iova", kTopPage}, {"size", kTwoPages}}, kOutOfRange},
      {Rpc::kMapAt,
       {{"iova", {"2^48-4096", (uint64_t{1} << 48) - kPage}}, {"size", kTwoPages}},
       kOutOfRange},
      {Rpc::kMapAt, {{"bypass", {"4", 4}}}, kInvalid},
      {Rpc::kMapAt, {{"bypass", kMinusOne}}, kInvalid},
      {Rpc::kMapAt, {{"bypass", kMaxInt32}}, kInvalid},
      {Rpc::kMapAt, {{"permissions.read", kZero}, {"permissions.write", kZero}}, kInvalid},
  };
  // phys and size, with the IOVA fixed or chosen: the same answers.
  for (Rpc rpc : {Rpc::kMapAt, Rpc::kMapAnywhere}) {
    for (const Row& row : std::vector<Row>{
             {rpc, {{"phys", kOne}}, kInvalid},
             {rpc, {{"phys", kUnalignedPhys}}, kInvalid},
             {rpc, {{"phys", kTwoTo63}}, kOutOfRange},  // beyond physical memory
             {rpc, {{"phys", kMax64}}, kInvalid},
             {rpc, {{"phys", kTopPage}}, kOutOfRange},
             {rpc, {{"phys", kTopPage}, {"size", kTwoPages}}, kOutOfRange},  // wraps
             {rpc, {{"size", kZero}}, kInvalid},
             {rpc, {{"size", kOne}}, kInvalid},
             {rpc, {{"size", {"0x1001", kPage + 1}}}, kInvalid},
             {rpc, {{"size", kTwoTo63}}, kOutOfRange},
             {rpc, {{"size", kMax64}}, kInvalid},
             {rpc, {{"size", kTopPage}}, kOutOfRange},  // phys + size wraps
         }) {
      rows.push_back(row);
    }
  }
  const std::vector<Row> more = {
      // ---- UnmapRequest
      {Rpc::kUnmap, {{"iova", kOne}}, kInvalid},
      {Rpc::kUnmap, {{"iova", kMax64}}, kInvalid},
      {Rpc::kUnmap, {{"iova", {"0x100800", kMappedIova + 0x800}}}, kInvalid},
      {Rpc::kUnmap, {{"iova", kTopPage}, {"size", kTwoPages}}, kOutOfRange},
      {Rpc::kUnmap,
       {{"iova", {"2^63+4096", (uint64_t{1} << 63) + kPage}}, {"size", kTwoTo63}},
       kOutOfRange},
      {Rpc::kUnmap, {{"size", kZero}}, kInvalid},
      {Rpc::kUnmap, {{"size", kOne}}, kInvalid},
      {Rpc::kUnmap, {{"size", kMax64}}, kInvalid},
      {Rpc::kUnmap, {{"size", kTopPage}}, kOutOfRange},  // 1 GiB + size wraps
      // ---- TranslateRequest
      {Rpc::kTranslate, {{"size", kZero}}, kInvalid},
      {Rpc::kTranslate, {{"size", {"16 MiB + 1", (uint64_t{16} << 20) + 1}}}, kInvalid},
      {Rpc::kTranslate, {{"size", kTwoTo63}}, kInvalid},
      {Rpc::kTranslate, {{"size", kMax64}}, kInvalid},
      {Rpc::kTranslate, {{"iova", kMax64}, {"size", {"2", 2}}}, kInvalid},  // wraps
      {Rpc::kTranslate, {{"iova", kTopPage}, {"size", kTwoPages}}, kInvalid},
      {Rpc::kTranslate, {{"access", kZero}}, kInvalid},
      {Rpc::kTranslate, {{"access", {"3", 3}}}, kInvalid},
      {Rpc::kTranslate, {{"access", kMinusOne}}, kInvalid},
      {Rpc::kTranslate, {{"access", kMaxInt32}}, kInvalid},
  };
  rows.insert(rows.end(), more.begin(), more.end());
  // dma_mask_bits: 12-64.
  for (Rpc rpc : {Rpc::kRegisterDevice, Rpc::kUpdateDevice}) {
    const char* field = rpc == Rpc::kRegisterDevice ? "device.dma_mask_bits" : "dma_mask_bits";
    for (Value value : {kZero, kOne, Value{"11", 11}, Value{"65", 65}, kTwoTo31, kMax32}) {
      rows.push_back({rpc, {{field, value}}, kInvalid});
    }
  }
  return rows;
}

// Extremes that are valid values, with the answer the API documents; each
// is undone after (see Undo) so that the next row starts from the same
// broker.
std::vector<Row> AcceptedRows() {
  constexpr StatusCode kOk = StatusCode::OK;
  return {
      {Rpc::kCreateDomain, {{"domain.aperture_first", kZero}}, kOk},
      {Rpc::kCreateDomain, {{"domain.aperture_last", {"0x1fff", 0x1fff}}}, kOk},
      {Rpc::kCreateDomain, {{"domain.iotlb_sets", kOne}}, kOk},
      {Rpc::kCreateDomain, {{"domain.iotlb_ways", kOne}}, kOk},
      {Rpc::kCreateDomain, {{"domain.flush_queue_capacity", kOne}}, kOk},
      {Rpc::kCreateDomain, {{"domain.flush_queue_timeout.nanos", kOne}}, kOk},
      {Rpc::kCreateDomain, {{"domain.max_mappings", kOne}}, kOk},
      {Rpc::kCreateDomain, {{"domain.bypass_window_base", kTwoTo63}}, kOk},
      {Rpc::kCreateDomain, {{"domain.iommu_unit", kZero}}, kOk},
      // Reserved regions outside the aperture are allowed, up to 2^64.
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kTopPage},
        {"domain.reserved_regions.regions.size", {"0x1000", kPage}}},
       kOk},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", kTwoTo63},
        {"domain.reserved_regions.regions.size", kTwoTo63}},
       kOk},
      {Rpc::kCreateDomain,
       {{"domain.reserved_regions.regions.start", {"0x1000", kPage}},
        {"domain.reserved_regions.regions.size", kTopPage}},
       kOk},
      {Rpc::kRegisterDevice, {{"device.dma_mask_bits", {"12", 12}}}, kOk},
      {Rpc::kUpdateDevice, {{"dma_mask_bits", {"12", 12}}}, kOk},
      {Rpc::kMapAt, {{"phys", kZero}}, kOk},
      {Rpc::kMapAnywhere, {{"phys", kZero}}, kOk},
      // Nothing mapped there: 0 bytes (counted as a double unmap).
      {Rpc::kUnmap, {{"iova", kZero}}, kOk},
      {Rpc::kUnmap, {{"iova", kTwoTo63}}, kOk},
      {Rpc::kUnmap, {{"iova", kTopPage}}, kOk},  // ends exactly at 2^64
      {Rpc::kUnmap, {{"size", kTwoTo63}}, kOk},
      {Rpc::kUnmap, {{"iova", kTwoTo63}, {"size", kTwoTo63}}, kOk},  // ends exactly at 2^64
      // A fault is a result, not an error.
      {Rpc::kTranslate, {{"iova", kZero}}, kOk},
      {Rpc::kTranslate, {{"iova", kTwoTo63}}, kOk},
      {Rpc::kTranslate, {{"iova", kMax64}, {"size", kOne}}, kOk},
      {Rpc::kTranslate, {{"size", kOne}}, kOk},
      {Rpc::kTranslate, {{"size", {"16 MiB", uint64_t{16} << 20}}}, kOk},
  };
}

class ExtremeValuesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = TestBroker::Start();
    ASSERT_NE(broker_, nullptr);
    const std::pair<const char*, v1::Policy> domains[] = {
        {"p", v1::POLICY_PARANOID}, {"f", v1::POLICY_FAST}, {"t", v1::POLICY_PT}};
    for (const auto& [id, policy] : domains) {
      v1::DomainSpec spec;
      spec.set_id(id);
      spec.set_policy(policy);
      broker_->CreateDomainWithDevice(spec, absl::StrCat("d", id));
      v1::MapRequest map;
      map.set_device_id(absl::StrCat("d", id));
      map.set_iova(kMappedIova);
      map.set_phys(kMappedIova);
      map.set_size(2 * kPage);
      map.mutable_permissions()->set_read(true);
      ExpectOk(broker_->Call(&Stub::Map, map));
    }
    v1::UpdateDeviceRequest bypass;
    bypass.set_device_id("df");
    bypass.set_allow_bypass(true);
    ExpectOk(broker_->Call(&Stub::UpdateDevice, bypass));
    v1::RegisterDeviceRequest detached;
    detached.mutable_device()->set_id("dx");
    ExpectOk(broker_->Call(&Stub::RegisterDevice, detached));
  }

  BrokerState State() { return ReadBrokerState(broker_->server().iommu()); }

  // The row's request: its base with the row's fields set.
  std::unique_ptr<Message> RequestOf(const Row& row) {
    std::unique_ptr<Message> request = BaseRequest(row.rpc);
    for (const auto& [path, value] : row.fields) {
      EXPECT_TRUE(SetField(*request, path, value))
          << row.Name() << ": " << path << " cannot hold " << value.text;
    }
    return request;
  }

  // Sends `request` as the unary call of `rpc`; the response lands in
  // `*response` (a message of the call's response type).
  grpc::Status Send(Rpc rpc, const Message& request, std::unique_ptr<Message>* response);
  // Sends `request` as the one operation of a Batch message.
  v1::OperationResult SendInBatch(Rpc rpc, const Message& request);
  // Takes back what an accepted row did.
  void Undo(Rpc rpc, const Message& request, const Message& response);

  std::unique_ptr<TestBroker> broker_;
};

grpc::Status ExtremeValuesTest::Send(Rpc rpc, const Message& request,
                                     std::unique_ptr<Message>* response) {
  auto call = [&](auto method, const auto& typed_request, auto typed_response) {
    grpc::Status status = broker_->Call(method, typed_request, typed_response.get());
    *response = std::move(typed_response);
    return status;
  };
  switch (rpc) {
    case Rpc::kCreateDomain:
      return call(&Stub::CreateDomain, static_cast<const v1::CreateDomainRequest&>(request),
                  std::make_unique<v1::Domain>());
    case Rpc::kSetDomainPolicy:
      return call(&Stub::SetDomainPolicy, static_cast<const v1::SetDomainPolicyRequest&>(request),
                  std::make_unique<v1::Domain>());
    case Rpc::kRegisterDevice:
      return call(&Stub::RegisterDevice, static_cast<const v1::RegisterDeviceRequest&>(request),
                  std::make_unique<v1::Device>());
    case Rpc::kUpdateDevice:
      return call(&Stub::UpdateDevice, static_cast<const v1::UpdateDeviceRequest&>(request),
                  std::make_unique<v1::Device>());
    case Rpc::kMapAt:
    case Rpc::kMapAnywhere:
      return call(&Stub::Map, static_cast<const v1::MapRequest&>(request),
                  std::make_unique<v1::MapResponse>());
    case Rpc::kUnmap:
      return call(&Stub::Unmap, static_cast<const v1::UnmapRequest&>(request),
                  std::make_unique<v1::UnmapResponse>());
    case Rpc::kTranslate:
      return call(&Stub::Translate, static_cast<const v1::TranslateRequest&>(request),
                  std::make_unique<v1::TranslateResponse>());
  }
  return grpc::Status(StatusCode::INTERNAL, "no such rpc");
}

v1::OperationResult ExtremeValuesTest::SendInBatch(Rpc rpc, const Message& request) {
  v1::BatchRequest batch;
  v1::Operation* operation = batch.add_operations();
  switch (rpc) {
    case Rpc::kMapAt:
    case Rpc::kMapAnywhere:
      *operation->mutable_map() = static_cast<const v1::MapRequest&>(request);
      break;
    case Rpc::kUnmap:
      *operation->mutable_unmap() = static_cast<const v1::UnmapRequest&>(request);
      break;
    case Rpc::kTranslate:
      *operation->mutable_translate() = static_cast<const v1::TranslateRequest&>(request);
      break;
    default:
      ADD_FAILURE() << RpcName(rpc) << " is no data-path operation";
      return {};
  }
  std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream =
      broker_->stub().Batch(context.get());
  stream->Write(batch);
  stream->WritesDone();
  v1::BatchResponse response;
  const bool read = stream->Read(&response);
  const grpc::Status finished = stream->Finish();
  EXPECT_TRUE(read && finished.ok() && response.results_size() == 1)
      << "the Batch stream ended with " << CodeName(finished.error_code()) << ": "
      << finished.error_message();
  return response.results_size() == 1 ? response.results(0) : v1::OperationResult();
}

void ExtremeValuesTest::Undo(Rpc rpc, const Message& request, const Message& response) {
  switch (rpc) {
    case Rpc::kCreateDomain: {
      v1::DestroyDomainRequest destroy;
      destroy.set_domain_id(static_cast<const v1::CreateDomainRequest&>(request).domain().id());
      ExpectOk(broker_->Call(&Stub::DestroyDomain, destroy));
      return;
    }
    case Rpc::kRegisterDevice: {
      v1::UnregisterDeviceRequest unregister;
      unregister.set_device_id(
          static_cast<const v1::RegisterDeviceRequest&>(request).device().id());
      ExpectOk(broker_->Call(&Stub::UnregisterDevice, unregister));
      return;
    }
    case Rpc::kUpdateDevice: {
      ExpectOk(broker_->Call(&Stub::UpdateDevice,
                             static_cast<const v1::UpdateDeviceRequest&>(*BaseRequest(rpc))));
      return;
    }
    case Rpc::kMapAt:
    case Rpc::kMapAnywhere: {
      v1::UnmapRequest unmap;
      unmap.set_device_id(static_cast<const v1::MapRequest&>(request).device_id());
      unmap.set_iova(static_cast<const v1::MapResponse&>(response).iova());
      unmap.set_size(static_cast<const v1::MapRequest&>(request).size());
      ExpectOk(broker_->Call(&Stub::Unmap, unmap));
      return;
    }
    case Rpc::kSetDomainPolicy:
    case Rpc::kUnmap:
    case Rpc::kTranslate:
      return;  // nothing to take back (counters only)
  }
}

TEST_F(ExtremeValuesTest, RefusedWithTheDocumentedCodeAndNoEffect) {
  for (const Row& row : RefusedRows()) {
    std::unique_ptr<Message> request = RequestOf(row);
    const BrokerState before = State();
    std::unique_ptr<Message> response;
    const grpc::Status status = Send(row.rpc, *request, &response);
    EXPECT_EQ(status.error_code(), row.want)
        << row.Name() << ": want " << CodeName(row.want) << ", got "
        << CodeName(status.error_code()) << " \"" << status.error_message() << "\"";
    if (!status.ok()) {
      EXPECT_FALSE(status.error_message().empty()) << row.Name() << ": an error without a message";
    }
    EXPECT_EQ(DiffBrokerState(before, State()), "") << row.Name() << " changed the broker";
    if (!status.ok() && IsDataPath(row.rpc)) {
      const v1::OperationResult result = SendInBatch(row.rpc, *request);
      EXPECT_EQ(result.status().code(), static_cast<int>(row.want))
          << row.Name() << " in a Batch: want " << CodeName(row.want) << ", got "
          << CodeName(result.status().code()) << " \"" << result.status().message() << "\"";
      EXPECT_EQ(result.result_case(), v1::OperationResult::RESULT_NOT_SET) << row.Name();
      EXPECT_EQ(DiffBrokerState(before, State()), "")
          << row.Name() << " in a Batch changed the broker";
    }
    if (status.ok()) Undo(row.rpc, *request, *response);
  }
}

TEST_F(ExtremeValuesTest, ValidExtremesAnsweredAsDocumented) {
  for (const Row& row : AcceptedRows()) {
    std::unique_ptr<Message> request = RequestOf(row);
    std::unique_ptr<Message> response;
    const grpc::Status status = Send(row.rpc, *request, &response);
    EXPECT_EQ(status.error_code(), row.want)
        << row.Name() << ": want " << CodeName(row.want) << ", got "
        << CodeName(status.error_code()) << " \"" << status.error_message() << "\"";
    if (!status.ok()) continue;
    if (row.rpc == Rpc::kUnmap) {
      EXPECT_EQ(static_cast<const v1::UnmapResponse&>(*response).bytes_unmapped(), 0u)
          << row.Name() << " unmapped something";
    }
    Undo(row.rpc, *request, *response);
  }
}

// A reserved region may end exactly at 2^64 (start + size is then 0 in 64
// bits); it still keeps maps out, whether they claim IOVA = PA
// (identity_first) or fix their IOVA.
TEST_F(ExtremeValuesTest, ReservedRegionEndingAt2To64KeepsMapsOut) {
  v1::DomainSpec spec;
  spec.set_id("r");
  spec.set_policy(v1::POLICY_FAST);
  spec.set_identity_first(true);
  v1::ReservedRegion* region = spec.mutable_reserved_regions()->add_regions();
  region->set_name("top");
  region->set_start(0x100000);
  region->set_size(0 - region->start());
  broker_->CreateDomainWithDevice(spec, "dr");
  const BrokerState before = State();
  v1::MapRequest map;
  map.set_device_id("dr");
  map.set_phys(0x200000);
  map.set_size(kPage);
  map.mutable_permissions()->set_read(true);
  map.set_iova(0x200000);
  v1::MapResponse mapped;
  grpc::Status status = broker_->Call(&Stub::Map, map, &mapped);
  EXPECT_EQ(status.error_code(), StatusCode::ALREADY_EXISTS)
      << "MapRequest iova = 0x200000 inside [0x100000, 2^64): " << status.error_message() << " "
      << mapped.ShortDebugString();
  EXPECT_EQ(DiffBrokerState(before, State()), "");
  // The allocator has no room either: the identity region is the
  // allocator's no more, and the rest of the aperture is reserved.
  map.clear_iova();
  status = broker_->Call(&Stub::Map, map, &mapped);
  EXPECT_FALSE(status.ok()) << "MapRequest phys = 0x200000 mapped inside [0x100000, 2^64): "
                            << mapped.ShortDebugString();
}

// A translation outside the aperture faults (a result): the extreme IOVAs
// above, by reason.
TEST_F(ExtremeValuesTest, TranslationsAtExtremeAddressesFault) {
  for (const Value& iova : {kZero, kOne, kTwoTo63, kMax64}) {
    v1::TranslateRequest request =
        static_cast<const v1::TranslateRequest&>(*BaseRequest(Rpc::kTranslate));
    request.set_iova(iova.bits);
    request.set_size(1);
    v1::TranslateResponse response;
    ExpectOk(broker_->Call(&Stub::Translate, request, &response));
    EXPECT_EQ(response.fault().reason(), v1::FAULT_REASON_OUTSIDE_APERTURE)
        << "TranslateRequest iova = " << iova.text << ": " << response.ShortDebugString();
  }
}

// Batch: at most max_batch_operations (4096 by default) per message.
TEST_F(ExtremeValuesTest, BatchOperationCountExtremes) {
  std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
  auto stream = broker_->stub().Batch(context.get());
  v1::BatchResponse response;
  ASSERT_TRUE(stream->Write(v1::BatchRequest()));
  ASSERT_TRUE(stream->Read(&response)) << "an empty Batch message is answered";
  EXPECT_EQ(response.results_size(), 0);

  const BrokerState before = State();
  v1::BatchRequest too_many;
  for (int i = 0; i < 4097; ++i) {
    *too_many.add_operations()->mutable_map() =
        static_cast<const v1::MapRequest&>(*BaseRequest(Rpc::kMapAnywhere));
  }
  stream->Write(too_many);
  EXPECT_FALSE(stream->Read(&response));
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_EQ(DiffBrokerState(before, State()), "") << "a refused Batch message ran operations";
}

// DeviceIotlbRequest.acknowledged_sequence: at most the last sequence the
// broker sent on the link (none yet: 0); beyond it the link ends,
// INVALID_ARGUMENT. Each value on a device of its own: a device's ended link
// is released only after the client has seen it end.
TEST_F(ExtremeValuesTest, AcknowledgedSequenceBeyondWhatWasSent) {
  const std::pair<Value, const char*> cases[] = {
      {kZero, "dp"}, {kOne, "df"}, {kTwoTo63, "dt"}, {kMax64, "dx"}};
  for (const auto& [sequence, device] : cases) {
    const BrokerState before = State();
    std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
    auto stream = broker_->stub().LinkDeviceIotlb(context.get());
    v1::DeviceIotlbRequest link;
    link.mutable_link()->set_device_id(device);
    ASSERT_TRUE(stream->Write(link));
    v1::DeviceIotlbInvalidations confirmation;
    ASSERT_TRUE(stream->Read(&confirmation)) << "the link was not confirmed";
    v1::DeviceIotlbRequest ack;
    ack.set_acknowledged_sequence(sequence.bits);
    stream->Write(ack);
    stream->WritesDone();
    v1::DeviceIotlbInvalidations ignored;
    while (stream->Read(&ignored)) {
    }
    const grpc::Status status = stream->Finish();
    if (sequence.bits == 0) {
      EXPECT_TRUE(status.ok()) << "acknowledged_sequence = 0: " << CodeName(status.error_code())
                               << " " << status.error_message();
    } else {
      EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT)
          << "acknowledged_sequence = " << sequence.text << ": " << status.error_message();
    }
    EXPECT_EQ(DiffBrokerState(before, State()), "")
        << "acknowledged_sequence = " << sequence.text << " changed the broker";
  }
}

}  // namespace
}  // namespace iommu_broker::testing
