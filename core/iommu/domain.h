// Domain is one emulated I/O address space: an IOVA allocator, a page table,
// an IOTLB, a flush queue and a policy. It implements map, unmap and
// translate for the devices attached to it; the Iommu owns domains, resolves
// devices and holds the epoch guard every call below needs.
//
//   Domain::Environment env{...};                       // from the Iommu
//   auto domain = Domain::Create(config, env);
//   EpochReclaimer::Guard guard(env.reclaimer);
//   absl::StatusOr<MapResult> mapped = (*domain)->Map(device, request);
//   absl::StatusOr<UnmapResult> unmapped = (*domain)->Unmap(device, iova, size);
//   TranslateResult dma = (*domain)->Translate(device, iova, size, Access::kRead);
//
// Policies (BRIEF.md): paranoid unmap clears PTEs, invalidates and frees the
// IOVA before it returns; fast unmap clears PTEs and queues the range on the
// flush queue, so until the batch invalidation a translation may hit the
// stale IOTLB entry (served, marked stale and counted); pt maps IOVA = PA
// wherever the device's DMA mask reaches, and translates every such address
// as identity unless a translated mapping covers it.
//
// Thread-safety: thread-safe. Map, Unmap, Translate and Flush run
// concurrently; maps and unmaps of disjoint ranges share no lock. Map,
// Unmap, Translate and LiveMappingsByRequester need the caller to hold an
// epoch guard of env.reclaimer; SetPolicy must be called without one.
#ifndef IOMMU_BROKER_CORE_IOMMU_DOMAIN_H_
#define IOMMU_BROKER_CORE_IOMMU_DOMAIN_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/completion.h"
#include "core/iommu/device.h"
#include "core/iommu/device_tlbs.h"
#include "core/iommu/dma_debug.h"
#include "core/iommu/epoch.h"
#include "core/iommu/fault_log.h"
#include "core/iommu/flush_queue.h"
#include "core/iommu/invalidation_queue.h"
#include "core/iommu/iotlb.h"
#include "core/iommu/page_table.h"
#include "core/iommu/pending_invalidations.h"
#include "core/iommu/publisher.h"
#include "core/iommu/types.h"
#include "core/iova/iova_allocator.h"
#include "core/util/per_thread.h"

namespace iommu_broker {

struct ReservedRegion {
  uint64_t start = 0;
  uint64_t size = 0;
  std::string name;
};

struct DomainConfig {
  std::string id = {};
  Policy policy = Policy::kFast;
  // Inclusive; granule-aligned as a range; below 2^48. The first page is left
  // out by default: many drivers treat DMA address 0 as an error.
  uint64_t aperture_first = kPage4K;
  uint64_t aperture_last = (uint64_t{1} << kIovaBits) - 1;
  PageSizeSet page_sizes = kPage4K | kPage2M | kPage1G;
  IotlbGeometry iotlb = {};
  FlushQueueOptions flush_queue = {};
  std::vector<ReservedRegion> reserved = {{0xfee00000, 0x100000, "msi"}};
  // fast only: map IOVA = PA when that range is free (claimed on the page
  // table); the allocator then serves only addresses above physical memory.
  bool identity_first = false;
  uint64_t max_mappings = uint64_t{1} << 20;
  // Bypass addresses are base + PA, above the aperture (SPARC / POWER style).
  uint64_t bypass_window_base = uint64_t{1} << 59;
  uint32_t iommu_unit = 0;
};

// IOTLB lookups, for attributing them to policies.
struct IotlbLookups {
  uint64_t hits = 0;
  uint64_t misses = 0;
};

struct DomainStats {
  Policy policy = Policy::kFast;
  uint64_t live_mappings = 0;
  uint64_t maps = 0;
  uint64_t unmaps = 0;  // mappings removed
  uint64_t translations = 0;
  uint64_t faults = 0;
  uint64_t stale_translations = 0;
  uint64_t bypass_maps = 0;
  uint64_t bypass_fallbacks = 0;  // bypass preferred, refused: translated instead
  uint64_t bypass_refusals = 0;   // bypass required, refused: not mapped
  uint64_t identity_maps = 0;
  uint64_t table_pages = 0;
  IotlbStats iotlb;
  // iotlb's hits and misses, by the policy the domain had when they
  // happened (as of its policy changes).
  std::array<IotlbLookups, kPolicyCount> iotlb_by_policy;
  FlushQueueStats flush_queue;
  IovaStats iova;
  DmaDebugCounts debug;
};

// Live mappings and bytes per requester (leak reports).
struct LiveMappings {
  uint64_t mappings = 0;
  uint64_t bytes = 0;
};

class Domain final : public std::enable_shared_from_this<Domain> {
 public:
  // What the Iommu lends every domain; all must outlive it.
  struct Environment {
    uint64_t physical_memory_bytes = 0;
    EpochReclaimer* reclaimer = nullptr;
    InvalidationQueue* invalidation_queue = nullptr;  // the domain's IOMMU unit
    FaultLog* iommu_faults = nullptr;                 // the IOMMU-wide log
    // Set when unlinked table pages pile up: the Iommu then reclaims them
    // outside its guard.
    std::atomic<bool>* reclaim_due = nullptr;
    size_t fault_log_capacity = 1024;
    // Told of every range invalidation that completed (optional).
    Publisher<InvalidationEvent>* invalidations = nullptr;
    // Device-side IOTLBs, sent every range invalidation (optional).
    DeviceTlbs* device_tlbs = nullptr;
    // Where invalidation waits are recorded (optional).
    FlushLatencies* flush_latencies = nullptr;
  };

  // INVALID_ARGUMENT naming the field if `config` is unusable.
  static absl::StatusOr<std::unique_ptr<Domain>> Create(const DomainConfig& config,
                                                        const Environment& env);
  ~Domain();
  Domain(const Domain&) = delete;
  Domain& operator=(const Domain&) = delete;

  const std::string& id() const { return config_.id; }
  const DomainConfig& config() const { return config_; }
  Policy policy() const { return policy_.load(std::memory_order_acquire); }

  absl::StatusOr<MapResult> Map(Device& device, const MapRequest& request);
  absl::StatusOr<UnmapResult> Unmap(Device& device, uint64_t iova, uint64_t size);
  // Faults are results, not errors; errors are for malformed requests
  // (ValidateTranslateRange).
  absl::StatusOr<TranslateResult> Translate(Device& device, uint64_t iova, uint64_t size,
                                            Access access);

  // INVALID_ARGUMENT unless size is in [1, 16 MiB] and the range does not wrap.
  static absl::Status ValidateTranslateRange(uint64_t iova, uint64_t size);

  // Switches policy. Leaving fast or pt for paranoid drains the flush queue
  // after every operation that saw the old policy has finished, so the
  // paranoid guarantees hold from the moment this returns. No guard held.
  void SetPolicy(Policy policy);
  // Invalidates and releases everything on the flush queue; `kind` says
  // why (kExplicit or kDomainWide), for the latency record.
  void Flush(FlushKind kind);
  // Timer work: flush-queue timeouts, returning idle IOVA caches.
  // No guard needed.
  void Maintain(absl::Time now);

  // Drops `requester`'s IOTLB entries (attach / detach).
  void InvalidateRequester(uint32_t requester);
  // Live mappings by the requester that mapped them (walks the page table).
  absl::flat_hash_map<uint32_t, LiveMappings> LiveMappingsByRequester() const;

  FaultLog& faults() { return faults_; }
  DmaDebugCounters& debug() { return debug_; }
  DomainStats Stats() const;

 private:
  Domain(const DomainConfig& config, const Environment& env,
         std::unique_ptr<IovaAllocator> allocator, std::unique_ptr<Iotlb> iotlb);

  // Statistics, one slot per thread (core/util/per_thread.h), so that the
  // hot paths update them with plain stores.
  struct alignas(64) Counts {
    // A gauge: a thread that unmaps others' mappings goes negative.
    std::atomic<int64_t> live_mappings{0};
    std::atomic<int64_t> unmaps{0};
    std::atomic<int64_t> translations{0};
    std::atomic<int64_t> stale_translations{0};
    std::atomic<int64_t> bypass_maps{0};
    std::atomic<int64_t> bypass_fallbacks{0};
    std::atomic<int64_t> bypass_refusals{0};
    std::atomic<int64_t> identity_maps{0};
  };
  // One page's translation, before the access check.
  struct PageTranslation {
    IotlbEntry leaf;  // the leaf (or identity page) holding the page
    MappingKind kind = MappingKind::kTranslated;
    bool iotlb_hit = false;
    bool stale = false;
  };

  // Map, into the caller's result.
  absl::Status MapInto(Device& device, const MapRequest& request, MapResult& result);
  absl::Status ValidateMapRequest(const MapRequest& request) const;
  // For a request that asks for bypass: the bypass mapping, or nullopt to
  // translate (with `refusal` saying why when bypass was preferred but not
  // granted).
  absl::StatusOr<std::optional<MapResult>> DecideBypass(const Device& device,
                                                        const MapRequest& request,
                                                        std::string* refusal) const;
  // Place a translated mapping in the page table, at the requested IOVA or
  // where the allocator (or an identity claim) puts it, and record it in
  // `result`.
  absl::Status PlaceFixed(const Device& device, const MapRequest& request, MapResult& result);
  absl::Status PlaceAnywhere(const Device& device, const MapRequest& request, MapResult& result);
  void RecordPlacement(const MapRequest& request, uint64_t iova, IovaOrigin origin,
                       const PageTable::LeafCounts& leaves, MapResult& result);
  PageTable::Mapping MappingFor(const Device& device, const MapRequest& request, uint64_t iova,
                                IovaOrigin origin) const;
  absl::Status CheckReservedOverlap(uint64_t iova, uint64_t size) const;
  absl::Status OverlapError(uint64_t iova, uint64_t size) const;
  // What one unmap removed, or why it removed nothing.
  struct Removals {
    // The DMA-API case: the range was exactly this mapping. Written in place
    // by the page table's walk.
    std::optional<PageTable::Removed> exact;
    // Otherwise every mapping wholly inside the range (possibly none).
    std::vector<PageTable::Removed> inside;
    absl::Status status;  // not OK: the range would split a mapping
    absl::Span<const PageTable::Removed> all() const {
      return exact ? absl::MakeConstSpan(&*exact, 1) : absl::MakeConstSpan(inside);
    }
  };
  // Removes the mappings wholly inside [iova, end), or refuses (changing
  // nothing) if the range would split one.
  ABSL_ATTRIBUTE_ALWAYS_INLINE Removals RemoveMappings(Device& device, uint64_t iova, uint64_t end);
  // The general case of RemoveMappings: a range that is not exactly one
  // mapping. Out of line, so the DMA-API case inlines into Unmap.
  ABSL_ATTRIBUTE_NOINLINE absl::Status RemoveEverythingInside(
      Device& device, uint64_t iova, uint64_t end, std::vector<PageTable::Removed>& removed);
  // Asks for a reclaim if removing `gone` unlinked table pages.
  void NoteReclaim(const PageTable::Removed& gone);
  // The unmap's result from what it removed: counts, DMA-API debugging, and
  // in paranoid the IOVAs' release.
  ABSL_ATTRIBUTE_ALWAYS_INLINE absl::StatusOr<UnmapResult> FinishUnmap(Device& device,
                                                                       Policy current,
                                                                       const Removals& removals);
  absl::Status CheckUnmapBoundaries(Device& device, uint64_t iova, uint64_t end);
  // Invalidates `removed` synchronously (paranoid) and completes the unmap's
  // pending invalidation (Begin() before its PTEs were cleared).
  void InvalidateNow(absl::Span<const PageTable::Removed> removed);
  void RecordFlush(Policy policy, FlushKind kind, uint64_t waited_nanos);
  // Attributes the lookups since the last policy change to `ended`.
  void AttributeLookups(Policy ended);
  // Adds to `to` the lookups in `now` that no policy has been given yet.
  void AddUnattributedLookups(const IotlbStats& now, IotlbLookups& to) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lookups_mutex_);
  // After their invalidation: tells subscribers and device-side IOTLBs,
  // then frees the IOVAs; with `await_device_tlbs`, only once the IOTLBs
  // acknowledged (the returned completion, null if none is linked).
  std::shared_ptr<Completion> ReleaseIovas(absl::Span<const PageTable::Removed> removed,
                                           bool await_device_tlbs);
  void FreeIovas(absl::Span<const PageTable::Removed> removed);
  // Fast: tells device-side IOTLBs that `removed` awaits its flush, before
  // the flush queue can send the invalidation, so the notice comes first.
  void NoticePendingFlush(absl::Span<const PageTable::Removed> removed);
  std::vector<InvalidationEvent> RangeEvents(absl::Span<const PageTable::Removed> removed,
                                             bool flush_pending) const;
  // Translates the page holding `iova` into `out`, or returns false with
  // `fault` set. Out-parameters rather than an optional return: the result
  // then never round-trips through memory on the hot path.
  bool TranslatePage(const Device& device, uint64_t iova, Policy policy, PageTranslation& out,
                     FaultReason& fault);
  TranslateResult FaultAt(Device& device, uint64_t iova, Access access, FaultReason reason);
  bool InBypassWindow(uint64_t iova, uint64_t size) const;
  // Counts one more live mapping unless the domain holds max_mappings. Sums
  // every thread's count only once this thread's own is a sizeable share of
  // the limit: exact for one thread; threads racing near the limit may each
  // be admitted up to 1/32 of it too many.
  bool TryCountMapping();
  // One member of Counts, summed over threads.
  int64_t Total(std::atomic<int64_t> Counts::*member) const;

  const DomainConfig config_;
  const Environment env_;
  // Identity claims live in [aperture_first, identity_end_) when
  // identity_first is set; 0 otherwise.
  const uint64_t identity_end_;
  std::atomic<Policy> policy_;
  // SetPolicy calls between their switch and their drain: translations
  // keep checking IOTLB hits for staleness meanwhile.
  std::atomic<int> policy_switches_{0};
  const std::unique_ptr<IovaAllocator> allocator_;
  const std::unique_ptr<Iotlb> iotlb_;
  PageTable page_table_;
  // Unmaps whose invalidation has not completed (translations check IOTLB
  // hits only while there are any): paranoid unmaps, and the flush queue's
  // busy stripes.
  PendingInvalidations pending_invalidations_;
  FlushQueue flush_queue_;
  FaultLog faults_;
  DmaDebugCounters debug_;
  PerThread<Counts> counts_;
  // IOTLB lookups attributed to the policies the domain had before its
  // current one (at each change, everything not attributed yet).
  mutable std::mutex lookups_mutex_;
  std::array<IotlbLookups, kPolicyCount> attributed_lookups_ ABSL_GUARDED_BY(lookups_mutex_);
  std::atomic<uint64_t> faults_count_{0};
  std::atomic<int64_t> last_shrink_second_{0};
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_DOMAIN_H_
