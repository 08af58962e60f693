#include "tests/core/reference_model.h"

#include <algorithm>
#include <bit>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/iova/size_class.h"
#include "core/util/hex.h"

namespace iommu_broker::reference {

bool Overlaps(uint64_t a, uint64_t a_end, uint64_t b, uint64_t b_end) {
  return a < b_end && b < a_end;
}

std::optional<uint64_t> LastByte(uint64_t start, uint64_t size) {
  if (size == 0 || start > kAllOnes - (size - 1)) return std::nullopt;
  return start + (size - 1);
}

uint64_t MaskOf(int bits) { return bits >= 64 ? kAllOnes : (uint64_t{1} << bits) - 1; }

uint64_t FootprintBytes(uint64_t size) {
  return size_class::GranulesOf(size_class::IndexOf(size / kPage)) * kPage;
}

uint64_t FootprintAlignmentBytes(uint64_t size) {
  return size_class::AlignmentOf(size_class::IndexOf(size / kPage)) * kPage;
}

std::string PermsText(Perms perms) {
  if (!perms.read && !perms.write) return "none";
  return absl::StrCat(perms.read ? "r" : "", perms.write ? "w" : "");
}

const char* OriginName(Origin origin) {
  switch (origin) {
    case Origin::kAllocated:
      return "allocated";
    case Origin::kReserved:
      return "reserved";
    case Origin::kClaimed:
      return "claimed";
  }
  return "?";
}

// ---------------------------------------------------------------- ModelMapping

uint64_t ModelMapping::held_end() const {
  return origin == Origin::kAllocated ? iova + FootprintBytes(size) : end();
}

std::string ModelMapping::Text() const {
  return absl::StrCat(
      "[", Hex(iova), ", ", Hex(end()), ") -> ", Hex(phys), " ", PermsText(perms), " ",
      OriginName(origin), " owner ", owner,
      origin == Origin::kAllocated ? absl::StrCat(" held to ", Hex(held_end())) : "");
}

// ---------------------------------------------------------------- ModelDomain

ModelMapping* ModelDomain::LiveAt(uint64_t address) {
  auto it = live.upper_bound(address);
  if (it == live.begin()) return nullptr;
  --it;
  return address < it->second.end() ? &it->second : nullptr;
}

ModelMapping* ModelDomain::PendingAt(uint64_t address) {
  for (ModelMapping& mapping : pending) {
    if (address >= mapping.iova && address < mapping.end()) return &mapping;
  }
  return nullptr;
}

bool ModelDomain::LiveOverlaps(uint64_t start, uint64_t end) const {
  auto it = live.lower_bound(start);
  if (it != live.end() && it->first < end) return true;
  if (it == live.begin()) return false;
  --it;
  return it->second.end() > start;
}

bool ModelDomain::TableBusy(uint64_t start, uint64_t end) const {
  if (LiveOverlaps(start, end)) return true;
  for (const ModelMapping& mapping : pending) {
    if (mapping.origin == Origin::kClaimed && Overlaps(start, end, mapping.iova, mapping.end())) {
      return true;
    }
  }
  return false;
}

bool ModelDomain::AllocatorBusy(uint64_t start, uint64_t end, bool with_pending) const {
  for (const auto& [iova, mapping] : live) {
    if (mapping.origin != Origin::kClaimed && Overlaps(start, end, iova, mapping.held_end())) {
      return true;
    }
  }
  if (!with_pending) return false;
  for (const ModelMapping& mapping : pending) {
    if (mapping.origin != Origin::kClaimed &&
        Overlaps(start, end, mapping.iova, mapping.held_end())) {
      return true;
    }
  }
  return false;
}

const ReservedRegion* ModelDomain::ReservedOverlap(uint64_t start, uint64_t size) const {
  // By last bytes: a region may end exactly at 2^64.
  const uint64_t last = start + (size - 1);
  for (const ReservedRegion& region : config.reserved) {
    if (start <= region.start + (region.size - 1) && region.start <= last) return &region;
  }
  return nullptr;
}

uint64_t ModelDomain::AllocatedBytes() const {
  uint64_t bytes = 0;
  for (const auto& [iova, mapping] : live) {
    if (mapping.origin == Origin::kAllocated) bytes += FootprintBytes(mapping.size);
  }
  for (const ModelMapping& mapping : pending) {
    if (mapping.origin == Origin::kAllocated) bytes += FootprintBytes(mapping.size);
  }
  return bytes;
}

std::optional<uint64_t> ModelDomain::FreeBlock(uint64_t footprint, uint64_t limit) const {
  const uint64_t block = std::bit_ceil(footprint);
  std::vector<std::pair<uint64_t, uint64_t>> busy;
  for (const ReservedRegion& region : config.reserved) {
    busy.push_back({region.start, region.start + region.size});
  }
  if (config.identity_first) busy.push_back({0, kPhysMem});
  for (const auto& [iova, mapping] : live) busy.push_back({iova, mapping.held_end()});
  for (const ModelMapping& mapping : pending) busy.push_back({mapping.iova, mapping.held_end()});
  std::sort(busy.begin(), busy.end());
  const uint64_t space_end = std::min(limit, config.aperture_last) + 1;
  uint64_t cursor = config.aperture_first;
  auto fits = [&](uint64_t from, uint64_t to) -> std::optional<uint64_t> {
    const uint64_t start = (from + block - 1) / block * block;
    if (start >= from && start + block <= to) return start;
    return std::nullopt;
  };
  for (const auto& [start, end] : busy) {
    if (start >= space_end) break;
    if (start > cursor) {
      if (std::optional<uint64_t> found = fits(cursor, std::min(start, space_end))) return found;
    }
    cursor = std::max(cursor, end);
  }
  if (cursor < space_end) return fits(cursor, space_end);
  return std::nullopt;
}

// ---------------------------------------------------------------- ReferenceModel

std::string ReferenceModel::Text() const {
  std::string text;
  for (const auto& [id, domain] : domains) {
    absl::StrAppend(&text, "  domain ", id, " (", PolicyName(domain.policy), ", aperture [",
                    Hex(domain.config.aperture_first), ", ", Hex(domain.config.aperture_last),
                    "], identity_end ", Hex(domain.identity_end), ")\n");
    for (const auto& [iova, mapping] : domain.live) {
      absl::StrAppend(&text, "    live    ", mapping.Text(), "\n");
    }
    for (const ModelMapping& mapping : domain.pending) {
      absl::StrAppend(&text, "    pending ", mapping.Text(), " cached by {",
                      absl::StrJoin(mapping.cached, ","), "}\n");
    }
  }
  for (const auto& [id, device] : devices) {
    absl::StrAppend(&text, "  device ", id, " requester ", device.requester, " mask ",
                    device.config.dma_mask_bits, " bits, bypass ", device.config.allow_bypass,
                    ", domain '", device.domain, "'\n");
  }
  return text;
}

}  // namespace iommu_broker::reference
