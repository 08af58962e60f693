// Helpers for tests that call a broker through the generated IommuBroker
// stub: unary calls with a deadline, gMock matchers for grpc::Status and a
// Batch operation's status, request and operation builders, and the Batch
// and WatchEvents streams.
//
//   Reply<v1::MapResponse> reply = Call(stub, &Stub::Map, MapAnywhere(device, phys, size));
//   EXPECT_THAT(reply.status, StatusIs(grpc::StatusCode::OUT_OF_RANGE, HasSubstr("phys")));
//
//   BatchStream batch = OpenBatch(stub);
//   std::optional<v1::BatchResponse> answer = RoundTrip(*batch.stream, request);
//
// Every call and stream carries test_broker.h's deadline, so a server bug
// fails a test instead of hanging it.
//
// Thread-safety: stateless functions; each stream belongs to one thread.
#ifndef IOMMU_BROKER_TESTS_SERVER_RPC_HELPERS_H_
#define IOMMU_BROKER_TESTS_SERVER_RPC_HELPERS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "grpcpp/support/sync_stream.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/server/test_broker.h"

// gtest prints a grpc::Status through this (found by argument-dependent
// lookup) rather than as bytes.
namespace grpc {
inline void PrintTo(const Status& status, std::ostream* out) {
  *out << "status " << status.error_code() << " \"" << status.error_message() << "\"";
}
}  // namespace grpc

namespace iommu_broker::testing {

using Stub = v1::IommuBroker::Stub;

// ---------------------------------------------------------------------------
// Calls and matchers

template <typename Response>
struct Reply {
  grpc::Status status;
  Response response;
};

template <typename Request, typename Response>
using UnaryMethod = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

// One unary RPC with a deadline.
template <typename Request, typename Response>
Reply<Response> Call(Stub& stub, UnaryMethod<Request, Response> method, const Request& request) {
  std::unique_ptr<grpc::ClientContext> context = ContextWithDeadline();
  Reply<Response> reply;
  reply.status = (stub.*method)(context.get(), request, &reply.response);
  return reply;
}

MATCHER(IsOk, "is OK") { return arg.ok(); }

// A grpc::Status with `code` and a message matching `message`.
MATCHER_P2(StatusIs, code, message,
           absl::StrCat("has code ", code, " and a message that ",
                        ::testing::DescribeMatcher<std::string>(message))) {
  return arg.error_code() == code &&
         ::testing::ExplainMatchResult(message, arg.error_message(), result_listener);
}

// The same for one operation of a Batch.
MATCHER_P2(OperationStatusIs, code, message,
           absl::StrCat("has code ", code, " and a message that ",
                        ::testing::DescribeMatcher<std::string>(message))) {
  *result_listener << "code " << arg.code() << " \"" << arg.message() << "\"";
  return arg.code() == static_cast<int>(code) &&
         ::testing::ExplainMatchResult(message, arg.message(), result_listener);
}

// ---------------------------------------------------------------------------
// Requests

v1::DomainSpec DomainSpec(const std::string& id, v1::Policy policy);
v1::DeviceSpec DeviceSpec(const std::string& id, bool allow_bypass = false);
// A read-write map where the broker picks the IOVA (DMA-API style).
v1::MapRequest MapAnywhere(const std::string& device, uint64_t phys, uint64_t size);
// A read-write map at a fixed IOVA (virtio-iommu style).
v1::MapRequest MapAt(const std::string& device, uint64_t iova, uint64_t phys, uint64_t size);
v1::MapRequest MapBypass(const std::string& device, uint64_t phys, uint64_t size,
                         v1::BypassMode mode);
v1::UnmapRequest UnmapOf(const std::string& device, uint64_t iova, uint64_t size);
v1::TranslateRequest TranslateOf(const std::string& device, uint64_t iova, uint64_t size,
                                 v1::Access access = v1::ACCESS_READ);
v1::FlushRequest FlushOf(const std::string& domain);

v1::Operation MapOp(const v1::MapRequest& request);
v1::Operation UnmapOp(const v1::UnmapRequest& request);
v1::Operation TranslateOp(const v1::TranslateRequest& request);
v1::Operation FlushOp(const std::string& domain);

v1::WatchEventsRequest WatchFaults(const std::string& domain = "", const std::string& device = "");

// ---------------------------------------------------------------------------
// Streams

using BatchReaderWriter = grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>;

// A Batch stream and the context it lives in (destroyed after it).
struct BatchStream {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<BatchReaderWriter> stream;
};

BatchStream OpenBatch(Stub& stub);

// Sends one message and reads its answer; nullopt when the stream ended.
std::optional<v1::BatchResponse> RoundTrip(BatchReaderWriter& stream,
                                           const v1::BatchRequest& request);

// Opens a Batch stream and proves with an empty message that the server
// serves it (and so holds a stream slot for it); otherwise the stream's
// final status.
struct ServedBatch {
  BatchStream batch;
  grpc::Status refusal;  // when not served
  bool served = false;
};

ServedBatch OpenServedBatch(Stub& stub);
// Slots of ended streams come back when the server has run the stream's
// OnDone, after the client saw it end: retries until a new stream is
// served (or the call deadline passed).
ServedBatch OpenServedBatchEventually(Stub& stub);

using EventReader = grpc::ClientReader<v1::Event>;

struct EventStream {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<EventReader> stream;
};

// Opens a WatchEvents stream and waits for its headers: the broker sends
// them once it has subscribed, so faults from then on are delivered.
EventStream Watch(Stub& stub, const v1::WatchEventsRequest& request);

// A stream the broker refuses ends without an event; its status says why.
grpc::Status RefusedWatch(Stub& stub, const v1::WatchEventsRequest& request);

}  // namespace iommu_broker::testing

#endif  // IOMMU_BROKER_TESTS_SERVER_RPC_HELPERS_H_
