// libFuzzer target: the API's streaming calls, driven by arbitrary bytes
// against a broker served in-process over loopback gRPC: WatchEvents
// (WatchEventsRequest), LinkDeviceIotlb (DeviceIotlbRequest messages on one
// link) and Batch streams of several BatchRequest messages, each ended in
// every way a client can end it: WritesDone, cancelled, abandoned with
// operations in flight (its context destroyed), or held open so that the
// broker's stream limit refuses the streams after it. broker_service_fuzzer
// covers the unary calls and single Batch messages; this target covers what
// needs a live stream.
//
// Input: records of [kind][length][length bytes], at most 16; kind modulo 3:
// - 0 watch, [plan][WatchEventsRequest]: the stream is opened and its
//   headers awaited (the broker has subscribed by then); plan bits 0-1 make
//   events with unary calls on the device of bits 2-3 (bit 0: a faulting
//   Translate; bit 1: Map, Unmap and Flush of a page); bits 4-5 are the
//   events to read (0-3) before the stream is cancelled.
// - 1 link, [plan][steps]: a LinkDeviceIotlb stream, each step
//   [op][length][bytes] with op modulo 4: 0 write the bytes as a
//   DeviceIotlbRequest (the first one should link), 1 read a message, 2
//   acknowledge the last sequence read, 3 map page bytes[1] on device
//   bytes[0] and unmap it in the background (a paranoid unmap waits for the
//   linked cache). Plan bit 0 ends it: WritesDone (0) or cancel (1).
// - 2 batch, [plan][steps]: a Batch stream, each step [op][length][bytes]
//   with op modulo 2: 0 write the bytes as a BatchRequest, 1 read the answer
//   to the oldest batch not yet answered. Plan modulo 4 ends it: WritesDone
//   and read every answer owed, TryCancel, abandon, or hold it open until
//   the input ends (then abandon it; up to 3 held at a time).
// Bytes that do not parse as their message are skipped, as gRPC would refuse
// them. At most 16 steps per stream; a read that may find nothing waits
// 10 ms; every call has a 1 s deadline. So no input runs long.
//
// The broker is started once per process with broker_service_fuzzer's set-up
// (a paranoid, a fast and a pt domain, "p", "f", "t", with devices "0" on p,
// "1" on f (allow_bypass, 40-bit mask), "2" on t (32-bit mask) and "3"
// detached) and small limits, so that inputs reach them: 3 streams, 8
// operations per batch, 4 unread events per watcher or link, 50 ms for a
// cache's acknowledgement.
//
// Besides crashes, sanitizer findings and leaks, an input fails (a message,
// then abort) when
// - a call ends with a code outside the API's (INTERNAL, UNKNOWN, ... are
//   bugs; CANCELLED and DEADLINE_EXCEEDED are the API's, as the fuzzer
//   cancels and sets deadlines), or with an error without a message;
// - a batch's answer has not one result per operation, a failed operation
//   carries a result or a code outside the API's, or a stream that the client
//   closed ends OK with batches unanswered;
// - a watch delivers an event it did not ask for (kind, domain, device) or
//   faults out of sequence order;
// - a link's first message is not empty, or its invalidations are not
//   numbered 1, 2, ...;
// - once the input's streams have all ended, the broker does not give every
//   stream slot back (3 new Batch streams are not all served at once within
//   2 s), or fails an operation of the batch that unmaps everything and
//   flushes (it also keeps inputs from seeing each other's mappings).
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/text_format.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_callback.h"
#include "grpcpp/support/status.h"
#include "grpcpp/support/sync_stream.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "server/broker_server.h"
#include "server/log.h"
#include "tests/fuzz/documented_codes.h"

namespace iommu_broker {
namespace {

using Stub = v1::IommuBroker::Stub;
using BatchStream = grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>;
using Clock = std::chrono::steady_clock;

// The broker's limits, small so that inputs reach them.
constexpr size_t kMaxConcurrentStreams = 3;
constexpr int kMaxBatchOperations = 8;  // the clean-up batch (6) must fit
constexpr int kQueueCapacity = 4;       // unread events per watcher, invalidations per link
constexpr int64_t kAckTimeoutNanos = 50'000'000;

// Every call's deadline, so that no input can hang.
constexpr std::chrono::seconds kCallTimeout{1};
// How long a read waits for a message that may never come.
constexpr std::chrono::milliseconds kMessageWait{10};
// How long an input's stream slots may take to come back: the broker gives
// one back after its client has seen the stream end.
constexpr std::chrono::seconds kSlotReturnTimeout{2};
// Bounds on an input's work, hence its time.
constexpr int kMaxRecords = 16;
constexpr int kMaxSteps = 16;

constexpr uint64_t kPage = 4096;
// Nothing is mapped at or above it (the default aperture ends below).
constexpr uint64_t kIovaLimit = uint64_t{1} << 48;
// Far from the seeds' maps, and above the masks of devices "1" and "2":
// translating it faults on every device (unless the input mapped it).
constexpr uint64_t kFaultingIova = uint64_t{1} << 40;
// Where the watch's and the link's own maps go (identity: IOVA = PA).
constexpr uint64_t kWatchPage = 0x300000;
constexpr uint64_t kLinkPages = 0x400000;

// The broker's devices and the domains they stay attached to (inputs only
// reach the data path, so no input moves them); "3" is detached.
struct Placement {
  const char* device;
  const char* domain;
};
constexpr Placement kPlacements[] = {{"0", "p"}, {"1", "f"}, {"2", "t"}, {"3", ""}};

// The domain `device` stays on; empty for the detached one and for ids
// that name no device.
std::string DomainOf(const std::string& device) {
  for (const Placement& placement : kPlacements) {
    if (device == placement.device) return placement.domain;
  }
  return "";
}

constexpr char kBrokerSetup[] = R"pb(
  listen_address: "127.0.0.1:0"
  metrics_listen_address: "none"
  engine { physical_memory_bytes: 1073741824 }
  domains { id: "p" policy: POLICY_PARANOID }
  domains { id: "f" policy: POLICY_FAST flush_queue_capacity: 8 }
  domains { id: "t" policy: POLICY_PT }
  devices {
    device { id: "0" }
    attach_to_domain_id: "p"
  }
  devices {
    device { id: "1" dma_mask_bits: 40 allow_bypass: true }
    attach_to_domain_id: "f"
  }
  devices {
    device { id: "2" dma_mask_bits: 32 }
    attach_to_domain_id: "t"
  }
  devices { device { id: "3" } }
)pb";

[[noreturn]] void Fail(absl::string_view what) {
  std::fprintf(stderr, "broker_stream_fuzzer: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

std::string CodeName(int code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// The codes a call may end with: the API's (DocumentedCode),
// UNAVAILABLE (a draining broker), UNAUTHENTICATED, and CANCELLED and
// DEADLINE_EXCEEDED, which the fuzzer causes itself.
bool DocumentedCallCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::UNAUTHENTICATED:
      return true;
    default:
      return DocumentedCode(static_cast<absl::StatusCode>(code));
  }
}

// A documented code, and a message with every error.
void CheckEnd(absl::string_view call, const grpc::Status& status) {
  const grpc::StatusCode code = status.error_code();
  if (!DocumentedCallCode(code)) {
    Fail(absl::StrCat(call, " ended with ", CodeName(code), ": ", status.error_message()));
  }
  if (!status.ok() && status.error_message().empty()) {
    Fail(absl::StrCat(call, " ended with ", CodeName(code), " without a message"));
  }
}

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
}

template <typename Message>
bool Parse(absl::string_view bytes, Message& message) {
  return message.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

template <typename Message>
std::string Describe(const Message& message) {
  return absl::StrCat(message.GetTypeName(), " {", message.ShortDebugString(), "}");
}

// ---------------------------------------------------------------------------
// Input decoding

// An input record or a stream's step.
struct Record {
  uint8_t kind = 0;
  absl::string_view bytes;
};

// Splits bytes into records [kind][length][length bytes] (a length past the
// end takes what is left), at most `max_records` of them.
class RecordReader final {
 public:
  RecordReader(absl::string_view bytes, int max_records) : rest_(bytes), left_(max_records) {}

  // The next record; false when none is left.
  bool Next(Record& record) {
    if (rest_.size() < 2 || left_ == 0) return false;
    --left_;
    record.kind = static_cast<uint8_t>(rest_[0]);
    const size_t length = std::min<size_t>(static_cast<uint8_t>(rest_[1]), rest_.size() - 2);
    record.bytes = rest_.substr(2, length);
    rest_.remove_prefix(2 + length);
    return true;
  }

 private:
  absl::string_view rest_;
  int left_;
};

// The first byte of `bytes` (0 if there is none), removed.
uint8_t TakeByte(absl::string_view& bytes) {
  if (bytes.empty()) return 0;
  const auto byte = static_cast<uint8_t>(bytes.front());
  bytes.remove_prefix(1);
  return byte;
}

// ---------------------------------------------------------------------------
// Calls

template <typename Request, typename Response>
using UnaryMethod = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

// One unary call, held to the same rules as the streams.
template <typename Request, typename Response>
grpc::Status Call(Stub& stub, UnaryMethod<Request, Response> method, const Request& request) {
  grpc::ClientContext context;
  SetDeadline(context);
  Response ignored;
  grpc::Status status = (stub.*method)(&context, request, &ignored);
  CheckEnd(Describe(request), status);
  return status;
}

v1::MapRequest MapPage(const char* device, uint64_t iova) {
  v1::MapRequest request;
  request.set_device_id(device);
  request.set_phys(iova);
  request.set_size(kPage);
  request.set_iova(iova);
  request.mutable_permissions()->set_read(true);
  request.mutable_permissions()->set_write(true);
  return request;
}

v1::UnmapRequest UnmapRange(const char* device, uint64_t iova, uint64_t size) {
  v1::UnmapRequest request;
  request.set_device_id(device);
  request.set_iova(iova);
  request.set_size(size);
  return request;
}

v1::FlushRequest FlushOf(const char* domain) {
  v1::FlushRequest request;
  request.set_domain_id(domain);
  return request;
}

// ---------------------------------------------------------------------------
// Streams

// What a client stream's reactor shares with the fuzzer's thread: the
// completions of the read and the write in flight, the initial metadata,
// and the call's end. One read is in flight at a time, so that the fuzzer,
// not gRPC, sets the pace at which the broker's messages are consumed.
template <typename Response>
class StreamState final {
 public:
  // Where gRPC puts the message of the read in flight.
  Response* read_buffer() { return &read_buffer_; }

  // From the reactor's reactions, on gRPC's threads.
  void InitialMetadataDone() {
    Update([&] { metadata_done_ = true; });
  }
  void ReadDone(bool ok) {
    Update([&] { read_done_.emplace(ok); });
  }
  void WriteDone(bool ok) {
    Update([&] { write_done_.emplace(ok); });
  }
  void CallDone(const grpc::Status& status) {
    Update([&] { status_ = status; });
  }

  // From the fuzzer's thread.
  // Waits for the initial metadata, which a call that ends at once (a
  // refusal) never sends.
  void AwaitInitialMetadataOrEnd() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return metadata_done_ || status_.has_value(); });
  }
  // The message of the read in flight if it arrives within kMessageWait;
  // the caller then starts the next read. None once the stream has ended.
  std::optional<Response> AwaitRead() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!changed_.wait_for(lock, kMessageWait, [&] { return read_done_.has_value(); })) {
      return std::nullopt;
    }
    if (!*read_done_) return std::nullopt;  // stays done: no read starts again
    read_done_.reset();
    return read_buffer_;
  }
  // Before each write.
  void WriteStarted() {
    std::lock_guard<std::mutex> lock(mutex_);
    write_done_.reset();
  }
  // Whether the write in flight went out (false: the stream has ended).
  bool AwaitWrite() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return write_done_.has_value(); });
    return *write_done_;
  }
  // The call's status, once OnDone has run (the call's deadline bounds the
  // wait).
  grpc::Status AwaitEnd() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return status_.has_value(); });
    return *status_;
  }

 private:
  // Notifies under the lock, so that the reactor, which a waiter may destroy
  // as soon as it wakes, is not touched after the change.
  template <typename Change>
  void Update(Change change) {
    std::lock_guard<std::mutex> lock(mutex_);
    change();
    changed_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  Response read_buffer_;  // gRPC's while a read is in flight, then mutex_'s
  bool metadata_done_ ABSL_GUARDED_BY(mutex_) = false;
  std::optional<bool> read_done_ ABSL_GUARDED_BY(mutex_);  // its ok
  std::optional<bool> write_done_ ABSL_GUARDED_BY(mutex_);
  std::optional<grpc::Status> status_ ABSL_GUARDED_BY(mutex_);
};

// A WatchEvents call. Cancel() must end it before it is destroyed.
class EventWatch final : public grpc::ClientReadReactor<v1::Event> {
 public:
  EventWatch(Stub& stub, const v1::WatchEventsRequest& request) : request_(request) {
    SetDeadline(context_);
    stub.async()->WatchEvents(&context_, &request_, this);
    AddHold();  // no OnDone before Cancel, so that a read may always start
    StartRead(state_.read_buffer());
    StartCall();
  }

  void AwaitInitialMetadataOrEnd() { state_.AwaitInitialMetadataOrEnd(); }
  // The next event, if it comes within kMessageWait.
  std::optional<v1::Event> Read() {
    std::optional<v1::Event> event = state_.AwaitRead();
    if (event.has_value()) StartRead(state_.read_buffer());
    return event;
  }
  grpc::Status Cancel() {
    context_.TryCancel();
    RemoveHold();
    return state_.AwaitEnd();
  }

  void OnReadInitialMetadataDone(bool /*ok*/) override { state_.InitialMetadataDone(); }
  void OnReadDone(bool ok) override { state_.ReadDone(ok); }
  void OnDone(const grpc::Status& status) override { state_.CallDone(status); }

 private:
  grpc::ClientContext context_;
  const v1::WatchEventsRequest request_;  // gRPC sends it from here
  StreamState<v1::Event> state_;
};

// A LinkDeviceIotlb call. Finish() must end it before it is destroyed.
class IotlbLink final
    : public grpc::ClientBidiReactor<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations> {
 public:
  explicit IotlbLink(Stub& stub) {
    SetDeadline(context_);
    stub.async()->LinkDeviceIotlb(&context_, this);
    AddHold();  // no OnDone before Finish, so that reads and writes may always start
    StartRead(state_.read_buffer());
    StartCall();
  }

  // Sends `request`; false if the stream has ended.
  bool Write(const v1::DeviceIotlbRequest& request) {
    write_buffer_ = request;
    state_.WriteStarted();
    StartWrite(&write_buffer_);
    return state_.AwaitWrite();
  }
  // The next message, if it comes within kMessageWait.
  std::optional<v1::DeviceIotlbInvalidations> Read() {
    std::optional<v1::DeviceIotlbInvalidations> message = state_.AwaitRead();
    if (message.has_value()) StartRead(state_.read_buffer());
    return message;
  }
  // Closes the cache's side (WritesDone) or cancels, and waits for the end.
  grpc::Status Finish(bool cancel) {
    if (cancel) {
      context_.TryCancel();
    } else {
      StartWritesDone();
    }
    RemoveHold();
    return state_.AwaitEnd();
  }

  void OnReadDone(bool ok) override { state_.ReadDone(ok); }
  void OnWriteDone(bool ok) override { state_.WriteDone(ok); }
  void OnDone(const grpc::Status& status) override { state_.CallDone(status); }

 private:
  grpc::ClientContext context_;
  v1::DeviceIotlbRequest write_buffer_;  // gRPC's while a write is in flight
  StreamState<v1::DeviceIotlbInvalidations> state_;
};

// An Unmap the fuzzer does not wait for at once: under paranoid it replies
// only when the linked cache has acknowledged, which the link's next steps
// may or may not do. AwaitAndCheck() must return before it is destroyed.
class UnmapInBackground final {
 public:
  UnmapInBackground(Stub& stub, v1::UnmapRequest request) : request_(std::move(request)) {
    SetDeadline(context_);
    stub.async()->Unmap(&context_, &request_, &response_, [this](grpc::Status status) {
      // Notifies under the lock: the waiter may destroy `this` once woken.
      std::lock_guard<std::mutex> lock(mutex_);
      status_ = std::move(status);
      done_.notify_all();
    });
  }

  void AwaitAndCheck() {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return status_.has_value(); });
    CheckEnd(Describe(request_), *status_);
  }

 private:
  grpc::ClientContext context_;
  const v1::UnmapRequest request_;
  v1::UnmapResponse response_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::optional<grpc::Status> status_ ABSL_GUARDED_BY(mutex_);
};

// A Batch stream and the context it lives in. Destroying it without
// Finish abandons the stream: the stream goes first, then the context,
// which cancels the call.
struct BatchCall {
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<BatchStream> stream;
};

BatchCall OpenBatch(Stub& stub) {
  BatchCall call;
  call.context = std::make_unique<grpc::ClientContext>();
  SetDeadline(*call.context);
  call.stream = stub.Batch(call.context.get());
  return call;
}

// ---------------------------------------------------------------------------
// What the broker answers

// One result per operation, each with a documented code, a message with
// every error, and no result with a failure.
void CheckBatchAnswer(const v1::BatchRequest& request, const v1::BatchResponse& response) {
  if (response.results_size() != request.operations_size()) {
    Fail(absl::StrCat("a batch of ", request.operations_size(), " operations got ",
                      response.results_size(), " results: ", Describe(request), " -> ",
                      Describe(response)));
  }
  for (int i = 0; i < response.results_size(); ++i) {
    const v1::OperationResult& result = response.results(i);
    const int code = result.status().code();
    const std::string what = absl::StrCat("operation ", Describe(request.operations(i)),
                                          " of a Batch stream answered ", CodeName(code));
    if (!DocumentedCode(static_cast<absl::StatusCode>(code))) {
      Fail(absl::StrCat(what, ": ", result.status().message()));
    }
    if (code == 0) continue;
    if (result.status().message().empty()) Fail(absl::StrCat(what, " without a message"));
    if (result.result_case() != v1::OperationResult::RESULT_NOT_SET) {
      Fail(absl::StrCat(what, " and a result: ", Describe(result)));
    }
  }
}

// What a watch may deliver: the kinds it asked for, of its domain and
// device, faults in sequence order.
class EventChecker final {
 public:
  explicit EventChecker(const v1::WatchEventsRequest& request) : request_(request) {}

  void Check(const v1::Event& event) {
    switch (event.event_case()) {
      case v1::Event::kFault:
        CheckFault(event);
        return;
      case v1::Event::kInvalidation:
        CheckInvalidation(event);
        return;
      case v1::Event::EVENT_NOT_SET:
        break;
    }
    Fail(Wrong("an empty event", event));
  }

 private:
  void CheckFault(const v1::Event& event) {
    const v1::Fault& fault = event.fault();
    if (!request_.faults()) Fail(Wrong("a fault", event));
    if (!Matches(request_.domain_id(), fault.domain_id()) ||
        !Matches(request_.device_id(), fault.device_id())) {
      Fail(Wrong("a fault of another domain or device", event));
    }
    if (fault.reason() == v1::FAULT_REASON_UNSPECIFIED) {
      Fail(Wrong("a fault without a reason", event));
    }
    if (fault.sequence() <= last_fault_sequence_) {
      Fail(Wrong(absl::StrCat("a fault out of order (after ", last_fault_sequence_, ")"), event));
    }
    last_fault_sequence_ = fault.sequence();
  }

  void CheckInvalidation(const v1::Event& event) {
    const v1::Invalidation& invalidation = event.invalidation();
    if (!request_.invalidations()) Fail(Wrong("an invalidation", event));
    if (!Matches(request_.domain_id(), invalidation.domain_id())) {
      Fail(Wrong("an invalidation of another domain", event));
    }
    switch (invalidation.scope()) {
      case v1::Invalidation::SCOPE_DEVICE:
        if (!Matches(request_.device_id(), invalidation.device_id())) {
          Fail(Wrong("a device-scope invalidation of another device", event));
        }
        return;
      case v1::Invalidation::SCOPE_RANGE:
      case v1::Invalidation::SCOPE_DOMAIN:
        // Devices never move here, so a device filter narrows these to the
        // domain of its placement.
        if (!request_.device_id().empty() &&
            invalidation.domain_id() != DomainOf(request_.device_id())) {
          Fail(Wrong("an invalidation of a domain the device is not on", event));
        }
        return;
      default:
        Fail(Wrong("an invalidation without a scope", event));
    }
  }

  // An empty filter passes everything.
  static bool Matches(const std::string& filter, const std::string& value) {
    return filter.empty() || filter == value;
  }

  std::string Wrong(absl::string_view what, const v1::Event& event) const {
    return absl::StrCat("WatchEvents ", Describe(request_), " delivered ", what, ": ",
                        Describe(event));
  }

  const v1::WatchEventsRequest& request_;
  uint64_t last_fault_sequence_ = 0;
};

// A link's messages: the first empty (it confirms the link), then
// invalidations numbered 1, 2, ... (the messages are read in order, never
// skipped).
class LinkChecker final {
 public:
  void Check(const v1::DeviceIotlbInvalidations& message) {
    if (!confirmed_) {
      confirmed_ = true;
      if (message.invalidations_size() != 0) {
        Fail(absl::StrCat("a link's first message is not empty: ", Describe(message)));
      }
      return;
    }
    for (const v1::DeviceIotlbInvalidation& invalidation : message.invalidations()) {
      if (invalidation.sequence() != last_sequence_ + 1 ||
          invalidation.invalidation().scope() == v1::Invalidation::SCOPE_UNSPECIFIED) {
        Fail(absl::StrCat("after sequence ", last_sequence_, " a link sent ", Describe(message)));
      }
      last_sequence_ = invalidation.sequence();
    }
  }
  uint64_t last_sequence() const { return last_sequence_; }

 private:
  bool confirmed_ = false;
  uint64_t last_sequence_ = 0;
};

// ---------------------------------------------------------------------------
// The broker and the inputs

// The broker every input runs against, and a stub connected to it.
class Broker final {
 public:
  // The one broker of the process, started by the first input. It is the
  // fuzzer's only global state: libFuzzer keeps nothing between inputs for
  // us, and starting a broker (a server, its threads, a connection) per
  // input would cost far more than the input.
  static Broker& Get() {
    static Broker broker;
    return broker;
  }

  Stub& stub() { return *stub_; }

 private:
  Broker() {
    v1::BrokerConfig config;
    if (!google::protobuf::TextFormat::ParseFromString(kBrokerSetup, &config)) {
      Fail("set-up: kBrokerSetup does not parse");
    }
    config.mutable_engine()->mutable_device_iotlb_ack_timeout()->set_nanos(kAckTimeoutNanos);
    v1::ServerLimits& limits = *config.mutable_limits();
    limits.set_max_concurrent_streams(kMaxConcurrentStreams);
    limits.set_max_batch_operations(kMaxBatchOperations);
    limits.set_watch_queue_capacity(kQueueCapacity);
    absl::StatusOr<std::unique_ptr<BrokerServer>> server = BrokerServer::Start(config, log_);
    if (!server.ok()) Fail(absl::StrCat("set-up: ", server.status().ToString()));
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::IommuBroker::NewStub(channel_);
  }

  // Only errors: the audit lines of every input would bury a failure's
  // output. Declared first, so that it outlives the server.
  Logger log_{stderr, LogLevel::kError};
  std::unique_ptr<BrokerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stub> stub_;
};

// Unary calls that make events for a watch: bit 0 of `what`, a fault;
// bit 1, an invalidation (a page mapped, unmapped and flushed).
void MakeEvents(Stub& stub, int what, const Placement& on) {
  if ((what & 1) != 0) {
    v1::TranslateRequest translate;
    translate.set_device_id(on.device);
    translate.set_iova(kFaultingIova);
    translate.set_size(kPage);
    translate.set_access(v1::ACCESS_READ);
    Call(stub, &Stub::Translate, translate);
  }
  if ((what & 2) != 0) {
    Call(stub, &Stub::Map, MapPage(on.device, kWatchPage));
    Call(stub, &Stub::Unmap, UnmapRange(on.device, kWatchPage, kPage));
    Call(stub, &Stub::Flush, FlushOf(on.domain));
  }
}

// One input's streams, in order.
class InputRun final {
 public:
  explicit InputRun(Stub& stub) : stub_(stub) {}

  // Runs the records, then abandons the Batch streams held open.
  void Run(absl::string_view input) {
    RecordReader records(input, kMaxRecords);
    for (Record record; records.Next(record);) {
      switch (record.kind % 3) {
        case 0:
          Watch(record.bytes);
          break;
        case 1:
          Link(record.bytes);
          break;
        case 2:
          Batch(record.bytes);
          break;
      }
    }
    held_.clear();
  }

 private:
  enum class BatchEnd { kWritesDone, kCancel, kAbandon, kHold };

  // A Batch stream's client side: the batches written and not answered yet.
  struct BatchSession {
    BatchCall call;
    std::deque<v1::BatchRequest> unanswered;
    bool ended = false;  // a read found the stream's end
  };

  void Watch(absl::string_view payload) {
    const uint8_t plan = TakeByte(payload);
    v1::WatchEventsRequest request;
    if (!Parse(payload, request)) return;
    EventWatch watch(stub_, request);
    watch.AwaitInitialMetadataOrEnd();  // the broker subscribed before sending them
    MakeEvents(stub_, plan & 3, kPlacements[(plan >> 2) & 3]);
    EventChecker checker(request);
    for (int i = 0; i < ((plan >> 4) & 3); ++i) {
      std::optional<v1::Event> event = watch.Read();
      if (!event.has_value()) break;
      checker.Check(*event);
    }
    CheckEnd(absl::StrCat("WatchEvents ", Describe(request)), watch.Cancel());
  }

  void Link(absl::string_view payload) {
    const uint8_t plan = TakeByte(payload);
    IotlbLink link(stub_);
    LinkChecker checker;
    std::vector<std::unique_ptr<UnmapInBackground>> unmaps;
    RecordReader steps(payload, kMaxSteps);
    for (Record step; steps.Next(step);) {
      switch (step.kind % 4) {
        case 0: {
          v1::DeviceIotlbRequest request;
          if (Parse(step.bytes, request)) link.Write(request);
          break;
        }
        case 1:
          if (std::optional<v1::DeviceIotlbInvalidations> message = link.Read()) {
            checker.Check(*message);
          }
          break;
        case 2: {
          v1::DeviceIotlbRequest ack;
          ack.set_acknowledged_sequence(checker.last_sequence());
          link.Write(ack);
          break;
        }
        case 3:
          unmaps.push_back(MapThenUnmapInBackground(step.bytes));
          break;
      }
    }
    CheckEnd("LinkDeviceIotlb", link.Finish(/*cancel=*/(plan & 1) != 0));
    // The link has ended, so no unmap waits for it any more.
    for (const std::unique_ptr<UnmapInBackground>& unmap : unmaps) unmap->AwaitAndCheck();
  }

  // Maps page bytes[1] on device bytes[0] and starts unmapping it.
  std::unique_ptr<UnmapInBackground> MapThenUnmapInBackground(absl::string_view bytes) {
    const char* device = kPlacements[TakeByte(bytes) & 3].device;
    const uint64_t iova = kLinkPages + TakeByte(bytes) * kPage;
    Call(stub_, &Stub::Map, MapPage(device, iova));
    return std::make_unique<UnmapInBackground>(stub_, UnmapRange(device, iova, kPage));
  }

  void Batch(absl::string_view payload) {
    const auto end = static_cast<BatchEnd>(TakeByte(payload) & 3);
    BatchSession session{.call = OpenBatch(stub_)};
    RecordReader steps(payload, kMaxSteps);
    for (Record step; steps.Next(step);) {
      if (step.kind % 2 == 0) {
        v1::BatchRequest request;
        if (!Parse(step.bytes, request)) continue;
        // A failed write: the stream has ended, and owes nothing for it.
        if (session.call.stream->Write(request)) session.unanswered.push_back(request);
      } else if (!session.unanswered.empty()) {  // else nothing would come before the deadline
        ReadAnswer(session);
      }
    }
    switch (end) {
      case BatchEnd::kWritesDone:
        EndBatchWithWritesDone(session);
        break;
      case BatchEnd::kCancel:
        session.call.context->TryCancel();
        CheckEnd("Batch (cancelled)", session.call.stream->Finish());
        break;
      case BatchEnd::kAbandon:
        break;  // `session` goes out of scope unfinished
      case BatchEnd::kHold:
        // Past the stream limit the broker has refused it: abandoned at once.
        if (held_.size() < kMaxConcurrentStreams) held_.push_back(std::move(session.call));
        break;
    }
  }

  // Reads the answer to the oldest unanswered batch, unless the stream ends
  // instead.
  static void ReadAnswer(BatchSession& session) {
    v1::BatchResponse response;
    if (session.ended || !session.call.stream->Read(&response)) {
      session.ended = true;
      return;
    }
    CheckBatchAnswer(session.unanswered.front(), response);
    session.unanswered.pop_front();
  }

  // The client closes its side: every batch must be answered, unless the
  // stream ends with an error.
  static void EndBatchWithWritesDone(BatchSession& session) {
    session.call.stream->WritesDone();
    while (!session.ended && !session.unanswered.empty()) ReadAnswer(session);
    const grpc::Status status = session.call.stream->Finish();
    CheckEnd("Batch", status);
    if (status.ok() && !session.unanswered.empty()) {
      Fail(absl::StrCat("a Batch stream ended OK with ", session.unanswered.size(),
                        " batches unanswered, the first ", Describe(session.unanswered.front())));
    }
  }

  Stub& stub_;
  std::vector<BatchCall> held_;  // Batch streams held open until the input ends
};

// ---------------------------------------------------------------------------
// After each input

// A batch that unmaps everything an input can have mapped (bypass maps have
// nothing to unmap) and runs the pending invalidations, so that inputs do
// not see each other's mappings.
v1::BatchRequest CleanUpBatch() {
  v1::BatchRequest request;
  for (const Placement& placement : kPlacements) {
    if (*placement.domain == '\0') continue;
    *request.add_operations()->mutable_unmap() = UnmapRange(placement.device, 0, kIovaLimit);
    *request.add_operations()->mutable_flush() = FlushOf(placement.domain);
  }
  return request;
}

// Whether `stream` answers `request` (false: the stream ended instead), every
// operation succeeding.
bool AnswersWithSuccess(BatchStream& stream, const v1::BatchRequest& request) {
  v1::BatchResponse response;
  if (!stream.Write(request) || !stream.Read(&response)) return false;
  CheckBatchAnswer(request, response);
  for (const v1::OperationResult& result : response.results()) {
    if (result.status().code() != 0) {
      Fail(absl::StrCat("after the input, ", Describe(request), " answered ", Describe(response)));
    }
  }
  return true;
}

// Whether kMaxConcurrentStreams Batch streams are served at once: each
// answers a batch while the others are open, the first the clean-up.
bool ServesAllStreams(Stub& stub) {
  std::vector<BatchCall> calls;
  bool served = true;
  while (served && calls.size() < kMaxConcurrentStreams) {
    const v1::BatchRequest request = calls.empty() ? CleanUpBatch() : v1::BatchRequest();
    calls.push_back(OpenBatch(stub));
    served = AnswersWithSuccess(*calls.back().stream, request);
  }
  for (BatchCall& call : calls) {
    call.stream->WritesDone();
    const grpc::Status status = call.stream->Finish();
    if (!status.ok() && status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
      Fail(absl::StrCat("after the input, a Batch stream ended with ",
                        CodeName(status.error_code()), ": ", status.error_message()));
    }
  }
  return served;
}

// Once an input's streams have all ended, the broker answers, cleans up,
// and has given every stream slot back. It gives a slot back after the
// client has seen the stream end, so this may wait a little.
void CheckBrokerRecovers(Stub& stub) {
  const Clock::time_point give_up = Clock::now() + kSlotReturnTimeout;
  while (!ServesAllStreams(stub)) {
    if (Clock::now() > give_up) {
      Fail(absl::StrCat("after the input's streams ended, the broker does not serve ",
                        kMaxConcurrentStreams,
                        " streams at once: a stream slot was not given back"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace
}  // namespace iommu_broker

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // Requests with strings that are not UTF-8 fail to parse, and protobuf
  // logs each one; the fuzzer makes many.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  iommu_broker::v1::IommuBroker::Stub& stub = iommu_broker::Broker::Get().stub();
  iommu_broker::InputRun(stub).Run(absl::string_view(reinterpret_cast<const char*>(data), size));
  iommu_broker::CheckBrokerRecovers(stub);
  return 0;
}
