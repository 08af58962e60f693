#include "tests/core/differential_iommu.h"

#include <algorithm>
#include <iterator>
#include <optional>
#include <set>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/util/hex.h"

namespace iommu_broker::reference {
namespace {

bool Allows(Perms perms, Access access) {
  return access == Access::kRead ? perms.read : perms.write;
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
  if (result.fault.has_value()) {
    return absl::StrCat("fault ", FaultReasonName(result.fault->reason), " at ",
                        Hex(result.fault->iova));
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

}  // namespace

#define DIFF_EXPECT(condition, message)                                                    \
  do {                                                                                     \
    if (!(condition)) {                                                                    \
      Fail(absl::StrCat("line ", __LINE__, ": expected ", #condition, "\n    ", message)); \
      return;                                                                              \
    }                                                                                      \
  } while (false)

DifferentialIommu::DifferentialIommu(size_t max_devices, size_t max_domains, Coverage* coverage)
    : coverage_(coverage) {
  IommuOptions options;
  options.physical_memory_bytes = kPhysMem;
  options.maintenance_interval = absl::ZeroDuration();
  options.units = kUnits;
  options.max_devices = max_devices;
  options.max_domains = max_domains;
  model_.max_devices = max_devices;
  model_.max_domains = max_domains;
  absl::StatusOr<std::unique_ptr<Iommu>> created = Iommu::Create(options);
  if (!created.ok()) {
    Fail(StatusText(created.status()));
    return;
  }
  iommu_ = *std::move(created);
  absl::StatusOr<std::shared_ptr<FaultSubscription>> subscription =
      iommu_->SubscribeFaults("", 4096);
  if (!subscription.ok()) {
    Fail(StatusText(subscription.status()));
    return;
  }
  faults_ = *std::move(subscription);
}

void DifferentialIommu::Fail(std::string what) {
  if (!failure_.empty()) return;
  failure_ = std::move(what);
  failed_step_ = step_;
}

void DifferentialIommu::Cover(const char* what) {
  if (coverage_ != nullptr) ++(*coverage_)[what];
}

void DifferentialIommu::Log(std::string line) {
  log_.push_back(absl::StrCat("#", step_, " ", line));
}

void DifferentialIommu::Result(absl::string_view text) {
  absl::StrAppend(&log_.back(), "  -> ", text);
}

std::string DifferentialIommu::Report() const {
  std::string report = absl::StrCat("at op #", failed_step_, ":\n  ", failure_, "\nop log:\n");
  for (const std::string& line : log_) absl::StrAppend(&report, "  ", line, "\n");
  absl::StrAppend(&report, "model after the failing op:\n", model_.Text());
  return report;
}

void DifferentialIommu::EndStep() {
  if (!failed()) CheckState();
  ++step_;
}

void DifferentialIommu::CheckFaultSubscription() {
  if (failed()) return;
  uint64_t delivered = 0;
  while (std::optional<Fault> fault = faults_->Next(absl::ZeroDuration())) {
    if (fault->sequence != ++delivered) {
      Fail(absl::StrCat("subscription delivered fault #", fault->sequence, " as #", delivered));
      return;
    }
  }
  if (delivered != model_.iommu_faults || faults_->dropped() != 0) {
    Fail(absl::StrCat("subscription delivered ", delivered, " faults (", faults_->dropped(),
                      " dropped), want ", model_.iommu_faults));
  }
}

// ---------------------------------------------------------------- Model pieces

void DifferentialIommu::ExpectError(const absl::Status& got, absl::StatusCode code,
                                    absl::string_view needle) {
  DIFF_EXPECT(got.code() == code && absl::StrContains(got.message(), needle),
              absl::StrCat("want ", absl::StatusCodeToString(code), " naming \"", needle,
                           "\", got ", StatusText(got)));
}

void DifferentialIommu::InvalidateRequester(ModelDomain& domain, uint32_t requester) {
  for (auto& [iova, mapping] : domain.live) mapping.cached.erase(requester);
  for (ModelMapping& mapping : domain.pending) mapping.cached.erase(requester);
}

LiveMappings DifferentialIommu::DetachModel(ModelDevice& device, bool invalidate) {
  LiveMappings leaked;
  ModelDomain& domain = model_.domains.at(device.domain);
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

void DifferentialIommu::Enqueue(ModelDomain& domain, ModelMapping mapping) {
  domain.pending.push_back(std::move(mapping));
  ++domain.queued;
  if (domain.pending.size() >= domain.config.flush_queue.capacity) {
    Cover("flush queue: full");
    ++domain.full_flushes;
    domain.pending.clear();
  }
}

void DifferentialIommu::FlushModel(ModelDomain& domain) {
  if (domain.pending.empty()) return;
  Cover("flush queue: flushed");
  ++domain.explicit_flushes;
  domain.pending.clear();
}

void DifferentialIommu::CheckLastFault(const std::string& domain_id, uint64_t sequence,
                                       const Fault& want) {
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

void DifferentialIommu::ExpectFault(const TranslateResult& got, ModelDomain* domain,
                                    ModelDevice& device, uint64_t iova, Access access,
                                    FaultReason reason) {
  DIFF_EXPECT(got.fault.has_value() && got.fault->reason == reason && got.fault->iova == iova,
              absl::StrCat("want fault ", FaultReasonName(reason), " at ", Hex(iova), ", got ",
                           TranslateText(got)));
  const std::string domain_id = domain != nullptr ? domain->config.id : "";
  DIFF_EXPECT(got.fault->domain_id == domain_id && got.fault->device_id == device.config.id &&
                  got.fault->access == access && got.segments.empty(),
              absl::StrCat("fault names domain '", got.fault->domain_id, "', device '",
                           got.fault->device_id, "'"));
  ++model_.iommu_faults;
  if (domain != nullptr) {
    ++domain->faults;
    if (reason == FaultReason::kNotMapped) {
      ++domain->debug.dma_after_unmap;
      ++device.debug.dma_after_unmap;
    }
    // Sequence numbers are broker-wide: the domain's log holds the same one.
    CheckLastFault(domain_id, model_.iommu_faults, *got.fault);
    if (failed()) return;
  }
  CheckLastFault("", model_.iommu_faults, *got.fault);
}

// ---------------------------------------------------------------- Control operations

void DifferentialIommu::CreateDomain(const DomainConfig& config) {
  Log(absl::StrCat("CreateDomain ", config.id, " ", PolicyName(config.policy),
                   config.identity_first ? " identity_first" : "", " aperture [",
                   Hex(config.aperture_first), ", ", Hex(config.aperture_last), "]"));
  const absl::Status got = iommu_->CreateDomain(config);
  Result(StatusText(got));
  if (config.iommu_unit >= 2) {
    return ExpectError(got, absl::StatusCode::kInvalidArgument, "iommu_unit");
  }
  if (model_.domains.contains(config.id)) {
    return ExpectError(got, absl::StatusCode::kAlreadyExists, config.id);
  }
  if (model_.domains.size() >= model_.max_domains) {
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
  ModelDomain& domain = model_.domains[config.id];
  domain.config = config;
  domain.policy = config.policy;
  domain.identity_end = config.identity_first ? std::min(kPhysMem, config.aperture_last + 1) : 0;
}

void DifferentialIommu::DestroyDomain(const std::string& id, bool force) {
  Log(absl::StrCat("DestroyDomain ", id, force ? " force" : ""));
  absl::StatusOr<DestroyResult> got = iommu_->DestroyDomain(id, force);
  Result(got.ok() ? absl::StrCat("detached [", absl::StrJoin(got->detached_devices, ","),
                                 "] leaked ", got->leaked.mappings, "/", Hex(got->leaked.bytes))
                  : StatusText(got.status()));
  auto it = model_.domains.find(id);
  if (it == model_.domains.end()) return ExpectError(got.status(), absl::StatusCode::kNotFound, id);
  ModelDomain& domain = it->second;
  std::vector<std::string> attached;
  for (const auto& [device_id, device] : model_.devices) {
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
  for (const std::string& device_id : attached) DetachModel(model_.devices.at(device_id), false);
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
  model_.domains.erase(it);
}

void DifferentialIommu::AddDevice(const DeviceConfig& config) {
  Log(absl::StrCat("AddDevice ", config.id, " mask ", config.dma_mask_bits, " bits, bypass ",
                   config.allow_bypass));
  const absl::Status got = iommu_->AddDevice(config);
  Result(StatusText(got));
  if (config.dma_mask_bits < 12 || config.dma_mask_bits > 64) {
    return ExpectError(got, absl::StatusCode::kInvalidArgument, "dma_mask_bits");
  }
  if (model_.devices.contains(config.id)) {
    return ExpectError(got, absl::StatusCode::kAlreadyExists, config.id);
  }
  // Round-robin over [1, max_devices], as the Iommu hands requester ids out
  // (a refused add moves the cursor too).
  std::set<uint32_t> in_use;
  for (const auto& [id, other] : model_.devices) in_use.insert(other.requester);
  const uint32_t count = static_cast<uint32_t>(model_.max_devices) + 1;
  uint32_t requester = 0;
  for (uint32_t tried = 0; tried < count && requester == 0; ++tried) {
    const uint32_t candidate = model_.next_requester;
    model_.next_requester = model_.next_requester + 1 < count ? model_.next_requester + 1 : 1;
    if (!in_use.contains(candidate)) requester = candidate;
  }
  if (requester == 0) {
    Cover("add device: max_devices reached");
    return ExpectError(got, absl::StatusCode::kResourceExhausted, "devices");
  }
  DIFF_EXPECT(got.ok(), StatusText(got));
  for (const auto& [id, domain] : model_.domains) {
    for (const auto& [iova, mapping] : domain.live) {
      if (mapping.owner == requester) Cover("add device: requester id of a leaked mapping reused");
    }
  }
  ModelDevice& device = model_.devices[config.id];
  device.config = config;
  device.mask = MaskOf(config.dma_mask_bits);
  device.requester = requester;
}

void DifferentialIommu::RemoveDevice(const std::string& id) {
  Log(absl::StrCat("RemoveDevice ", id));
  absl::StatusOr<std::optional<DetachResult>> got = iommu_->RemoveDevice(id);
  Result(!got.ok() ? StatusText(got.status())
         : !got->has_value()
             ? "not attached"
             : absl::StrCat("detached from ", (*got)->domain_id, " leaked ",
                            (*got)->leaked.mappings, "/", Hex((*got)->leaked.bytes)));
  auto it = model_.devices.find(id);
  if (it == model_.devices.end()) return ExpectError(got.status(), absl::StatusCode::kNotFound, id);
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
  model_.devices.erase(it);
}

void DifferentialIommu::Attach(const std::string& device_id, const std::string& domain_id) {
  Log(absl::StrCat("Attach ", device_id, " to ", domain_id));
  absl::StatusOr<std::optional<DetachResult>> got = iommu_->Attach(device_id, domain_id);
  Result(!got.ok() ? StatusText(got.status())
         : !got->has_value()
             ? "OK"
             : absl::StrCat("moved from ", (*got)->domain_id, " leaked ", (*got)->leaked.mappings,
                            "/", Hex((*got)->leaked.bytes)));
  auto device = model_.devices.find(device_id);
  if (device == model_.devices.end()) {
    return ExpectError(got.status(), absl::StatusCode::kNotFound, device_id);
  }
  auto domain = model_.domains.find(domain_id);
  if (domain == model_.domains.end()) {
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

void DifferentialIommu::Detach(const std::string& device_id) {
  Log(absl::StrCat("Detach ", device_id));
  absl::StatusOr<DetachResult> got = iommu_->Detach(device_id);
  Result(got.ok() ? absl::StrCat("from ", got->domain_id, " leaked ", got->leaked.mappings, "/",
                                 Hex(got->leaked.bytes))
                  : StatusText(got.status()));
  auto device = model_.devices.find(device_id);
  if (device == model_.devices.end()) {
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

void DifferentialIommu::SetPolicy(const std::string& domain_id, Policy policy) {
  Log(absl::StrCat("SetPolicy ", domain_id, " ", PolicyName(policy)));
  const absl::Status got = iommu_->SetPolicy(domain_id, policy);
  Result(StatusText(got));
  auto it = model_.domains.find(domain_id);
  if (it == model_.domains.end()) return ExpectError(got, absl::StatusCode::kNotFound, domain_id);
  DIFF_EXPECT(got.ok(), StatusText(got));
  ModelDomain& domain = it->second;
  if (domain.policy == policy) return;
  Cover("set policy: changed");
  domain.policy = policy;
  if (policy == Policy::kParanoid) FlushModel(domain);
}

void DifferentialIommu::Flush(const std::string& domain_id) {
  Log(absl::StrCat("Flush ", domain_id));
  const absl::Status got = iommu_->Flush(domain_id);
  Result(StatusText(got));
  auto it = model_.domains.find(domain_id);
  if (it == model_.domains.end()) return ExpectError(got, absl::StatusCode::kNotFound, domain_id);
  DIFF_EXPECT(got.ok(), StatusText(got));
  FlushModel(it->second);
}

void DifferentialIommu::Maintain(bool everything_expired) {
  Log(absl::StrCat("Maintain at ", everything_expired ? "InfiniteFuture" : "InfinitePast"));
  iommu_->Maintain(everything_expired ? absl::InfiniteFuture() : absl::InfinitePast());
  if (!everything_expired) return;
  for (auto& [id, domain] : model_.domains) {
    if (domain.pending.empty()) continue;
    Cover("maintain: flush-queue timeout");
    ++domain.timeout_flushes;
    domain.pending.clear();
  }
}

void DifferentialIommu::SetAllowBypass(const std::string& device_id, bool allow) {
  Log(absl::StrCat("SetAllowBypass ", device_id, " ", allow));
  const absl::Status got = iommu_->SetAllowBypass(device_id, allow);
  Result(StatusText(got));
  auto it = model_.devices.find(device_id);
  if (it == model_.devices.end()) return ExpectError(got, absl::StatusCode::kNotFound, device_id);
  DIFF_EXPECT(got.ok(), StatusText(got));
  it->second.config.allow_bypass = allow;
}

// ---------------------------------------------------------------- Map

void DifferentialIommu::Map(const std::string& device_id, const MapRequest& request) {
  Log(absl::StrCat("Map ", device_id, " phys ", Hex(request.phys), " size ", Hex(request.size), " ",
                   PermsText(request.perms), " iova ",
                   request.has_iova ? Hex(request.iova) : "auto", " bypass ",
                   BypassText(request.bypass)));
  absl::StatusOr<MapResult> got = iommu_->Map(device_id, request);
  Result(got.ok()
             ? absl::StrCat("iova ", Hex(got->iova), " ", MappingKindName(got->kind), " leaves ",
                            got->leaves_4k, "/", got->leaves_2m, "/", got->leaves_1g,
                            !got->bypass_refusal.has_value()
                                ? ""
                                : absl::StrCat(" (refused: ", *got->bypass_refusal, ")"))
             : StatusText(got.status()));
  using Code = absl::StatusCode;
  auto device_it = model_.devices.find(device_id);
  if (device_it == model_.devices.end()) {
    return ExpectError(got.status(), Code::kNotFound, device_id);
  }
  ModelDevice& device = device_it->second;
  // NOTE: the code checks attachment before the arguments (docs/IOMMU.md
  // lists the argument checks first).
  if (device.domain.empty()) {
    return ExpectError(got.status(), Code::kFailedPrecondition, device_id);
  }
  ModelDomain& domain = model_.domains.at(device.domain);

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
                      !got->bypass_refusal.has_value(),
                  absl::StrCat("want bypass at ", Hex(kBypassBase + request.phys)));
      ++domain.bypass_maps;
      model_.unrecorded.push_back({got->iova, request.size});
      return;
    }
    if (request.bypass == BypassMode::kRequire) {
      Cover("map: bypass required, refused");
      return ExpectError(got.status(), code, refusal);
    }
    Cover("map: bypass preferred, refused");
  }
  auto check_refusal = [&]() {
    DIFF_EXPECT(refusal.empty() ? !got->bypass_refusal.has_value()
                                : absl::StrContains(got->bypass_refusal.value_or(""), refusal),
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
    model_.unrecorded.push_back({got->iova, request.size});
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
        const std::optional<uint64_t> free = domain.FreeBlock(footprint, limit);
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
void DifferentialIommu::CheckMapped(const absl::StatusOr<MapResult>& got, ModelDomain& domain,
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
  DIFF_EXPECT(refusal.empty() ? !got->bypass_refusal.has_value()
                              : absl::StrContains(got->bypass_refusal.value_or(""), refusal),
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
  model_.recent.push_back({device.config.id, iova, std::min(request.size, kMaxTranslate)});
  domain.live.emplace(iova, std::move(mapping));
}

// ---------------------------------------------------------------- Unmap

void DifferentialIommu::Unmap(const std::string& device_id, uint64_t iova, uint64_t size) {
  Log(absl::StrCat("Unmap ", device_id, " iova ", Hex(iova), " size ", Hex(size)));
  absl::StatusOr<UnmapResult> got = iommu_->Unmap(device_id, iova, size);
  Result(got.ok() ? absl::StrCat(Hex(got->bytes_unmapped), " bytes, ", got->mappings_removed,
                                 " mappings")
                  : StatusText(got.status()));
  using Code = absl::StatusCode;
  auto device_it = model_.devices.find(device_id);
  if (device_it == model_.devices.end()) {
    return ExpectError(got.status(), Code::kNotFound, device_id);
  }
  ModelDevice& device = device_it->second;
  if (device.domain.empty()) {
    return ExpectError(got.status(), Code::kFailedPrecondition, device_id);
  }
  ModelDomain& domain = model_.domains.at(device.domain);
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
  model_.recent.push_back({device_id, iova, std::min(size, kMaxTranslate)});
  domain.unmaps += removed.size();
  for (uint64_t at : removed) {
    auto node = domain.live.extract(at);
    if (domain.policy != Policy::kParanoid) Enqueue(domain, std::move(node.mapped()));
  }
}

// ---------------------------------------------------------------- Translate

void DifferentialIommu::Translate(const std::string& device_id, uint64_t iova, uint64_t size,
                                  Access access) {
  Log(absl::StrCat("Translate ", device_id, " iova ", Hex(iova), " size ", Hex(size), " ",
                   access == Access::kRead ? "read" : "write"));
  absl::StatusOr<TranslateResult> got = iommu_->Translate(device_id, iova, size, access);
  Result(got.ok() ? TranslateText(*got) : StatusText(got.status()));
  using Code = absl::StatusCode;
  auto device_it = model_.devices.find(device_id);
  if (device_it == model_.devices.end()) {
    return ExpectError(got.status(), Code::kNotFound, device_id);
  }
  ModelDevice& device = device_it->second;
  if (size == 0 || size > kMaxTranslate || !LastByte(iova, size)) {
    return ExpectError(got.status(), Code::kInvalidArgument, Hex(size));
  }
  if (device.domain.empty()) {
    DIFF_EXPECT(got.ok(), StatusText(got.status()));
    return ExpectFault(*got, nullptr, device, iova, access, FaultReason::kDeviceNotAttached);
  }
  ModelDomain& domain = model_.domains.at(device.domain);
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
    DIFF_EXPECT(!got->fault.has_value() && got->kind == MappingKind::kBypass && !got->stale &&
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
    if (got->fault.has_value() && got->fault->iova == cursor) {
      const FaultReason reason = got->fault->reason;
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
  DIFF_EXPECT(!got->fault.has_value(),
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

void DifferentialIommu::CheckState() {
  std::vector<std::string> domain_ids;
  for (const auto& [id, domain] : model_.domains) domain_ids.push_back(id);
  DIFF_EXPECT(iommu_->DomainIds() == domain_ids,
              absl::StrCat("DomainIds: ", absl::StrJoin(iommu_->DomainIds(), ",")));
  std::vector<std::string> device_ids;
  for (const auto& [id, device] : model_.devices) device_ids.push_back(id);
  DIFF_EXPECT(iommu_->DeviceIds() == device_ids,
              absl::StrCat("DeviceIds: ", absl::StrJoin(iommu_->DeviceIds(), ",")));
  for (const auto& [id, domain] : model_.domains) {
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
  for (const auto& [id, device] : model_.devices) {
    absl::StatusOr<DmaDebugCounts> counts = iommu_->DeviceDebugCounts(id);
    DIFF_EXPECT(counts.ok(), StatusText(counts.status()));
    DIFF_EXPECT(DebugText(*counts) == DebugText(device.debug),
                absl::StrCat("device ", id, " debug ", DebugText(*counts), ", want ",
                             DebugText(device.debug)));
  }
}

#undef DIFF_EXPECT

}  // namespace iommu_broker::reference
