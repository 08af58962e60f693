// DifferentialSequence generates one sequence of operations on the emulated
// IOMMU and runs it through the oracle (differential_iommu.h): set-up (two or
// three domains, three devices), random operations of every kind (domains,
// devices, attachment, policy, flush, maintenance, map, unmap, translate)
// biased towards the cases worth checking (collisions, reserved regions,
// aperture and DMA-mask edges, unaligned and wrapping ranges, stale IOTLB
// hits), and teardown (every leak reported, every counter final).
//
// Every decision comes from a Choices source: the differential test uses a
// seeded generator, the iommu_ops fuzzer its input bytes.
//
//   RandomChoices choices(seed);
//   DifferentialSequence sequence(Scenario::kFast, choices, /*coverage=*/nullptr);
//   if (!sequence.Run(/*max_ops=*/80)) std::cerr << sequence.Report();
//
// Thread-safety: not thread-safe.
#ifndef IOMMU_BROKER_TESTS_CORE_DIFFERENTIAL_SEQUENCE_H_
#define IOMMU_BROKER_TESTS_CORE_DIFFERENTIAL_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/iommu/iommu.h"
#include "tests/core/choices.h"
#include "tests/core/differential_iommu.h"
#include "tests/core/reference_model.h"

namespace iommu_broker::reference {

// The policy of the sequence's domains (SetPolicy may still change them).
enum class Scenario { kParanoid, kFast, kPassthrough, kFastIdentity };
inline constexpr Scenario kScenarios[] = {Scenario::kParanoid, Scenario::kFast,
                                          Scenario::kPassthrough, Scenario::kFastIdentity};
Policy ScenarioPolicy(Scenario scenario);
std::string ScenarioName(Scenario scenario);  // "Paranoid", "Fast", ...

class DifferentialSequence final {
 public:
  // `choices` must outlive the sequence; `coverage` may be null.
  DifferentialSequence(Scenario scenario, Choices& choices, DifferentialIommu::Coverage* coverage)
      : scenario_(scenario), choices_(choices), coverage_(coverage) {}
  DifferentialSequence(const DifferentialSequence&) = delete;
  DifferentialSequence& operator=(const DifferentialSequence&) = delete;

  // Runs set-up, at most `max_ops` random operations (fewer once the
  // choices are exhausted) and teardown; false at the first difference.
  bool Run(int max_ops);
  // The scenario and the oracle's report of the difference.
  std::string Report() const;

 private:
  const ReferenceModel& model() const { return oracle_->model(); }

  // ---- Decisions
  uint64_t Uniform(uint64_t low, uint64_t high) { return choices_.Uniform(low, high); }
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

  const Scenario scenario_;
  Choices& choices_;
  DifferentialIommu::Coverage* const coverage_;
  std::unique_ptr<DifferentialIommu> oracle_;  // created by Run
};

}  // namespace iommu_broker::reference

#endif  // IOMMU_BROKER_TESTS_CORE_DIFFERENTIAL_SEQUENCE_H_
