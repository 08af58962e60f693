// BrokerService implements the iommu_broker.v1.IommuBroker gRPC service on
// the engine (core/iommu), with gRPC's callback API: unary calls run on the
// engine inline (its work is bounded), Batch and WatchEvents are reactors.
// Every call is authenticated and authorized (AccessControl) before
// anything else; every request is validated; a refused request changes
// nothing; errors become gRPC statuses in one place (server/status.h).
// Admin actions are logged with who made them (the audit log), refused
// ones too; data-path operations never.
//
//   BrokerService service(iommu, limits, access, logger);
//   grpc::ServerBuilder builder;
//   builder.RegisterService(&service);
//   ...
//   service.Drain();  // on shutdown, before grpc::Server::Shutdown
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_SERVER_BROKER_SERVICE_H_
#define IOMMU_BROKER_SERVER_BROKER_SERVICE_H_

#include <atomic>
#include <cstddef>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "core/iommu/iommu.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "server/access_control.h"
#include "server/log.h"
#include "server/operation_metrics.h"
#include "server/stoppable_stream.h"
#include "server/stream_limit.h"

namespace iommu_broker {


struct ServiceLimits {
  size_t max_batch_operations = 4096;    // per Batch message
  size_t max_concurrent_streams = 256;   // Batch + WatchEvents
  size_t watch_queue_capacity = 4096;    // faults queued per watcher
};

class BrokerService final : public v1::IommuBroker::CallbackService {
 public:
  // `iommu`, `access` and `log` must outlive the service and every call it
  // serves.
  BrokerService(Iommu& iommu, const ServiceLimits& limits, AccessControl& access, Logger& log);
  BrokerService(const BrokerService&) = delete;
  BrokerService& operator=(const BrokerService&) = delete;

  // Shutdown: ends every WatchEvents stream, refuses new ones, and ends each
  // Batch stream at its next message, UNAVAILABLE. Unary calls still run
  // (gRPC's own shutdown stops accepting them).
  void Drain();
  size_t active_streams() const { return streams_.active(); }
  // The data path's operations so far (for the metrics).
  const OperationMetrics& operation_metrics() const { return operation_metrics_; }

  grpc::ServerUnaryReactor* CreateDomain(grpc::CallbackServerContext* context,
                                         const v1::CreateDomainRequest* request,
                                         v1::Domain* response) override;
  grpc::ServerUnaryReactor* DestroyDomain(grpc::CallbackServerContext* context,
                                          const v1::DestroyDomainRequest* request,
                                          v1::DestroyDomainResponse* response) override;
  grpc::ServerUnaryReactor* GetDomain(grpc::CallbackServerContext* context,
                                      const v1::GetDomainRequest* request,
                                      v1::Domain* response) override;
  grpc::ServerUnaryReactor* ListDomains(grpc::CallbackServerContext* context,
                                        const v1::ListDomainsRequest* request,
                                        v1::ListDomainsResponse* response) override;
  grpc::ServerUnaryReactor* SetDomainPolicy(grpc::CallbackServerContext* context,
                                            const v1::SetDomainPolicyRequest* request,
                                            v1::Domain* response) override;

  grpc::ServerUnaryReactor* RegisterDevice(grpc::CallbackServerContext* context,
                                           const v1::RegisterDeviceRequest* request,
                                           v1::Device* response) override;
  grpc::ServerUnaryReactor* UpdateDevice(grpc::CallbackServerContext* context,
                                         const v1::UpdateDeviceRequest* request,
                                         v1::Device* response) override;
  grpc::ServerUnaryReactor* UnregisterDevice(grpc::CallbackServerContext* context,
                                             const v1::UnregisterDeviceRequest* request,
                                             v1::UnregisterDeviceResponse* response) override;
  grpc::ServerUnaryReactor* AttachDevice(grpc::CallbackServerContext* context,
                                         const v1::AttachDeviceRequest* request,
                                         v1::AttachDeviceResponse* response) override;
  grpc::ServerUnaryReactor* DetachDevice(grpc::CallbackServerContext* context,
                                         const v1::DetachDeviceRequest* request,
                                         v1::DetachDeviceResponse* response) override;
  grpc::ServerUnaryReactor* GetDevice(grpc::CallbackServerContext* context,
                                      const v1::GetDeviceRequest* request,
                                      v1::Device* response) override;
  grpc::ServerUnaryReactor* ListDevices(grpc::CallbackServerContext* context,
                                        const v1::ListDevicesRequest* request,
                                        v1::ListDevicesResponse* response) override;

  grpc::ServerUnaryReactor* Map(grpc::CallbackServerContext* context,
                                const v1::MapRequest* request,
                                v1::MapResponse* response) override;
  grpc::ServerUnaryReactor* Unmap(grpc::CallbackServerContext* context,
                                  const v1::UnmapRequest* request,
                                  v1::UnmapResponse* response) override;
  grpc::ServerUnaryReactor* Translate(grpc::CallbackServerContext* context,
                                      const v1::TranslateRequest* request,
                                      v1::TranslateResponse* response) override;
  grpc::ServerUnaryReactor* Flush(grpc::CallbackServerContext* context,
                                  const v1::FlushRequest* request,
                                  v1::FlushResponse* response) override;

  grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse>* Batch(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<v1::Event>* WatchEvents(grpc::CallbackServerContext* context,
                                                   const v1::WatchEventsRequest* request) override;
  grpc::ServerBidiReactor<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations>* LinkDeviceIotlb(
      grpc::CallbackServerContext* context) override;

  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::GetStatsResponse* response) override;

 private:
  // Fills `response` from the engine; the status says whether it could.
  absl::Status DescribeDomain(const std::string& domain_id, v1::Domain* response) const;
  absl::Status DescribeDevice(const std::string& device_id, v1::Device* response) const;
  // `include_domains` false: no domain's stats, whatever the filter.
  absl::Status StatsOf(const v1::GetStatsRequest& request, bool include_domains,
                       v1::GetStatsResponse* response) const;
  // The caller of `context` if it may make `rpc`, a call of `kind`; an
  // admin call refused is audited.
  absl::StatusOr<Caller> Admit(const grpc::CallbackServerContext& context, CallKind kind,
                               absl::string_view rpc);
  // Admit for a data-path call on `device_id`'s mappings.
  absl::Status AdmitToDevice(const grpc::CallbackServerContext& context, absl::string_view rpc,
                             absl::string_view device_id);
  // Logs an admin action: event=`action`, its fields, who, result=ok or the
  // code.
  void Audit(const Caller& caller, absl::string_view action, const absl::Status& status,
             std::initializer_list<LogField> fields);
  // Keeps a stream that Drain() must stop, unless draining already has.
  void Track(StoppableStream* stream);
  void Forget(StoppableStream* stream);

  Iommu& iommu_;
  const ServiceLimits limits_;
  AccessControl& access_;
  Logger& log_;
  StreamLimit streams_;
  OperationMetrics operation_metrics_;
  std::atomic<bool> draining_{false};
  std::mutex stoppable_mutex_;
  absl::flat_hash_set<StoppableStream*> stoppable_ ABSL_GUARDED_BY(stoppable_mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_BROKER_SERVICE_H_
