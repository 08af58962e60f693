#include "core/iommu/iommu.h"

#include <algorithm>
#include <utility>

#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/hex.h"

namespace iommu_broker {

absl::StatusOr<std::unique_ptr<Iommu>> Iommu::Create(const IommuOptions& options) {
  if (options.physical_memory_bytes == 0 || (options.physical_memory_bytes & (kPage4K - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("physical_memory_bytes ",
                                                   Hex(options.physical_memory_bytes),
                                                   " must be a positive multiple of 4096"));
  }
  if (options.units < 1 || options.units > 64) {
    return absl::InvalidArgumentError(absl::StrCat("units ", options.units, " is not in [1, 64]"));
  }
  if (options.max_devices < 1 || options.max_devices > Iotlb::kMaxRequester) {
    return absl::InvalidArgumentError(absl::StrCat("max_devices ", options.max_devices,
                                                   " is not in [1, ", Iotlb::kMaxRequester, "]"));
  }
  if (options.max_domains < 1 || options.fault_log_capacity < 1 ||
      options.invalidation.max_batch_descriptors < 1) {
    return absl::InvalidArgumentError(
        "max_domains, fault_log_capacity and invalidation.max_batch_descriptors must be positive");
  }
  if (options.invalidation.cost.fixed < absl::ZeroDuration() ||
      options.invalidation.cost.per_descriptor < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("invalidation costs must not be negative");
  }
  if (options.maintenance_interval < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("maintenance_interval must not be negative");
  }
  return std::unique_ptr<Iommu>(new Iommu(options));
}

Iommu::Iommu(const IommuOptions& options)
    : options_(options), faults_(options.fault_log_capacity), device_tlbs_(options.device_tlb) {
  for (uint32_t unit = 0; unit < options.units; ++unit) {
    units_.push_back(std::make_unique<InvalidationQueue>(options.invalidation));
  }
  requester_in_use_.assign(options.max_devices + 1, false);
  requester_in_use_[0] = true;  // 0 is never a requester id
  if (options.maintenance_interval > absl::ZeroDuration()) {
    maintenance_ = std::thread([this] { MaintenanceLoop(); });
  }
}

Iommu::~Iommu() {
  {
    std::lock_guard<std::mutex> lock(maintenance_mutex_);
    stopping_ = true;
  }
  maintenance_wakeup_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
  // Unmaps waiting on caches free their IOVAs while the domains can.
  device_tlbs_.CloseAll();
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [id, device] : devices_) device->set_domain(nullptr);
  domains_.clear();
  reclaimer_.Reclaim();
}

void Iommu::MaintenanceLoop() {
  std::unique_lock<std::mutex> lock(maintenance_mutex_);
  while (!stopping_) {
    maintenance_wakeup_.wait_for(lock, absl::ToChronoNanoseconds(options_.maintenance_interval));
    if (stopping_) break;
    lock.unlock();
    Maintain(absl::Now());
    lock.lock();
  }
}

void Iommu::Maintain(absl::Time now) {
  std::vector<std::shared_ptr<Domain>> domains;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    domains.reserve(domains_.size());
    for (const auto& [id, domain] : domains_) domains.push_back(domain);
  }
  for (const std::shared_ptr<Domain>& domain : domains) domain->Maintain(now);
  if (device_tlbs_.any_linked()) device_tlbs_.CutOffOverdue(now);
  if (reclaimer_.retired() > 0) reclaimer_.Reclaim();
}

// ---------------------------------------------------------------- Domains

absl::Status Iommu::CreateDomain(const DomainConfig& config) {
  if (config.iommu_unit >= units_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("domain ", config.id, ": iommu_unit ",
                                                   config.iommu_unit, " does not exist (",
                                                   units_.size(), " units)"));
  }
  Domain::Environment env;
  env.physical_memory_bytes = options_.physical_memory_bytes;
  env.reclaimer = &reclaimer_;
  env.invalidation_queue = units_[config.iommu_unit].get();
  env.iommu_faults = &faults_;
  env.reclaim_due = &reclaim_due_;
  env.fault_log_capacity = options_.fault_log_capacity;
  env.invalidations = &invalidations_;
  env.device_tlbs = &device_tlbs_;
  env.flush_latencies = options_.record_flush_latencies ? &flush_latencies_ : nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  if (domains_.contains(config.id)) {
    return absl::AlreadyExistsError(absl::StrCat("domain ", config.id, " already exists"));
  }
  if (domains_.size() >= options_.max_domains) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the broker already holds its limit of ", options_.max_domains, " domains"));
  }
  absl::StatusOr<std::unique_ptr<Domain>> domain = Domain::Create(config, env);
  if (!domain.ok()) return domain.status();
  domains_.emplace(config.id, std::shared_ptr<Domain>(*std::move(domain)));
  return absl::OkStatus();
}

absl::StatusOr<DestroyResult> Iommu::DestroyDomain(absl::string_view domain_id, bool force) {
  DestroyResult result;
  std::shared_ptr<Domain> domain;
  DomainStats at_removal;  // counted in destroyed_totals_ as the domain left domains_
  {
    std::lock_guard<std::mutex> totals_lock(totals_mutex_);
    std::lock_guard<std::mutex> lock(mutex_);
    absl::StatusOr<std::shared_ptr<Domain>> found = FindDomainLocked(domain_id);
    if (!found.ok()) return found.status();
    domain = *std::move(found);
    std::vector<std::shared_ptr<Device>> attached;
    for (const auto& [id, device] : devices_) {
      if (device->domain() == domain.get()) attached.push_back(device);
    }
    if (!attached.empty() && !force) {
      std::vector<std::string> ids;
      for (const auto& device : attached) ids.push_back(device->id());
      std::sort(ids.begin(), ids.end());
      return absl::FailedPreconditionError(
          absl::StrCat("domain ", domain_id, " has ", ids.size(), " attached device(s) (",
                       absl::StrJoin(ids, ", "), "); detach them or destroy with force"));
    }
    for (const auto& device : attached) {
      DetachLocked(*device, nullptr);
      result.detached_devices.push_back(device->id());
    }
    std::sort(result.detached_devices.begin(), result.detached_devices.end());
    domains_.erase(domains_.find(domain_id));
    at_removal = domain->Stats();
    destroyed_totals_.AddDifference(at_removal, DomainStats());
  }
  domain->Flush(FlushKind::kDomainWide);
  {
    EpochReclaimer::Guard guard(reclaimer_);
    for (const auto& [requester, live] : domain->LiveMappingsByRequester()) {
      result.leaked.mappings += live.mappings;
      result.leaked.bytes += live.bytes;
    }
  }
  domain->debug().CountLeaks(result.leaked.mappings, result.leaked.bytes);
  {
    const DomainStats final_stats = domain->Stats();  // with the drain and the leaks
    std::lock_guard<std::mutex> lock(totals_mutex_);
    destroyed_totals_.AddDifference(final_stats, at_removal);
  }
  // Device-side caches hold nothing of a destroyed domain.
  if (invalidations_.has_subscribers()) {
    invalidations_.Publish({.scope = InvalidationScope::kDomain, .domain_id = domain->id()});
  }
  // Operations that read the domain through a device before it was detached
  // may still be running; free it after them.
  reclaimer_.Retire([doomed = std::move(domain)]() mutable { doomed.reset(); });
  return result;
}

void DomainTotals::AddDifference(const DomainStats& later, const DomainStats& earlier) {
  for (size_t policy = 0; policy < kPolicyCount; ++policy) {
    iotlb[policy].hits += later.iotlb_by_policy[policy].hits - earlier.iotlb_by_policy[policy].hits;
    iotlb[policy].misses +=
        later.iotlb_by_policy[policy].misses - earlier.iotlb_by_policy[policy].misses;
  }
  stale_translations += later.stale_translations - earlier.stale_translations;
  bypass_maps += later.bypass_maps - earlier.bypass_maps;
  bypass_fallbacks += later.bypass_fallbacks - earlier.bypass_fallbacks;
  bypass_refusals += later.bypass_refusals - earlier.bypass_refusals;
  debug.wrong_size_unmaps += later.debug.wrong_size_unmaps - earlier.debug.wrong_size_unmaps;
  debug.double_unmaps += later.debug.double_unmaps - earlier.debug.double_unmaps;
  debug.dma_after_unmap += later.debug.dma_after_unmap - earlier.debug.dma_after_unmap;
  debug.leaked_mappings += later.debug.leaked_mappings - earlier.debug.leaked_mappings;
  debug.leaked_bytes += later.debug.leaked_bytes - earlier.debug.leaked_bytes;
}

std::vector<DomainReading> Iommu::AllDomainStats(DomainTotals* totals) const {
  std::lock_guard<std::mutex> totals_lock(totals_mutex_);
  *totals = destroyed_totals_;
  std::vector<std::shared_ptr<Domain>> live;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, domain] : domains_) live.push_back(domain);
  }
  std::vector<DomainReading> readings;
  readings.reserve(live.size());
  for (const std::shared_ptr<Domain>& domain : live) {
    readings.push_back({.domain_id = domain->id(), .stats = domain->Stats()});
    totals->AddDifference(readings.back().stats, DomainStats());
  }
  return readings;
}

DeviceCensus Iommu::CountDevices() const {
  DeviceCensus census;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [id, device] : devices_) {
    ++(device->domain() != nullptr ? census.attached : census.detached);
    if (device->allow_bypass()) ++census.bypass_allowed;
  }
  return census;
}

std::optional<Policy> Iommu::PolicyOf(const Device& device) {
  EpochReclaimer::Guard guard(reclaimer_);
  const Domain* domain = device.domain();
  if (domain == nullptr) return std::nullopt;
  return domain->policy();
}

absl::Status Iommu::SetPolicy(absl::string_view domain_id, Policy policy) {
  absl::StatusOr<std::shared_ptr<Domain>> domain = FindDomain(domain_id);
  if (!domain.ok()) return domain.status();
  (*domain)->SetPolicy(policy);
  return absl::OkStatus();
}

absl::StatusOr<Policy> Iommu::DomainPolicy(absl::string_view domain_id) const {
  absl::StatusOr<std::shared_ptr<Domain>> domain = FindDomain(domain_id);
  if (!domain.ok()) return domain.status();
  return (*domain)->policy();
}

absl::Status Iommu::Flush(absl::string_view domain_id) {
  absl::StatusOr<std::shared_ptr<Domain>> domain = FindDomain(domain_id);
  if (!domain.ok()) return domain.status();
  (*domain)->Flush(FlushKind::kExplicit);
  return absl::OkStatus();
}

absl::StatusOr<DomainStats> Iommu::GetDomainStats(absl::string_view domain_id) const {
  absl::StatusOr<std::shared_ptr<Domain>> domain = FindDomain(domain_id);
  if (!domain.ok()) return domain.status();
  return (*domain)->Stats();
}

std::vector<std::string> Iommu::DomainIds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> ids;
  for (const auto& [id, domain] : domains_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::StatusOr<std::shared_ptr<Domain>> Iommu::FindDomain(absl::string_view domain_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return FindDomainLocked(domain_id);
}

absl::StatusOr<std::shared_ptr<Domain>> Iommu::FindDomainLocked(absl::string_view domain_id) const {
  auto it = domains_.find(domain_id);
  if (it == domains_.end()) {
    return absl::NotFoundError(absl::StrCat("domain ", domain_id, " does not exist"));
  }
  return it->second;
}

// ---------------------------------------------------------------- Devices

absl::Status Iommu::AddDevice(const DeviceConfig& config) {
  if (absl::Status status = ValidateDeviceConfig(config); !status.ok()) return status;
  std::lock_guard<std::mutex> lock(mutex_);
  if (devices_.contains(config.id)) {
    return absl::AlreadyExistsError(absl::StrCat("device ", config.id, " already exists"));
  }
  absl::StatusOr<uint32_t> requester = TakeRequesterLocked();
  if (!requester.ok()) return requester.status();
  devices_.emplace(config.id, std::make_shared<Device>(config, *requester));
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> Iommu::TakeRequesterLocked() {
  // Round-robin, so a removed device's id (still on its old PTEs) is reused late.
  const uint32_t count = static_cast<uint32_t>(requester_in_use_.size());
  for (uint32_t tried = 0; tried < count; ++tried) {
    const uint32_t candidate = next_requester_;
    next_requester_ = next_requester_ + 1 < count ? next_requester_ + 1 : 1;
    if (!requester_in_use_[candidate]) {
      requester_in_use_[candidate] = true;
      return candidate;
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("the broker already holds its limit of ", options_.max_devices, " devices"));
}

absl::StatusOr<std::optional<DetachResult>> Iommu::RemoveDevice(absl::string_view device_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  absl::StatusOr<std::shared_ptr<Device>> device = FindDeviceLocked(device_id);
  if (!device.ok()) return device.status();
  std::optional<DetachResult> detached = DetachLocked(**device, nullptr);
  requester_in_use_[(*device)->requester()] = false;
  devices_.erase(devices_.find(device_id));
  return detached;
}

absl::Status Iommu::SetAllowBypass(absl::string_view device_id, bool allow) {
  std::lock_guard<std::mutex> lock(mutex_);
  absl::StatusOr<std::shared_ptr<Device>> device = FindDeviceLocked(device_id);
  if (!device.ok()) return device.status();
  (*device)->set_allow_bypass(allow);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Device>> Iommu::FindDevice(absl::string_view device_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return FindDeviceLocked(device_id);
}

absl::StatusOr<std::shared_ptr<Device>> Iommu::FindDeviceLocked(absl::string_view device_id) const {
  auto it = devices_.find(device_id);
  if (it == devices_.end()) {
    return absl::NotFoundError(absl::StrCat("device ", device_id, " does not exist"));
  }
  return it->second;
}

std::vector<std::string> Iommu::DeviceIds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> ids;
  for (const auto& [id, device] : devices_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::StatusOr<std::optional<DetachResult>> Iommu::Attach(absl::string_view device_id,
                                                          absl::string_view domain_id) {
  std::shared_ptr<Domain> from;
  std::shared_ptr<Domain> to;
  std::optional<DetachResult> moved;
  std::shared_ptr<Device> device;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    absl::StatusOr<std::shared_ptr<Device>> found_device = FindDeviceLocked(device_id);
    if (!found_device.ok()) return found_device.status();
    absl::StatusOr<std::shared_ptr<Domain>> found_domain = FindDomainLocked(domain_id);
    if (!found_domain.ok()) return found_domain.status();
    device = *std::move(found_device);
    to = *std::move(found_domain);
    if (device->domain() == to.get()) return std::optional<DetachResult>();
    if (to->config().aperture_first > device->dma_mask()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device_id, "'s ", device->dma_mask_bits(),
                       "-bit DMA mask cannot reach domain ", domain_id,
                       "'s aperture, which starts at ", Hex(to->config().aperture_first)));
    }
    moved = DetachLocked(*device, &from);
    device->set_domain(to.get());
  }
  // Forget whatever this requester may have left in either IOTLB.
  if (from) {
    from->InvalidateRequester(device->requester());
    PublishRequesterInvalidation(*from, *device);
  }
  to->InvalidateRequester(device->requester());
  PublishRequesterInvalidation(*to, *device);
  return moved;
}

absl::StatusOr<DetachResult> Iommu::Detach(absl::string_view device_id) {
  std::shared_ptr<Domain> from;
  std::shared_ptr<Device> device;
  std::optional<DetachResult> detached;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    absl::StatusOr<std::shared_ptr<Device>> found = FindDeviceLocked(device_id);
    if (!found.ok()) return found.status();
    device = *std::move(found);
    detached = DetachLocked(*device, &from);
    if (!detached) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device_id, " is not attached to a domain"));
    }
  }
  from->InvalidateRequester(device->requester());
  PublishRequesterInvalidation(*from, *device);
  return *std::move(detached);
}

std::optional<DetachResult> Iommu::DetachLocked(Device& device, std::shared_ptr<Domain>* from) {
  Domain* domain = device.domain();
  if (domain == nullptr) return std::nullopt;
  DetachResult result;
  result.domain_id = domain->id();
  {
    EpochReclaimer::Guard guard(reclaimer_);
    absl::flat_hash_map<uint32_t, LiveMappings> live = domain->LiveMappingsByRequester();
    if (auto it = live.find(device.requester()); it != live.end()) result.leaked = it->second;
  }
  device.debug().CountLeaks(result.leaked.mappings, result.leaked.bytes);
  device.set_domain(nullptr);
  if (from != nullptr) *from = domains_.at(domain->id());
  return result;
}

// ---------------------------------------------------------------- DMA

absl::StatusOr<MapResult> Iommu::Map(Device& device, const MapRequest& request) {
  EpochReclaimer::Guard guard(reclaimer_);
  Domain* domain = device.domain();
  if (ABSL_PREDICT_FALSE(domain == nullptr)) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", device.id(), " is not attached to a domain"));
  }
  return domain->Map(device, request);
}

absl::StatusOr<UnmapResult> Iommu::Unmap(Device& device, uint64_t iova, uint64_t size) {
  // Initialized from the guarded call rather than assigned: copying the
  // result out of a temporary stalls on store forwarding.
  absl::StatusOr<UnmapResult> result = [&]() -> absl::StatusOr<UnmapResult> {
    EpochReclaimer::Guard guard(reclaimer_);
    Domain* domain = device.domain();
    if (ABSL_PREDICT_FALSE(domain == nullptr)) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device.id(), " is not attached to a domain"));
    }
    return domain->Unmap(device, iova, size);
  }();
  ReclaimIfDue();  // outside the guard: a grace period waits for guards
  return result;
}

void Iommu::ReclaimIfDue() {
  if (reclaim_due_.load(std::memory_order_relaxed) && reclaim_due_.exchange(false)) {
    reclaimer_.Reclaim();
  }
}

absl::StatusOr<TranslateResult> Iommu::Translate(Device& device, uint64_t iova, uint64_t size,
                                                 Access access) {
  EpochReclaimer::Guard guard(reclaimer_);
  Domain* domain = device.domain();
  if (domain != nullptr) return domain->Translate(device, iova, size, access);
  if (absl::Status status = Domain::ValidateTranslateRange(iova, size); !status.ok()) {
    return status;
  }
  TranslateResult result;
  Fault& fault = result.fault.emplace();
  fault.device_id = device.id();
  fault.iova = iova;
  fault.access = access;
  fault.reason = FaultReason::kDeviceNotAttached;
  fault.time = absl::Now();
  fault.sequence = faults_.Record(fault);
  return result;
}

absl::StatusOr<MapResult> Iommu::Map(absl::string_view device_id, const MapRequest& request) {
  absl::StatusOr<std::shared_ptr<Device>> device = FindDevice(device_id);
  if (!device.ok()) return device.status();
  return Map(**device, request);
}

absl::StatusOr<UnmapResult> Iommu::Unmap(absl::string_view device_id, uint64_t iova,
                                         uint64_t size) {
  absl::StatusOr<std::shared_ptr<Device>> device = FindDevice(device_id);
  if (!device.ok()) return device.status();
  return Unmap(**device, iova, size);
}

absl::StatusOr<TranslateResult> Iommu::Translate(absl::string_view device_id, uint64_t iova,
                                                 uint64_t size, Access access) {
  absl::StatusOr<std::shared_ptr<Device>> device = FindDevice(device_id);
  if (!device.ok()) return device.status();
  return Translate(**device, iova, size, access);
}

// ---------------------------------------------------------------- Faults

absl::StatusOr<std::shared_ptr<FaultSubscription>> Iommu::SubscribeFaults(
    absl::string_view domain_id, size_t queue_capacity) {
  if (queue_capacity < 1 || queue_capacity > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("fault queue capacity ", queue_capacity, " is not in [1, 65536]"));
  }
  if (domain_id.empty()) return faults_.Subscribe(queue_capacity);
  absl::StatusOr<std::shared_ptr<Domain>> domain = FindDomain(domain_id);
  if (!domain.ok()) return domain.status();
  return (*domain)->faults().Subscribe(queue_capacity);
}

absl::StatusOr<std::shared_ptr<Subscription<InvalidationEvent>>> Iommu::SubscribeInvalidations(
    absl::string_view domain_id, size_t queue_capacity) {
  if (queue_capacity < 1 || queue_capacity > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalidation queue capacity ", queue_capacity, " is not in [1, 65536]"));
  }
  if (!domain_id.empty()) {
    if (absl::Status status = FindDomain(domain_id).status(); !status.ok()) return status;
  }
  return invalidations_.Subscribe(queue_capacity);
}

absl::StatusOr<std::shared_ptr<DeviceTlbPort>> Iommu::LinkDeviceTlb(absl::string_view device_id,
                                                                    size_t queue_capacity) {
  if (queue_capacity < 1 || queue_capacity > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("device IOTLB queue capacity ", queue_capacity, " is not in [1, 65536]"));
  }
  absl::StatusOr<std::shared_ptr<Device>> device = FindDevice(device_id);
  if (!device.ok()) return device.status();
  return device_tlbs_.Link(*std::move(device), queue_capacity);
}

void Iommu::PublishRequesterInvalidation(const Domain& domain, const Device& device) {
  const InvalidationEvent event = {.scope = InvalidationScope::kRequester,
                                   .domain_id = domain.id(),
                                   .requester = device.requester(),
                                   .device_id = device.id()};
  if (invalidations_.has_subscribers()) invalidations_.Publish(event);
  if (device_tlbs_.any_linked()) device_tlbs_.SendToDevice(device, event);
}

absl::StatusOr<std::vector<Fault>> Iommu::RecentFaults(absl::string_view domain_id,
                                                       uint64_t after_sequence) const {
  if (domain_id.empty()) return faults_.Recent(after_sequence);
  absl::StatusOr<std::shared_ptr<Domain>> domain = FindDomain(domain_id);
  if (!domain.ok()) return domain.status();
  return (*domain)->faults().Recent(after_sequence);
}

absl::StatusOr<DmaDebugCounts> Iommu::DeviceDebugCounts(absl::string_view device_id) const {
  absl::StatusOr<std::shared_ptr<Device>> device = FindDevice(device_id);
  if (!device.ok()) return device.status();
  return (*device)->debug().Snapshot();
}

InvalidationQueueStats Iommu::UnitStats(uint32_t unit) const { return units_.at(unit)->Stats(); }

Log2Histogram::Snapshot Iommu::UnitBatchSizes(uint32_t unit) const {
  return units_.at(unit)->BatchSizes();
}

// ---------------------------------------------------------------- Control plane views

absl::StatusOr<DomainInfo> Iommu::DescribeDomain(absl::string_view domain_id) const {
  DomainInfo info;
  std::shared_ptr<Domain> domain;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    absl::StatusOr<std::shared_ptr<Domain>> found = FindDomainLocked(domain_id);
    if (!found.ok()) return found.status();
    domain = *std::move(found);
    for (const auto& [id, device] : devices_) {
      if (device->domain() == domain.get()) info.device_ids.push_back(id);
    }
  }
  std::sort(info.device_ids.begin(), info.device_ids.end());
  info.config = domain->config();
  info.config.policy = domain->policy();
  info.stats = domain->Stats();
  return info;
}

absl::Status Iommu::UpdateDevice(absl::string_view device_id, const DeviceUpdate& update) {
  std::lock_guard<std::mutex> lock(mutex_);
  absl::StatusOr<std::shared_ptr<Device>> device = FindDeviceLocked(device_id);
  if (!device.ok()) return device.status();
  if (update.dma_mask_bits.has_value()) {
    DeviceConfig changed{.id = (*device)->id(), .dma_mask_bits = *update.dma_mask_bits};
    if (absl::Status status = ValidateDeviceConfig(changed); !status.ok()) return status;
    if (*update.dma_mask_bits != (*device)->dma_mask_bits() && (*device)->domain() != nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", device_id, " is attached to domain ", (*device)->domain()->id(),
                       "; detach it to change dma_mask_bits"));
    }
    (*device)->set_dma_mask_bits(*update.dma_mask_bits);
  }
  if (update.allow_bypass.has_value()) (*device)->set_allow_bypass(*update.allow_bypass);
  return absl::OkStatus();
}

absl::StatusOr<DeviceInfo> Iommu::DescribeDevice(absl::string_view device_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  absl::StatusOr<std::shared_ptr<Device>> device = FindDeviceLocked(device_id);
  if (!device.ok()) return device.status();
  DeviceInfo info;
  info.config = {.id = (*device)->id(),
                 .dma_mask_bits = (*device)->dma_mask_bits(),
                 .allow_bypass = (*device)->allow_bypass()};
  info.requester = (*device)->requester();
  // Domains are destroyed under mutex_, so the pointer is safe to follow here.
  if (const Domain* domain = (*device)->domain(); domain != nullptr) info.domain_id = domain->id();
  info.debug = (*device)->debug().Snapshot();
  return info;
}

}  // namespace iommu_broker
