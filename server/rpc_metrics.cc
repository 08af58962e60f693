#include "server/rpc_metrics.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"

namespace iommu_broker {
namespace {

using ::grpc::experimental::InterceptionHookPoints;
using ::grpc::experimental::InterceptorBatchMethods;
using ::grpc::experimental::ServerRpcInfo;

uint64_t NanosSince(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

// One call's recorder: created as the call arrives, destroyed after it ends.
class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(std::shared_ptr<RpcMetrics> metrics, ServerRpcInfo* info)
      : metrics_(std::move(metrics)),
        method_(metrics_->MethodIndex(info->method())),
        streaming_(info->type() != ServerRpcInfo::Type::UNARY),
        start_(std::chrono::steady_clock::now()) {
    if (streaming_) metrics_->StreamOpened(method_);
  }
  ~MetricsInterceptor() override {
    // A call cancelled before it sent a status still ends here.
    if (!finished_) metrics_->Finished(method_, grpc::StatusCode::CANCELLED, NanosSince(start_));
    if (streaming_) metrics_->StreamClosed(method_);
  }

  void Intercept(InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      finished_ = true;
      metrics_->Finished(method_, methods->GetSendStatus().error_code(), NanosSince(start_));
    }
    methods->Proceed();
  }

 private:
  const std::shared_ptr<RpcMetrics> metrics_;
  const size_t method_;
  const bool streaming_;
  const std::chrono::steady_clock::time_point start_;
  bool finished_ = false;  // hooks of one call do not run concurrently
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(std::shared_ptr<RpcMetrics> metrics)
      : metrics_(std::move(metrics)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(ServerRpcInfo* info) override {
    // gRPC's interface: it takes ownership of the raw pointer and deletes it.
    return new MetricsInterceptor(metrics_, info);
  }

 private:
  const std::shared_ptr<RpcMetrics> metrics_;
};

}  // namespace

RpcMetrics::RpcMetrics() {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::IommuBroker::service_full_name());
  for (int i = 0; i < service->method_count(); ++i) {
    const google::protobuf::MethodDescriptor* method = service->method(i);
    AddMethod(absl::StrCat("/", service->full_name(), "/", method->name()), method->name(),
              method->client_streaming() || method->server_streaming());
  }
  AddMethod("/grpc.health.v1.Health/Check", "Health/Check", false);
  AddMethod("/grpc.health.v1.Health/Watch", "Health/Watch", true);
  AddMethod("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "ServerReflection/ServerReflectionInfo", true);
  unknown_ = methods_.size();
  AddMethod("", "unknown", false);
}

void RpcMetrics::AddMethod(std::string full_name, std::string label, bool streaming) {
  auto method = std::make_unique<Method>();
  method->label = std::move(label);
  method->streaming = streaming;
  index_by_full_name_.emplace(std::move(full_name), methods_.size());
  methods_.push_back(std::move(method));
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
RpcMetrics::InterceptorFactories() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<MetricsInterceptorFactory>(shared_from_this()));
  return factories;
}

size_t RpcMetrics::MethodIndex(absl::string_view full_name) const {
  auto it = index_by_full_name_.find(full_name);
  return it == index_by_full_name_.end() ? unknown_ : it->second;
}

void RpcMetrics::StreamOpened(size_t method) {
  methods_[method]->streams_in_flight.fetch_add(1, std::memory_order_relaxed);
}

void RpcMetrics::StreamClosed(size_t method) {
  methods_[method]->streams_in_flight.fetch_sub(1, std::memory_order_relaxed);
}

void RpcMetrics::Finished(size_t method, int code, uint64_t nanos) {
  Method& called = *methods_[method];
  const size_t slot = code >= 0 && static_cast<size_t>(code) < kCodes
                         ? static_cast<size_t>(code)
                         : static_cast<size_t>(grpc::StatusCode::UNKNOWN);
  called.by_code[slot].fetch_add(1, std::memory_order_relaxed);
  called.latency->Record(nanos);
}

std::vector<RpcMetrics::MethodReading> RpcMetrics::Read() const {
  std::vector<MethodReading> readings;
  readings.reserve(methods_.size());
  for (const std::unique_ptr<Method>& method : methods_) {
    MethodReading reading;
    reading.method = method->label;
    reading.streaming = method->streaming;
    for (size_t code = 0; code < kCodes; ++code) {
      reading.by_code[code] = method->by_code[code].load(std::memory_order_relaxed);
    }
    reading.latency = method->latency->Read();
    reading.streams_in_flight = method->streams_in_flight.load(std::memory_order_relaxed);
    readings.push_back(std::move(reading));
  }
  return readings;
}

}  // namespace iommu_broker
