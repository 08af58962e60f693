// Iommu is the emulated IOMMU hardware the broker owns: its domains, the
// devices that attach to them, one invalidation queue per IOMMU unit, an
// IOMMU-wide fault log, and a maintenance thread (flush-queue timeouts, idle
// IOVA caches, deferred frees). It is the whole engine the service exposes.
//
//   IommuOptions options;
//   options.physical_memory_bytes = uint64_t{16} << 30;
//   auto iommu = Iommu::Create(options);
//   (*iommu)->CreateDomain({.id = "vm1", .policy = Policy::kFast});
//   (*iommu)->AddDevice({.id = "0000:3b:00.0", .dma_mask_bits = 32});
//   (*iommu)->Attach("0000:3b:00.0", "vm1");
//   absl::StatusOr<MapResult> mapped = (*iommu)->Map("0000:3b:00.0", request);
//
// Hot paths (Map, Unmap, Translate on a Device handle from FindDevice) take
// no IOMMU-wide lock: the device's domain is read under an epoch guard, and a
// destroyed domain is freed only after every operation that could see it
// has ended. Control operations (domains, devices, attachment) serialize on
// one mutex.
//
// Thread-safety: thread-safe.
#ifndef IOMMU_BROKER_CORE_IOMMU_IOMMU_H_
#define IOMMU_BROKER_CORE_IOMMU_IOMMU_H_

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/iommu/device.h"
#include "core/iommu/device_tlb_port.h"
#include "core/iommu/device_tlbs.h"
#include "core/iommu/domain.h"
#include "core/iommu/epoch.h"
#include "core/iommu/fault_log.h"
#include "core/iommu/flush_latencies.h"
#include "core/iommu/invalidation_queue.h"
#include "core/iommu/publisher.h"
#include "core/iommu/subscription.h"
#include "core/iommu/types.h"

namespace iommu_broker {

struct IommuOptions {
  // The emulated machine's RAM: [0, physical_memory_bytes) may be mapped.
  uint64_t physical_memory_bytes = uint64_t{16} << 30;
  uint32_t units = 1;                     // IOMMU units, each with its own invalidation queue
  InvalidationQueueOptions invalidation;  // cost model, combining; per unit
  size_t max_domains = 1024;
  size_t max_devices = 4095;         // requester ids are 12 bits
  size_t fault_log_capacity = 1024;  // per domain, and IOMMU-wide
  DeviceTlbOptions device_tlb;  // device-side IOTLB links
  // Time every invalidation for flush_latencies() (metrics); off, nothing
  // is recorded.
  bool record_flush_latencies = true;
  // How often the maintenance thread runs; zero starts no thread (tests
  // then call Maintain themselves).
  absl::Duration maintenance_interval = absl::Milliseconds(1);
};

// What a detach found still mapped by the device (DMA-API leaks).
struct DetachResult {
  std::string domain_id;
  LiveMappings leaked;
};

// A device as the control plane sees it.
struct DeviceInfo {
  DeviceConfig config;  // the current settings
  uint32_t requester = 0;
  std::string domain_id;  // empty when detached
  DmaDebugCounts debug;
};

// A domain as the control plane sees it.
struct DomainInfo {
  DomainConfig config;                  // policy is the current one
  std::vector<std::string> device_ids;  // attached, sorted
  DomainStats stats;
};

// Settings an operator may change on a registered device; unset ones stay.
struct DeviceUpdate {
  std::optional<int> dma_mask_bits = std::nullopt;  // only while detached
  std::optional<bool> allow_bypass = std::nullopt;
};

// Counters summed over every domain there has been, destroyed ones
// included, so that metrics built on them never go backwards. (Operations
// still finishing on a domain as it is destroyed may be missed.)
struct DomainTotals {
  std::array<IotlbLookups, kPolicyCount> iotlb;  // by the policy at the time
  uint64_t stale_translations = 0;
  uint64_t bypass_maps = 0;
  uint64_t bypass_fallbacks = 0;
  uint64_t bypass_refusals = 0;
  DmaDebugCounts debug;

  // Adds what `later` counted since `earlier` (two stats of one domain).
  void AddDifference(const DomainStats& later, const DomainStats& earlier);
};

struct DeviceCensus {
  uint64_t attached = 0;
  uint64_t detached = 0;
  uint64_t bypass_allowed = 0;  // allow_bypass set by the operator
};

struct DomainReading {
  std::string domain_id;
  DomainStats stats;
};

struct DestroyResult {
  std::vector<std::string> detached_devices;  // forced off the domain
  LiveMappings leaked;                        // every mapping still live
};

class Iommu final {
 public:
  static absl::StatusOr<std::unique_ptr<Iommu>> Create(const IommuOptions& options);
  ~Iommu();
  Iommu(const Iommu&) = delete;
  Iommu& operator=(const Iommu&) = delete;

  // ---- Domains
  // ALREADY_EXISTS for a taken id, RESOURCE_EXHAUSTED past max_domains.
  absl::Status CreateDomain(const DomainConfig& config);
  // FAILED_PRECONDITION while devices are attached, unless `force` detaches
  // them. Pending invalidations are flushed first.
  absl::StatusOr<DestroyResult> DestroyDomain(absl::string_view domain_id, bool force);
  absl::Status SetPolicy(absl::string_view domain_id, Policy policy);
  absl::Status Flush(absl::string_view domain_id);
  absl::StatusOr<Policy> DomainPolicy(absl::string_view domain_id) const;
  absl::StatusOr<DomainStats> GetDomainStats(absl::string_view domain_id) const;
  std::vector<std::string> DomainIds() const;
  absl::StatusOr<DomainInfo> DescribeDomain(absl::string_view domain_id) const;
  // Every live domain's stats (one pass, for metrics), and the totals of
  // all domains ever, read consistently with them.
  std::vector<DomainReading> AllDomainStats(DomainTotals* totals) const;

  // ---- Devices
  absl::Status AddDevice(const DeviceConfig& config);
  // Detaches the device first (reporting its leaks).
  absl::StatusOr<std::optional<DetachResult>> RemoveDevice(absl::string_view device_id);
  absl::Status SetAllowBypass(absl::string_view device_id, bool allow);
  // All of `update` or nothing: FAILED_PRECONDITION for a DMA mask change
  // while attached (mappings made under one mask must not outlive it).
  absl::Status UpdateDevice(absl::string_view device_id, const DeviceUpdate& update);
  absl::StatusOr<DeviceInfo> DescribeDevice(absl::string_view device_id) const;
  absl::StatusOr<std::shared_ptr<Device>> FindDevice(absl::string_view device_id) const;
  // The policy of `device`'s domain now; nullopt while it is detached.
  std::optional<Policy> PolicyOf(const Device& device);
  std::vector<std::string> DeviceIds() const;
  DeviceCensus CountDevices() const;
  // Attaches, or moves from its current domain (the result then reports the
  // detach). If the attach is refused nothing changes.
  absl::StatusOr<std::optional<DetachResult>> Attach(absl::string_view device_id,
                                                     absl::string_view domain_id);
  absl::StatusOr<DetachResult> Detach(absl::string_view device_id);

  // ---- DMA
  absl::StatusOr<MapResult> Map(Device& device, const MapRequest& request);
  absl::StatusOr<UnmapResult> Unmap(Device& device, uint64_t iova, uint64_t size);
  absl::StatusOr<TranslateResult> Translate(Device& device, uint64_t iova, uint64_t size,
                                            Access access);
  // The same, finding the device by id (an extra lookup under the mutex).
  absl::StatusOr<MapResult> Map(absl::string_view device_id, const MapRequest& request);
  absl::StatusOr<UnmapResult> Unmap(absl::string_view device_id, uint64_t iova, uint64_t size);
  absl::StatusOr<TranslateResult> Translate(absl::string_view device_id, uint64_t iova,
                                            uint64_t size, Access access);

  // ---- Faults and debugging
  FaultLog& faults() { return faults_; }  // every fault, IOMMU-wide
  const FaultLog& faults() const { return faults_; }
  // Faults of one domain, or of all when `domain_id` is empty.
  absl::StatusOr<std::shared_ptr<FaultSubscription>> SubscribeFaults(absl::string_view domain_id,
                                                                     size_t queue_capacity);
  // Invalidations of one domain, or of all when `domain_id` is empty. The
  // subscription receives every domain's; readers filter by domain_id.
  absl::StatusOr<std::shared_ptr<Subscription<InvalidationEvent>>> SubscribeInvalidations(
      absl::string_view domain_id, size_t queue_capacity);
  // Links `device_id`'s device-side IOTLB (see device_tlb_port.h): it is
  // sent every invalidation of the device's domain, and paranoid unmaps wait
  // for its acknowledgement (UnmapResult::device_tlb_acks). ALREADY_EXISTS
  // while the device has a linked one.
  absl::StatusOr<std::shared_ptr<DeviceTlbPort>> LinkDeviceTlb(absl::string_view device_id,
                                                               size_t queue_capacity);
  absl::StatusOr<std::vector<Fault>> RecentFaults(absl::string_view domain_id,
                                                  uint64_t after_sequence) const;
  absl::StatusOr<DmaDebugCounts> DeviceDebugCounts(absl::string_view device_id) const;

  // ---- Upkeep
  // One maintenance round (the thread calls it every interval).
  void Maintain(absl::Time now);
  const IommuOptions& options() const { return options_; }
  InvalidationQueueStats UnitStats(uint32_t unit) const;
  // Descriptors per batch of `unit`'s invalidation queue.
  Log2Histogram::Snapshot UnitBatchSizes(uint32_t unit) const;
  // How long invalidations kept their callers waiting.
  const FlushLatencies& flush_latencies() const { return flush_latencies_; }

 private:
  explicit Iommu(const IommuOptions& options);

  // The domain, kept alive by the pointer after the lock is released.
  absl::StatusOr<std::shared_ptr<Domain>> FindDomain(absl::string_view domain_id) const;
  absl::StatusOr<std::shared_ptr<Domain>> FindDomainLocked(absl::string_view domain_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::StatusOr<std::shared_ptr<Device>> FindDeviceLocked(absl::string_view device_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Moves `device` off its domain (if any); returns that domain and its leaks.
  std::optional<DetachResult> DetachLocked(Device& device, std::shared_ptr<Domain>* from)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  absl::StatusOr<uint32_t> TakeRequesterLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Tells invalidation subscribers that `device`'s entries left `domain`.
  void PublishRequesterInvalidation(const Domain& domain, const Device& device);
  void MaintenanceLoop();
  // Frees unlinked table pages once many wait; never inside a guard.
  void ReclaimIfDue();

  const IommuOptions options_;
  EpochReclaimer reclaimer_;              // first constructed, last destroyed
  std::atomic<bool> reclaim_due_{false};  // see Domain::Environment
  std::vector<std::unique_ptr<InvalidationQueue>> units_;
  FaultLog faults_;
  FlushLatencies flush_latencies_;
  Publisher<InvalidationEvent> invalidations_;
  DeviceTlbs device_tlbs_;

  // Taken before mutex_. Held by AllDomainStats throughout, and by
  // DestroyDomain from removing a domain until its counts are in
  // destroyed_totals_, so a reading sees each domain live or destroyed.
  mutable std::mutex totals_mutex_ ABSL_ACQUIRED_BEFORE(mutex_);
  DomainTotals destroyed_totals_ ABSL_GUARDED_BY(totals_mutex_);

  mutable std::mutex mutex_;
  absl::flat_hash_map<std::string, std::shared_ptr<Domain>> domains_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, std::shared_ptr<Device>> devices_ ABSL_GUARDED_BY(mutex_);
  std::vector<bool> requester_in_use_ ABSL_GUARDED_BY(mutex_);
  uint32_t next_requester_ ABSL_GUARDED_BY(mutex_) = 1;

  std::mutex maintenance_mutex_;
  std::condition_variable maintenance_wakeup_;
  bool stopping_ ABSL_GUARDED_BY(maintenance_mutex_) = false;
  std::thread maintenance_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_IOMMU_H_
