// A client for the standard gRPC health service (grpc.health.v1.Health/Check)
// for tests. Debian's grpc++ ships the server side (EnableDefaultHealthCheckService)
// but no generated client stubs, so the call goes through grpc::GenericStub
// with the two tiny messages encoded by hand:
//
//   message HealthCheckRequest  { string service = 1; }
//   message HealthCheckResponse { ServingStatus status = 1; }
//
//   auto channel = grpc::CreateChannel("unix:/tmp/x/broker.sock", ...);
//   absl::StatusOr<ServingStatus> status = health_check::WaitForServing(channel, "");
//
// Thread-safety: stateless functions; each call uses its own context.
#ifndef IOMMU_BROKER_TESTS_SERVER_HEALTH_CHECK_H_
#define IOMMU_BROKER_TESTS_SERVER_HEALTH_CHECK_H_

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "grpcpp/support/status.h"

namespace iommu_broker::health_check {

inline constexpr absl::string_view kCheckMethod = "/grpc.health.v1.Health/Check";

// HealthCheckResponse.ServingStatus, by wire value.
enum class ServingStatus : int {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,  // Watch only; Check answers NOT_FOUND instead
};

namespace internal {

inline void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// False at the end of `data` or on a malformed varint.
inline bool ReadVarint(absl::string_view& data, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && !data.empty(); shift += 7) {
    const auto byte = static_cast<uint8_t>(data.front());
    data.remove_prefix(1);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// HealthCheckRequest{service}: field 1, wire type 2 (length-delimited). An
// empty service is the empty message, as proto3 omits default values.
inline std::string EncodeRequest(absl::string_view service) {
  std::string bytes;
  if (service.empty()) return bytes;
  bytes.push_back(0x0a);  // (1 << 3) | 2
  AppendVarint(service.size(), &bytes);
  bytes.append(service.data(), service.size());
  return bytes;
}

// HealthCheckResponse.status (field 1, varint); unknown fields are skipped
// so that a newer server's additions do not break the parse.
inline absl::StatusOr<ServingStatus> DecodeResponse(absl::string_view data) {
  uint64_t status = 0;  // proto3: absent means UNKNOWN
  while (!data.empty()) {
    uint64_t tag = 0;
    if (!ReadVarint(data, &tag)) return absl::DataLossError("truncated tag");
    const uint64_t field = tag >> 3;
    const uint64_t wire_type = tag & 7;
    uint64_t value = 0;
    switch (wire_type) {
      case 0:  // varint
        if (!ReadVarint(data, &value)) return absl::DataLossError("truncated varint");
        if (field == 1) status = value;
        break;
      case 1:  // 64-bit
        if (data.size() < 8) return absl::DataLossError("truncated fixed64");
        data.remove_prefix(8);
        break;
      case 2:  // length-delimited
        if (!ReadVarint(data, &value) || value > data.size()) {
          return absl::DataLossError("truncated length-delimited field");
        }
        data.remove_prefix(value);
        break;
      case 5:  // 32-bit
        if (data.size() < 4) return absl::DataLossError("truncated fixed32");
        data.remove_prefix(4);
        break;
      default:
        return absl::DataLossError(absl::StrCat("wire type ", wire_type, " is not supported"));
    }
  }
  return static_cast<ServingStatus>(status);
}

}  // namespace internal

// One Check call: the serving status, or the call's gRPC error (codes map
// one to one: NOT_FOUND for an unknown service, UNAVAILABLE when nothing
// listens, DEADLINE_EXCEEDED past `timeout`).
inline absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                                 absl::string_view service,
                                                 absl::Duration timeout = absl::Seconds(10)) {
  const std::string request_bytes = internal::EncodeRequest(service);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  // The deadline bounds the wait below: the callback always runs.
  context.set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(timeout));
  // Shared with the callback, which may still be returning from set_value
  // when get() wakes this thread.
  auto done = std::make_shared<std::promise<grpc::Status>>();
  std::future<grpc::Status> result = done->get_future();
  grpc::GenericStub stub(channel);
  stub.UnaryCall(&context, std::string(kCheckMethod), grpc::StubOptions(), &request, &response,
                 [done](grpc::Status status) { done->set_value(std::move(status)); });
  const grpc::Status status = result.get();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("health check: ", status.error_message()));
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::DataLossError("unreadable health response");
  std::string bytes;
  for (const grpc::Slice& part : slices) {
    bytes.append(reinterpret_cast<const char*>(part.begin()), part.size());
  }
  return internal::DecodeResponse(bytes);
}

// Polls until the server answers SERVING for `service`, at most `attempts`
// times: each attempt waits up to `connect_timeout` for the channel to
// connect, then checks. Returns the last answer (or error) when the attempts
// run out, so a caller's failure message says what the server last said.
// The bounds only keep a broken server from hanging a test.
inline absl::StatusOr<ServingStatus> WaitForServing(
    const std::shared_ptr<grpc::Channel>& channel, absl::string_view service, int attempts = 100,
    absl::Duration connect_timeout = absl::Milliseconds(200)) {
  absl::StatusOr<ServingStatus> last = absl::UnavailableError("no attempt made");
  for (int attempt = 0; attempt < attempts; ++attempt) {
    if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                  absl::ToChronoNanoseconds(connect_timeout))) {
      last = absl::UnavailableError(
          absl::StrCat("channel not connected after ", attempt + 1, " attempts"));
      continue;
    }
    last = CheckHealth(channel, service);
    if (last.ok() && *last == ServingStatus::kServing) return last;
    // Connected but not (yet) serving: do not spin on the server.
    std::this_thread::sleep_for(absl::ToChronoNanoseconds(connect_timeout));
  }
  return last;
}

}  // namespace iommu_broker::health_check

#endif  // IOMMU_BROKER_TESTS_SERVER_HEALTH_CHECK_H_
