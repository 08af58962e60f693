#include "tests/core/differential_sequence.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace iommu_broker::reference {

Policy ScenarioPolicy(Scenario scenario) {
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

bool DifferentialSequence::Run(int max_ops) {
  // Few requester ids, so removed devices' ids come back; few domains.
  const IommuOptions defaults;
  const size_t max_devices = Chance(50) ? 3 : defaults.max_devices;
  const size_t max_domains = Chance(30) ? 2 : defaults.max_domains;
  oracle_ = std::make_unique<DifferentialIommu>(max_devices, max_domains, coverage_);
  DifferentialIommu& oracle = *oracle_;
  if (oracle.failed()) return false;
  oracle.CreateDomain(Template("a"));
  oracle.EndStep();
  oracle.CreateDomain(Template("b"));
  oracle.EndStep();
  if (Chance(40)) {
    oracle.CreateDomain(Template("c"));
    oracle.EndStep();
  }
  for (int i = 0; i < 3 && !oracle.failed(); ++i) {
    const std::string id = absl::StrCat("dev", i);
    oracle.AddDevice(RandomDeviceConfig(id));
    oracle.EndStep();
    if (!oracle.failed() && Chance(90)) {
      oracle.Attach(id, PickDomain());
      oracle.EndStep();
    }
  }
  for (int op = 0; op < max_ops && !oracle.failed() && !choices_.exhausted(); ++op) {
    RandomOp();
    oracle.EndStep();
  }
  // Teardown: every leak reported, every counter final.
  std::vector<std::string> device_ids;
  for (const auto& [id, device] : model().devices) device_ids.push_back(id);
  for (const std::string& id : device_ids) {
    if (!oracle.failed() && !model().devices.at(id).domain.empty() && Chance(50)) {
      oracle.Detach(id);
      oracle.EndStep();
    }
  }
  std::vector<std::string> domain_ids;
  for (const auto& [id, domain] : model().domains) domain_ids.push_back(id);
  for (const std::string& id : domain_ids) {
    if (oracle.failed()) break;
    oracle.DestroyDomain(id, /*force=*/true);
    oracle.EndStep();
  }
  for (const std::string& id : device_ids) {
    if (oracle.failed()) break;
    oracle.RemoveDevice(id);
    oracle.EndStep();
  }
  oracle.CheckFaultSubscription();
  return !oracle.failed();
}

std::string DifferentialSequence::Report() const {
  return absl::StrCat("scenario ", ScenarioName(scenario_), ", ",
                      oracle_ != nullptr ? oracle_->Report() : "not run");
}

std::vector<const ModelMapping*> DifferentialSequence::Mappings(const ModelDomain* domain,
                                                                bool live, bool pending) {
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

std::string DifferentialSequence::PickDevice() {
  if (!model().devices.empty() && Chance(95)) {
    auto it = model().devices.begin();
    std::advance(it, Uniform(0, model().devices.size() - 1));
    return it->first;
  }
  return Chance(50) ? "ghost" : absl::StrCat("dev", Uniform(0, 3));
}

std::string DifferentialSequence::PickDomain() {
  if (!model().domains.empty() && Chance(92)) {
    auto it = model().domains.begin();
    std::advance(it, Uniform(0, model().domains.size() - 1));
    return it->first;
  }
  static constexpr const char* kIds[] = {"a", "b", "c", "nowhere"};
  return kIds[Uniform(0, 3)];
}

// Small apertures so fixed and automatic maps collide; reserved regions
// inside them; page sizes with and without 2 MiB; a small flush queue, IOTLB
// and mapping limit on "b"; "c" lies above 4 GiB, out of a 32-bit device's
// reach.
DomainConfig DifferentialSequence::Template(const std::string& id) {
  DomainConfig config;
  config.id = id;
  config.policy = ScenarioPolicy(scenario_);
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

DeviceConfig DifferentialSequence::RandomDeviceConfig(const std::string& id) {
  static constexpr int kBits[] = {28, 32, 32, 36, 64, 64, 64};
  DeviceConfig config;
  config.id = id;
  config.dma_mask_bits = Chance(4) ? (Chance(50) ? 11 : 65) : kBits[Uniform(0, 6)];
  config.allow_bypass = Chance(50);
  return config;
}

uint64_t DifferentialSequence::RandomSize(const ModelDomain* domain) {
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

uint64_t DifferentialSequence::RandomPhys(uint64_t size, const ModelDomain* domain) {
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

uint64_t DifferentialSequence::RandomFixedIova(const ModelDomain* domain, const ModelDevice* device,
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

MapRequest DifferentialSequence::RandomMap(const ModelDomain* domain, const ModelDevice* device) {
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

std::pair<uint64_t, uint64_t> DifferentialSequence::RandomUnmap(const ModelDomain* domain) {
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
  if (roll < 76 && !model().unrecorded.empty()) return PickFrom(model().unrecorded);
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

std::pair<uint64_t, uint64_t> DifferentialSequence::RandomTranslate(const ModelDomain* domain,
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
  if (roll < 85 && !model().unrecorded.empty()) {
    const auto& [iova, size] = PickFrom(model().unrecorded);
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

void DifferentialSequence::RandomOp() {
  const uint64_t roll = Uniform(0, 99);
  if (roll < 30) {
    const std::string device_id = PickDevice();
    auto device = model().devices.find(device_id);
    const ModelDevice* model_device = device == model().devices.end() ? nullptr : &device->second;
    const ModelDomain* domain = nullptr;
    if (model_device != nullptr && !model_device->domain.empty()) {
      domain = &model().domains.at(model_device->domain);
    }
    oracle_->Map(device_id, RandomMap(domain, model_device));
  } else if (roll < 52) {
    const std::string device_id = PickDevice();
    auto device = model().devices.find(device_id);
    const ModelDomain* domain = nullptr;
    if (device != model().devices.end() && !device->second.domain.empty()) {
      domain = &model().domains.at(device->second.domain);
    }
    const auto [iova, size] = RandomUnmap(domain);
    oracle_->Unmap(device_id, iova, size);
  } else if (roll < 82) {
    if (!model().recent.empty() && Chance(40)) {
      // What a device just mapped (or unmapped), by that device or another.
      const RecentRange& recent =
          model().recent[model().recent.size() - 1 -
                         Uniform(0, std::min<uint64_t>(model().recent.size() - 1, 3))];
      const uint64_t offset = Chance(50) ? 0 : Uniform(0, recent.size - 1);
      oracle_->Translate(Chance(75) ? recent.device : PickDevice(), recent.iova + offset,
                         Uniform(1, recent.size - offset),
                         Chance(50) ? Access::kRead : Access::kWrite);
      return;
    }
    const std::string device_id = PickDevice();
    auto device = model().devices.find(device_id);
    const ModelDevice* model_device = device == model().devices.end() ? nullptr : &device->second;
    const ModelDomain* domain = nullptr;
    if (model_device != nullptr && !model_device->domain.empty()) {
      domain = &model().domains.at(model_device->domain);
    }
    const auto [iova, size] = RandomTranslate(domain, model_device);
    oracle_->Translate(device_id, iova, size, Chance(50) ? Access::kRead : Access::kWrite);
  } else if (roll < 86) {
    oracle_->Attach(PickDevice(), PickDomain());
  } else if (roll < 88) {
    oracle_->Detach(PickDevice());
  } else if (roll < 90) {
    oracle_->AddDevice(RandomDeviceConfig(absl::StrCat("dev", Uniform(0, 3))));
  } else if (roll < 91) {
    oracle_->RemoveDevice(PickDevice());
  } else if (roll < 93) {
    static constexpr const char* kIds[] = {"a", "b", "c"};
    DomainConfig config = Template(kIds[Uniform(0, 2)]);
    if (Chance(10)) config.aperture_first = 0x800;                          // invalid
    if (Chance(5)) config.iommu_unit = 2;                                   // no such unit
    if (Chance(5)) config.identity_first = config.policy != Policy::kFast;  // invalid
    oracle_->CreateDomain(config);
  } else if (roll < 94) {
    oracle_->DestroyDomain(PickDomain(), Chance(50));
  } else if (roll < 96) {
    const Policy policies[] = {Policy::kParanoid, Policy::kFast, Policy::kPassthrough};
    oracle_->SetPolicy(PickDomain(),
                       Chance(50) ? ScenarioPolicy(scenario_) : policies[Uniform(0, 2)]);
  } else if (roll < 97) {
    oracle_->Flush(PickDomain());
  } else if (roll < 98) {
    oracle_->Maintain(Chance(70));
  } else {
    oracle_->SetAllowBypass(PickDevice(), Chance(50));
  }
}

}  // namespace iommu_broker::reference
