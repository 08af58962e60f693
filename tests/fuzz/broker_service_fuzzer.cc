// libFuzzer target: arbitrary bytes decoded as the API's request messages
// and handled by the service in-process. Unary calls go to BrokerService's
// handlers themselves (grpc::testing::DefaultReactorTestPeer stands in for
// the call); a Batch message goes operation by operation through DataPath,
// as BatchReactor runs it. The streaming calls (WatchEvents,
// LinkDeviceIotlb, Batch streams) need a live stream: broker_stream_fuzzer
// covers them.
//
// Input: records of [kind][length][length bytes]; kind (modulo the number
// of request kinds, kRequests below) names the message, the bytes are
// parsed as it in the wire format (a record that does not parse is
// skipped, as gRPC would refuse it). Every input starts from the same
// broker: a paranoid, a fast and a pt domain ("p", "f", "t"), with devices
// "0" (on p), "1" (on f, allow_bypass, 40-bit mask), "2" (on t, 32-bit
// mask) and "3" (detached).
//
// Besides crashes, sanitizer findings and leaks, an input fails (a message,
// then abort) when a handler
// - does not finish its call, or answers a code outside the API's (an
//   INTERNAL, UNKNOWN, ... is a bug), or an error without a message;
// - replies OK with a response that does not survive serialization (e.g. a
//   string field that is not UTF-8);
// - answers INVALID_ARGUMENT, OUT_OF_RANGE or NOT_FOUND, or serves a
//   read-only call (Get*, List*, GetStats), yet changed the broker's state
//   (tests/server/broker_state.h): a refused request has no effect.
// A Batch operation is held to the same rules, and a failed one carries no
// result.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/iommu/iommu.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/server_context.h"
#include "grpcpp/test/default_reactor_test_peer.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "server/access_control.h"
#include "server/access_policy.h"
#include "server/broker_service.h"
#include "server/data_path.h"
#include "server/log.h"
#include "server/operation_metrics.h"
#include "tests/fuzz/documented_codes.h"
#include "tests/server/broker_state.h"

namespace iommu_broker {
namespace {

using testing::BrokerState;
using testing::DiffBrokerState;
using testing::ReadBrokerState;

[[noreturn]] void Fail(absl::string_view what) {
  std::fprintf(stderr, "broker_service_fuzzer: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

// Codes that promise the request changed nothing.
bool RefusedWithoutEffect(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kOutOfRange ||
         code == absl::StatusCode::kNotFound;
}

template <typename Message>
void CheckSerializes(absl::string_view what, const Message& message) {
  Message copy;
  if (!copy.ParseFromString(message.SerializeAsString())) {
    Fail(absl::StrCat(what, ": the response does not parse back: ", message.ShortDebugString()));
  }
}

// Checks one answer: a documented code, a message with every error, and no
// effect where none is allowed.
void CheckAnswer(absl::string_view what, absl::StatusCode code, absl::string_view message,
                 bool read_only, const BrokerState& before, const Iommu& iommu) {
  if (!DocumentedCode(code)) {
    Fail(absl::StrCat(what, " answered ", absl::StatusCodeToString(code), ": ", message));
  }
  if (code != absl::StatusCode::kOk && message.empty()) {
    Fail(absl::StrCat(what, " answered ", absl::StatusCodeToString(code), " without a message"));
  }
  if (read_only || RefusedWithoutEffect(code)) {
    const std::string diff = DiffBrokerState(before, ReadBrokerState(iommu));
    if (!diff.empty()) {
      Fail(absl::StrCat(what, " answered ", absl::StatusCodeToString(code), " (", message,
                        ") but changed the broker:\n", diff));
    }
  }
}

class Harness final {
 public:
  // The broker every input starts from.
  Harness() {
    IommuOptions options;
    options.physical_memory_bytes = uint64_t{1} << 30;
    options.maintenance_interval = absl::ZeroDuration();  // nothing behind the checks' back
    absl::StatusOr<std::unique_ptr<Iommu>> iommu = Iommu::Create(options);
    Setup(iommu.status());
    iommu_ = *std::move(iommu);
    Setup(iommu_->CreateDomain({.id = "p", .policy = Policy::kParanoid}));
    Setup(
        iommu_->CreateDomain({.id = "f", .policy = Policy::kFast, .flush_queue = {.capacity = 8}}));
    Setup(iommu_->CreateDomain({.id = "t", .policy = Policy::kPassthrough}));
    Setup(iommu_->AddDevice({.id = "0"}));
    Setup(iommu_->AddDevice({.id = "1", .dma_mask_bits = 40, .allow_bypass = true}));
    Setup(iommu_->AddDevice({.id = "2", .dma_mask_bits = 32}));
    Setup(iommu_->AddDevice({.id = "3"}));
    Setup(iommu_->Attach("0", "p").status());
    Setup(iommu_->Attach("1", "f").status());
    Setup(iommu_->Attach("2", "t").status());
    service_ = std::make_unique<BrokerService>(*iommu_, ServiceLimits{}, access_, log_);
  }

  void Run(absl::string_view input);

 private:
  // One kind of request: its name, whether it only reads, and how to run it.
  struct Request {
    const char* name;
    bool read_only;
    void (Harness::*run)(const Request& kind, absl::string_view bytes);
  };
  static const Request kRequests[];

  template <typename Message, typename Response>
  using UnaryHandler = grpc::ServerUnaryReactor* (BrokerService::*)(grpc::CallbackServerContext*,
                                                                    const Message*, Response*);

  static void Setup(const absl::Status& status) {
    if (!status.ok()) Fail(absl::StrCat("set-up: ", status.ToString()));
  }

  // Parses `bytes` as Message and calls `handler` with it.
  template <typename Message, typename Response, UnaryHandler<Message, Response> handler>
  void Unary(const Request& kind, absl::string_view bytes);
  void Batch(const Request& kind, absl::string_view bytes);

  // Declared first: the service logs into it. Admin actions are logged (to
  // /dev/null) so that formatting fuzzed ids is exercised too.
  Logger log_{NullFile(), LogLevel::kDebug};
  // No identities: every call is the anonymous caller, who may do anything.
  AccessControl access_{*AccessPolicy::Create(v1::AuthConfig())};
  std::unique_ptr<Iommu> iommu_;
  std::unique_ptr<BrokerService> service_;

  static std::FILE* NullFile() {
    static std::FILE* const file = std::fopen("/dev/null", "w");
    return file;
  }
};

template <typename Message, typename Response, Harness::UnaryHandler<Message, Response> handler>
void Harness::Unary(const Request& kind, absl::string_view bytes) {
  Message request;
  if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  const BrokerState before = ReadBrokerState(*iommu_);
  grpc::CallbackServerContext context;
  grpc::testing::DefaultReactorTestPeer peer(&context);
  Response response;
  ((*service_).*handler)(&context, &request, &response);
  const std::string what = absl::StrCat(kind.name, " ", request.ShortDebugString());
  if (!peer.test_status_set()) Fail(absl::StrCat(what, ": the call was not finished"));
  const grpc::Status status = peer.test_status();
  CheckAnswer(what, static_cast<absl::StatusCode>(status.error_code()), status.error_message(),
              kind.read_only, before, *iommu_);
  if (status.ok()) CheckSerializes(what, response);
}

void Harness::Batch(const Request& kind, absl::string_view bytes) {
  v1::BatchRequest request;
  if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  OperationMetrics metrics;
  DataPath data_path(*iommu_, metrics);
  v1::BatchResponse response;
  for (const v1::Operation& operation : request.operations()) {
    const BrokerState before = ReadBrokerState(*iommu_);
    v1::OperationResult* result = response.add_results();
    data_path.Run(operation, result);
    const std::string what = absl::StrCat(kind.name, " operation ", operation.ShortDebugString());
    const auto code = static_cast<absl::StatusCode>(result->status().code());
    CheckAnswer(what, code, result->status().message(), kind.read_only, before, *iommu_);
    if (code != absl::StatusCode::kOk &&
        result->result_case() != v1::OperationResult::RESULT_NOT_SET) {
      Fail(absl::StrCat(what, ": a failed operation carries a result"));
    }
  }
  if (data_path.TakeDeviceTlbAcks() != nullptr) Fail("no device-side IOTLB is linked");
  CheckSerializes(kind.name, response);
}

const Harness::Request Harness::kRequests[] = {
    {"CreateDomain", false,
     &Harness::Unary<v1::CreateDomainRequest, v1::Domain, &BrokerService::CreateDomain>},
    {"DestroyDomain", false,
     &Harness::Unary<v1::DestroyDomainRequest, v1::DestroyDomainResponse,
                     &BrokerService::DestroyDomain>},
    {"GetDomain", true,
     &Harness::Unary<v1::GetDomainRequest, v1::Domain, &BrokerService::GetDomain>},
    {"ListDomains", true,
     &Harness::Unary<v1::ListDomainsRequest, v1::ListDomainsResponse, &BrokerService::ListDomains>},
    {"SetDomainPolicy", false,
     &Harness::Unary<v1::SetDomainPolicyRequest, v1::Domain, &BrokerService::SetDomainPolicy>},
    {"RegisterDevice", false,
     &Harness::Unary<v1::RegisterDeviceRequest, v1::Device, &BrokerService::RegisterDevice>},
    {"UpdateDevice", false,
     &Harness::Unary<v1::UpdateDeviceRequest, v1::Device, &BrokerService::UpdateDevice>},
    {"UnregisterDevice", false,
     &Harness::Unary<v1::UnregisterDeviceRequest, v1::UnregisterDeviceResponse,
                     &BrokerService::UnregisterDevice>},
    {"AttachDevice", false,
     &Harness::Unary<v1::AttachDeviceRequest, v1::AttachDeviceResponse,
                     &BrokerService::AttachDevice>},
    {"DetachDevice", false,
     &Harness::Unary<v1::DetachDeviceRequest, v1::DetachDeviceResponse,
                     &BrokerService::DetachDevice>},
    {"GetDevice", true,
     &Harness::Unary<v1::GetDeviceRequest, v1::Device, &BrokerService::GetDevice>},
    {"ListDevices", true,
     &Harness::Unary<v1::ListDevicesRequest, v1::ListDevicesResponse, &BrokerService::ListDevices>},
    {"Map", false, &Harness::Unary<v1::MapRequest, v1::MapResponse, &BrokerService::Map>},
    {"Unmap", false, &Harness::Unary<v1::UnmapRequest, v1::UnmapResponse, &BrokerService::Unmap>},
    {"Translate", false,
     &Harness::Unary<v1::TranslateRequest, v1::TranslateResponse, &BrokerService::Translate>},
    {"Flush", false, &Harness::Unary<v1::FlushRequest, v1::FlushResponse, &BrokerService::Flush>},
    {"GetStats", true,
     &Harness::Unary<v1::GetStatsRequest, v1::GetStatsResponse, &BrokerService::GetStats>},
    {"Batch", false, &Harness::Batch},
};

void Harness::Run(absl::string_view input) {
  while (input.size() >= 2) {
    const Request& kind = kRequests[static_cast<uint8_t>(input[0]) % std::size(kRequests)];
    const size_t length = std::min<size_t>(static_cast<uint8_t>(input[1]), input.size() - 2);
    (this->*kind.run)(kind, input.substr(2, length));
    input.remove_prefix(2 + length);
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
  iommu_broker::Harness harness;
  harness.Run(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
