#include "core/iommu/domain.h"

#include <algorithm>
#include <array>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "core/iommu/id.h"
#include "core/util/hex.h"

namespace iommu_broker {
namespace {

// The longest DMA a single Translate call may describe.
constexpr uint64_t kMaxTranslateBytes = uint64_t{16} << 20;
constexpr uint64_t kIovaLimit = uint64_t{1} << kIovaBits;

bool Aligned(uint64_t value) { return (value & (kPage4K - 1)) == 0; }

// "[0x1000, 0x3000)"
std::string RangeText(uint64_t start, uint64_t end) {
  return absl::StrCat("[", Hex(start), ", ", Hex(end), ")");
}

// Field by field, each a scalar load and store: the leaf was just decoded
// with scalar stores, and the vector copy the compiler otherwise emits (16
// bytes at a time, unaligned to the fields) stalls on store forwarding, as
// does the IOTLB's read of the copy (docs/PERFORMANCE.md).
void CopyLeaf(const PageTable::Leaf& leaf, IotlbEntry& entry) {
  entry.iova = leaf.iova;
  std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps the copies apart
  entry.phys = leaf.phys;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  entry.page_size = leaf.size;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  entry.perms = leaf.perms;
}

// end - 1 of a non-empty range, or nullopt if start + size overflows.
std::optional<uint64_t> LastByte(uint64_t start, uint64_t size) {
  if (ABSL_PREDICT_FALSE(size == 0 || start > ~uint64_t{0} - (size - 1))) return std::nullopt;
  return start + (size - 1);
}

absl::Status ValidateConfig(const DomainConfig& config, uint64_t physical_memory_bytes) {
  if (absl::Status status = ValidateId("domain id", config.id); !status.ok()) return status;
  const std::string in = absl::StrCat("domain ", config.id, ": ");
  if (!Aligned(config.aperture_first) || !Aligned(config.aperture_last + 1) ||
      config.aperture_first > config.aperture_last || config.aperture_last >= kIovaLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat(in, "aperture [", Hex(config.aperture_first), ", ", Hex(config.aperture_last),
                     "] must be granule-aligned, non-empty and below 2^48"));
  }
  if ((config.page_sizes & kPage4K) == 0 ||
      (config.page_sizes & ~(kPage4K | kPage2M | kPage1G)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(in, "page_sizes ", Hex(config.page_sizes),
                     " must include 4 KiB and only add 2 MiB or 1 GiB"));
  }
  if (config.flush_queue.capacity < 1 || config.flush_queue.capacity > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        in, "flush_queue capacity ", config.flush_queue.capacity, " is not in [1, 65536]"));
  }
  if (config.flush_queue.timeout <= absl::ZeroDuration() ||
      config.flush_queue.timeout > absl::Seconds(10)) {
    return absl::InvalidArgumentError(absl::StrCat(in, "flush_queue timeout ",
                                                   absl::FormatDuration(config.flush_queue.timeout),
                                                   " is not in (0, 10s]"));
  }
  for (const ReservedRegion& region : config.reserved) {
    if (!Aligned(region.start) || !Aligned(region.size) || !LastByte(region.start, region.size)) {
      return absl::InvalidArgumentError(
          absl::StrCat(in, "reserved region ", region.name, " ",
                       RangeText(region.start, region.start + region.size),
                       " must be non-empty and granule-aligned"));
    }
  }
  if (config.identity_first && config.policy != Policy::kFast) {
    return absl::InvalidArgumentError(
        absl::StrCat(in, "identity_first needs policy fast, not ", PolicyName(config.policy)));
  }
  if (config.max_mappings < 1 || config.max_mappings > (uint64_t{1} << 40)) {
    return absl::InvalidArgumentError(
        absl::StrCat(in, "max_mappings ", config.max_mappings, " is not in [1, 2^40]"));
  }
  if (!Aligned(config.bypass_window_base) || config.bypass_window_base <= config.aperture_last ||
      !LastByte(config.bypass_window_base, physical_memory_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        in, "bypass_window_base ", Hex(config.bypass_window_base),
        " must be granule-aligned, above the aperture, and leave room for physical memory"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Domain>> Domain::Create(const DomainConfig& config,
                                                       const Environment& env) {
  if (absl::Status status = ValidateConfig(config, env.physical_memory_bytes); !status.ok()) {
    return status;
  }
  IovaAllocatorOptions options;
  options.aperture_first = config.aperture_first;
  options.aperture_last = config.aperture_last;
  for (const ReservedRegion& region : config.reserved) {
    options.reserved.push_back({region.start, region.size});
  }
  if (config.identity_first) {
    // The allocator serves only addresses above physical memory; below it,
    // IOVA = PA claims on the page table decide.
    options.reserved.push_back({0, std::min(env.physical_memory_bytes, kIovaLimit)});
  }
  absl::StatusOr<std::unique_ptr<IovaAllocator>> allocator = IovaAllocator::Create(options);
  if (!allocator.ok()) return allocator.status();
  absl::StatusOr<std::unique_ptr<Iotlb>> iotlb = Iotlb::Create(config.iotlb, config.page_sizes);
  if (!iotlb.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("domain ", config.id, ": ", iotlb.status().message()));
  }
  return std::unique_ptr<Domain>(new Domain(config, env, *std::move(allocator), *std::move(iotlb)));
}

Domain::Domain(const DomainConfig& config, const Environment& env,
               std::unique_ptr<IovaAllocator> allocator, std::unique_ptr<Iotlb> iotlb)
    : config_(config),
      env_(env),
      identity_end_(config.identity_first
                        ? std::min(env.physical_memory_bytes, config.aperture_last + 1)
                        : 0),
      policy_(config.policy),
      allocator_(std::move(allocator)),
      iotlb_(std::move(iotlb)),
      page_table_(*env.reclaimer),
      flush_queue_(config.flush_queue, *iotlb_, *env.invalidation_queue, pending_invalidations_,
                   env.flush_latencies,
                   [this](absl::Span<const PageTable::Removed> done) {
                     ReleaseIovas(done, /*await_device_tlbs=*/false);
                   }),
      faults_(env.fault_log_capacity, env.iommu_faults) {}

Domain::~Domain() = default;

// ---------------------------------------------------------------- Map

absl::StatusOr<MapResult> Domain::Map(Device& device, const MapRequest& request) {
  // Built where the caller receives it and returned by name: a MapResult
  // filled with scalar stores and then moved into the StatusOr is read back
  // 16 bytes at a time, which stalls on store forwarding (docs/PERFORMANCE.md).
  absl::StatusOr<MapResult> mapped(absl::in_place);
  if (absl::Status status = MapInto(device, request, *mapped); ABSL_PREDICT_FALSE(!status.ok())) {
    mapped = std::move(status);
  }
  return mapped;
}

absl::Status Domain::MapInto(Device& device, const MapRequest& request, MapResult& result) {
  if (absl::Status status = ValidateMapRequest(request); !status.ok()) return status;
  // Checked here rather than in DecideBypass: building and destroying its
  // result on every map cost ~5% of a DMA-API map + unmap.
  if (ABSL_PREDICT_FALSE(request.bypass != BypassMode::kNone)) {
    std::string refusal;
    absl::StatusOr<std::optional<MapResult>> bypass = DecideBypass(device, request, &refusal);
    if (!bypass.ok()) {
      AddOwned(counts_.Local().bypass_refusals, 1);
      return bypass.status();
    }
    if (bypass->has_value()) {
      AddOwned(counts_.Local().bypass_maps, 1);
      result = **std::move(bypass);
      return absl::OkStatus();
    }
    if (!refusal.empty()) {
      AddOwned(counts_.Local().bypass_fallbacks, 1);
      result.bypass_refusal = std::move(refusal);
    }
  }
  if (ABSL_PREDICT_FALSE(policy() == Policy::kPassthrough) && !request.has_iova &&
      request.phys + (request.size - 1) <= device.dma_mask()) {
    AddOwned(counts_.Local().identity_maps, 1);
    result.iova = request.phys;
    result.kind = MappingKind::kIdentity;
    return absl::OkStatus();
  }
  if (ABSL_PREDICT_FALSE(!TryCountMapping())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "domain ", id(), " holds its limit of ", config_.max_mappings, " mappings (max_mappings)"));
  }
  absl::Status placed = request.has_iova ? PlaceFixed(device, request, result)
                                         : PlaceAnywhere(device, request, result);
  if (ABSL_PREDICT_FALSE(!placed.ok())) AddOwned(counts_.Local().live_mappings, -1);
  return placed;
}

void Domain::RecordPlacement(const MapRequest& request, uint64_t iova, IovaOrigin origin,
                             const PageTable::LeafCounts& leaves, MapResult& result) {
  result.iova = iova;
  if (origin == IovaOrigin::kClaimed && iova == request.phys) {
    result.kind = MappingKind::kIdentity;
    AddOwned(counts_.Local().identity_maps, 1);
  }
  // Field by field: Install just wrote the counts with scalar stores, which
  // a 16-byte copy would wait for.
  result.leaves_4k = leaves.leaves_4k;
  std::atomic_signal_fence(std::memory_order_seq_cst);  // keeps the copies apart
  result.leaves_2m = leaves.leaves_2m;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  result.leaves_1g = leaves.leaves_1g;
}

absl::Status Domain::ValidateMapRequest(const MapRequest& request) const {
  if (ABSL_PREDICT_FALSE(request.size == 0 || !Aligned(request.size))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size ", Hex(request.size), " is not a positive multiple of the 4096-byte granule"));
  }
  if (ABSL_PREDICT_FALSE(!Aligned(request.phys))) {
    return absl::InvalidArgumentError(
        absl::StrCat("phys ", Hex(request.phys), " is not aligned to the 4096-byte granule"));
  }
  if (ABSL_PREDICT_FALSE(request.has_iova && !Aligned(request.iova))) {
    return absl::InvalidArgumentError(
        absl::StrCat("iova ", Hex(request.iova), " is not aligned to the 4096-byte granule"));
  }
  if (ABSL_PREDICT_FALSE(!request.perms.read && !request.perms.write)) {
    return absl::InvalidArgumentError("perms must allow read, write or both");
  }
  if (ABSL_PREDICT_FALSE(request.has_iova && request.bypass != BypassMode::kNone)) {
    return absl::InvalidArgumentError("bypass cannot be combined with a fixed iova");
  }
  std::optional<uint64_t> phys_last = LastByte(request.phys, request.size);
  if (ABSL_PREDICT_FALSE(!phys_last || *phys_last >= env_.physical_memory_bytes)) {
    return absl::OutOfRangeError(absl::StrCat(
        "phys range ", RangeText(request.phys, request.phys + request.size),
        " is outside the emulated physical memory ", RangeText(0, env_.physical_memory_bytes)));
  }
  if (ABSL_PREDICT_FALSE(request.has_iova && !LastByte(request.iova, request.size))) {
    return absl::OutOfRangeError(absl::StrCat("iova ", Hex(request.iova), " + size ",
                                              Hex(request.size), " overflows 64 bits"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<MapResult>> Domain::DecideBypass(const Device& device,
                                                              const MapRequest& request,
                                                              std::string* refusal) const {
  const Policy current = policy();
  if (current == Policy::kPassthrough) {
    return std::nullopt;  // in pt everything reachable is identity already
  }
  const uint64_t window_iova = config_.bypass_window_base + request.phys;
  absl::Status denied;
  if (current == Policy::kParanoid) {
    denied = absl::PermissionDeniedError(
        absl::StrCat("domain ", id(), " is paranoid: bypass is never honoured"));
  } else if (!device.allow_bypass()) {
    denied = absl::PermissionDeniedError(
        absl::StrCat("device ", device.id(),
                     " may not bypass the IOMMU: the operator has not set allow_bypass"));
  } else if (window_iova + (request.size - 1) > device.dma_mask()) {
    denied = absl::FailedPreconditionError(absl::StrCat(
        "device ", device.id(), "'s ", device.dma_mask_bits(),
        "-bit DMA mask does not reach its bypass window at ", Hex(config_.bypass_window_base)));
  } else {
    MapResult result;
    result.iova = window_iova;
    result.kind = MappingKind::kBypass;
    return result;
  }
  if (request.bypass == BypassMode::kRequire) return denied;
  *refusal = std::string(denied.message());
  return std::nullopt;
}

PageTable::Mapping Domain::MappingFor(const Device& device, const MapRequest& request,
                                      uint64_t iova, IovaOrigin origin) const {
  PageTable::Mapping mapping;
  mapping.iova = iova;
  mapping.phys = request.phys;
  mapping.size = request.size;
  mapping.perms = request.perms;
  mapping.origin = origin;
  mapping.owner = device.requester();
  mapping.page_sizes = config_.page_sizes;
  mapping.tables_may_be_shared = origin == IovaOrigin::kClaimed;
  // Allocated and reserved IOVAs come from the allocator, which hands each
  // to one caller; claims race for theirs on the page table itself.
  mapping.exclusive = origin != IovaOrigin::kClaimed;
  return mapping;
}

absl::Status Domain::PlaceAnywhere(const Device& device, const MapRequest& request,
                                   MapResult& result) {
  const uint64_t phys_last = request.phys + (request.size - 1);
  if (identity_end_ != 0 && policy() == Policy::kFast && request.phys >= config_.aperture_first &&
      phys_last < identity_end_ && phys_last <= device.dma_mask() &&
      CheckReservedOverlap(request.phys, request.size).ok()) {
    if (std::optional<PageTable::LeafCounts> leaves =
            page_table_.Install(MappingFor(device, request, request.phys, IovaOrigin::kClaimed))) {
      RecordPlacement(request, request.phys, IovaOrigin::kClaimed, *leaves, result);
      return absl::OkStatus();
    }
    // Taken: fall back to the allocator, which serves addresses above
    // physical memory.
  }
  absl::StatusOr<uint64_t> iova =
      allocator_->Allocate(request.size, std::min(device.dma_mask(), config_.aperture_last));
  if (ABSL_PREDICT_FALSE(!iova.ok())) {
    return absl::Status(
        iova.status().code(),
        absl::StrCat("domain ", id(), ", device ", device.id(), ": ", iova.status().message()));
  }
  std::optional<PageTable::LeafCounts> leaves =
      page_table_.Install(MappingFor(device, request, *iova, IovaOrigin::kAllocated));
  if (ABSL_PREDICT_FALSE(!leaves)) {
    allocator_->Free(*iova, request.size).IgnoreError();
    return absl::InternalError(absl::StrCat("domain ", id(), ": allocated iova ", Hex(*iova),
                                            " is already present in the page table"));
  }
  RecordPlacement(request, *iova, IovaOrigin::kAllocated, *leaves, result);
  return absl::OkStatus();
}

absl::Status Domain::PlaceFixed(const Device& device, const MapRequest& request,
                                MapResult& result) {
  const uint64_t iova = request.iova;
  const uint64_t last = iova + (request.size - 1);
  if (iova < config_.aperture_first || last > config_.aperture_last) {
    return absl::OutOfRangeError(absl::StrCat(
        "iova range ", RangeText(iova, last + 1), " is outside the aperture [",
        Hex(config_.aperture_first), ", ", Hex(config_.aperture_last), "] of domain ", id()));
  }
  if (last > device.dma_mask()) {
    return absl::OutOfRangeError(
        absl::StrCat("iova range ", RangeText(iova, last + 1), " is above device ", device.id(),
                     "'s ", device.dma_mask_bits(), "-bit DMA mask ", Hex(device.dma_mask())));
  }
  if (absl::Status status = CheckReservedOverlap(iova, request.size); !status.ok()) return status;
  if (iova < identity_end_) {
    if (last >= identity_end_) {
      return absl::InvalidArgumentError(absl::StrCat("iova range ", RangeText(iova, last + 1),
                                                     " straddles the end of domain ", id(),
                                                     "'s identity region at ", Hex(identity_end_)));
    }
    std::optional<PageTable::LeafCounts> leaves =
        page_table_.Install(MappingFor(device, request, iova, IovaOrigin::kClaimed));
    if (!leaves) {
      // Perhaps unmapped but not yet invalidated (its claim stays until
      // then): invalidate now, as below for allocator space.
      if (flush_queue_.Stats().pending > 0) flush_queue_.Flush(FlushKind::kExplicit);
      leaves = page_table_.Install(MappingFor(device, request, iova, IovaOrigin::kClaimed));
    }
    if (!leaves) return OverlapError(iova, request.size);
    RecordPlacement(request, iova, IovaOrigin::kClaimed, *leaves, result);
    return absl::OkStatus();
  }
  absl::Status reserved = allocator_->Reserve(iova, request.size);
  if (absl::IsAlreadyExists(reserved)) {
    // Perhaps unmapped but not yet invalidated: invalidate now, so the
    // caller may reuse its IOVA as virtio-iommu allows. Retry even when
    // nothing is pending any more: another thread's flush may have released
    // the range after the first attempt failed.
    if (flush_queue_.Stats().pending > 0) flush_queue_.Flush(FlushKind::kExplicit);
    reserved = allocator_->Reserve(iova, request.size);
  }
  if (absl::IsAlreadyExists(reserved)) return OverlapError(iova, request.size);
  if (!reserved.ok()) return reserved;
  std::optional<PageTable::LeafCounts> leaves =
      page_table_.Install(MappingFor(device, request, iova, IovaOrigin::kReserved));
  if (!leaves) {
    allocator_->Unreserve(iova, request.size).IgnoreError();
    return OverlapError(iova, request.size);
  }
  RecordPlacement(request, iova, IovaOrigin::kReserved, *leaves, result);
  return absl::OkStatus();
}

absl::Status Domain::CheckReservedOverlap(uint64_t iova, uint64_t size) const {
  // By last bytes: a region may end exactly at 2^64, where start + size is 0.
  const uint64_t last = iova + (size - 1);
  for (const ReservedRegion& region : config_.reserved) {
    if (iova <= region.start + (region.size - 1) && region.start <= last) {
      return absl::AlreadyExistsError(absl::StrCat(
          "iova range ", RangeText(iova, iova + size), " overlaps reserved region ", region.name,
          " ", RangeText(region.start, region.start + region.size), " of domain ", id()));
    }
  }
  return absl::OkStatus();
}

absl::Status Domain::OverlapError(uint64_t iova, uint64_t size) const {
  if (std::optional<PageTable::Leaf> leaf = page_table_.FindLeaf(iova, iova + size)) {
    return absl::AlreadyExistsError(absl::StrCat("iova range ", RangeText(iova, iova + size),
                                                 " overlaps a mapping at ", Hex(leaf->iova),
                                                 " in domain ", id()));
  }
  return absl::AlreadyExistsError(absl::StrCat(
      "iova range ", RangeText(iova, iova + size), " overlaps IOVA space in use in domain ", id(),
      " (being mapped or unmapped, or the rounding of an allocated range)"));
}

// ---------------------------------------------------------------- Unmap

absl::StatusOr<UnmapResult> Domain::Unmap(Device& device, uint64_t iova, uint64_t size) {
  if (ABSL_PREDICT_FALSE(size == 0 || !Aligned(size) || !Aligned(iova))) {
    return absl::InvalidArgumentError(
        absl::StrCat("unmap iova ", Hex(iova), " and size ", Hex(size),
                     " must be aligned to the 4096-byte granule, and size positive"));
  }
  if (ABSL_PREDICT_FALSE(!LastByte(iova, size))) {
    return absl::OutOfRangeError(
        absl::StrCat("iova ", Hex(iova), " + size ", Hex(size), " overflows 64 bits"));
  }
  if (InBypassWindow(iova, size)) return UnmapResult{};  // bypass has nothing to undo
  // Nothing is mapped at or above 2^48. Clamping there also keeps a range
  // that ends exactly at 2^64 from wrapping `end` to 0.
  const uint64_t end = std::min(iova + (size - 1), kIovaLimit - 1) + 1;
  const Policy current = policy();
  // pt maps what the DMA mask reaches as identity, with no PTE: an unmap of
  // one has nothing to remove, and need not hold the flush queue (whose busy
  // count every thread would share).
  if (current == Policy::kPassthrough && !page_table_.FindLeaf(iova, end)) return UnmapResult{};
  // From before the PTEs are cleared until the IOTLB holds none of them,
  // translations check IOTLB hits (pending_invalidations_).
  if (current == Policy::kParanoid) {
    pending_invalidations_.Begin();
    const Removals removed = RemoveMappings(device, iova, end);
    if (removed.status.ok() && !removed.all().empty()) {
      InvalidateNow(removed.all());
    } else {
      pending_invalidations_.Complete(1);
    }
    return FinishUnmap(device, current, removed);
  }
  FlushQueue::Unmapping unmapping(flush_queue_);
  const Removals removed = RemoveMappings(device, iova, end);
  if (removed.status.ok() && !removed.all().empty()) NoticePendingFlush(removed.all());
  if (removed.status.ok()) unmapping.Enqueue(removed.all());
  return FinishUnmap(device, current, removed);
}

inline absl::StatusOr<UnmapResult> Domain::FinishUnmap(Device& device, Policy current,
                                                       const Removals& removals) {
  if (!removals.status.ok()) return removals.status;
  const absl::Span<const PageTable::Removed> removed = removals.all();
  if (removed.empty()) {
    if (current != Policy::kPassthrough) {  // pt identity maps have nothing to unmap
      debug_.CountDoubleUnmap();
      device.debug().CountDoubleUnmap();
    }
    return UnmapResult{};
  }
  UnmapResult result;
  result.mappings_removed = removed.size();
  for (const PageTable::Removed& gone : removed) result.bytes_unmapped += gone.size;
  Counts& counts = counts_.Local();
  AddOwned(counts.live_mappings, -static_cast<int64_t>(removed.size()));
  AddOwned(counts.unmaps, static_cast<int64_t>(removed.size()));
  if (current == Policy::kParanoid) {
    result.device_tlb_acks = ReleaseIovas(removed, /*await_device_tlbs=*/true);
  }
  return result;
}

inline Domain::Removals Domain::RemoveMappings(Device& device, uint64_t iova, uint64_t end) {
  // The DMA-API case: the range is exactly one mapping, which splits
  // nothing. One walk finds and removes it, writing it in place; the
  // boundary checks and the range scan are for everything else.
  Removals removed{.exact = page_table_.RemoveExactly(iova, end), .inside = {}, .status = {}};
  if (removed.exact) {
    NoteReclaim(*removed.exact);
  } else {
    removed.status = RemoveEverythingInside(device, iova, end, removed.inside);
  }
  return removed;
}

absl::Status Domain::RemoveEverythingInside(Device& device, uint64_t iova, uint64_t end,
                                            std::vector<PageTable::Removed>& removed) {
  if (absl::Status status = CheckUnmapBoundaries(device, iova, end); !status.ok()) return status;
  for (uint64_t cursor = iova; cursor < end;) {
    std::optional<PageTable::Leaf> leaf = page_table_.FindLeaf(cursor, end);
    if (!leaf) break;
    cursor = leaf->iova + leaf->size;
    if (!leaf->first) continue;  // a mapping being built or removed by another thread
    if (std::optional<PageTable::Removed> gone = page_table_.Remove(leaf->iova, end)) {
      NoteReclaim(*gone);
      PageTable::CopyRemoved(*gone, removed.emplace_back());
      cursor = gone->iova + gone->size;
    }
  }
  return absl::OkStatus();
}

void Domain::NoteReclaim(const PageTable::Removed& gone) {
  if (gone.reclaim_due) env_.reclaim_due->store(true, std::memory_order_relaxed);
}

absl::Status Domain::CheckUnmapBoundaries(Device& device, uint64_t iova, uint64_t end) {
  std::string problem;
  // Nothing is mapped at or above 2^48, and a page-table walk of such an
  // address would alias it onto a lower one: look up only below.
  if (std::optional<PageTable::Leaf> head =
          iova < kIovaLimit ? page_table_.Lookup(iova) : std::nullopt;
      head && (!head->first || head->iova != iova)) {
    problem = absl::StrCat(Hex(iova), " is inside a mapping that starts below it");
  } else if (std::optional<PageTable::Leaf> tail =
                 end - 1 < kIovaLimit ? page_table_.Lookup(end - 1) : std::nullopt;
             tail && (!tail->last || tail->iova + tail->size != end)) {
    problem = absl::StrCat(Hex(end - 1), " is inside a mapping that ends above ", Hex(end));
  } else {
    return absl::OkStatus();
  }
  debug_.CountWrongSizeUnmap();
  device.debug().CountWrongSizeUnmap();
  return absl::FailedPreconditionError(absl::StrCat("unmap ", RangeText(iova, end),
                                                    " would split a mapping in domain ", id(), ": ",
                                                    problem, "; nothing was unmapped"));
}

void Domain::InvalidateNow(absl::Span<const PageTable::Removed> removed) {
  std::vector<InvalidationDescriptor> descriptors;
  for (const PageTable::Removed& gone : removed) AppendInvalidations(gone, *iotlb_, descriptors);
  // The IOTLB is clean once the batch applied the descriptors, before the
  // emulated hardware finishes: ending the pending count then keeps its
  // shared line off the path from the batch's end to the next unmap.
  const uint64_t waited = env_.invalidation_queue->Invalidate(
      descriptors, [this] { pending_invalidations_.Complete(1); });
  RecordFlush(Policy::kParanoid, FlushKind::kSyncUnmap, waited);
}

std::shared_ptr<Completion> Domain::ReleaseIovas(absl::Span<const PageTable::Removed> removed,
                                                 bool await_device_tlbs) {
  // Subscribers and device-side caches hear of an invalidation before its
  // IOVAs can be handed out again.
  const bool watched = env_.invalidations != nullptr && env_.invalidations->has_subscribers();
  const bool cached = env_.device_tlbs != nullptr && env_.device_tlbs->any_linked();
  if (watched || cached) {
    const std::vector<InvalidationEvent> events = RangeEvents(removed, /*flush_pending=*/false);
    if (watched) {
      for (const InvalidationEvent& event : events) env_.invalidations->Publish(event);
    }
    if (cached) {
      absl::AnyInvocable<void()> after_acks;
      if (await_device_tlbs) {
        after_acks = [self = shared_from_this(),
                      held = std::vector<PageTable::Removed>(removed.begin(), removed.end())] {
          self->FreeIovas(held);
        };
      }
      std::shared_ptr<Completion> acked =
          env_.device_tlbs->SendToDomain(this, events, std::move(after_acks));
      if (acked != nullptr) return acked;
    }
  }
  FreeIovas(removed);
  return nullptr;
}

void Domain::RecordFlush(Policy policy, FlushKind kind, uint64_t waited_nanos) {
  if (env_.flush_latencies != nullptr) env_.flush_latencies->Record(policy, kind, waited_nanos);
}

void Domain::NoticePendingFlush(absl::Span<const PageTable::Removed> removed) {
  if (env_.device_tlbs == nullptr || !env_.device_tlbs->any_linked()) return;
  env_.device_tlbs->SendToDomain(this, RangeEvents(removed, /*flush_pending=*/true), nullptr);
}

std::vector<InvalidationEvent> Domain::RangeEvents(absl::Span<const PageTable::Removed> removed,
                                                   bool flush_pending) const {
  std::vector<InvalidationEvent> events;
  events.reserve(removed.size());
  for (const PageTable::Removed& gone : removed) {
    events.push_back({.scope = InvalidationScope::kRange,
                      .domain_id = id(),
                      .iova = gone.iova,
                      .size = gone.size,
                      .flush_pending = flush_pending});
  }
  return events;
}

void Domain::FreeIovas(absl::Span<const PageTable::Removed> removed) {
  // Allocated ranges go back in batches: one allocator entry for a flush
  // queue's worth, not one each.
  std::array<IovaRange, 64> allocated;
  size_t batched = 0;
  auto free_batch = [&] {
    allocator_->FreeAll(absl::MakeConstSpan(allocated.data(), batched)).IgnoreError();  // trusted
    batched = 0;
  };
  for (const PageTable::Removed& gone : removed) {
    switch (gone.origin) {
      case IovaOrigin::kAllocated:
        allocated[batched++] = {gone.iova, gone.size};
        if (batched == allocated.size()) free_batch();
        break;
      case IovaOrigin::kReserved:
        allocator_->Unreserve(gone.iova, gone.size).IgnoreError();
        break;
      case IovaOrigin::kClaimed: {
        EpochReclaimer::Guard guard(*env_.reclaimer);  // may run on the timer thread
        if (page_table_.Release(gone.iova, gone.size)) {
          env_.reclaim_due->store(true, std::memory_order_relaxed);
        }
        break;
      }
    }
  }
  if (batched > 0) free_batch();
}

bool Domain::TryCountMapping() {
  std::atomic<int64_t>& mine = counts_.Local().live_mappings;
  const int64_t limit = static_cast<int64_t>(config_.max_mappings);
  if (ABSL_PREDICT_FALSE(mine.load(std::memory_order_relaxed) >= limit / 32 &&
                         Total(&Counts::live_mappings) >= limit)) {
    return false;
  }
  AddOwned(mine, 1);
  return true;
}

int64_t Domain::Total(std::atomic<int64_t> Counts::*member) const {
  int64_t total = 0;
  counts_.ForEach(
      [&](const Counts& counts) { total += (counts.*member).load(std::memory_order_relaxed); });
  return total;
}

bool Domain::InBypassWindow(uint64_t iova, uint64_t size) const {
  return iova >= config_.bypass_window_base &&
         iova - config_.bypass_window_base + size <= env_.physical_memory_bytes;
}

// ---------------------------------------------------------------- Translate

namespace {

// Out of line, so that the check itself inlines into the translation path.
ABSL_ATTRIBUTE_NOINLINE absl::Status TranslateRangeError(uint64_t iova, uint64_t size) {
  return absl::InvalidArgumentError(absl::StrCat("translate size ", Hex(size), " at iova ",
                                                 Hex(iova), " must be in [1, ",
                                                 Hex(kMaxTranslateBytes), "] and not wrap"));
}

// Written in place, field by field: a braced PhysSegment is built on the
// stack with two scalar stores and copied in with one 16-byte load, which
// stalls on store forwarding.
void AppendSegment(uint64_t phys, uint64_t size, TranslateResult& result) {
  PhysSegment& segment = result.segments.emplace_back();
  segment.phys = phys;
  segment.size = size;
}

}  // namespace

absl::Status Domain::ValidateTranslateRange(uint64_t iova, uint64_t size) {
  if (ABSL_PREDICT_FALSE(size == 0 || size > kMaxTranslateBytes || !LastByte(iova, size))) {
    return TranslateRangeError(iova, size);
  }
  return absl::OkStatus();
}

absl::StatusOr<TranslateResult> Domain::Translate(Device& device, uint64_t iova, uint64_t size,
                                                  Access access) {
  if (absl::Status status = ValidateTranslateRange(iova, size); !status.ok()) return status;
  AddOwned(counts_.Local().translations, 1);
  const uint64_t last = iova + (size - 1);
  if (last > device.dma_mask()) {
    return FaultAt(device, std::max(iova, device.dma_mask() + 1), access,
                   FaultReason::kAboveDmaMask);
  }
  const Policy current = policy();
  TranslateResult result;
  if (current == Policy::kFast && device.allow_bypass() && iova >= config_.bypass_window_base) {
    // The window reaches all of memory: that is what granting bypass means.
    if (!InBypassWindow(iova, size)) {
      return FaultAt(device,
                     std::max(iova, config_.bypass_window_base + env_.physical_memory_bytes),
                     access, FaultReason::kNotMapped);
    }
    result.kind = MappingKind::kBypass;
    AppendSegment(iova - config_.bypass_window_base, size, result);
    return result;
  }
  result.iotlb_hit = true;
  for (uint64_t cursor = iova; cursor <= last;) {
    PageTranslation page;
    FaultReason fault = FaultReason::kNotMapped;
    if (!TranslatePage(device, cursor, current, page, fault)) {
      return FaultAt(device, cursor, access, fault);
    }
    if ((access == Access::kRead && !page.leaf.perms.read) ||
        (access == Access::kWrite && !page.leaf.perms.write)) {
      return FaultAt(device, cursor, access, FaultReason::kPermission);
    }
    const uint64_t piece_last = std::min(last, page.leaf.iova + (page.leaf.page_size - 1));
    const uint64_t phys = page.leaf.phys + (cursor - page.leaf.iova);
    const uint64_t length = piece_last - cursor + 1;
    if (cursor == iova) result.kind = page.kind;
    if (!result.segments.empty() &&
        result.segments.back().phys + result.segments.back().size == phys) {
      result.segments.back().size += length;
    } else {
      AppendSegment(phys, length, result);
    }
    result.iotlb_hit &= page.iotlb_hit;
    result.stale |= page.stale;
    if (piece_last == last) break;
    cursor = piece_last + 1;
  }
  if (result.stale) AddOwned(counts_.Local().stale_translations, 1);
  return result;
}

bool Domain::TranslatePage(const Device& device, uint64_t iova, Policy policy, PageTranslation& out,
                           FaultReason& fault) {
  const bool in_aperture = iova >= config_.aperture_first && iova <= config_.aperture_last;
  if (in_aperture && policy != Policy::kPassthrough) {
    // Fast unmaps leave IOTLB entries until their batch invalidation (and so
    // may a switch away from fast): a hit is served as hardware would, and
    // the emulator checks whether the mapping behind it is gone. Only while
    // an invalidation is pending can it be.
    const bool may_be_stale =
        policy == Policy::kFast || policy_switches_.load(std::memory_order_acquire) > 0;
    const uint64_t quiet =
        may_be_stale ? pending_invalidations_.QuietSince() : PendingInvalidations::kPending;
    if (iotlb_->Lookup(device.requester(), iova, out.leaf)) {
      out.iotlb_hit = true;
      if (may_be_stale && !pending_invalidations_.StillQuiet(quiet)) {
        std::optional<PageTable::Leaf> leaf = page_table_.Lookup(iova);
        out.stale = !leaf || leaf->iova != out.leaf.iova || leaf->phys != out.leaf.phys ||
                    leaf->size != out.leaf.page_size || !(leaf->perms == out.leaf.perms);
      }
      return true;
    }
    const uint64_t token = iotlb_->FillToken();
    std::optional<PageTable::Leaf> leaf = page_table_.Lookup(iova);
    if (!leaf) {
      fault = FaultReason::kNotMapped;
      return false;
    }
    CopyLeaf(*leaf, out.leaf);
    iotlb_->Insert(token, device.requester(), out.leaf);
    return true;
  }
  if (policy == Policy::kPassthrough) {
    // Translated mappings (for PAs the device's mask cannot reach) take
    // precedence; every other reachable address is identity.
    if (in_aperture) {
      if (std::optional<PageTable::Leaf> leaf = page_table_.Lookup(iova)) {
        CopyLeaf(*leaf, out.leaf);
        return true;
      }
    }
    if (iova < env_.physical_memory_bytes) {
      const uint64_t page = iova & ~(kPage4K - 1);
      out.leaf = {page, page, kPage4K, Perms{true, true}};
      out.kind = MappingKind::kIdentity;
      return true;
    }
    fault = FaultReason::kNotMapped;
    return false;
  }
  fault = FaultReason::kOutsideAperture;
  return false;
}

TranslateResult Domain::FaultAt(Device& device, uint64_t iova, Access access, FaultReason reason) {
  TranslateResult result;
  Fault& fault = result.fault.emplace();
  fault.domain_id = id();
  fault.device_id = device.id();
  fault.iova = iova;
  fault.access = access;
  fault.reason = reason;
  fault.time = absl::Now();
  faults_count_.fetch_add(1, std::memory_order_relaxed);
  if (reason == FaultReason::kNotMapped) {
    debug_.CountDmaAfterUnmap();
    device.debug().CountDmaAfterUnmap();
  }
  fault.sequence = faults_.Record(fault);
  return result;
}

// ---------------------------------------------------------------- Policy & upkeep

void Domain::SetPolicy(Policy policy) {
  policy_switches_.fetch_add(1, std::memory_order_acq_rel);
  const Policy old = policy_.exchange(policy, std::memory_order_acq_rel);
  if (old != policy) {
    AttributeLookups(old);
    // Every unmap that read the old policy has queued its ranges once this
    // grace period ends; the drain then covers them all.
    env_.reclaimer->Synchronize();
    if (policy == Policy::kParanoid) flush_queue_.Flush(FlushKind::kDomainWide);
  }
  policy_switches_.fetch_sub(1, std::memory_order_acq_rel);
}

void Domain::AttributeLookups(Policy ended) {
  std::lock_guard<std::mutex> lock(lookups_mutex_);
  AddUnattributedLookups(iotlb_->Stats(), attributed_lookups_[static_cast<size_t>(ended)]);
}

void Domain::AddUnattributedLookups(const IotlbStats& now, IotlbLookups& to) const {
  IotlbLookups attributed;
  for (const IotlbLookups& lookups : attributed_lookups_) {
    attributed.hits += lookups.hits;
    attributed.misses += lookups.misses;
  }
  to.hits += now.hits - attributed.hits;
  to.misses += now.misses - attributed.misses;
}

void Domain::Flush(FlushKind kind) { flush_queue_.Flush(kind); }

void Domain::Maintain(absl::Time now) {
  flush_queue_.FlushExpired(now);
  const int64_t second = absl::ToUnixSeconds(now);
  int64_t last = last_shrink_second_.load(std::memory_order_relaxed);
  if (second != last && last_shrink_second_.compare_exchange_strong(last, second)) {
    allocator_->ShrinkIdleCaches();
  }
}

void Domain::InvalidateRequester(uint32_t requester) {
  const InvalidationDescriptor descriptor =
      InvalidationDescriptor::Requester(iotlb_.get(), requester);
  RecordFlush(policy(), FlushKind::kDevice, env_.invalidation_queue->Invalidate({&descriptor, 1}));
}

absl::flat_hash_map<uint32_t, LiveMappings> Domain::LiveMappingsByRequester() const {
  absl::flat_hash_map<uint32_t, LiveMappings> live;
  page_table_.ForEachLeaf([&](const PageTable::Leaf& leaf) {
    LiveMappings& owner = live[leaf.owner];
    owner.bytes += leaf.size;
    if (leaf.first) ++owner.mappings;
  });
  return live;
}

DomainStats Domain::Stats() const {
  DomainStats stats;
  stats.policy = policy();
  stats.live_mappings = static_cast<uint64_t>(std::max<int64_t>(0, Total(&Counts::live_mappings)));
  stats.unmaps = static_cast<uint64_t>(Total(&Counts::unmaps));
  stats.maps = stats.live_mappings + stats.unmaps;  // every translated map is live or unmapped
  stats.translations = static_cast<uint64_t>(Total(&Counts::translations));
  stats.faults = faults_count_.load(std::memory_order_relaxed);
  stats.stale_translations = static_cast<uint64_t>(Total(&Counts::stale_translations));
  stats.bypass_maps = static_cast<uint64_t>(Total(&Counts::bypass_maps));
  stats.bypass_fallbacks = static_cast<uint64_t>(Total(&Counts::bypass_fallbacks));
  stats.bypass_refusals = static_cast<uint64_t>(Total(&Counts::bypass_refusals));
  stats.identity_maps = static_cast<uint64_t>(Total(&Counts::identity_maps));
  stats.table_pages = page_table_.table_pages();
  {
    // Read under the lock, so that the totals are never behind what has
    // been attributed.
    std::lock_guard<std::mutex> lock(lookups_mutex_);
    stats.iotlb = iotlb_->Stats();
    stats.iotlb_by_policy = attributed_lookups_;
    AddUnattributedLookups(stats.iotlb, stats.iotlb_by_policy[static_cast<size_t>(stats.policy)]);
  }
  stats.flush_queue = flush_queue_.Stats();
  stats.iova = allocator_->Stats();
  stats.debug = debug_.Snapshot();
  return stats;
}

}  // namespace iommu_broker
