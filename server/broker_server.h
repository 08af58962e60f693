// BrokerServer is a running broker: the engine built from a BrokerConfig,
// its start-up domains and devices, the gRPC server (IommuBroker, the
// grpc.health.v1 health service and server reflection, every call counted
// by an interceptor), an optional health-only listener for probes, and the
// Prometheus exposer (BrokerMetrics). iommu-brokerd is a BrokerServer plus
// flags and signals; tests start one in-process on an ephemeral port
// ("127.0.0.1:0").
//
//   auto server = BrokerServer::Start(config, logger);
//   ... (*server)->port() ...
//   (*server)->Reload(new_config);  // SIGHUP: the new auth identities
//   (*server)->Shutdown();  // NOT_SERVING, drain streams, finish calls, flush
//
// Thread-safety: thread-safe; Shutdown may be called more than once.
#ifndef IOMMU_BROKER_SERVER_BROKER_SERVER_H_
#define IOMMU_BROKER_SERVER_BROKER_SERVER_H_

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/iommu/iommu.h"
#include "grpcpp/server.h"
#include "iommu_broker/v1/config.pb.h"
#include "prometheus/exposer.h"
#include "server/access_control.h"
#include "server/broker_metrics.h"
#include "server/broker_service.h"
#include "server/log.h"
#include "server/rpc_metrics.h"

namespace iommu_broker {

inline constexpr absl::string_view kServiceName = "iommu_broker.v1.IommuBroker";

class BrokerServer final {
 public:
  // Fails, serving nothing, if the configuration is unusable (including
  // its security: SecurityFromConfig), a start-up domain or device is refused,
  // or an address cannot be bound. `log` must outlive the server.
  static absl::StatusOr<std::unique_ptr<BrokerServer>> Start(const v1::BrokerConfig& config,
                                                             Logger& log);
  ~BrokerServer();
  BrokerServer(const BrokerServer&) = delete;
  BrokerServer& operator=(const BrokerServer&) = delete;

  // The TCP port bound (0 for a unix: address).
  int port() const { return port_; }
  // The metrics port bound (0 when metrics are off).
  int metrics_port() const { return metrics_port_; }
  const std::string& listen_address() const { return listen_address_; }
  // The health-only listener's TCP port (0 when there is none or it is a
  // unix: address).
  int health_port() const { return health_port_; }
  Iommu& iommu() { return *iommu_; }

  // Applies `config`'s auth identities to every call from now on; calls and
  // streams in flight go on under the identity they started with. Fails,
  // changing nothing, if they are unusable. The other settings (listen
  // addresses, TLS file names, engine) need a restart and are left as
  // they are, with a warning when they differ. (The TLS files themselves
  // are re-read whenever they change.)
  absl::Status Reload(const v1::BrokerConfig& config);

  // Graceful stop: health NOT_SERVING, streams drained, in-flight calls
  // given `grace` before they are cancelled, flush queues drained, and one
  // `domain_at_exit` log line per domain with what is still mapped. Returns
  // when everything has stopped.
  void Shutdown(absl::Duration grace);
  // Blocks until Shutdown has completed (from another thread).
  void Wait();

 private:
  BrokerServer() = default;
  absl::Status CreateStartupObjects(const v1::BrokerConfig& config);
  absl::Status StartGrpc(const v1::BrokerConfig& config, const ServiceLimits& limits);
  absl::Status StartMetrics(const v1::BrokerConfig& config);
  absl::Status StartHealthListener(const v1::BrokerConfig& config);
  // What a drained domain still holds: live mappings are the clients'
  // leaks, or the state a restart loses.
  void LogDomainAtExit(const std::string& id);
  // On every listener's health service: the overall status and the
  // broker service's.
  void SetServing(bool serving);

  Logger* log_ = nullptr;
  std::unique_ptr<Iommu> iommu_;
  v1::BrokerConfig started_with_;  // what Reload compares against
  std::unique_ptr<AccessControl> access_;
  std::unique_ptr<BrokerService> service_;
  std::shared_ptr<RpcMetrics> rpc_metrics_ = std::make_shared<RpcMetrics>();
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;  // null without health_listen_address
  std::shared_ptr<BrokerMetrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string listen_address_;
  int port_ = 0;
  int metrics_port_ = 0;
  int health_port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_BROKER_SERVER_H_
