#include "server/broker_service.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/batch_reactor.h"
#include "server/device_iotlb_reactor.h"
#include "server/convert.h"
#include "server/data_path.h"
#include "server/refusal.h"
#include "server/status.h"
#include "server/watch_reactor.h"

namespace iommu_broker {
namespace {

using BatchStream = grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse>;
using EventStream = grpc::ServerWriteReactor<v1::Event>;

grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void DetachToProto(const std::optional<DetachResult>& detached, std::string* domain_id,
                   v1::Leaks* leaked) {
  if (!detached.has_value()) return;
  *domain_id = detached->domain_id;
  LeaksToProto(detached->leaked, leaked);
}

}  // namespace

BrokerService::BrokerService(Iommu& iommu, const ServiceLimits& limits, AccessControl& access,
                             Logger& log)
    : iommu_(iommu),
      limits_(limits),
      access_(access),
      log_(log),
      streams_(limits.max_concurrent_streams) {}

void BrokerService::Drain() {
  draining_.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> lock(stoppable_mutex_);
  for (StoppableStream* stream : stoppable_) stream->Stop();
}

absl::StatusOr<Caller> BrokerService::Admit(const grpc::CallbackServerContext& context,
                                             CallKind kind, absl::string_view rpc) {
  absl::StatusOr<Caller> caller = access_.Authenticate(context);
  absl::Status status = caller.ok() ? caller->Permit(kind, rpc) : caller.status();
  if (status.ok()) return caller;
  if (kind == CallKind::kAdmin) {
    log_.Warning("access_denied", {{"rpc", rpc},
                                   {"identity", caller.ok() ? caller->name() : "unauthenticated"},
                                   {"peer", context.peer()},
                                   {"result", absl::StatusCodeToString(status.code())},
                                   {"error", status.message()}});
  }
  return status;
}

absl::Status BrokerService::AdmitToDevice(const grpc::CallbackServerContext& context,
                                          absl::string_view rpc, absl::string_view device_id) {
  absl::StatusOr<Caller> caller = Admit(context, CallKind::kDataPath, rpc);
  return caller.ok() ? caller->PermitDevice(device_id) : caller.status();
}

void BrokerService::Audit(const Caller& caller, absl::string_view action,
                          const absl::Status& status, std::initializer_list<LogField> fields) {
  if (status.ok()) {
    log_.Log(LogLevel::kInfo, action, fields, {{"identity", caller.name()}, {"result", "ok"}});
    return;
  }
  log_.Log(LogLevel::kWarning, action, fields,
           {{"identity", caller.name()},
            {"result", absl::StatusCodeToString(status.code())},
            {"error", status.message()}});
}

absl::Status BrokerService::DescribeDomain(const std::string& domain_id,
                                           v1::Domain* response) const {
  absl::StatusOr<DomainInfo> info = iommu_.DescribeDomain(domain_id);
  if (!info.ok()) return info.status();
  DomainInfoToProto(*info, response);
  return absl::OkStatus();
}

absl::Status BrokerService::DescribeDevice(const std::string& device_id,
                                           v1::Device* response) const {
  absl::StatusOr<DeviceInfo> info = iommu_.DescribeDevice(device_id);
  if (!info.ok()) return info.status();
  DeviceInfoToProto(*info, response);
  return absl::OkStatus();
}

// ---- Domains

grpc::ServerUnaryReactor* BrokerService::CreateDomain(grpc::CallbackServerContext* context,
                                                      const v1::CreateDomainRequest* request,
                                                      v1::Domain* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "CreateDomain");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<DomainConfig> config = DomainConfigFromProto(request->domain());
  absl::Status status = config.ok() ? iommu_.CreateDomain(*config) : config.status();
  Audit(*caller, "create_domain", status,
        {{"domain", request->domain().id()},
         {"policy", v1::Policy_Name(request->domain().policy())}});
  if (status.ok()) status = DescribeDomain(request->domain().id(), response);
  return Reply(context, status);
}

grpc::ServerUnaryReactor* BrokerService::DestroyDomain(grpc::CallbackServerContext* context,
                                                       const v1::DestroyDomainRequest* request,
                                                       v1::DestroyDomainResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "DestroyDomain");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<DestroyResult> destroyed =
      iommu_.DestroyDomain(request->domain_id(), request->force());
  if (destroyed.ok()) {
    for (const std::string& id : destroyed->detached_devices) {
      response->add_detached_device_ids(id);
    }
    LeaksToProto(destroyed->leaked, response->mutable_leaked());
  }
  Audit(*caller, "destroy_domain", destroyed.status(),
        {{"domain", request->domain_id()},
         {"force", request->force() ? "true" : "false"},
         {"leaked_mappings", destroyed.ok() ? destroyed->leaked.mappings : 0}});
  return Reply(context, destroyed.status());
}

grpc::ServerUnaryReactor* BrokerService::GetDomain(grpc::CallbackServerContext* context,
                                                   const v1::GetDomainRequest* request,
                                                   v1::Domain* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kRead, "GetDomain");
  if (!caller.ok()) return Reply(context, caller.status());
  return Reply(context, DescribeDomain(request->domain_id(), response));
}

grpc::ServerUnaryReactor* BrokerService::ListDomains(grpc::CallbackServerContext* context,
                                                     const v1::ListDomainsRequest* /*request*/,
                                                     v1::ListDomainsResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kRead, "ListDomains");
  if (!caller.ok()) return Reply(context, caller.status());
  for (const std::string& id : iommu_.DomainIds()) {
    v1::Domain domain;
    // A domain destroyed since DomainIds() is simply not listed.
    if (DescribeDomain(id, &domain).ok()) *response->add_domains() = std::move(domain);
  }
  return Reply(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* BrokerService::SetDomainPolicy(grpc::CallbackServerContext* context,
                                                         const v1::SetDomainPolicyRequest* request,
                                                         v1::Domain* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "SetDomainPolicy");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<Policy> policy = PolicyFromProto(request->policy(), "policy");
  absl::Status status =
      policy.ok() ? iommu_.SetPolicy(request->domain_id(), *policy) : policy.status();
  Audit(*caller, "set_domain_policy", status,
        {{"domain", request->domain_id()}, {"policy", v1::Policy_Name(request->policy())}});
  if (status.ok()) status = DescribeDomain(request->domain_id(), response);
  return Reply(context, status);
}

// ---- Devices

grpc::ServerUnaryReactor* BrokerService::RegisterDevice(grpc::CallbackServerContext* context,
                                                        const v1::RegisterDeviceRequest* request,
                                                        v1::Device* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "RegisterDevice");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<DeviceConfig> config = DeviceConfigFromProto(request->device());
  absl::Status status = config.ok() ? iommu_.AddDevice(*config) : config.status();
  Audit(*caller, "register_device", status,
        {{"device", request->device().id()},
         {"allow_bypass", request->device().allow_bypass() ? "true" : "false"}});
  if (status.ok()) status = DescribeDevice(request->device().id(), response);
  return Reply(context, status);
}

grpc::ServerUnaryReactor* BrokerService::UpdateDevice(grpc::CallbackServerContext* context,
                                                      const v1::UpdateDeviceRequest* request,
                                                      v1::Device* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "UpdateDevice");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<DeviceUpdate> update = DeviceUpdateFromProto(*request);
  absl::Status status =
      update.ok() ? iommu_.UpdateDevice(request->device_id(), *update) : update.status();
  Audit(*caller, "update_device", status,
        {{"device", request->device_id()},
         {"dma_mask_bits",
          request->has_dma_mask_bits() ? absl::StrCat(request->dma_mask_bits()) : "unchanged"},
         {"allow_bypass", request->has_allow_bypass()
                              ? (request->allow_bypass() ? "true" : "false")
                              : "unchanged"}});
  if (status.ok()) status = DescribeDevice(request->device_id(), response);
  return Reply(context, status);
}

grpc::ServerUnaryReactor* BrokerService::UnregisterDevice(
    grpc::CallbackServerContext* context, const v1::UnregisterDeviceRequest* request,
    v1::UnregisterDeviceResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "UnregisterDevice");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<std::optional<DetachResult>> removed = iommu_.RemoveDevice(request->device_id());
  if (removed.ok()) {
    DetachToProto(*removed, response->mutable_detached_from_domain_id(),
                  response->mutable_leaked());
  }
  Audit(*caller, "unregister_device", removed.status(), {{"device", request->device_id()}});
  return Reply(context, removed.status());
}

grpc::ServerUnaryReactor* BrokerService::AttachDevice(grpc::CallbackServerContext* context,
                                                      const v1::AttachDeviceRequest* request,
                                                      v1::AttachDeviceResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "AttachDevice");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<std::optional<DetachResult>> attached =
      iommu_.Attach(request->device_id(), request->domain_id());
  if (attached.ok()) {
    DetachToProto(*attached, response->mutable_detached_from_domain_id(),
                  response->mutable_leaked());
  }
  Audit(*caller, "attach_device", attached.status(),
        {{"device", request->device_id()}, {"domain", request->domain_id()}});
  return Reply(context, attached.status());
}

grpc::ServerUnaryReactor* BrokerService::DetachDevice(grpc::CallbackServerContext* context,
                                                      const v1::DetachDeviceRequest* request,
                                                      v1::DetachDeviceResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kAdmin, "DetachDevice");
  if (!caller.ok()) return Reply(context, caller.status());
  absl::StatusOr<DetachResult> detached = iommu_.Detach(request->device_id());
  if (detached.ok()) {
    response->set_domain_id(detached->domain_id);
    LeaksToProto(detached->leaked, response->mutable_leaked());
  }
  Audit(*caller, "detach_device", detached.status(), {{"device", request->device_id()}});
  return Reply(context, detached.status());
}

grpc::ServerUnaryReactor* BrokerService::GetDevice(grpc::CallbackServerContext* context,
                                                   const v1::GetDeviceRequest* request,
                                                   v1::Device* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kRead, "GetDevice");
  if (!caller.ok()) return Reply(context, caller.status());
  return Reply(context, DescribeDevice(request->device_id(), response));
}

grpc::ServerUnaryReactor* BrokerService::ListDevices(grpc::CallbackServerContext* context,
                                                     const v1::ListDevicesRequest* request,
                                                     v1::ListDevicesResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kRead, "ListDevices");
  if (!caller.ok()) return Reply(context, caller.status());
  if (!request->domain_id().empty()) {
    absl::StatusOr<DomainInfo> domain = iommu_.DescribeDomain(request->domain_id());
    if (!domain.ok()) return Reply(context, domain.status());
  }
  for (const std::string& id : iommu_.DeviceIds()) {
    v1::Device device;
    if (!DescribeDevice(id, &device).ok()) continue;  // unregistered meanwhile
    if (!request->domain_id().empty() && device.domain_id() != request->domain_id()) continue;
    *response->add_devices() = std::move(device);
  }
  return Reply(context, absl::OkStatus());
}

// ---- Data path

grpc::ServerUnaryReactor* BrokerService::Map(grpc::CallbackServerContext* context,
                                             const v1::MapRequest* request,
                                             v1::MapResponse* response) {
  if (absl::Status status = AdmitToDevice(*context, "Map", request->device_id());
      !status.ok()) {
    return Reply(context, status);
  }
  DataPath data_path(iommu_, operation_metrics_);
  return Reply(context, data_path.Map(*request, response));
}

grpc::ServerUnaryReactor* BrokerService::Unmap(grpc::CallbackServerContext* context,
                                               const v1::UnmapRequest* request,
                                               v1::UnmapResponse* response) {
  if (absl::Status status = AdmitToDevice(*context, "Unmap", request->device_id());
      !status.ok()) {
    return Reply(context, status);
  }
  DataPath data_path(iommu_, operation_metrics_);
  const absl::Status status = data_path.Unmap(*request, response);
  std::shared_ptr<Completion> acks = data_path.TakeDeviceTlbAcks();
  if (acks == nullptr) return Reply(context, status);
  // Paranoid, with device-side IOTLBs linked: reply once they dropped it.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  acks->OnDone([reactor] { reactor->Finish(grpc::Status::OK); });
  return reactor;
}

grpc::ServerUnaryReactor* BrokerService::Translate(grpc::CallbackServerContext* context,
                                                   const v1::TranslateRequest* request,
                                                   v1::TranslateResponse* response) {
  if (absl::Status status = AdmitToDevice(*context, "Translate", request->device_id());
      !status.ok()) {
    return Reply(context, status);
  }
  DataPath data_path(iommu_, operation_metrics_);
  return Reply(context, data_path.Translate(*request, response));
}

grpc::ServerUnaryReactor* BrokerService::Flush(grpc::CallbackServerContext* context,
                                               const v1::FlushRequest* request,
                                               v1::FlushResponse* /*response*/) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kDataPath, "Flush");
  if (!caller.ok()) return Reply(context, caller.status());
  if (absl::Status status = caller->PermitDomain(iommu_, request->domain_id()); !status.ok()) {
    return Reply(context, status);
  }
  DataPath data_path(iommu_, operation_metrics_);
  return Reply(context, data_path.Flush(*request));
}

BatchStream* BrokerService::Batch(grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kDataPath, "Batch");
  if (!caller.ok()) return new Refusal<BatchStream>(ToGrpcStatus(caller.status()));
  if (draining_.load(std::memory_order_acquire)) {
    return new Refusal<BatchStream>(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, "the broker is shutting down"));
  }
  if (!streams_.TryAcquire()) {
    return new Refusal<BatchStream>(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("the broker serves at most ", streams_.max_streams(), " streams")));
  }
  return new BatchReactor(iommu_, operation_metrics_, limits_.max_batch_operations, streams_,
                          draining_, *std::move(caller));
}

// ---- Events

EventStream* BrokerService::WatchEvents(grpc::CallbackServerContext* context,
                                        const v1::WatchEventsRequest* request) {
  const auto refuse = [](grpc::StatusCode code, std::string message) {
    return new Refusal<EventStream>(grpc::Status(code, std::move(message)));
  };
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kObserve, "WatchEvents");
  absl::Status permitted =
      caller.ok() ? caller->PermitObservation(iommu_, request->domain_id(), request->device_id())
                  : caller.status();
  if (!permitted.ok()) return new Refusal<EventStream>(ToGrpcStatus(permitted));
  if (!request->faults() && !request->invalidations()) {
    return refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  "set at least one of faults, invalidations to watch");
  }
  std::shared_ptr<FaultSubscription> faults;
  if (request->faults()) {
    absl::StatusOr<std::shared_ptr<FaultSubscription>> subscribed =
        iommu_.SubscribeFaults(request->domain_id(), limits_.watch_queue_capacity);
    if (!subscribed.ok()) return new Refusal<EventStream>(ToGrpcStatus(subscribed.status()));
    faults = *std::move(subscribed);
  }
  std::shared_ptr<WatchReactor::Invalidations> invalidations;
  if (request->invalidations()) {
    absl::StatusOr<std::shared_ptr<WatchReactor::Invalidations>> subscribed =
        iommu_.SubscribeInvalidations(request->domain_id(), limits_.watch_queue_capacity);
    if (!subscribed.ok()) return new Refusal<EventStream>(ToGrpcStatus(subscribed.status()));
    invalidations = *std::move(subscribed);
  }
  const auto unsubscribe = [&] {
    if (faults != nullptr) faults->Close();
    if (invalidations != nullptr) invalidations->Close();
  };
  // Read after subscribing: a later attach or move reaches the watcher as
  // the device's own invalidation (WatchReactor follows it).
  std::string device_domain;
  if (!request->device_id().empty()) {
    absl::StatusOr<DeviceInfo> device = iommu_.DescribeDevice(request->device_id());
    if (!device.ok()) {
      unsubscribe();
      return new Refusal<EventStream>(ToGrpcStatus(device.status()));
    }
    device_domain = device->domain_id;
  }
  if (!streams_.TryAcquire()) {
    unsubscribe();
    return refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                  absl::StrCat("the broker serves at most ", streams_.max_streams(), " streams"));
  }
  auto* watcher = new WatchReactor(std::move(faults), std::move(invalidations),
                                   request->domain_id(), request->device_id(),
                                   std::move(device_domain),
                                   [this](StoppableStream* done) { Forget(done); });
  Track(watcher);
  watcher->Start();
  return watcher;
}

grpc::ServerBidiReactor<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations>*
BrokerService::LinkDeviceIotlb(grpc::CallbackServerContext* context) {
  using LinkStream = grpc::ServerBidiReactor<v1::DeviceIotlbRequest, v1::DeviceIotlbInvalidations>;
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kDataPath, "LinkDeviceIotlb");
  if (!caller.ok()) return new Refusal<LinkStream>(ToGrpcStatus(caller.status()));
  if (draining_.load(std::memory_order_acquire)) {
    return new Refusal<LinkStream>(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, "the broker is shutting down"));
  }
  if (!streams_.TryAcquire()) {
    return new Refusal<LinkStream>(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("the broker serves at most ", streams_.max_streams(), " streams")));
  }
  auto* link = new DeviceIotlbReactor(iommu_, limits_.watch_queue_capacity, *std::move(caller),
                                      [this](StoppableStream* done) { Forget(done); });
  Track(link);
  return link;
}

void BrokerService::Track(StoppableStream* stream) {
  std::lock_guard<std::mutex> lock(stoppable_mutex_);
  stoppable_.insert(stream);
  if (draining_.load(std::memory_order_acquire)) stream->Stop();
}

void BrokerService::Forget(StoppableStream* stream) {
  {
    std::lock_guard<std::mutex> lock(stoppable_mutex_);
    stoppable_.erase(stream);
  }
  streams_.Release();
}

// ---- Stats

absl::Status BrokerService::StatsOf(const v1::GetStatsRequest& request, bool include_domains,
                                    v1::GetStatsResponse* response) const {
  std::vector<std::string> domain_ids;
  if (include_domains) {
    domain_ids = request.domain_id().empty() ? iommu_.DomainIds()
                                             : std::vector<std::string>{request.domain_id()};
  }
  for (const std::string& id : domain_ids) {
    absl::StatusOr<DomainInfo> info = iommu_.DescribeDomain(id);
    if (!info.ok()) {
      if (!request.domain_id().empty()) return info.status();
      continue;  // destroyed meanwhile
    }
    DomainStatsToProto(info->stats, &(*response->mutable_domains())[id]);
  }
  std::vector<std::string> device_ids = iommu_.DeviceIds();
  if (!request.device_id().empty()) device_ids = {request.device_id()};
  for (const std::string& id : device_ids) {
    absl::StatusOr<DmaDebugCounts> counts = iommu_.DeviceDebugCounts(id);
    if (!counts.ok()) {
      if (!request.device_id().empty()) return counts.status();
      continue;
    }
    DebugCountsToProto(*counts, &(*response->mutable_devices())[id]);
  }
  for (uint32_t unit = 0; unit < iommu_.options().units; ++unit) {
    const InvalidationQueueStats stats = iommu_.UnitStats(unit);
    v1::InvalidationUnitStats* out = response->add_units();
    out->set_unit(unit);
    out->set_calls(stats.calls);
    out->set_batches(stats.batches);
    out->set_descriptors(stats.descriptors);
    out->set_promoted_batches(stats.promoted_batches);
    DurationToProto(absl::Nanoseconds(stats.busy_nanos), out->mutable_busy());
    DurationToProto(absl::Nanoseconds(stats.wait_nanos), out->mutable_wait());
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* BrokerService::GetStats(grpc::CallbackServerContext* context,
                                                  const v1::GetStatsRequest* request,
                                                  v1::GetStatsResponse* response) {
  absl::StatusOr<Caller> caller = Admit(*context, CallKind::kObserve, "GetStats");
  if (!caller.ok()) return Reply(context, caller.status());
  if (absl::Status status =
          caller->PermitObservation(iommu_, request->domain_id(), request->device_id());
      !status.ok()) {
    return Reply(context, status);
  }
  if (!caller->is_driver() || !request->domain_id().empty()) {
    return Reply(context, StatsOf(*request, /*include_domains=*/true, response));
  }
  // A driver without a domain filter sees its device's domain, if any.
  v1::GetStatsRequest narrowed = *request;
  absl::StatusOr<DeviceInfo> device = iommu_.DescribeDevice(request->device_id());
  if (device.ok()) narrowed.set_domain_id(device->domain_id);
  return Reply(context, StatsOf(narrowed, /*include_domains=*/!narrowed.domain_id().empty(),
                                response));
}

}  // namespace iommu_broker
