#include "server/convert.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace iommu_broker {
namespace {

// protobuf's own bound for Duration.seconds (about 10,000 years).
constexpr int64_t kMaxDurationSeconds = int64_t{315576000000};

absl::Status Required(absl::string_view field) {
  return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
}

absl::Status UnknownEnum(absl::string_view field, int value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", value, " is not a known value"));
}

absl::StatusOr<PageSizeSet> PageSizesFromProto(const v1::DomainSpec& spec) {
  if (spec.page_sizes().empty()) return kPage4K | kPage2M | kPage1G;
  PageSizeSet sizes = kPage4K;
  for (int size : spec.page_sizes()) {
    switch (size) {
      case v1::PAGE_SIZE_4K:
        break;
      case v1::PAGE_SIZE_2M:
        sizes |= kPage2M;
        break;
      case v1::PAGE_SIZE_1G:
        sizes |= kPage1G;
        break;
      default:
        return UnknownEnum("domain.page_sizes", size);
    }
  }
  return sizes;
}

void PageSizesToProto(PageSizeSet sizes, v1::DomainSpec* out) {
  out->add_page_sizes(v1::PAGE_SIZE_4K);
  if (sizes & kPage2M) out->add_page_sizes(v1::PAGE_SIZE_2M);
  if (sizes & kPage1G) out->add_page_sizes(v1::PAGE_SIZE_1G);
}

void DomainConfigToProto(const DomainConfig& config, v1::DomainSpec* out) {
  out->set_id(config.id);
  out->set_policy(PolicyToProto(config.policy));
  out->set_aperture_first(config.aperture_first);
  out->set_aperture_last(config.aperture_last);
  PageSizesToProto(config.page_sizes, out);
  out->set_iotlb_sets(config.iotlb.sets);
  out->set_iotlb_ways(config.iotlb.ways);
  out->set_flush_queue_capacity(static_cast<uint32_t>(config.flush_queue.capacity));
  DurationToProto(config.flush_queue.timeout, out->mutable_flush_queue_timeout());
  v1::ReservedRegionList* reserved = out->mutable_reserved_regions();
  for (const ReservedRegion& region : config.reserved) {
    v1::ReservedRegion* added = reserved->add_regions();
    added->set_start(region.start);
    added->set_size(region.size);
    added->set_name(region.name);
  }
  out->set_identity_first(config.identity_first);
  out->set_max_mappings(config.max_mappings);
  out->set_bypass_window_base(config.bypass_window_base);
  out->set_iommu_unit(config.iommu_unit);
}

v1::MappingKind MappingKindToProto(MappingKind kind) {
  switch (kind) {
    case MappingKind::kTranslated:
      return v1::MAPPING_KIND_TRANSLATED;
    case MappingKind::kIdentity:
      return v1::MAPPING_KIND_IDENTITY;
    case MappingKind::kBypass:
      return v1::MAPPING_KIND_BYPASS;
  }
  return v1::MAPPING_KIND_UNSPECIFIED;
}

v1::FaultReason FaultReasonToProto(FaultReason reason) {
  switch (reason) {
    case FaultReason::kDeviceNotAttached:
      return v1::FAULT_REASON_DEVICE_NOT_ATTACHED;
    case FaultReason::kOutsideAperture:
      return v1::FAULT_REASON_OUTSIDE_APERTURE;
    case FaultReason::kAboveDmaMask:
      return v1::FAULT_REASON_ABOVE_DMA_MASK;
    case FaultReason::kNotMapped:
      return v1::FAULT_REASON_NOT_MAPPED;
    case FaultReason::kPermission:
      return v1::FAULT_REASON_PERMISSION;
  }
  return v1::FAULT_REASON_UNSPECIFIED;
}

// The engine checks the exact range; this only keeps the value an int.
absl::StatusOr<int> DmaMaskBitsFromProto(uint32_t bits, absl::string_view field) {
  if (bits > 64) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", bits, " is not in [12, 64]"));
  }
  return static_cast<int>(bits);
}

v1::Access AccessToProto(Access access) {
  return access == Access::kRead ? v1::ACCESS_READ : v1::ACCESS_WRITE;
}

}  // namespace

absl::StatusOr<absl::Duration> DurationFromProto(const google::protobuf::Duration& duration,
                                                 absl::string_view field) {
  const int64_t seconds = duration.seconds();
  const int32_t nanos = duration.nanos();
  if (seconds < 0 || nanos < 0 || nanos > 999'999'999 || seconds > kMaxDurationSeconds) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " {seconds: ", seconds, ", nanos: ", nanos, "} is not a non-negative duration"));
  }
  return absl::Seconds(seconds) + absl::Nanoseconds(nanos);
}

void DurationToProto(absl::Duration duration, google::protobuf::Duration* out) {
  const int64_t seconds = absl::IDivDuration(duration, absl::Seconds(1), &duration);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(duration)));
}

absl::StatusOr<Policy> PolicyFromProto(v1::Policy policy, absl::string_view field) {
  switch (policy) {
    case v1::POLICY_PARANOID:
      return Policy::kParanoid;
    case v1::POLICY_FAST:
      return Policy::kFast;
    case v1::POLICY_PT:
      return Policy::kPassthrough;
    case v1::POLICY_UNSPECIFIED:
      return Required(field);
    default:
      return UnknownEnum(field, policy);
  }
}

v1::Policy PolicyToProto(Policy policy) {
  switch (policy) {
    case Policy::kParanoid:
      return v1::POLICY_PARANOID;
    case Policy::kFast:
      return v1::POLICY_FAST;
    case Policy::kPassthrough:
      return v1::POLICY_PT;
  }
  return v1::POLICY_UNSPECIFIED;
}

absl::StatusOr<DomainConfig> DomainConfigFromProto(const v1::DomainSpec& spec) {
  DomainConfig config;
  config.id = spec.id();
  absl::StatusOr<Policy> policy = PolicyFromProto(spec.policy(), "domain.policy");
  if (!policy.ok()) return policy.status();
  config.policy = *policy;
  if (spec.has_aperture_first()) config.aperture_first = spec.aperture_first();
  if (spec.has_aperture_last()) config.aperture_last = spec.aperture_last();
  absl::StatusOr<PageSizeSet> page_sizes = PageSizesFromProto(spec);
  if (!page_sizes.ok()) return page_sizes.status();
  config.page_sizes = *page_sizes;
  if (spec.has_iotlb_sets()) config.iotlb.sets = spec.iotlb_sets();
  if (spec.has_iotlb_ways()) config.iotlb.ways = spec.iotlb_ways();
  if (spec.has_flush_queue_capacity()) config.flush_queue.capacity = spec.flush_queue_capacity();
  if (spec.has_flush_queue_timeout()) {
    absl::StatusOr<absl::Duration> timeout =
        DurationFromProto(spec.flush_queue_timeout(), "domain.flush_queue_timeout");
    if (!timeout.ok()) return timeout.status();
    config.flush_queue.timeout = *timeout;
  }
  if (spec.has_reserved_regions()) {
    config.reserved.clear();
    for (const v1::ReservedRegion& region : spec.reserved_regions().regions()) {
      config.reserved.push_back({region.start(), region.size(), region.name()});
    }
  }
  config.identity_first = spec.identity_first();
  if (spec.has_max_mappings()) config.max_mappings = spec.max_mappings();
  if (spec.has_bypass_window_base()) config.bypass_window_base = spec.bypass_window_base();
  config.iommu_unit = spec.iommu_unit();
  return config;
}

void DomainInfoToProto(const DomainInfo& info, v1::Domain* out) {
  DomainConfigToProto(info.config, out->mutable_spec());
  for (const std::string& id : info.device_ids) out->add_device_ids(id);
  DomainStatsToProto(info.stats, out->mutable_stats());
}

void DomainStatsToProto(const DomainStats& stats, v1::DomainStats* out) {
  out->set_live_mappings(stats.live_mappings);
  out->set_maps(stats.maps);
  out->set_unmaps(stats.unmaps);
  out->set_translations(stats.translations);
  out->set_faults(stats.faults);
  out->set_stale_translations(stats.stale_translations);
  out->set_bypass_maps(stats.bypass_maps);
  out->set_identity_maps(stats.identity_maps);
  out->set_table_pages(stats.table_pages);
  v1::IotlbStats* iotlb = out->mutable_iotlb();
  iotlb->set_hits(stats.iotlb.hits);
  iotlb->set_misses(stats.iotlb.misses);
  iotlb->set_inserts(stats.iotlb.inserts);
  iotlb->set_dropped_fills(stats.iotlb.dropped_fills);
  iotlb->set_invalidated_entries(stats.iotlb.invalidated_entries);
  iotlb->set_evictions(stats.iotlb.evictions);
  v1::FlushQueueStats* flush_queue = out->mutable_flush_queue();
  flush_queue->set_queued(stats.flush_queue.queued);
  flush_queue->set_pending(stats.flush_queue.pending);
  flush_queue->set_full_flushes(stats.flush_queue.full_flushes);
  flush_queue->set_timeout_flushes(stats.flush_queue.timeout_flushes);
  flush_queue->set_explicit_flushes(stats.flush_queue.explicit_flushes);
  v1::IovaStats* iova = out->mutable_iova();
  iova->set_aperture_bytes(stats.iova.aperture_bytes);
  iova->set_reserved_bytes(stats.iova.reserved_bytes);
  iova->set_allocated_bytes(stats.iova.allocated_bytes);
  iova->set_cached_bytes(stats.iova.cached_bytes);
  iova->set_free_bytes(stats.iova.free_bytes);
  iova->set_largest_free_block_bytes(stats.iova.largest_free_block_bytes);
  iova->set_failed_allocations(stats.iova.failed_allocations);
  DebugCountsToProto(stats.debug, out->mutable_debug());
}

void DebugCountsToProto(const DmaDebugCounts& counts, v1::DmaDebugCounts* out) {
  out->set_wrong_size_unmaps(counts.wrong_size_unmaps);
  out->set_double_unmaps(counts.double_unmaps);
  out->set_dma_after_unmap(counts.dma_after_unmap);
  out->set_leaked_mappings(counts.leaked_mappings);
  out->set_leaked_bytes(counts.leaked_bytes);
}

void LeaksToProto(const LiveMappings& leaked, v1::Leaks* out) {
  out->set_mappings(leaked.mappings);
  out->set_bytes(leaked.bytes);
}

absl::StatusOr<DeviceConfig> DeviceConfigFromProto(const v1::DeviceSpec& spec) {
  DeviceConfig config;
  config.id = spec.id();
  if (spec.has_dma_mask_bits()) {
    absl::StatusOr<int> bits = DmaMaskBitsFromProto(spec.dma_mask_bits(), "device.dma_mask_bits");
    if (!bits.ok()) return bits.status();
    config.dma_mask_bits = *bits;
  }
  config.allow_bypass = spec.allow_bypass();
  return config;
}

absl::StatusOr<DeviceUpdate> DeviceUpdateFromProto(const v1::UpdateDeviceRequest& request) {
  DeviceUpdate update;
  if (request.has_dma_mask_bits()) {
    absl::StatusOr<int> bits = DmaMaskBitsFromProto(request.dma_mask_bits(), "dma_mask_bits");
    if (!bits.ok()) return bits.status();
    update.dma_mask_bits = *bits;
  }
  if (request.has_allow_bypass()) update.allow_bypass = request.allow_bypass();
  return update;
}

void DeviceInfoToProto(const DeviceInfo& info, v1::Device* out) {
  v1::DeviceSpec* spec = out->mutable_spec();
  spec->set_id(info.config.id);
  spec->set_dma_mask_bits(static_cast<uint32_t>(info.config.dma_mask_bits));
  spec->set_allow_bypass(info.config.allow_bypass);
  out->set_domain_id(info.domain_id);
  out->set_requester_id(info.requester);
  DebugCountsToProto(info.debug, out->mutable_debug());
}

absl::StatusOr<MapRequest> MapRequestFromProto(const v1::MapRequest& request) {
  MapRequest map;
  map.phys = request.phys();
  map.size = request.size();
  map.perms = {.read = request.permissions().read(), .write = request.permissions().write()};
  map.has_iova = request.has_iova();
  map.iova = request.iova();
  switch (request.bypass()) {
    case v1::BYPASS_MODE_UNSPECIFIED:
    case v1::BYPASS_MODE_NONE:
      map.bypass = BypassMode::kNone;
      break;
    case v1::BYPASS_MODE_PREFER:
      map.bypass = BypassMode::kPrefer;
      break;
    case v1::BYPASS_MODE_REQUIRE:
      map.bypass = BypassMode::kRequire;
      break;
    default:
      return UnknownEnum("bypass", request.bypass());
  }
  return map;
}

void MapResultToProto(const MapResult& result, v1::MapResponse* out) {
  out->set_iova(result.iova);
  out->set_kind(MappingKindToProto(result.kind));
  if (result.bypass_refusal.has_value()) out->set_bypass_refusal(*result.bypass_refusal);
  out->set_leaves_4k(result.leaves_4k);
  out->set_leaves_2m(result.leaves_2m);
  out->set_leaves_1g(result.leaves_1g);
}

void UnmapResultToProto(const UnmapResult& result, v1::UnmapResponse* out) {
  out->set_bytes_unmapped(result.bytes_unmapped);
  out->set_mappings_removed(result.mappings_removed);
}

absl::StatusOr<Access> AccessFromProto(v1::Access access) {
  switch (access) {
    case v1::ACCESS_READ:
      return Access::kRead;
    case v1::ACCESS_WRITE:
      return Access::kWrite;
    case v1::ACCESS_UNSPECIFIED:
      return Required("access");
    default:
      return UnknownEnum("access", access);
  }
}

void TranslateResultToProto(const TranslateResult& result, v1::TranslateResponse* out) {
  if (result.fault.has_value()) {
    FaultToProto(*result.fault, out->mutable_fault());
  } else {
    for (const PhysSegment& segment : result.segments) {
      v1::PhysSegment* added = out->add_segments();
      added->set_phys(segment.phys);
      added->set_size(segment.size);
    }
  }
  out->set_kind(MappingKindToProto(result.kind));
  out->set_iotlb_hit(result.iotlb_hit);
  out->set_stale(result.stale);
}

void FaultToProto(const Fault& fault, v1::Fault* out) {
  out->set_sequence(fault.sequence);
  const int64_t nanos = absl::ToUnixNanos(fault.time);
  out->mutable_time()->set_seconds(nanos / 1'000'000'000);
  out->mutable_time()->set_nanos(static_cast<int32_t>(nanos % 1'000'000'000));
  out->set_domain_id(fault.domain_id);
  out->set_device_id(fault.device_id);
  out->set_iova(fault.iova);
  out->set_access(AccessToProto(fault.access));
  out->set_reason(FaultReasonToProto(fault.reason));
}

void InvalidationToProto(const InvalidationEvent& event, v1::Invalidation* out) {
  out->set_domain_id(event.domain_id);
  switch (event.scope) {
    case InvalidationScope::kRange:
      out->set_scope(v1::Invalidation::SCOPE_RANGE);
      out->set_iova(event.iova);
      out->set_size(event.size);
      break;
    case InvalidationScope::kRequester:
      out->set_scope(v1::Invalidation::SCOPE_DEVICE);
      out->set_device_id(event.device_id);
      out->set_requester_id(event.requester);
      break;
    case InvalidationScope::kDomain:
      out->set_scope(v1::Invalidation::SCOPE_DOMAIN);
      break;
  }
}

}  // namespace iommu_broker
