// The state of the reference model of the emulated IOMMU (docs/IOMMU.md):
// what each domain has mapped, what waits on its flush queue, which devices'
// IOTLBs may still hold a mapping, and what it has counted; each device's
// settings, requester id and attachment. Plain values and the queries the
// oracle (differential_iommu.h) asks of them; how operations change them is
// the oracle's.
//
// The model runs on a machine of kPhysMem bytes with the engine's default
// bypass window base (kBypassBase); the oracle creates its Iommu so.
//
// Thread-safety: not thread-safe.
#ifndef IOMMU_BROKER_TESTS_CORE_REFERENCE_MODEL_H_
#define IOMMU_BROKER_TESTS_CORE_REFERENCE_MODEL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/iommu/iommu.h"

namespace iommu_broker::reference {

inline constexpr uint64_t kPage = kPage4K;
inline constexpr uint64_t kMiB = uint64_t{1} << 20;
inline constexpr uint64_t kGiB = uint64_t{1} << 30;
inline constexpr uint64_t kPhysMem = kGiB;  // IommuOptions::physical_memory_bytes
inline constexpr uint64_t kBypassBase = uint64_t{1} << 59;
inline constexpr uint64_t kMaxTranslate = 16 * kMiB;
inline constexpr uint64_t kIovaLimit = uint64_t{1} << kIovaBits;
inline constexpr uint64_t kAllOnes = ~uint64_t{0};

// Whether [a, a_end) and [b, b_end) share a byte.
bool Overlaps(uint64_t a, uint64_t a_end, uint64_t b, uint64_t b_end);
// The last byte of [start, start + size), or nullopt if the range is empty
// or wraps past 2^64.
std::optional<uint64_t> LastByte(uint64_t start, uint64_t size);
// The highest address a DMA mask of `bits` bits reaches.
uint64_t MaskOf(int bits);
// IOVA space the allocator takes for a request of `size` bytes, and the
// alignment of what it hands out.
uint64_t FootprintBytes(uint64_t size);
uint64_t FootprintAlignmentBytes(uint64_t size);
// "r", "w", "rw" or "none".
std::string PermsText(Perms perms);

// How a mapping got its IOVA: from the allocator, fixed by the caller
// (reserved in the allocator), or claimed on the page table (identity_first).
enum class Origin { kAllocated, kReserved, kClaimed };
const char* OriginName(Origin origin);

struct ModelMapping {
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t phys = 0;
  Perms perms;
  Origin origin = Origin::kAllocated;
  uint32_t owner = 0;  // requester of the device that mapped it
  // Requesters whose IOTLB may hold one of its leaves (they translated it,
  // and no invalidation of theirs has run since).
  std::set<uint32_t> cached;

  uint64_t end() const { return iova + size; }
  // The IOVA space it keeps from others: a size class's footprint when the
  // allocator placed it.
  uint64_t held_end() const;
  std::string Text() const;
};

struct ModelDomain {
  DomainConfig config;
  Policy policy = Policy::kFast;
  uint64_t identity_end = 0;  // identity_first: claims below this
  std::map<uint64_t, ModelMapping> live;
  std::vector<ModelMapping> pending;  // on the flush queue, oldest first
  DmaDebugCounts debug;
  uint64_t maps = 0;
  uint64_t unmaps = 0;
  uint64_t translations = 0;
  uint64_t faults = 0;
  uint64_t stale = 0;
  uint64_t bypass_maps = 0;
  uint64_t identity_maps = 0;
  uint64_t queued = 0;
  uint64_t full_flushes = 0;
  uint64_t explicit_flushes = 0;
  uint64_t timeout_flushes = 0;

  // The live (or pending) mapping holding `address`, if any.
  ModelMapping* LiveAt(uint64_t address);
  ModelMapping* PendingAt(uint64_t address);
  bool LiveOverlaps(uint64_t start, uint64_t end) const;
  // A page-table claim of [start, end) would find a slot taken.
  bool TableBusy(uint64_t start, uint64_t end) const;
  // The allocator holds part of [start, end) for a mapping (live, or
  // waiting on the flush queue when `with_pending`).
  bool AllocatorBusy(uint64_t start, uint64_t end, bool with_pending) const;
  const ReservedRegion* ReservedOverlap(uint64_t start, uint64_t size) const;
  uint64_t AllocatedBytes() const;
  // Whether the allocator's buddy arena must find room for `footprint`
  // bytes at or below `limit`: some free, naturally aligned block of
  // bit_ceil(footprint) lies inside the aperture, below the limit, clear of
  // reserved regions and of every IOVA in use. Returns its start.
  std::optional<uint64_t> FreeBlock(uint64_t footprint, uint64_t limit) const;
};

struct ModelDevice {
  DeviceConfig config;
  uint64_t mask = 0;
  uint32_t requester = 0;
  std::string domain;  // empty: not attached
  DmaDebugCounts debug;
};

// A range recently mapped or unmapped: drivers translate what they just
// mapped, and a stale IOTLB hit needs a translation before the unmap.
struct RecentRange {
  std::string device;  // that mapped or unmapped it
  uint64_t iova = 0;
  uint64_t size = 0;  // <= kMaxTranslate
};

// Everything the model knows, as the oracle keeps it.
struct ReferenceModel {
  std::map<std::string, ModelDomain> domains;
  std::map<std::string, ModelDevice> devices;
  size_t max_devices = 0;
  size_t max_domains = 0;
  uint32_t next_requester = 1;  // round-robin, as the Iommu hands them out
  uint64_t iommu_faults = 0;
  // Identity (pt) and bypass results, which no model mapping records.
  std::vector<std::pair<uint64_t, uint64_t>> unrecorded;
  std::vector<RecentRange> recent;

  std::string Text() const;
};

}  // namespace iommu_broker::reference

#endif  // IOMMU_BROKER_TESTS_CORE_REFERENCE_MODEL_H_
