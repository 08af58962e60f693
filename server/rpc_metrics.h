// RpcMetrics counts finished RPCs by method and status code, times them
// from arrival to status, and counts open streams; a gRPC server
// interceptor (RpcMetrics::InterceptorFactory) records every call, so no
// handler needs to. The metrics collectable reads it at scrape.
//
//   auto metrics = std::make_shared<RpcMetrics>();
//   builder.experimental().SetInterceptorCreators(metrics->InterceptorFactories());
//   ...
//   for (const RpcMetrics::MethodReading& method : metrics->Read()) ...
//
// The methods are fixed at construction (the broker's service, health and
// reflection), so labels stay bounded: a call to anything else counts as
// method "unknown".
//
// Thread-safety: thread-safe; recording is lock-free.
#ifndef IOMMU_BROKER_SERVER_RPC_METRICS_H_
#define IOMMU_BROKER_SERVER_RPC_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "core/util/log2_histogram.h"
#include "grpcpp/support/server_interceptor.h"

namespace iommu_broker {

class RpcMetrics final : public std::enable_shared_from_this<RpcMetrics> {
 public:
  // Latency buckets: 1.024 us x 2^k, k = 0..20 (to about 1.07 s), then overflow.
  static constexpr uint64_t kFirstLatencyBoundNanos = 1024;
  static constexpr size_t kLatencyBuckets = 21;
  static constexpr size_t kCodes = 17;  // grpc::StatusCode 0..16

  struct MethodReading {
    std::string method;                      // "Map", "Health/Check", "unknown"
    std::array<uint64_t, kCodes> by_code{};  // finished calls
    Log2Histogram::Snapshot latency;
    int64_t streams_in_flight = 0;
    bool streaming = false;
  };

  RpcMetrics();
  RpcMetrics(const RpcMetrics&) = delete;
  RpcMetrics& operator=(const RpcMetrics&) = delete;

  // For grpc::ServerBuilder::experimental().SetInterceptorCreators. The
  // factory holds this object alive.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
  InterceptorFactories();

  std::vector<MethodReading> Read() const;

  // ---- What the interceptor reports (public for it; tests may call them).
  // The index of a full method name ("/pkg.Service/Method").
  size_t MethodIndex(absl::string_view full_name) const;
  void StreamOpened(size_t method);
  void StreamClosed(size_t method);
  void Finished(size_t method, int code, uint64_t nanos);

 private:
  struct Method {
    std::string label;
    bool streaming = false;
    std::array<std::atomic<uint64_t>, kCodes> by_code{};
    std::unique_ptr<Log2Histogram> latency =
        std::make_unique<Log2Histogram>(kFirstLatencyBoundNanos, kLatencyBuckets);
    std::atomic<int64_t> streams_in_flight{0};
  };

  void AddMethod(std::string full_name, std::string label, bool streaming);

  // Constant after construction (the Method objects' counters change).
  std::vector<std::unique_ptr<Method>> methods_;
  absl::flat_hash_map<std::string, size_t> index_by_full_name_;
  size_t unknown_ = 0;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_RPC_METRICS_H_
