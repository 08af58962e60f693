#include "server/broker_server.h"

#include <chrono>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/server_builder.h"
#include "server/broker_config.h"
#include "server/broker_metrics.h"
#include "server/convert.h"
#include "server/tls_files.h"

namespace iommu_broker {
namespace {

// Builds and starts `builder`, listening on `address`; `*port` is the TCP
// port bound (0 for a unix: address).
absl::StatusOr<std::unique_ptr<grpc::Server>> StartListening(
    grpc::ServerBuilder& builder, absl::string_view what, const std::string& address,
    const std::shared_ptr<grpc::ServerCredentials>& credentials, int* port) {
  builder.AddListeningPort(address, credentials, port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    return absl::UnavailableError(absl::StrCat(what, " ", address, " cannot be bound"));
  }
  if (absl::StartsWith(address, "unix:")) *port = 0;
  return server;
}

}  // namespace

absl::StatusOr<std::unique_ptr<BrokerServer>> BrokerServer::Start(const v1::BrokerConfig& config,
                                                                  Logger& log) {
  absl::StatusOr<IommuOptions> options = IommuOptionsFromConfig(config);
  if (!options.ok()) return options.status();
  absl::StatusOr<ServiceLimits> limits = ServiceLimitsFromConfig(config);
  if (!limits.ok()) return limits.status();
  if (absl::Status grace = ShutdownGracePeriod(config).status(); !grace.ok()) return grace;
  absl::StatusOr<AccessPolicy> policy = SecurityFromConfig(config);
  if (!policy.ok()) return policy.status();

  std::unique_ptr<BrokerServer> server(new BrokerServer());
  server->log_ = &log;
  server->started_with_ = config;
  server->access_ = std::make_unique<AccessControl>(*std::move(policy));
  absl::StatusOr<std::unique_ptr<Iommu>> iommu = Iommu::Create(*options);
  if (!iommu.ok()) return iommu.status();
  server->iommu_ = *std::move(iommu);
  if (absl::Status status = server->CreateStartupObjects(config); !status.ok()) return status;
  server->service_ =
      std::make_unique<BrokerService>(*server->iommu_, *limits, *server->access_, log);
  if (absl::Status status = server->StartMetrics(config); !status.ok()) {
    return status;
  }
  if (absl::Status status = server->StartGrpc(config, *limits); !status.ok()) return status;
  if (absl::Status status = server->StartHealthListener(config); !status.ok()) return status;
  server->SetServing(true);
  return server;
}

absl::Status BrokerServer::CreateStartupObjects(const v1::BrokerConfig& config) {
  for (int i = 0; i < config.domains_size(); ++i) {
    absl::StatusOr<DomainConfig> domain = DomainConfigFromProto(config.domains(i));
    absl::Status status = domain.ok() ? iommu_->CreateDomain(*domain) : domain.status();
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("domains[", i, "]: ", status.message()));
    }
    log_->Info("domain_created", {{"domain", domain->id}, {"policy", PolicyName(domain->policy)}});
  }
  for (int i = 0; i < config.devices_size(); ++i) {
    const v1::StartupDevice& startup = config.devices(i);
    absl::StatusOr<DeviceConfig> device = DeviceConfigFromProto(startup.device());
    absl::Status status = device.ok() ? iommu_->AddDevice(*device) : device.status();
    if (status.ok() && !startup.attach_to_domain_id().empty()) {
      status = iommu_->Attach(device->id, startup.attach_to_domain_id()).status();
    }
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("devices[", i, "]: ", status.message()));
    }
    log_->Info("device_registered",
               {{"device", device->id}, {"domain", startup.attach_to_domain_id()}});
  }
  return absl::OkStatus();
}

absl::Status BrokerServer::StartMetrics(const v1::BrokerConfig& config) {
  const std::string address = MetricsListenAddress(config);
  if (address.empty()) return absl::OkStatus();
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& error) {  // civetweb reports bind failures by throwing
    return absl::UnavailableError(
        absl::StrCat("metrics listen address ", address, " cannot be bound: ", error.what()));
  }
  metrics_ = std::make_shared<BrokerMetrics>(BrokerMetrics::Sources{
      .iommu = iommu_.get(),
      .operations = &service_->operation_metrics(),
      .rpcs = rpc_metrics_.get(),
      .domain_label = config.metrics_domain_label(),
      .version = IOMMU_BROKER_VERSION,
      .git_commit = IOMMU_BROKER_GIT_COMMIT,
  });
  exposer_->RegisterCollectable(metrics_);  // the exposer keeps a weak pointer
  const std::vector<int> ports = exposer_->GetListeningPorts();
  metrics_port_ = ports.empty() ? 0 : ports.front();
  log_->Info("metrics_listening", {{"address", address}, {"port", metrics_port_}});
  return absl::OkStatus();
}

absl::Status BrokerServer::StartGrpc(const v1::BrokerConfig& config, const ServiceLimits& limits) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  listen_address_ = ListenAddress(config);
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(MaxMessageBytes(config)));
  builder.SetMaxSendMessageSize(static_cast<int>(MaxMessageBytes(config)));
  builder.RegisterService(service_.get());
  // Calls are counted only where someone can read the counts.
  if (metrics_ != nullptr) {
    builder.experimental().SetInterceptorCreators(rpc_metrics_->InterceptorFactories());
  }
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = StartListening(
      builder, "listen address", listen_address_, ServerCredentialsFor(config.tls()), &port_);
  if (!server.ok()) return server.status();
  server_ = *std::move(server);
  if (access_->enabled()) {
    log_->Info("authentication", {{"identities", config.auth().identities_size()},
                                  {"tls", TlsEnabled(config.tls()) ? "on" : "off"}});
  } else {
    log_->Warning("authentication",
                  {{"identities", 0},
                   {"tls", TlsEnabled(config.tls()) ? "on" : "off"},
                   {"note", "no auth identities: every client may do anything, so the API "
                            "serves only on loopback or a unix: socket"}});
  }
  log_->Info("serving", {{"address", listen_address_}, {"port", port_},
                         {"max_batch_operations", limits.max_batch_operations},
                         {"max_concurrent_streams", limits.max_concurrent_streams}});
  return absl::OkStatus();
}

absl::Status BrokerServer::StartHealthListener(const v1::BrokerConfig& config) {
  const std::string& address = config.health_listen_address();
  if (address.empty()) return absl::OkStatus();
  // Nothing registered: the builder adds only the default health service
  // (and the reflection plugin, which then describes just that).
  grpc::ServerBuilder builder;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server =
      StartListening(builder, "health listen address", address,
                     grpc::InsecureServerCredentials(), &health_port_);
  if (!server.ok()) return server.status();
  health_server_ = *std::move(server);
  log_->Info("health_listening", {{"address", address}, {"port", health_port_}});
  return absl::OkStatus();
}

void BrokerServer::SetServing(bool serving) {
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
    health->SetServingStatus(std::string(kServiceName), serving);
    health->SetServingStatus(serving);
  }
}

absl::Status BrokerServer::Reload(const v1::BrokerConfig& config) {
  // The running listener with the new auth and TLS files.
  v1::BrokerConfig effective = config;
  effective.set_listen_address(started_with_.listen_address());
  *effective.mutable_tls() = started_with_.tls();
  absl::StatusOr<AccessPolicy> policy = SecurityFromConfig(effective);
  if (!policy.ok()) {
    log_->Error("reload", {{"result", absl::StatusCodeToString(policy.status().code())},
                           {"error", policy.status().message()}});
    return policy.status();
  }
  const size_t identities = policy->size();
  access_->Replace(*std::move(policy));
  if (ListenAddress(config) != ListenAddress(started_with_)) {
    log_->Warning("reload_needs_restart", {{"setting", "listen_address"}});
  }
  if (!google::protobuf::util::MessageDifferencer::Equals(config.tls(), started_with_.tls())) {
    log_->Warning("reload_needs_restart", {{"setting", "tls"}});
  }
  log_->Info("reload", {{"identities", identities}, {"result", "ok"}});
  return absl::OkStatus();
}

void BrokerServer::Shutdown(absl::Duration grace) {
  std::call_once(shutdown_once_, [&] {
    log_->Info("draining", {{"grace_period", absl::FormatDuration(grace)}});
    SetServing(false);
    service_->Drain();
    server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(grace));
    // Last, so that probes see NOT_SERVING for as long as the broker drains.
    if (health_server_ != nullptr) health_server_->Shutdown();
    for (const std::string& id : iommu_->DomainIds()) {
      iommu_->Flush(id).IgnoreError();
      LogDomainAtExit(id);
    }
    log_->Info("stopped");
  });
}

void BrokerServer::LogDomainAtExit(const std::string& id) {
  absl::StatusOr<DomainInfo> domain = iommu_->DescribeDomain(id);
  if (!domain.ok()) return;  // destroyed by a call that finished meanwhile
  const DomainStats& stats = domain->stats;
  log_->Info("domain_at_exit", {{"domain", id},
                                {"live_mappings", stats.live_mappings},
                                {"maps", stats.maps},
                                {"unmaps", stats.unmaps},
                                {"pending_invalidations", stats.flush_queue.pending}});
}

void BrokerServer::Wait() { server_->Wait(); }

BrokerServer::~BrokerServer() {
  if (server_ != nullptr) Shutdown(absl::ZeroDuration());
}

}  // namespace iommu_broker
