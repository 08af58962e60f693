// Differential (model-based) test of Iommu: seeded random sequences of every
// operation (domains, devices, attachment, policy, flush, map, unmap,
// translate) run against the engine and against a small reference model
// written from docs/IOMMU.md, for each policy (paranoid, fast, pt, and fast
// with identity_first). Every result and error code must agree; so must the
// domain statistics, the DMA-API debug counters, the fault logs and the leak
// reports.
//
// What the model cannot predict it checks by property: an allocated IOVA is
// taken as returned and checked (aligned to its size class, inside the
// aperture and the DMA mask, clear of reserved regions and of every IOVA in
// use, including size-class rounding and ranges waiting on the flush queue);
// RESOURCE_EXHAUSTED from the allocator is accepted only when the model holds
// no free aligned block the buddy arena would have found; a fast-policy
// translation of a page unmapped but not yet flushed may fault or be served
// stale, but only with the old mapping's PA and only for a device that could
// have cached it.
//
// On a difference the test prints the scenario, the seed, the op index, the
// op log and the model. Environment:
//   IOMMU_DIFF_SEED=<seed>        run only that sequence (in each scenario)
//   IOMMU_DIFF_BASE_SEED=<n>      vary the seeds (default fixed)
//   IOMMU_DIFF_SEQUENCES=<n>      sequences per scenario
//   IOMMU_DIFF_OPS=<n>            random operations per sequence
//   IOMMU_DIFF_COVERAGE=1         print how often each interesting case came up
// Sanitizer builds run fewer sequences by default.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/iommu/iommu.h"
#include "core/iova/size_class.h"
#include "core/util/hex.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

constexpr uint64_t kPage = kPage4K;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kPhysMem = kGiB;  // IommuOptions::physical_memory_bytes
constexpr uint64_t kBypassBase = uint64_t{1} << 59;
constexpr uint64_t kMaxTranslate = 16 * kMiB;
constexpr uint64_t kIovaLimit = uint64_t{1} << kIovaBits;
constexpr uint64_t kAllOnes = ~uint64_t{0};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDefaultSequences = 1200;
#else
constexpr int kDefaultSequences = 3000;
#endif
constexpr int kDefaultOps = 80;

enum class Scenario { kParanoid, kFast, kPassthrough, kFastIdentity };

Policy PolicyOf(Scenario scenario) {
  switch (scenario) {
    case Scenario::kParanoid:
      return Policy::kParanoid;
    case Scenario::kPassthrough:
      return Policy::kPassthrough;
    case Scenario::kFast:
    case Scenario::kFastIdentity:
      break;
  }
  return Policy::kFast;
}

std::string ScenarioName(Scenario scenario) {
  switch (scenario) {
    case Scenario::kParanoid:
      return "Paranoid";
    case Scenario::kFast:
      return "Fast";
    case Scenario::kPassthrough:
      return "Passthrough";
    case Scenario::kFastIdentity:
      return "FastIdentityFirst";
  }
  return "Unknown";
}

std::optional<uint64_t> EnvNumber(const char* name) {
  const char* text = std::getenv(name);
  uint64_t value = 0;
  if (text == nullptr || !absl::SimpleAtoi(text, &value)) {
    if (text != nullptr && absl::StartsWith(text, "0x") && absl::SimpleHexAtoi(text + 2, &value)) {
      return value;
    }
    return std::nullopt;
  }
  return value;
}

// ---------------------------------------------------------------- Helpers

bool Overlaps(uint64_t a, uint64_t a_end, uint64_t b, uint64_t b_end) {
  return a < b_end && b < a_end;
}

std::optional<uint64_t> LastByte(uint64_t start, uint64_t size) {
  if (size == 0 || start > kAllOnes - (size - 1)) return std::nullopt;
  return start + (size - 1);
}

uint64_t MaskOf(int bits) { return bits >= 64 ? kAllOnes : (uint64_t{1} << bits) - 1; }

// IOVA space the allocator takes for a request of `size` bytes.
uint64_t FootprintBytes(uint64_t size) {
  return size_class::GranulesOf(size_class::IndexOf(size / kPage)) * kPage;
}
uint64_t FootprintAlignmentBytes(uint64_t size) {
  return size_class::AlignmentOf(size_class::IndexOf(size / kPage)) * kPage;
}

bool Allows(Perms perms, Access access) {
  return access == Access::kRead ? perms.read : perms.write;
}

std::string PermsText(Perms perms) {
  if (!perms.read && !perms.write) return "none";
  return absl::StrCat(perms.read ? "r" : "", perms.write ? "w" : "");
}

std::string BypassText(BypassMode mode) {
  switch (mode) {
    case BypassMode::kNone:
      return "none";
    case BypassMode::kPrefer:
      return "prefer";
    case BypassMode::kRequire:
      return "require";
  }
  return "?";
}

std::string StatusText(const absl::Status& status) {
  if (status.ok()) return "OK";
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
}

std::string DebugText(const DmaDebugCounts& counts) {
  return absl::StrCat("{wrong_size=", counts.wrong_size_unmaps, " double=", counts.double_unmaps,
                      " after_unmap=", counts.dma_after_unmap, " leaked=", counts.leaked_mappings,
                      "/", Hex(counts.leaked_bytes), "}");
}

std::string SegmentsText(absl::Span<const PhysSegment> segments) {
  return absl::StrJoin(segments, ",", [](std::string* out, const PhysSegment& segment) {
    absl::StrAppend(out, Hex(segment.phys), "+", Hex(segment.size));
  });
}

std::string TranslateText(const TranslateResult& result) {
  if (result.faulted) {
    return absl::StrCat("fault ", FaultReasonName(result.fault.reason), " at ",
                        Hex(result.fault.iova));
  }
  return absl::StrCat("[", SegmentsText(result.segments), "] ", MappingKindName(result.kind),
                      result.stale ? " stale" : "");
}

bool SameSegments(absl::Span<const PhysSegment> a, absl::Span<const PhysSegment> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](const PhysSegment& x, const PhysSegment& y) {
                      return x.phys == y.phys && x.size == y.size;
                    });
}

PageTable::LeafCounts PredictLeaves(uint64_t iova, uint64_t phys, uint64_t size,
                                    PageSizeSet sizes) {
  PageTable::LeafCounts counts;
  for (uint64_t cur = iova; cur < iova + size;) {
    const uint64_t at_phys = phys + (cur - iova);
    if ((sizes & kPage2M) && cur % kPage2M == 0 && at_phys % kPage2M == 0 &&
        iova + size - cur >= kPage2M) {
      ++counts.leaves_2m;
      cur += kPage2M;
    } else {
      ++counts.leaves_4k;
      cur += kPage;
    }
  }
  return counts;
}

// ---------------------------------------------------------------- Model

enum class Origin { kAllocated, kReserved, kClaimed };

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
  uint64_t held_end() const {
    return origin == Origin::kAllocated ? iova + FootprintBytes(size) : end();
  }
  std::string Text() const {
    return absl::StrCat(
        "[", Hex(iova), ", ", Hex(end()), ") -> ", Hex(phys), " ", PermsText(perms), " ",
        OriginName(origin), " owner ", owner,
        origin == Origin::kAllocated ? absl::StrCat(" held to ", Hex(held_end())) : "");
  }
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

  ModelMapping* LiveAt(uint64_t address) {
    auto it = live.upper_bound(address);
    if (it == live.begin()) return nullptr;
    --it;
    return address < it->second.end() ? &it->second : nullptr;
  }
  ModelMapping* PendingAt(uint64_t address) {
    for (ModelMapping& mapping : pending) {
      if (address >= mapping.iova && address < mapping.end()) return &mapping;
    }
    return nullptr;
  }
  bool LiveOverlaps(uint64_t start, uint64_t end) const {
    auto it = live.lower_bound(start);
    if (it != live.end() && it->first < end) return true;
    if (it == live.begin()) return false;
    --it;
    return it->second.end() > start;
  }
  // A page-table claim of [start, end) would find a slot taken.
  bool TableBusy(uint64_t start, uint64_t end) const {
    if (LiveOverlaps(start, end)) return true;
    for (const ModelMapping& mapping : pending) {
      if (mapping.origin == Origin::kClaimed && Overlaps(start, end, mapping.iova, mapping.end())) {
        return true;
      }
    }
    return false;
  }
  // The allocator holds part of [start, end) for a mapping (live, or
  // waiting on the flush queue when `with_pending`).
  bool AllocatorBusy(uint64_t start, uint64_t end, bool with_pending) const {
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
  const ReservedRegion* ReservedOverlap(uint64_t start, uint64_t size) const {
    for (const ReservedRegion& region : config.reserved) {
      if (Overlaps(start, start + size, region.start, region.start + region.size)) return &region;
    }
    return nullptr;
  }
  uint64_t AllocatedBytes() const {
    uint64_t bytes = 0;
    for (const auto& [iova, mapping] : live) {
      if (mapping.origin == Origin::kAllocated) bytes += FootprintBytes(mapping.size);
    }
    for (const ModelMapping& mapping : pending) {
      if (mapping.origin == Origin::kAllocated) bytes += FootprintBytes(mapping.size);
    }
    return bytes;
  }
  // Whether the allocator's buddy arena must find room for `footprint`
  // bytes at or below `limit`: some free, naturally aligned block of
  // bit_ceil(footprint) lies inside the aperture, below the limit, clear of
  // reserved regions and of every IOVA in use.
  std::optional<uint64_t> FreeBlock(uint64_t footprint, uint64_t limit, uint64_t phys_mem) const {
    const uint64_t block = std::bit_ceil(footprint);
    std::vector<std::pair<uint64_t, uint64_t>> busy;
    for (const ReservedRegion& region : config.reserved) {
      busy.push_back({region.start, region.start + region.size});
    }
    if (config.identity_first) busy.push_back({0, phys_mem});
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
};

struct ModelDevice {
  DeviceConfig config;
  uint64_t mask = 0;
  uint32_t requester = 0;
  std::string domain;  // empty: not attached
  DmaDebugCounts debug;
};

// ---------------------------------------------------------------- Sequence

#define DIFF_EXPECT(condition, message)                                                    \
  do {                                                                                     \
    if (!(condition)) {                                                                    \
      Fail(absl::StrCat("line ", __LINE__, ": expected ", #condition, "\n    ", message)); \
      return;                                                                              \
    }                                                                                      \
  } while (false)

// How often each interesting case came up, to show the sequences reach them.
using Coverage = std::map<std::string, uint64_t>;

class Sequence {
 public:
  Sequence(Scenario scenario, uint64_t seed, Coverage& coverage)
      : scenario_(scenario), seed_(seed), rng_(seed), coverage_(coverage) {}

  // Runs setup, `ops` random operations and teardown; false at the first
  // difference (Report() says what and how to reproduce it).
  bool Run(int ops);
  std::string Report() const;

 private:
  struct Recent {
    std::string device;  // that mapped or unmapped it
    uint64_t iova = 0;
    uint64_t size = 0;  // <= kMaxTranslate
  };

  bool failed() const { return !failure_.empty(); }
  void Fail(std::string what) {
    if (!failure_.empty()) return;
    failure_ = std::move(what);
    failed_step_ = step_;
  }
  void Cover(const char* what) { ++coverage_[what]; }
  void Log(std::string line) { log_.push_back(absl::StrCat("#", step_, " ", line)); }
  void Result(absl::string_view text) { absl::StrAppend(&log_.back(), "  -> ", text); }

  // ---- Random choices
  uint64_t Uniform(uint64_t low, uint64_t high) {  // inclusive
    return std::uniform_int_distribution<uint64_t>(low, high)(rng_);
  }
  bool Chance(int percent) { return Uniform(0, 99) < static_cast<uint64_t>(percent); }
  uint64_t Pages(uint64_t low, uint64_t high) { return Uniform(low, high) * kPage; }
  template <typename T>
  const T& PickFrom(const std::vector<T>& items) {
    return items[Uniform(0, items.size() - 1)];
  }
  std::vector<const ModelMapping*> Mappings(const ModelDomain* domain, bool live, bool pending);
  std::string PickDevice();
  std::string PickDomain();
  DomainConfig Template(const std::string& id);
  DeviceConfig RandomDeviceConfig(const std::string& id);
  uint64_t RandomSize(const ModelDomain* domain);
  uint64_t RandomPhys(uint64_t size, const ModelDomain* domain);
  uint64_t RandomFixedIova(const ModelDomain* domain, const ModelDevice* device, uint64_t size,
                           uint64_t phys);
  MapRequest RandomMap(const ModelDomain* domain, const ModelDevice* device);
  std::pair<uint64_t, uint64_t> RandomUnmap(const ModelDomain* domain);
  std::pair<uint64_t, uint64_t> RandomTranslate(const ModelDomain* domain,
                                                const ModelDevice* device);
  void RandomOp();

  // ---- Operations, each run against both and compared
  void CreateDomain(const DomainConfig& config);
  void DestroyDomain(const std::string& id, bool force);
  void AddDevice(const DeviceConfig& config);
  void RemoveDevice(const std::string& id);
  void Attach(const std::string& device_id, const std::string& domain_id);
  void Detach(const std::string& device_id);
  void SetPolicy(const std::string& domain_id, Policy policy);
  void Flush(const std::string& domain_id);
  void SetAllowBypass(const std::string& device_id, bool allow);
  void Maintain(bool everything_expired);
  void Map(const std::string& device_id, const MapRequest& request);
  void Unmap(const std::string& device_id, uint64_t iova, uint64_t size);
  void Translate(const std::string& device_id, uint64_t iova, uint64_t size, Access access);

  // ---- Pieces of the model
  void ExpectError(const absl::Status& got, absl::StatusCode code, absl::string_view needle);
  void CheckMapped(const absl::StatusOr<MapResult>& got, ModelDomain& domain, ModelDevice& device,
                   const MapRequest& request, const std::string& refusal_needle);
  void ExpectFault(const TranslateResult& got, ModelDomain* domain, ModelDevice& device,
                   uint64_t iova, Access access, FaultReason reason);
  // The newest fault in `domain_id`'s log (the IOMMU's when empty) is
  // `want`, numbered `sequence` (broker-wide).
  void CheckLastFault(const std::string& domain_id, uint64_t sequence, const Fault& want);
  // A device leaves `domain`: its leaks are counted; its IOTLB entries are
  // dropped when `invalidate`.
  LiveMappings DetachModel(ModelDevice& device, bool invalidate);
  void InvalidateRequester(ModelDomain& domain, uint32_t requester);
  void Enqueue(ModelDomain& domain, ModelMapping mapping);
  void FlushModel(ModelDomain& domain);
  void CheckState();
  std::string ModelText() const;

  const Scenario scenario_;
  const uint64_t seed_;
  std::mt19937_64 rng_;
  Coverage& coverage_;
  std::unique_ptr<Iommu> iommu_;
  std::map<std::string, ModelDomain> domains_;
  std::map<std::string, ModelDevice> devices_;
  size_t max_devices_ = 0;
  size_t max_domains_ = 0;
  uint32_t next_requester_ = 1;  // round-robin, as the Iommu hands them out
  uint64_t iommu_faults_ = 0;
  // Identity (pt) and bypass results, which no model mapping records.
  std::vector<std::pair<uint64_t, uint64_t>> unrecorded_;
  // Recently mapped or unmapped ranges: drivers translate what they just
  // mapped, and a stale IOTLB hit needs a translation before the unmap.
  std::vector<Recent> recent_;
  int step_ = 0;
  int failed_step_ = 0;
  std::vector<std::string> log_;
  std::string failure_;
};

bool Sequence::Run(int ops) {
  IommuOptions options;
  options.physical_memory_bytes = kPhysMem;
  options.maintenance_interval = absl::ZeroDuration();  // nothing behind our back
  options.units = 2;                                    // "c" sits on the second
  // Few requester ids, so removed devices' ids come back; few domains.
  options.max_devices = Chance(50) ? 3 : options.max_devices;
  options.max_domains = Chance(30) ? 2 : options.max_domains;
  max_devices_ = options.max_devices;
  max_domains_ = options.max_domains;
  absl::StatusOr<std::unique_ptr<Iommu>> created = Iommu::Create(options);
  if (!created.ok()) {
    Fail(StatusText(created.status()));
    return false;
  }
  iommu_ = *std::move(created);

  absl::StatusOr<std::shared_ptr<FaultSubscription>> subscription =
      iommu_->SubscribeFaults("", 4096);
  if (!subscription.ok()) {
    Fail(StatusText(subscription.status()));
    return false;
  }
  auto then_check = [&] {
    if (!failed()) CheckState();
    ++step_;
  };
  CreateDomain(Template("a"));
  then_check();
  CreateDomain(Template("b"));
  then_check();
  if (Chance(40)) {
    CreateDomain(Template("c"));
    then_check();
  }
  for (int i = 0; i < 3 && !failed(); ++i) {
    const std::string id = absl::StrCat("dev", i);
    AddDevice(RandomDeviceConfig(id));
    then_check();
    if (!failed() && Chance(90)) {
      Attach(id, PickDomain());
      then_check();
    }
  }
  for (int op = 0; op < ops && !failed(); ++op) {
    RandomOp();
    then_check();
  }
  // Teardown: every leak reported, every counter final.
  std::vector<std::string> device_ids;
  for (const auto& [id, device] : devices_) device_ids.push_back(id);
  for (const std::string& id : device_ids) {
    if (!failed() && !devices_.at(id).domain.empty() && Chance(50)) {
      Detach(id);
      then_check();
    }
  }
  std::vector<std::string> domain_ids;
  for (const auto& [id, domain] : domains_) domain_ids.push_back(id);
  for (const std::string& id : domain_ids) {
    if (failed()) break;
    DestroyDomain(id, /*force=*/true);
    then_check();
  }
  for (const std::string& id : device_ids) {
    if (failed()) break;
    RemoveDevice(id);
    then_check();
  }
  if (!failed()) {
    uint64_t delivered = 0;
    while (std::optional<Fault> fault = (*subscription)->Next(absl::ZeroDuration())) {
      if (fault->sequence != ++delivered) {
        Fail(absl::StrCat("subscription delivered fault #", fault->sequence, " as #", delivered));
        break;
      }
    }
    if (!failed() && (delivered != iommu_faults_ || (*subscription)->dropped() != 0)) {
      Fail(absl::StrCat("subscription delivered ", delivered, " faults (",
                        (*subscription)->dropped(), " dropped), want ", iommu_faults_));
    }
  }
  iommu_.reset();
  return !failed();
}

std::string Sequence::Report() const {
  std::string report = absl::StrCat(
      "scenario ", ScenarioName(scenario_), ", seed ", seed_, ", at op #", failed_step_, ":\n  ",
      failure_, "\nreproduce: IOMMU_DIFF_SEED=", seed_,
      " iommu_differential_test --gtest_filter='*", ScenarioName(scenario_), "*'\nop log:\n");
  for (const std::string& line : log_) absl::StrAppend(&report, "  ", line, "\n");
  absl::StrAppend(&report, "model after the failing op:\n", ModelText());
  return report;
}

std::string Sequence::ModelText() const {
  std::string text;
  for (const auto& [id, domain] : domains_) {
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
  for (const auto& [id, device] : devices_) {
    absl::StrAppend(&text, "  device ", id, " requester ", device.requester, " mask ",
                    device.config.dma_mask_bits, " bits, bypass ", device.config.allow_bypass,
                    ", domain '", device.domain, "'\n");
  }
  return text;
}

// ---------------------------------------------------------------- Choices

std::vector<const ModelMapping*> Sequence::Mappings(const ModelDomain* domain, bool live,
                                                    bool pending) {
  std::vector<const ModelMapping*> found;
  if (domain == nullptr) return found;
  if (live) {
    for (const auto& [iova, mapping] : domain->live) found.push_back(&mapping);
  }
  if (pending) {
    for (const ModelMapping& mapping : domain->pending) found.push_back(&mapping);
  }
  return found;
}

std::string Sequence::PickDevice() {
  if (!devices_.empty() && Chance(95)) {
    auto it = devices_.begin();
    std::advance(it, Uniform(0, devices_.size() - 1));
    return it->first;
  }
  return Chance(50) ? "ghost" : absl::StrCat("dev", Uniform(0, 3));
}

std::string Sequence::PickDomain() {
  if (!domains_.empty() && Chance(92)) {
    auto it = domains_.begin();
    std::advance(it, Uniform(0, domains_.size() - 1));
    return it->first;
  }
  static constexpr const char* kIds[] = {"a", "b", "c", "nowhere"};
  return kIds[Uniform(0, 3)];
}

// Small apertures so fixed and automatic maps collide; reserved regions
// inside them; page sizes with and without 2 MiB; a small flush queue, IOTLB
// and mapping limit on "b"; "c" lies above 4 GiB, out of a 32-bit device's
// reach.
DomainConfig Sequence::Template(const std::string& id) {
  DomainConfig config;
  config.id = id;
  config.policy = PolicyOf(scenario_);
  config.identity_first = scenario_ == Scenario::kFastIdentity;
  if (id == "a") {
    // With identity_first the allocator serves only [1 GiB, 2 GiB).
    config.aperture_last = (config.identity_first ? 2 * kGiB : kGiB) - 1;
    config.page_sizes = kPage4K | kPage2M;
    config.reserved = {{0xfee00000, kMiB, "msi"},
                       {2 * kMiB, 2 * kMiB, "rmrr"},
                       {kGiB - 16 * kMiB, 64 * 1024, "doorbell"},
                       {kGiB + 2 * kMiB, kMiB, "high"}};
  } else if (id == "b") {
    config.aperture_last = 8 * kMiB - 1;
    config.page_sizes = kPage4K;
    config.reserved = {{4 * kMiB, 64 * 1024, "msi"}};
    config.flush_queue.capacity = 4;
    config.max_mappings = 6;
    config.iotlb = {.sets = 4, .ways = 2};
  } else {
    config.aperture_first = 4 * kGiB;
    config.aperture_last = 4 * kGiB + 16 * kMiB - 1;
    config.page_sizes = kPage4K | kPage2M;
    config.reserved = {{4 * kGiB + 8 * kMiB, 2 * kMiB, "rmrr"}};
    config.flush_queue.capacity = 32;
    config.iotlb = {.sets = 16, .ways = 4};
    config.iommu_unit = 1;
  }
  return config;
}

DeviceConfig Sequence::RandomDeviceConfig(const std::string& id) {
  static constexpr int kBits[] = {28, 32, 32, 36, 64, 64, 64};
  DeviceConfig config;
  config.id = id;
  config.dma_mask_bits = Chance(4) ? (Chance(50) ? 11 : 65) : kBits[Uniform(0, 6)];
  config.allow_bypass = Chance(50);
  return config;
}

uint64_t Sequence::RandomSize(const ModelDomain* domain) {
  const uint64_t roll = Uniform(0, 99);
  if (roll < 30) return kPage;
  if (roll < 52) return Pages(2, 8);
  if (roll < 64) return Pages(9, 64);
  if (roll < 72) return kPage2M;
  if (roll < 76) return kPage2M + Pages(1, 512);
  if (roll < 80) return Pages(65, 1024);
  if (roll < 83) return Uniform(2, 16) * 4 * kMiB;  // beyond "b", sometimes "c"
  if (roll < 84) return 512 * kMiB;
  if (roll < 92) {
    std::vector<const ModelMapping*> mappings = Mappings(domain, true, true);
    if (!mappings.empty()) return PickFrom(mappings)->size;
    return Pages(1, 4);
  }
  if (roll < 95) return 0;
  if (roll < 98) return kPage / 2;
  return kPage + 0x10;
}

uint64_t Sequence::RandomPhys(uint64_t size, const ModelDomain* domain) {
  const uint64_t room = size < kPhysMem ? kPhysMem - size : 0;
  const uint64_t roll = Uniform(0, 99);
  if (roll < 50) return Uniform(0, room / kPage) * kPage;
  if (roll < 64) return Uniform(0, room / kPage2M) * kPage2M;
  if (roll < 80) {
    // Near an existing mapping's PA or IOVA: identity claims collide.
    std::vector<const ModelMapping*> mappings = Mappings(domain, true, true);
    if (!mappings.empty()) {
      const ModelMapping& near = *PickFrom(mappings);
      const uint64_t base = Chance(50) ? near.iova : near.phys;
      const uint64_t at = base + Uniform(0, 8) * kPage;
      const uint64_t back = Uniform(0, 4) * kPage;
      const uint64_t phys = at >= back ? at - back : at;
      if (phys <= room) return phys;
    }
    return Uniform(0, std::min(room, 64 * kMiB) / kPage) * kPage;
  }
  if (roll < 86) return Pages(0, 16);
  if (roll < 93) {
    static constexpr uint64_t kOutside[] = {kPhysMem - kPage, kPhysMem, 2 * kPhysMem,
                                            kAllOnes - kPage + 1};
    return kOutside[Uniform(0, 3)];
  }
  return Uniform(0, room / kPage) * kPage + 0x200;
}

uint64_t Sequence::RandomFixedIova(const ModelDomain* domain, const ModelDevice* device,
                                   uint64_t size, uint64_t phys) {
  if (domain == nullptr) return Pages(1, 0x1000);
  const DomainConfig& config = domain->config;
  const uint64_t roll = Uniform(0, 99);
  if (roll < 30) {
    std::vector<const ModelMapping*> mappings = Mappings(domain, true, true);
    if (!mappings.empty()) {
      const ModelMapping& near = *PickFrom(mappings);
      const uint64_t base = Chance(70) ? near.iova : near.held_end();
      const uint64_t back = std::min<uint64_t>(size / kPage, 16);
      const uint64_t at = base + Uniform(0, std::min<uint64_t>(near.size / kPage, 16)) * kPage;
      const uint64_t offset = Uniform(0, back) * kPage;
      return at >= offset ? at - offset : at;
    }
  }
  if (roll < 38 && !domain->pending.empty()) return PickFrom(domain->pending).iova;
  const uint64_t span = config.aperture_last + 1 - config.aperture_first;
  if (roll < 55) {
    if (Chance(40)) {
      return config.aperture_first + (Uniform(0, span / kPage2M) * kPage2M) % span;
    }
    return config.aperture_first + Uniform(0, span / kPage - 1) * kPage;
  }
  if (roll < 62) return phys & ~(kPage - 1);
  if (roll < 68) {
    const uint64_t choices[] = {config.aperture_first - kPage, config.aperture_last + 1 - kPage,
                                config.aperture_last + 1, 0};
    return choices[Uniform(0, 3)];
  }
  if (roll < 74 && !config.reserved.empty()) {
    const ReservedRegion& region = PickFrom(config.reserved);
    return region.start + Uniform(0, region.size / kPage - 1) * kPage - (Chance(30) ? kPage : 0);
  }
  if (roll < 78) {
    const uint64_t masks[] = {uint64_t{1} << 32, uint64_t{1} << 28};
    return masks[Uniform(0, 1)] - Pages(1, 2);
  }
  if (roll < 82 && domain->identity_end > kPage) return domain->identity_end - Pages(1, 2);
  if (roll < 86) {
    const uint64_t huge[] = {kAllOnes - kPage + 1, kIovaLimit, kBypassBase};
    return huge[Uniform(0, 2)];
  }
  if (roll < 90) return config.aperture_first + Pages(0, 64) + 0x800;
  // Where automatic maps land: the top of the aperture or of the DMA mask.
  const uint64_t mask = device != nullptr ? device->mask : kAllOnes;
  const uint64_t top = std::min(config.aperture_last, mask) + 1;
  const uint64_t back = Pages(1, 64);
  return top > back ? top - back : config.aperture_first;
}

MapRequest Sequence::RandomMap(const ModelDomain* domain, const ModelDevice* device) {
  MapRequest request;
  request.size = RandomSize(domain);
  request.phys = RandomPhys(request.size, domain);
  const uint64_t perms = Uniform(0, 99);
  request.perms = perms < 55   ? Perms{true, true}
                  : perms < 75 ? Perms{true, false}
                  : perms < 96 ? Perms{false, true}
                               : Perms{};
  request.has_iova = Chance(40);
  if (request.has_iova) request.iova = RandomFixedIova(domain, device, request.size, request.phys);
  const uint64_t bypass = Uniform(0, 99);
  request.bypass = bypass < 70   ? BypassMode::kNone
                   : bypass < 85 ? BypassMode::kPrefer
                                 : BypassMode::kRequire;
  if (request.has_iova && request.bypass != BypassMode::kNone && Chance(70)) {
    request.bypass = BypassMode::kNone;
  }
  return request;
}

std::pair<uint64_t, uint64_t> Sequence::RandomUnmap(const ModelDomain* domain) {
  std::vector<const ModelMapping*> live = Mappings(domain, true, false);
  std::vector<const ModelMapping*> pending = Mappings(domain, false, true);
  const uint64_t roll = Uniform(0, 99);
  if (roll < 30 && !live.empty()) {
    const ModelMapping& mapping = *PickFrom(live);
    return {mapping.iova, mapping.size};
  }
  if (roll < 40 && !live.empty()) {  // several mappings, maybe with gaps
    const ModelMapping* first = PickFrom(live);
    const ModelMapping* second = PickFrom(live);
    if (second->iova < first->iova) std::swap(first, second);
    return {first->iova - (Chance(30) ? kPage : 0), second->end() - first->iova + Pages(0, 2)};
  }
  if (roll < 52 && !live.empty()) {  // would split
    const ModelMapping& mapping = *PickFrom(live);
    switch (Uniform(0, 3)) {
      case 0:
        return {mapping.iova + kPage, mapping.size};
      case 1:
        return {mapping.iova, mapping.size > kPage ? mapping.size - kPage : 2 * kPage};
      case 2:
        return {mapping.iova - kPage, mapping.size};
      default:
        return {mapping.iova + Pages(0, mapping.size / kPage - 1), kPage};
    }
  }
  if (roll < 60 && !pending.empty()) {
    const ModelMapping& mapping = *PickFrom(pending);
    return {mapping.iova, mapping.size};
  }
  if (roll < 70 && domain != nullptr) {
    const DomainConfig& config = domain->config;
    const uint64_t span = config.aperture_last + 1 - config.aperture_first;
    return {config.aperture_first + Uniform(0, span / kPage - 1) * kPage,
            Chance(80) ? Pages(1, 64) : Pages(1, 2048)};
  }
  if (roll < 76 && !unrecorded_.empty()) return PickFrom(unrecorded_);
  if (roll < 80) return {kBypassBase + Pages(0, 1024), Pages(1, 4)};
  if (roll < 86) {
    // Beyond the page table's 48 bits (and the bypass window's end): nothing
    // can be mapped there.
    const uint64_t at = live.empty() ? Pages(0, 64) : PickFrom(live)->iova + kPage;
    return {(Chance(50) ? kIovaLimit : kBypassBase + kPhysMem) + at, kPage};
  }
  if (roll < 88) return {kAllOnes - kPage + 1, 2 * kPage};  // wraps
  if (roll < 90) {                                          // ends exactly at 2^64
    const uint64_t from = live.empty() ? Pages(1, 64) : PickFrom(live)->iova;
    return {from, 0 - from};
  }
  if (roll < 95) return {Pages(1, 64), 0};
  return {Pages(1, 64) + 0x800, kPage};
}

std::pair<uint64_t, uint64_t> Sequence::RandomTranslate(const ModelDomain* domain,
                                                        const ModelDevice* device) {
  const uint64_t roll = Uniform(0, 99);
  std::vector<const ModelMapping*> mappings = Mappings(domain, roll < 50, roll >= 50);
  if (roll < 62 && !mappings.empty()) {
    const ModelMapping& mapping = *PickFrom(mappings);
    const uint64_t offset =
        Chance(50) ? Uniform(0, mapping.size - 1) : Pages(0, mapping.size / kPage - 1);
    const uint64_t rest = mapping.size - offset;
    return {mapping.iova + offset,
            Uniform(1, std::min(rest + (Chance(20) ? 2 * kPage : 0), kMaxTranslate))};
  }
  if (roll < 66 && domain != nullptr) {
    const DomainConfig& config = domain->config;
    const uint64_t span = config.aperture_last + 1 - config.aperture_first;
    return {config.aperture_first + Uniform(0, span - 1), Uniform(1, 64 * 1024)};
  }
  if (roll < 69 && device != nullptr && device->mask != kAllOnes) {
    return {device->mask - Uniform(0, 2 * kPage), Uniform(1, 4 * kPage)};
  }
  if (roll < 72 && domain != nullptr) {
    const DomainConfig& config = domain->config;
    return Chance(50)
               ? std::pair<uint64_t, uint64_t>{config.aperture_first - kPage, Uniform(1, 3 * kPage)}
               : std::pair<uint64_t, uint64_t>{config.aperture_last + 1 - Uniform(0, kPage),
                                               Uniform(1, 3 * kPage)};
  }
  if (roll < 77) {
    if (Chance(70)) return {kBypassBase + Uniform(0, kPhysMem - 1), Uniform(1, 2 * kPage)};
    return {kBypassBase + kPhysMem - Uniform(1, kPage), Uniform(1, 2 * kPage)};
  }
  if (roll < 82) return {Uniform(0, kPhysMem + 4 * kPage), Uniform(1, 16 * kPage)};
  if (roll < 85 && !unrecorded_.empty()) {
    const auto& [iova, size] = PickFrom(unrecorded_);
    return {iova, std::max<uint64_t>(1, std::min(size, kMaxTranslate))};
  }
  if (roll < 88 && domain != nullptr) {
    const DomainConfig& config = domain->config;
    const uint64_t size = Uniform(1, kMaxTranslate);
    const uint64_t top = config.aperture_last + 1;
    return {top > size ? top - size : config.aperture_first, size};
  }
  if (roll < 93) {
    const std::pair<uint64_t, uint64_t> bad[] = {
        {Pages(1, 8), 0}, {Pages(1, 8), kMaxTranslate + 1}, {kAllOnes - 10, 0x20}};
    return bad[Uniform(0, 2)];
  }
  return {kIovaLimit - Uniform(1, 2 * kPage), Uniform(1, 4 * kPage)};
}

void Sequence::RandomOp() {
  const uint64_t roll = Uniform(0, 99);
  if (roll < 30) {
    const std::string device_id = PickDevice();
    auto device = devices_.find(device_id);
    const ModelDevice* model_device = device == devices_.end() ? nullptr : &device->second;
    const ModelDomain* domain = nullptr;
    if (model_device != nullptr && !model_device->domain.empty()) {
      domain = &domains_.at(model_device->domain);
    }
    Map(device_id, RandomMap(domain, model_device));
  } else if (roll < 52) {
    const std::string device_id = PickDevice();
    auto device = devices_.find(device_id);
    const ModelDomain* domain = nullptr;
    if (device != devices_.end() && !device->second.domain.empty()) {
      domain = &domains_.at(device->second.domain);
    }
    const auto [iova, size] = RandomUnmap(domain);
    Unmap(device_id, iova, size);
  } else if (roll < 82) {
    if (!recent_.empty() && Chance(40)) {
      // What a device just mapped (or unmapped), by that device or another.
      const Recent& recent =
          recent_[recent_.size() - 1 - Uniform(0, std::min<uint64_t>(recent_.size() - 1, 3))];
      const uint64_t offset = Chance(50) ? 0 : Uniform(0, recent.size - 1);
      Translate(Chance(75) ? recent.device : PickDevice(), recent.iova + offset,
                Uniform(1, recent.size - offset), Chance(50) ? Access::kRead : Access::kWrite);
      return;
    }
    const std::string device_id = PickDevice();
    auto device = devices_.find(device_id);
    const ModelDevice* model_device = device == devices_.end() ? nullptr : &device->second;
    const ModelDomain* domain = nullptr;
    if (model_device != nullptr && !model_device->domain.empty()) {
      domain = &domains_.at(model_device->domain);
    }
    const auto [iova, size] = RandomTranslate(domain, model_device);
    Translate(device_id, iova, size, Chance(50) ? Access::kRead : Access::kWrite);
  } else if (roll < 86) {
    Attach(PickDevice(), PickDomain());
  } else if (roll < 88) {
    Detach(PickDevice());
  } else if (roll < 90) {
    AddDevice(RandomDeviceConfig(absl::StrCat("dev", Uniform(0, 3))));
  } else if (roll < 91) {
    RemoveDevice(PickDevice());
  } else if (roll < 93) {
    static constexpr const char* kIds[] = {"a", "b", "c"};
    DomainConfig config = Template(kIds[Uniform(0, 2)]);
    if (Chance(10)) config.aperture_first = 0x800;                          // invalid
    if (Chance(5)) config.iommu_unit = 2;                                   // no such unit
    if (Chance(5)) config.identity_first = config.policy != Policy::kFast;  // invalid
    CreateDomain(config);
  } else if (roll < 94) {
    DestroyDomain(PickDomain(), Chance(50));
  } else if (roll < 96) {
    const Policy policies[] = {Policy::kParanoid, Policy::kFast, Policy::kPassthrough};
    SetPolicy(PickDomain(), Chance(50) ? PolicyOf(scenario_) : policies[Uniform(0, 2)]);
  } else if (roll < 97) {
    Flush(PickDomain());
  } else if (roll < 98) {
    Maintain(Chance(70));
  } else {
    SetAllowBypass(PickDevice(), Chance(50));
  }
}

// ---------------------------------------------------------------- Model pieces

void Sequence::ExpectError(const absl::Status& got, absl::StatusCode code,
                           absl::string_view needle) {
  DIFF_EXPECT(got.code() == code && absl::StrContains(got.message(), needle),
              absl::StrCat("want ", absl::StatusCodeToString(code), " naming \"", needle,
                           "\", got ", StatusText(got)));
}

void Sequence::InvalidateRequester(ModelDomain& domain, uint32_t requester) {
  for (auto& [iova, mapping] : domain.live) mapping.cached.erase(requester);
  for (ModelMapping& mapping : domain.pending) mapping.cached.erase(requester);
}

LiveMappings Sequence::DetachModel(ModelDevice& device, bool invalidate) {
  LiveMappings leaked;
  ModelDomain& domain = domains_.at(device.domain);
  for (const auto& [iova, mapping] : domain.live) {
    if (mapping.owner == device.requester) {
      ++leaked.mappings;
      leaked.bytes += mapping.size;
    }
  }
  device.debug.leaked_mappings += leaked.mappings;
  device.debug.leaked_bytes += leaked.bytes;
  if (invalidate) InvalidateRequester(domain, device.requester);
  device.domain.clear();
  return leaked;
}

void Sequence::Enqueue(ModelDomain& domain, ModelMapping mapping) {
  domain.pending.push_back(std::move(mapping));
  ++domain.queued;
  if (domain.pending.size() >= domain.config.flush_queue.capacity) {
    Cover("flush queue: full");
    ++domain.full_flushes;
    domain.pending.clear();
  }
}

void Sequence::FlushModel(ModelDomain& domain) {
  if (domain.pending.empty()) return;
  Cover("flush queue: flushed");
  ++domain.explicit_flushes;
  domain.pending.clear();
}

void Sequence::CheckLastFault(const std::string& domain_id, uint64_t sequence, const Fault& want) {
  DIFF_EXPECT(want.sequence == sequence,
              absl::StrCat("translate reported fault #", want.sequence, "; want #", sequence));
  absl::StatusOr<std::vector<Fault>> recent = iommu_->RecentFaults(domain_id, sequence - 1);
  DIFF_EXPECT(recent.ok() && recent->size() == 1,
              absl::StrCat("RecentFaults('", domain_id, "', ", sequence - 1, "): ",
                           recent.ok() ? absl::StrCat(recent->size(), " faults")
                                       : StatusText(recent.status())));
  const Fault& got = recent->front();
  DIFF_EXPECT(got.sequence == sequence && got.iova == want.iova && got.reason == want.reason &&
                  got.device_id == want.device_id && got.domain_id == want.domain_id &&
                  got.access == want.access,
              absl::StrCat("fault log '", domain_id, "' holds #", got.sequence, " ",
                           FaultReasonName(got.reason), " at ", Hex(got.iova), " by ",
                           got.device_id, " in '", got.domain_id, "'; want #", sequence, " ",
                           FaultReasonName(want.reason), " at ", Hex(want.iova)));
}

void Sequence::ExpectFault(const TranslateResult& got, ModelDomain* domain, ModelDevice& device,
                           uint64_t iova, Access access, FaultReason reason) {
  DIFF_EXPECT(got.faulted && got.fault.reason == reason && got.fault.iova == iova,
              absl::StrCat("want fault ", FaultReasonName(reason), " at ", Hex(iova), ", got ",
                           TranslateText(got)));
  const std::string domain_id = domain != nullptr ? domain->config.id : "";
  DIFF_EXPECT(got.fault.domain_id == domain_id && got.fault.device_id == device.config.id &&
                  got.fault.access == access && got.segments.empty(),
              absl::StrCat("fault names domain '", got.fault.domain_id, "', device '",
                           got.fault.device_id, "'"));
  ++iommu_faults_;
  if (domain != nullptr) {
    ++domain->faults;
    if (reason == FaultReason::kNotMapped) {
      ++domain->debug.dma_after_unmap;
      ++device.debug.dma_after_unmap;
    }
    // Sequence numbers are broker-wide: the domain's log holds the same one.
    CheckLastFault(domain_id, iommu_faults_, got.fault);
    if (failed()) return;
  }
  CheckLastFault("", iommu_faults_, got.fault);
}

// ---------------------------------------------------------------- Control operations

void Sequence::CreateDomain(const DomainConfig& config) {
  Log(absl::StrCat("CreateDomain ", config.id, " ", PolicyName(config.policy),
                   config.identity_first ? " identity_first" : "", " aperture [",
                   Hex(config.aperture_first), ", ", Hex(config.aperture_last), "]"));
  const absl::Status got = iommu_->CreateDomain(config);
  Result(StatusText(got));
  if (config.iommu_unit >= 2) {
    return ExpectError(got, absl::StatusCode::kInvalidArgument, "iommu_unit");
  }
  if (domains_.contains(config.id)) {
    return ExpectError(got, absl::StatusCode::kAlreadyExists, config.id);
  }
  if (domains_.size() >= max_domains_) {
    Cover("create domain: max_domains reached");
    return ExpectError(got, absl::StatusCode::kResourceExhausted, "domains");
  }
  if (config.aperture_first % kPage != 0) {
    return ExpectError(got, absl::StatusCode::kInvalidArgument, "aperture");
  }
  if (config.identity_first && config.policy != Policy::kFast) {
    return ExpectError(got, absl::StatusCode::kInvalidArgument, "identity_first");
  }
  DIFF_EXPECT(got.ok(), StatusText(got));
  ModelDomain& domain = domains_[config.id];
  domain.config = config;
  domain.policy = config.policy;
  domain.identity_end = config.identity_first ? std::min(kPhysMem, config.aperture_last + 1) : 0;
}

void Sequence::DestroyDomain(const std::string& id, bool force) {
  Log(absl::StrCat("DestroyDomain ", id, force ? " force" : ""));
  absl::StatusOr<DestroyResult> got = iommu_->DestroyDomain(id, force);
  Result(got.ok() ? absl::StrCat("detached [", absl::StrJoin(got->detached_devices, ","),
                                 "] leaked ", got->leaked.mappings, "/", Hex(got->leaked.bytes))
                  : StatusText(got.status()));
  auto it = domains_.find(id);
  if (it == domains_.end()) return ExpectError(got.status(), absl::StatusCode::kNotFound, id);
  ModelDomain& domain = it->second;
  std::vector<std::string> attached;
  for (const auto& [device_id, device] : devices_) {
    if (device.domain == id) attached.push_back(device_id);
  }
  if (!attached.empty() && !force) {
    Cover("destroy: refused, devices attached");
    ExpectError(got.status(), absl::StatusCode::kFailedPrecondition, id);
    for (const std::string& device_id : attached) {
      if (failed()) return;
      ExpectError(got.status(), absl::StatusCode::kFailedPrecondition, device_id);
    }
    return;
  }
  DIFF_EXPECT(got.ok(), StatusText(got.status()));
  DIFF_EXPECT(got->detached_devices == attached,
              absl::StrCat("want detached [", absl::StrJoin(attached, ","), "]"));
  for (const std::string& device_id : attached) DetachModel(devices_.at(device_id), false);
  FlushModel(domain);
  LiveMappings leaked;
  for (const auto& [iova, mapping] : domain.live) {
    ++leaked.mappings;
    leaked.bytes += mapping.size;
  }
  DIFF_EXPECT(got->leaked.mappings == leaked.mappings && got->leaked.bytes == leaked.bytes,
              absl::StrCat("want leaked ", leaked.mappings, "/", Hex(leaked.bytes)));
  if (!attached.empty()) Cover("destroy: forced off devices");
  if (leaked.mappings > 0) Cover("destroy: leaks");
  domains_.erase(it);
}

void Sequence::AddDevice(const DeviceConfig& config) {
  Log(absl::StrCat("AddDevice ", config.id, " mask ", config.dma_mask_bits, " bits, bypass ",
                   config.allow_bypass));
  const absl::Status got = iommu_->AddDevice(config);
  Result(StatusText(got));
  if (config.dma_mask_bits < 12 || config.dma_mask_bits > 64) {
    return ExpectError(got, absl::StatusCode::kInvalidArgument, "dma_mask_bits");
  }
  if (devices_.contains(config.id)) {
    return ExpectError(got, absl::StatusCode::kAlreadyExists, config.id);
  }
  // Round-robin over [1, max_devices], as the Iommu hands requester ids out
  // (a refused add moves the cursor too).
  std::set<uint32_t> in_use;
  for (const auto& [id, other] : devices_) in_use.insert(other.requester);
  const uint32_t count = static_cast<uint32_t>(max_devices_) + 1;
  uint32_t requester = 0;
  for (uint32_t tried = 0; tried < count && requester == 0; ++tried) {
    const uint32_t candidate = next_requester_;
    next_requester_ = next_requester_ + 1 < count ? next_requester_ + 1 : 1;
    if (!in_use.contains(candidate)) requester = candidate;
  }
  if (requester == 0) {
    Cover("add device: max_devices reached");
    return ExpectError(got, absl::StatusCode::kResourceExhausted, "devices");
  }
  DIFF_EXPECT(got.ok(), StatusText(got));
  for (const auto& [id, domain] : domains_) {
    for (const auto& [iova, mapping] : domain.live) {
      if (mapping.owner == requester) Cover("add device: requester id of a leaked mapping reused");
    }
  }
  ModelDevice& device = devices_[config.id];
  device.config = config;
  device.mask = MaskOf(config.dma_mask_bits);
  device.requester = requester;
}

void Sequence::RemoveDevice(const std::string& id) {
  Log(absl::StrCat("RemoveDevice ", id));
  absl::StatusOr<std::optional<DetachResult>> got = iommu_->RemoveDevice(id);
  Result(!got.ok() ? StatusText(got.status())
         : !got->has_value()
             ? "not attached"
             : absl::StrCat("detached from ", (*got)->domain_id, " leaked ",
                            (*got)->leaked.mappings, "/", Hex((*got)->leaked.bytes)));
  auto it = devices_.find(id);
  if (it == devices_.end()) return ExpectError(got.status(), absl::StatusCode::kNotFound, id);
  DIFF_EXPECT(got.ok(), StatusText(got.status()));
  ModelDevice& device = it->second;
  if (device.domain.empty()) {
    DIFF_EXPECT(!got->has_value(), "the device was not attached");
  } else {
    const std::string from = device.domain;
    // No IOTLB invalidation: the requester id is not reused soon (and an
    // attach drops its entries).
    const LiveMappings leaked = DetachModel(device, false);
    DIFF_EXPECT(got->has_value() && (*got)->domain_id == from &&
                    (*got)->leaked.mappings == leaked.mappings &&
                    (*got)->leaked.bytes == leaked.bytes,
                absl::StrCat("want detached from ", from, " leaked ", leaked.mappings, "/",
                             Hex(leaked.bytes)));
  }
  devices_.erase(it);
}

void Sequence::Attach(const std::string& device_id, const std::string& domain_id) {
  Log(absl::StrCat("Attach ", device_id, " to ", domain_id));
  absl::StatusOr<std::optional<DetachResult>> got = iommu_->Attach(device_id, domain_id);
  Result(!got.ok() ? StatusText(got.status())
         : !got->has_value()
             ? "OK"
             : absl::StrCat("moved from ", (*got)->domain_id, " leaked ", (*got)->leaked.mappings,
                            "/", Hex((*got)->leaked.bytes)));
  auto device = devices_.find(device_id);
  if (device == devices_.end()) {
    return ExpectError(got.status(), absl::StatusCode::kNotFound, device_id);
  }
  auto domain = domains_.find(domain_id);
  if (domain == domains_.end()) {
    return ExpectError(got.status(), absl::StatusCode::kNotFound, domain_id);
  }
  ModelDevice& dev = device->second;
  if (dev.domain == domain_id) {
    DIFF_EXPECT(got.ok() && !got->has_value(), "re-attach to the same domain changes nothing");
    return;
  }
  if (domain->second.config.aperture_first > dev.mask) {
    Cover("attach: mask below the aperture");
    return ExpectError(got.status(), absl::StatusCode::kFailedPrecondition, device_id);
  }
  DIFF_EXPECT(got.ok(), StatusText(got.status()));
  if (dev.domain.empty()) {
    DIFF_EXPECT(!got->has_value(), "nothing to move from");
  } else {
    const std::string from = dev.domain;
    Cover("attach: moved");
    const LiveMappings leaked = DetachModel(dev, true);
    DIFF_EXPECT(got->has_value() && (*got)->domain_id == from &&
                    (*got)->leaked.mappings == leaked.mappings &&
                    (*got)->leaked.bytes == leaked.bytes,
                absl::StrCat("want moved from ", from, " leaked ", leaked.mappings, "/",
                             Hex(leaked.bytes)));
  }
  dev.domain = domain_id;
  InvalidateRequester(domain->second, dev.requester);
}

void Sequence::Detach(const std::string& device_id) {
  Log(absl::StrCat("Detach ", device_id));
  absl::StatusOr<DetachResult> got = iommu_->Detach(device_id);
  Result(got.ok() ? absl::StrCat("from ", got->domain_id, " leaked ", got->leaked.mappings, "/",
                                 Hex(got->leaked.bytes))
                  : StatusText(got.status()));
  auto device = devices_.find(device_id);
  if (device == devices_.end()) {
    return ExpectError(got.status(), absl::StatusCode::kNotFound, device_id);
  }
  if (device->second.domain.empty()) {
    return ExpectError(got.status(), absl::StatusCode::kFailedPrecondition, device_id);
  }
  DIFF_EXPECT(got.ok(), StatusText(got.status()));
  const std::string from = device->second.domain;
  const LiveMappings leaked = DetachModel(device->second, true);
  DIFF_EXPECT(
      got->domain_id == from && got->leaked.mappings == leaked.mappings &&
          got->leaked.bytes == leaked.bytes,
      absl::StrCat("want from ", from, " leaked ", leaked.mappings, "/", Hex(leaked.bytes)));
}

void Sequence::SetPolicy(const std::string& domain_id, Policy policy) {
  Log(absl::StrCat("SetPolicy ", domain_id, " ", PolicyName(policy)));
  const absl::Status got = iommu_->SetPolicy(domain_id, policy);
  Result(StatusText(got));
  auto it = domains_.find(domain_id);
  if (it == domains_.end()) return ExpectError(got, absl::StatusCode::kNotFound, domain_id);
  DIFF_EXPECT(got.ok(), StatusText(got));
  ModelDomain& domain = it->second;
  if (domain.policy == policy) return;
  Cover("set policy: changed");
  domain.policy = policy;
  if (policy == Policy::kParanoid) FlushModel(domain);
}

void Sequence::Flush(const std::string& domain_id) {
  Log(absl::StrCat("Flush ", domain_id));
  const absl::Status got = iommu_->Flush(domain_id);
  Result(StatusText(got));
  auto it = domains_.find(domain_id);
  if (it == domains_.end()) return ExpectError(got, absl::StatusCode::kNotFound, domain_id);
  DIFF_EXPECT(got.ok(), StatusText(got));
  FlushModel(it->second);
}

// Maintenance at the end of time (every flush-queue entry has waited past
// its timeout) or at its beginning (none has): no clock involved.
void Sequence::Maintain(bool everything_expired) {
  Log(absl::StrCat("Maintain at ", everything_expired ? "InfiniteFuture" : "InfinitePast"));
  iommu_->Maintain(everything_expired ? absl::InfiniteFuture() : absl::InfinitePast());
  if (!everything_expired) return;
  for (auto& [id, domain] : domains_) {
    if (domain.pending.empty()) continue;
    Cover("maintain: flush-queue timeout");
    ++domain.timeout_flushes;
    domain.pending.clear();
  }
}

void Sequence::SetAllowBypass(const std::string& device_id, bool allow) {
  Log(absl::StrCat("SetAllowBypass ", device_id, " ", allow));
  const absl::Status got = iommu_->SetAllowBypass(device_id, allow);
  Result(StatusText(got));
  auto it = devices_.find(device_id);
  if (it == devices_.end()) return ExpectError(got, absl::StatusCode::kNotFound, device_id);
  DIFF_EXPECT(got.ok(), StatusText(got));
  it->second.config.allow_bypass = allow;
}

// ---------------------------------------------------------------- Map

void Sequence::Map(const std::string& device_id, const MapRequest& request) {
  Log(absl::StrCat("Map ", device_id, " phys ", Hex(request.phys), " size ", Hex(request.size), " ",
                   PermsText(request.perms), " iova ",
                   request.has_iova ? Hex(request.iova) : "auto", " bypass ",
                   BypassText(request.bypass)));
  absl::StatusOr<MapResult> got = iommu_->Map(device_id, request);
  Result(got.ok()
             ? absl::StrCat("iova ", Hex(got->iova), " ", MappingKindName(got->kind), " leaves ",
                            got->leaves_4k, "/", got->leaves_2m, "/", got->leaves_1g,
                            got->bypass_refusal.empty()
                                ? ""
                                : absl::StrCat(" (refused: ", got->bypass_refusal, ")"))
             : StatusText(got.status()));
  using Code = absl::StatusCode;
  auto device_it = devices_.find(device_id);
  if (device_it == devices_.end()) return ExpectError(got.status(), Code::kNotFound, device_id);
  ModelDevice& device = device_it->second;
  // NOTE: the code checks attachment before the arguments (docs/IOMMU.md
  // lists the argument checks first).
  if (device.domain.empty()) {
    return ExpectError(got.status(), Code::kFailedPrecondition, device_id);
  }
  ModelDomain& domain = domains_.at(device.domain);

  // 1. The request itself.
  if (request.size == 0 || request.size % kPage != 0) {
    return ExpectError(got.status(), Code::kInvalidArgument, Hex(request.size));
  }
  if (request.phys % kPage != 0) {
    return ExpectError(got.status(), Code::kInvalidArgument, Hex(request.phys));
  }
  if (request.has_iova && request.iova % kPage != 0) {
    return ExpectError(got.status(), Code::kInvalidArgument, Hex(request.iova));
  }
  if (!request.perms.read && !request.perms.write) {
    return ExpectError(got.status(), Code::kInvalidArgument, "perms");
  }
  if (request.has_iova && request.bypass != BypassMode::kNone) {
    return ExpectError(got.status(), Code::kInvalidArgument, "bypass");
  }
  const std::optional<uint64_t> phys_last = LastByte(request.phys, request.size);
  if (!phys_last || *phys_last >= kPhysMem) {
    return ExpectError(got.status(), Code::kOutOfRange, Hex(request.phys));
  }
  if (request.has_iova && !LastByte(request.iova, request.size)) {
    return ExpectError(got.status(), Code::kOutOfRange, Hex(request.iova));
  }

  // 2. Bypass.
  std::string refusal;
  if (request.bypass != BypassMode::kNone && domain.policy != Policy::kPassthrough) {
    Code code = Code::kOk;
    if (domain.policy == Policy::kParanoid) {
      code = Code::kPermissionDenied;
      refusal = "paranoid";
    } else if (!device.config.allow_bypass) {
      code = Code::kPermissionDenied;
      refusal = "allow_bypass";
    } else if (kBypassBase + *phys_last > device.mask) {
      code = Code::kFailedPrecondition;
      refusal = "DMA mask";
    }
    if (code == Code::kOk) {
      Cover("map: bypass granted");
      DIFF_EXPECT(got.ok(), StatusText(got.status()));
      DIFF_EXPECT(got->iova == kBypassBase + request.phys && got->kind == MappingKind::kBypass &&
                      got->leaves_4k + got->leaves_2m + got->leaves_1g == 0 &&
                      got->bypass_refusal.empty(),
                  absl::StrCat("want bypass at ", Hex(kBypassBase + request.phys)));
      ++domain.bypass_maps;
      unrecorded_.push_back({got->iova, request.size});
      return;
    }
    if (request.bypass == BypassMode::kRequire) {
      Cover("map: bypass required, refused");
      return ExpectError(got.status(), code, refusal);
    }
    Cover("map: bypass preferred, refused");
  }
  auto check_refusal = [&]() {
    DIFF_EXPECT(refusal.empty() ? got->bypass_refusal.empty()
                                : absl::StrContains(got->bypass_refusal, refusal),
                absl::StrCat("want bypass refusal naming \"", refusal, "\""));
  };

  // 3. pt: the device reaches this memory anyway.
  if (domain.policy == Policy::kPassthrough && !request.has_iova && *phys_last <= device.mask) {
    Cover("map: pt identity");
    DIFF_EXPECT(got.ok(), StatusText(got.status()));
    DIFF_EXPECT(got->iova == request.phys && got->kind == MappingKind::kIdentity &&
                    got->leaves_4k + got->leaves_2m + got->leaves_1g == 0,
                "want a pt identity map");
    check_refusal();
    ++domain.identity_maps;
    unrecorded_.push_back({got->iova, request.size});
    return;
  }

  // 4. The mapping limit.
  if (domain.live.size() >= domain.config.max_mappings) {
    Cover("map: max_mappings reached");
    return ExpectError(got.status(), Code::kResourceExhausted, "max_mappings");
  }

  // 5. Placement.
  const DomainConfig& config = domain.config;
  if (request.has_iova) {
    const uint64_t iova = request.iova;
    const uint64_t end = iova + request.size;
    if (iova < config.aperture_first || end - 1 > config.aperture_last) {
      return ExpectError(got.status(), Code::kOutOfRange, Hex(iova));
    }
    if (end - 1 > device.mask) return ExpectError(got.status(), Code::kOutOfRange, Hex(iova));
    if (const ReservedRegion* region = domain.ReservedOverlap(iova, request.size)) {
      return ExpectError(got.status(), Code::kAlreadyExists, region->name);
    }
    Cover("map fixed: placement checked");
    if (iova < domain.identity_end) {
      if (end > domain.identity_end) {
        Cover("map fixed: straddles the identity region's end");
        return ExpectError(got.status(), Code::kInvalidArgument, Hex(iova));
      }
      if (domain.TableBusy(iova, end)) {
        // Claims stay until their invalidation: the domain flushes and retries.
        Cover(domain.LiveOverlaps(iova, end) ? "map fixed: claim overlaps a mapping"
                                             : "map fixed: claim overlaps only pending claims");
        FlushModel(domain);
      }
      if (domain.TableBusy(iova, end)) {
        return ExpectError(got.status(), Code::kAlreadyExists, Hex(iova));
      }
    } else if (domain.AllocatorBusy(iova, end, /*with_pending=*/true)) {
      // Perhaps only unmapped and waiting: the domain flushes and retries.
      Cover(domain.pending.empty() ? "map fixed: busy, nothing pending"
                                   : "map fixed: busy, flush queue flushed");
      FlushModel(domain);
      if (domain.AllocatorBusy(iova, end, /*with_pending=*/false)) {
        Cover("map fixed: ALREADY_EXISTS");
        return ExpectError(got.status(), Code::kAlreadyExists, Hex(iova));
      }
    }
    DIFF_EXPECT(got.ok(), StatusText(got.status()));
    DIFF_EXPECT(got->iova == iova, "want the fixed iova");
    Cover(iova < domain.identity_end ? "map fixed: claimed" : "map fixed: reserved");
  } else {
    const bool claim = domain.identity_end != 0 && domain.policy == Policy::kFast &&
                       request.phys >= config.aperture_first && *phys_last < domain.identity_end &&
                       *phys_last <= device.mask &&
                       domain.ReservedOverlap(request.phys, request.size) == nullptr &&
                       !domain.TableBusy(request.phys, request.phys + request.size);
    if (domain.identity_end != 0 && domain.policy == Policy::kFast && !claim &&
        domain.TableBusy(request.phys, request.phys + request.size)) {
      Cover("map auto: identity taken, allocator instead");
    }
    if (claim) {
      Cover("map auto: identity claim");
      DIFF_EXPECT(got.ok(), StatusText(got.status()));
      DIFF_EXPECT(got->iova == request.phys, "want an identity claim, IOVA = PA");
    } else {
      const uint64_t footprint = FootprintBytes(request.size);
      const uint64_t limit = std::min(device.mask, config.aperture_last);
      if (limit + 1 < config.aperture_first + footprint) {
        Cover("map auto: no room below the limit");
        return ExpectError(got.status(), Code::kOutOfRange, absl::StrCat("domain ", config.id));
      }
      if (!got.ok() && got.status().code() == Code::kResourceExhausted) {
        Cover("map auto: allocator exhausted");
        ExpectError(got.status(), Code::kResourceExhausted, absl::StrCat("domain ", config.id));
        if (failed()) return;
        const std::optional<uint64_t> free = domain.FreeBlock(footprint, limit, kPhysMem);
        DIFF_EXPECT(
            !free, absl::StrCat("the allocator found no room for ", Hex(footprint), " bytes below ",
                                Hex(limit), ", but ", Hex(*free), " is free in the model"));
        return;
      }
      DIFF_EXPECT(got.ok(), StatusText(got.status()));
      const uint64_t iova = got->iova;
      Cover(FootprintBytes(request.size) != request.size ? "map auto: allocated, rounded up"
                                                         : "map auto: allocated");
      DIFF_EXPECT(iova % FootprintAlignmentBytes(request.size) == 0 &&
                      iova >= config.aperture_first && iova + footprint - 1 <= limit,
                  absl::StrCat("allocated ", Hex(iova), " (footprint ", Hex(footprint),
                               ") is misaligned or outside [", Hex(config.aperture_first), ", ",
                               Hex(limit), "]"));
      DIFF_EXPECT(domain.ReservedOverlap(iova, footprint) == nullptr &&
                      (!config.identity_first || iova >= kPhysMem),
                  absl::StrCat("allocated ", Hex(iova), " overlaps a reserved region"));
      DIFF_EXPECT(!domain.AllocatorBusy(iova, iova + footprint, true) &&
                      !domain.TableBusy(iova, iova + footprint),
                  absl::StrCat("allocated ", Hex(iova), "+", Hex(footprint),
                               " overlaps IOVA space in use"));
    }
  }
  CheckMapped(got, domain, device, request, refusal);
}

// Checks and records a mapping placed at got->iova.
void Sequence::CheckMapped(const absl::StatusOr<MapResult>& got, ModelDomain& domain,
                           ModelDevice& device, const MapRequest& request,
                           const std::string& refusal) {
  const uint64_t iova = got->iova;
  ModelMapping mapping;
  mapping.iova = iova;
  mapping.size = request.size;
  mapping.phys = request.phys;
  mapping.perms = request.perms;
  mapping.owner = device.requester;
  mapping.origin = iova < domain.identity_end ? Origin::kClaimed
                   : request.has_iova         ? Origin::kReserved
                                              : Origin::kAllocated;
  const bool identity = mapping.origin == Origin::kClaimed && iova == request.phys;
  DIFF_EXPECT(got->kind == (identity ? MappingKind::kIdentity : MappingKind::kTranslated),
              absl::StrCat("want kind ", identity ? "identity" : "translated"));
  DIFF_EXPECT(refusal.empty() ? got->bypass_refusal.empty()
                              : absl::StrContains(got->bypass_refusal, refusal),
              absl::StrCat("want bypass refusal naming \"", refusal, "\""));
  DIFF_EXPECT(got->leaves_1g == 0, "no 1 GiB page size");
  if (mapping.origin == Origin::kClaimed) {
    // Claims share table pages, so leaves may be smaller than they could be.
    DIFF_EXPECT(got->leaves_4k * kPage4K + got->leaves_2m * kPage2M == request.size &&
                    ((domain.config.page_sizes & kPage2M) || got->leaves_2m == 0),
                "leaves do not add up to the size");
  } else {
    const PageTable::LeafCounts want =
        PredictLeaves(iova, request.phys, request.size, domain.config.page_sizes);
    DIFF_EXPECT(got->leaves_4k == want.leaves_4k && got->leaves_2m == want.leaves_2m,
                absl::StrCat("want leaves ", want.leaves_4k, "/", want.leaves_2m));
  }
  if (got->leaves_2m > 0) Cover("map: 2 MiB leaves");
  if (identity) Cover("map: identity kind");
  ++domain.maps;
  if (identity) ++domain.identity_maps;
  recent_.push_back({device.config.id, iova, std::min(request.size, kMaxTranslate)});
  domain.live.emplace(iova, std::move(mapping));
}

// ---------------------------------------------------------------- Unmap

void Sequence::Unmap(const std::string& device_id, uint64_t iova, uint64_t size) {
  Log(absl::StrCat("Unmap ", device_id, " iova ", Hex(iova), " size ", Hex(size)));
  absl::StatusOr<UnmapResult> got = iommu_->Unmap(device_id, iova, size);
  Result(got.ok() ? absl::StrCat(Hex(got->bytes_unmapped), " bytes, ", got->mappings_removed,
                                 " mappings")
                  : StatusText(got.status()));
  using Code = absl::StatusCode;
  auto device_it = devices_.find(device_id);
  if (device_it == devices_.end()) return ExpectError(got.status(), Code::kNotFound, device_id);
  ModelDevice& device = device_it->second;
  if (device.domain.empty()) {
    return ExpectError(got.status(), Code::kFailedPrecondition, device_id);
  }
  ModelDomain& domain = domains_.at(device.domain);
  if (size == 0 || size % kPage != 0 || iova % kPage != 0) {
    return ExpectError(got.status(), Code::kInvalidArgument, Hex(iova));
  }
  if (!LastByte(iova, size)) return ExpectError(got.status(), Code::kOutOfRange, Hex(iova));
  const uint64_t last = iova + (size - 1);  // the range may end exactly at 2^64
  if (iova >= kBypassBase && iova - kBypassBase + size <= kPhysMem) {
    Cover("unmap: bypass window");
    DIFF_EXPECT(got.ok() && got->bytes_unmapped == 0 && got->mappings_removed == 0,
                "the bypass window has nothing to unmap");
    return;
  }
  const ModelMapping* head = domain.LiveAt(iova);
  const ModelMapping* tail = domain.LiveAt(last);
  if ((head != nullptr && head->iova != iova) || (tail != nullptr && tail->end() - 1 != last)) {
    Cover("unmap: would split");
    ++domain.debug.wrong_size_unmaps;
    ++device.debug.wrong_size_unmaps;
    return ExpectError(got.status(), Code::kFailedPrecondition, "split");
  }
  std::vector<uint64_t> removed;
  uint64_t bytes = 0;
  for (auto it = domain.live.lower_bound(iova); it != domain.live.end() && it->first <= last;
       ++it) {
    removed.push_back(it->first);
    bytes += it->second.size;
  }
  DIFF_EXPECT(got.ok(), StatusText(got.status()));
  DIFF_EXPECT(got->bytes_unmapped == bytes && got->mappings_removed == removed.size(),
              absl::StrCat("want ", Hex(bytes), " bytes in ", removed.size(), " mappings"));
  if (iova >= kIovaLimit) Cover("unmap: at or above 2^48");
  if (removed.empty()) {
    Cover("unmap: nothing mapped");
    if (domain.policy != Policy::kPassthrough) {
      ++domain.debug.double_unmaps;
      ++device.debug.double_unmaps;
    }
    return;
  }
  Cover(removed.size() == 1 ? "unmap: one mapping" : "unmap: several mappings");
  recent_.push_back({device_id, iova, std::min(size, kMaxTranslate)});
  domain.unmaps += removed.size();
  for (uint64_t at : removed) {
    auto node = domain.live.extract(at);
    if (domain.policy != Policy::kParanoid) Enqueue(domain, std::move(node.mapped()));
  }
}

// ---------------------------------------------------------------- Translate

void Sequence::Translate(const std::string& device_id, uint64_t iova, uint64_t size,
                         Access access) {
  Log(absl::StrCat("Translate ", device_id, " iova ", Hex(iova), " size ", Hex(size), " ",
                   access == Access::kRead ? "read" : "write"));
  absl::StatusOr<TranslateResult> got = iommu_->Translate(device_id, iova, size, access);
  Result(got.ok() ? TranslateText(*got) : StatusText(got.status()));
  using Code = absl::StatusCode;
  auto device_it = devices_.find(device_id);
  if (device_it == devices_.end()) return ExpectError(got.status(), Code::kNotFound, device_id);
  ModelDevice& device = device_it->second;
  if (size == 0 || size > kMaxTranslate || !LastByte(iova, size)) {
    return ExpectError(got.status(), Code::kInvalidArgument, Hex(size));
  }
  if (device.domain.empty()) {
    DIFF_EXPECT(got.ok(), StatusText(got.status()));
    return ExpectFault(*got, nullptr, device, iova, access, FaultReason::kDeviceNotAttached);
  }
  ModelDomain& domain = domains_.at(device.domain);
  DIFF_EXPECT(got.ok(), StatusText(got.status()));
  ++domain.translations;
  const uint64_t last = iova + (size - 1);
  if (last > device.mask) {
    Cover("translate: above the DMA mask");
    return ExpectFault(*got, &domain, device, std::max(iova, device.mask + 1), access,
                       FaultReason::kAboveDmaMask);
  }
  if (domain.policy == Policy::kFast && device.config.allow_bypass && iova >= kBypassBase) {
    if (iova - kBypassBase + size > kPhysMem) {
      Cover("translate: past the bypass window");
      return ExpectFault(*got, &domain, device, std::max(iova, kBypassBase + kPhysMem), access,
                         FaultReason::kNotMapped);
    }
    Cover("translate: bypass");
    DIFF_EXPECT(!got->faulted && got->kind == MappingKind::kBypass && !got->stale &&
                    !got->iotlb_hit && got->segments.size() == 1 &&
                    got->segments[0].phys == iova - kBypassBase && got->segments[0].size == size,
                absl::StrCat("want bypass to ", Hex(iova - kBypassBase)));
    return;
  }

  // Page by page, as the DMA sees it.
  enum class What { kServe, kFault, kServeOrFault };
  struct Page {
    What what = What::kFault;
    uint64_t phys = 0;  // of the page
    Perms perms;
    MappingKind kind = MappingKind::kTranslated;
    FaultReason reason = FaultReason::kNotMapped;
    ModelMapping* live = nullptr;  // an IOTLB fill
  };
  const bool pt = domain.policy == Policy::kPassthrough;
  const DomainConfig& config = domain.config;
  auto outcome = [&](uint64_t page) {
    Page out;
    const bool in_aperture = page >= config.aperture_first && page <= config.aperture_last;
    ModelMapping* live = in_aperture ? domain.LiveAt(page) : nullptr;
    if (live != nullptr) {
      out = {What::kServe,
             live->phys + (page - live->iova),
             live->perms,
             MappingKind::kTranslated,
             FaultReason::kNotMapped,
             pt ? nullptr : live};
    } else if (pt) {
      if (page < kPhysMem) {
        out = {What::kServe, page, Perms{true, true}, MappingKind::kIdentity};
      } else {
        out.reason = FaultReason::kNotMapped;
      }
    } else if (!in_aperture) {
      out.reason = FaultReason::kOutsideAperture;
    } else if (ModelMapping* gone = domain.PendingAt(page);
               gone != nullptr && domain.policy == Policy::kFast &&
               gone->cached.contains(device.requester)) {
      // Unmapped, not yet invalidated, and perhaps still in this device's
      // IOTLB: a stale hit (the old PA, nothing else) or a miss.
      out = {What::kServeOrFault, gone->phys + (page - gone->iova), gone->perms,
             MappingKind::kTranslated};
    } else {
      out.reason = FaultReason::kNotMapped;
    }
    return out;
  };

  absl::InlinedVector<PhysSegment, 1> want;
  MappingKind want_kind = MappingKind::kTranslated;
  bool want_stale = false;
  bool may_hit = !pt;  // every page could have come from the IOTLB
  std::vector<ModelMapping*> filled;
  auto record_fills = [&] {
    for (ModelMapping* mapping : filled) mapping->cached.insert(device.requester);
  };
  for (uint64_t cursor = iova;;) {
    const uint64_t page = cursor & ~(kPage - 1);
    const uint64_t piece_last = std::min(last, page + (kPage - 1));
    const Page at = outcome(page);
    const bool denied = at.what != What::kFault && !Allows(at.perms, access);
    if (got->faulted && got->fault.iova == cursor) {
      const FaultReason reason = got->fault.reason;
      const bool allowed =
          (at.what == What::kFault && reason == at.reason) ||
          (at.what == What::kServe && denied && reason == FaultReason::kPermission) ||
          (at.what == What::kServeOrFault &&
           (reason == FaultReason::kNotMapped || (denied && reason == FaultReason::kPermission)));
      DIFF_EXPECT(allowed, absl::StrCat("fault ", FaultReasonName(reason), " at ", Hex(cursor),
                                        " is not what the model allows there"));
      Cover(at.what == What::kServeOrFault ? "translate: may be stale, faulted"
                                           : "translate: fault in the page walk");
      if (reason == FaultReason::kPermission) Cover("translate: permission fault");
      if (at.live != nullptr) filled.push_back(at.live);
      record_fills();
      return ExpectFault(*got, &domain, device, cursor, access, reason);
    }
    DIFF_EXPECT(at.what != What::kFault,
                absl::StrCat("want fault ", FaultReasonName(at.reason), " at ", Hex(cursor),
                             ", got ", TranslateText(*got)));
    DIFF_EXPECT(!denied, absl::StrCat("want a permission fault at ", Hex(cursor), ", got ",
                                      TranslateText(*got)));
    if (at.what == What::kServeOrFault) want_stale = true;
    if (at.live != nullptr) {
      may_hit &= at.live->cached.contains(device.requester);
      filled.push_back(at.live);
    }
    if (cursor == iova) want_kind = at.kind;
    const uint64_t phys = at.phys + (cursor - page);
    const uint64_t length = piece_last - cursor + 1;
    if (!want.empty() && want.back().phys + want.back().size == phys) {
      want.back().size += length;
    } else {
      want.push_back({phys, length});
    }
    if (piece_last == last) break;
    cursor = piece_last + 1;
  }
  DIFF_EXPECT(!got->faulted,
              absl::StrCat("want [", SegmentsText(want), "], got ", TranslateText(*got)));
  DIFF_EXPECT(
      SameSegments(got->segments, want) && got->kind == want_kind && got->stale == want_stale,
      absl::StrCat("want [", SegmentsText(want), "] ", MappingKindName(want_kind),
                   want_stale ? " stale" : "", ", got ", TranslateText(*got)));
  DIFF_EXPECT(!got->iotlb_hit || may_hit,
              "an IOTLB hit on a page this device never translated since its last invalidation");
  if (got->iotlb_hit) Cover("translate: every page hit the IOTLB");
  if (want_stale) {
    Cover("translate: stale hit served");
    ++domain.stale;
  }
  Cover(want.size() > 1 ? "translate: several segments" : "translate: served");
  if (want_kind == MappingKind::kIdentity) Cover("translate: pt identity");
  record_fills();
}

// ---------------------------------------------------------------- State

void Sequence::CheckState() {
  std::vector<std::string> domain_ids;
  for (const auto& [id, domain] : domains_) domain_ids.push_back(id);
  DIFF_EXPECT(iommu_->DomainIds() == domain_ids,
              absl::StrCat("DomainIds: ", absl::StrJoin(iommu_->DomainIds(), ",")));
  std::vector<std::string> device_ids;
  for (const auto& [id, device] : devices_) device_ids.push_back(id);
  DIFF_EXPECT(iommu_->DeviceIds() == device_ids,
              absl::StrCat("DeviceIds: ", absl::StrJoin(iommu_->DeviceIds(), ",")));
  for (const auto& [id, domain] : domains_) {
    // The model's own invariants: nothing in use twice.
    DIFF_EXPECT(domain.policy != Policy::kParanoid || domain.pending.empty(),
                "a paranoid domain has nothing on its flush queue");
    for (const ModelMapping& gone : domain.pending) {
      DIFF_EXPECT(!domain.LiveOverlaps(gone.iova, gone.end()),
                  absl::StrCat("model: pending ", gone.Text(), " overlaps a live mapping"));
    }
    absl::StatusOr<DomainStats> stats = iommu_->GetDomainStats(id);
    DIFF_EXPECT(stats.ok(), StatusText(stats.status()));
    const std::string where = absl::StrCat("domain ", id, ": ");
    DIFF_EXPECT(stats->policy == domain.policy, where);
    DIFF_EXPECT(stats->live_mappings == domain.live.size(),
                absl::StrCat(where, stats->live_mappings, " live, want ", domain.live.size()));
    DIFF_EXPECT(stats->maps == domain.maps && stats->unmaps == domain.unmaps,
                absl::StrCat(where, stats->maps, " maps ", stats->unmaps, " unmaps, want ",
                             domain.maps, " ", domain.unmaps));
    DIFF_EXPECT(stats->translations == domain.translations && stats->faults == domain.faults &&
                    stats->stale_translations == domain.stale,
                absl::StrCat(where, stats->translations, " translations ", stats->faults,
                             " faults ", stats->stale_translations, " stale; want ",
                             domain.translations, " ", domain.faults, " ", domain.stale));
    DIFF_EXPECT(
        stats->bypass_maps == domain.bypass_maps && stats->identity_maps == domain.identity_maps,
        absl::StrCat(where, stats->bypass_maps, " bypass ", stats->identity_maps,
                     " identity; want ", domain.bypass_maps, " ", domain.identity_maps));
    const FlushQueueStats& queue = stats->flush_queue;
    DIFF_EXPECT(queue.pending == domain.pending.size() && queue.queued == domain.queued &&
                    queue.full_flushes == domain.full_flushes &&
                    queue.explicit_flushes == domain.explicit_flushes &&
                    queue.timeout_flushes == domain.timeout_flushes,
                absl::StrCat(where, "flush queue pending ", queue.pending, " queued ", queue.queued,
                             " full ", queue.full_flushes, " explicit ", queue.explicit_flushes,
                             " timeout ", queue.timeout_flushes, "; want ", domain.pending.size(),
                             " ", domain.queued, " ", domain.full_flushes, " ",
                             domain.explicit_flushes, " ", domain.timeout_flushes));
    DIFF_EXPECT(
        DebugText(stats->debug) == DebugText(domain.debug),
        absl::StrCat(where, "debug ", DebugText(stats->debug), ", want ", DebugText(domain.debug)));
    DIFF_EXPECT(stats->iova.allocated_bytes == domain.AllocatedBytes(),
                absl::StrCat(where, "allocator holds ", Hex(stats->iova.allocated_bytes), ", want ",
                             Hex(domain.AllocatedBytes())));
  }
  for (const auto& [id, device] : devices_) {
    absl::StatusOr<DmaDebugCounts> counts = iommu_->DeviceDebugCounts(id);
    DIFF_EXPECT(counts.ok(), StatusText(counts.status()));
    DIFF_EXPECT(DebugText(*counts) == DebugText(device.debug),
                absl::StrCat("device ", id, " debug ", DebugText(*counts), ", want ",
                             DebugText(device.debug)));
  }
}

// ---------------------------------------------------------------- Tests

class IommuDifferentialTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(IommuDifferentialTest, RandomSequencesMatchTheModel) {
  const Scenario scenario = GetParam();
  Coverage coverage;
  const int ops = static_cast<int>(EnvNumber("IOMMU_DIFF_OPS").value_or(kDefaultOps));
  if (std::optional<uint64_t> seed = EnvNumber("IOMMU_DIFF_SEED")) {
    Sequence sequence(scenario, *seed, coverage);
    EXPECT_TRUE(sequence.Run(ops)) << sequence.Report();
    return;
  }
  const uint64_t sequences = EnvNumber("IOMMU_DIFF_SEQUENCES").value_or(kDefaultSequences);
  const uint64_t base = EnvNumber("IOMMU_DIFF_BASE_SEED").value_or(0x5eed0000);
  std::seed_seq mix{base, static_cast<uint64_t>(scenario)};
  std::mt19937_64 seeds(mix);
  for (uint64_t i = 0; i < sequences; ++i) {
    const uint64_t seed = seeds();
    Sequence sequence(scenario, seed, coverage);
    if (!sequence.Run(ops)) {
      ADD_FAILURE() << "sequence " << i << " of " << sequences << ": " << sequence.Report();
      return;  // one reproducible failure is enough
    }
  }
  if (std::getenv("IOMMU_DIFF_COVERAGE") != nullptr) {
    for (const auto& [what, count] : coverage) std::cout << "  " << what << ": " << count << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, IommuDifferentialTest,
                         ::testing::Values(Scenario::kParanoid, Scenario::kFast,
                                           Scenario::kPassthrough, Scenario::kFastIdentity),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return ScenarioName(info.param);
                         });

#undef DIFF_EXPECT

}  // namespace
}  // namespace iommu_broker
