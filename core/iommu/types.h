// The vocabulary of the emulated IOMMU (docs/IOMMU.md):
// policies, permissions, page sizes, and the results of map, unmap and
// translate. Plain values; no behaviour beyond naming and parsing.
#ifndef IOMMU_BROKER_CORE_IOMMU_TYPES_H_
#define IOMMU_BROKER_CORE_IOMMU_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/iommu/completion.h"

namespace iommu_broker {

// Leaf sizes of the 4-level, 4 KiB-granule page table (9 bits a level).
inline constexpr uint64_t kPage4K = uint64_t{1} << 12;
inline constexpr uint64_t kPage2M = uint64_t{1} << 21;
inline constexpr uint64_t kPage1G = uint64_t{1} << 30;
// A set of page sizes is a bitmask of the sizes themselves (Linux's
// pgsize_bitmap): kPage4K | kPage2M means 4 KiB and 2 MiB leaves.
using PageSizeSet = uint64_t;
// Every IOVA a page table can hold is below 2^48.
inline constexpr int kIovaBits = 48;

// How strictly a domain invalidates and whether it lets drivers bypass it
// (the policy table in BRIEF.md).
enum class Policy {
  kParanoid,     // unmap invalidates before it replies; bypass never honoured
  kFast,         // unmap queues invalidation (flush queue); bypass if allowed
  kPassthrough,  // IOVA = PA wherever the device's DMA mask reaches
};
inline constexpr size_t kPolicyCount = 3;
absl::string_view PolicyName(Policy policy);  // "paranoid", "fast", "pt"
absl::StatusOr<Policy> ParsePolicy(absl::string_view name);

struct Perms {
  bool read = false;
  bool write = false;
  friend bool operator==(Perms, Perms) = default;
};

enum class Access { kRead, kWrite };

// What a driver asks for on a map; the operator's allow_bypass and the
// domain's policy decide what it gets.
enum class BypassMode {
  kNone,     // always translate
  kPrefer,   // bypass if allowed, otherwise translate and say why
  kRequire,  // bypass or fail
};

// How a mapped IOVA reaches memory.
enum class MappingKind {
  kTranslated,  // through the page table
  kIdentity,    // IOVA == PA (pt domains, or identity_first)
  kBypass,      // PA inside the device's bypass window; no PTE, no flush
};
absl::string_view MappingKindName(MappingKind kind);

struct MapRequest {
  uint64_t phys = 0;
  uint64_t size = 0;
  Perms perms;
  bool has_iova = false;  // true: map at `iova` (virtio-iommu / VFIO style)
  uint64_t iova = 0;
  BypassMode bypass = BypassMode::kNone;
};

struct MapResult {
  uint64_t iova = 0;
  MappingKind kind = MappingKind::kTranslated;
  // Set when bypass was preferred but not granted: why it was translated.
  // Optional rather than an empty string: every map moves its result.
  std::optional<std::string> bypass_refusal;
  // Leaf PTEs written, by size (all zero for identity in pt and bypass).
  uint64_t leaves_4k = 0;
  uint64_t leaves_2m = 0;
  uint64_t leaves_1g = 0;
};

struct UnmapResult {
  uint64_t bytes_unmapped = 0;
  uint64_t mappings_removed = 0;
  // Set when device-side IOTLBs must acknowledge the invalidation first
  // (paranoid, with caches linked): the unmap is complete, and its IOVAs
  // free, once this fires.
  std::shared_ptr<Completion> device_tlb_acks = nullptr;
};

// Why a translation faulted.
enum class FaultReason {
  kDeviceNotAttached,
  kOutsideAperture,
  kAboveDmaMask,
  kNotMapped,
  kPermission,
};
inline constexpr size_t kFaultReasonCount = 5;
absl::string_view FaultReasonName(FaultReason reason);

struct Fault {
  uint64_t sequence = 0;  // per fault log, from 1
  absl::Time time;
  std::string domain_id;  // empty when the device is not attached
  std::string device_id;
  uint64_t iova = 0;  // the first address that faulted
  Access access = Access::kRead;
  FaultReason reason = FaultReason::kNotMapped;
};

struct PhysSegment {
  uint64_t phys = 0;
  uint64_t size = 0;
};

// What the device's DMA sees for [iova, iova + size).
struct TranslateResult {
  // Set when the DMA faults. Optional rather than always present: an empty
  // Fault still costs its strings on every move of every translation.
  std::optional<Fault> fault;
  // Physical segments in IOVA order, adjacent ones merged (when not faulted).
  absl::InlinedVector<PhysSegment, 1> segments;
  MappingKind kind = MappingKind::kTranslated;
  bool iotlb_hit = false;  // every page came from the IOTLB
  // Served from an IOTLB entry whose mapping was already unmapped and not yet
  // invalidated (fast policy's vulnerability window).
  bool stale = false;
};

// What an IOTLB invalidation removed, as a device-side cache must repeat it.
enum class InvalidationScope {
  kRange,      // [iova, iova + size), any requester
  kRequester,  // every entry of one device
  kDomain,     // every entry of the domain
};

// An invalidation that took effect: published after the domain's IOTLB
// dropped the entries and before the IOVAs they covered can be reused.
struct InvalidationEvent {
  InvalidationScope scope = InvalidationScope::kRange;
  std::string domain_id = {};
  uint64_t iova = 0;           // kRange
  uint64_t size = 0;           // kRange
  uint32_t requester = 0;      // kRequester
  std::string device_id = {};  // kRequester
  // kRange, to device-side IOTLBs only: the range was unmapped under fast
  // and this is the notice; its invalidation comes with the flush.
  bool flush_pending = false;
};

// Counters of DMA-API misuse (the kernel's DMA-API debugging, as a service).
struct DmaDebugCounts {
  uint64_t wrong_size_unmaps = 0;  // unmap that would split a mapping
  uint64_t double_unmaps = 0;      // unmap of a range with nothing mapped
  uint64_t dma_after_unmap = 0;    // translate of an unmapped IOVA
  uint64_t leaked_mappings = 0;    // live at detach / destroy
  uint64_t leaked_bytes = 0;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_TYPES_H_
