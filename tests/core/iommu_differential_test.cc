// Differential (model-based) test of Iommu: seeded random sequences of every
// operation (differential_sequence.h) run against the engine and against the
// reference model (reference_model.h, differential_iommu.h), for each policy
// (paranoid, fast, pt, and fast with identity_first). Every result and error
// code must agree; so must the domain statistics, the DMA-API debug
// counters, the fault logs and the leak reports. The iommu_ops fuzzer
// (tests/fuzz/) runs the same sequences with its input bytes as choices.
//
// On a difference the test prints the scenario, the seed, the op index, the
// op log and the model. Environment:
//   IOMMU_DIFF_SEED=<seed>        run only that sequence (in each scenario)
//   IOMMU_DIFF_BASE_SEED=<n>      vary the seeds (default fixed)
//   IOMMU_DIFF_SEQUENCES=<n>      sequences per scenario
//   IOMMU_DIFF_OPS=<n>            random operations per sequence
//   IOMMU_DIFF_COVERAGE=1         print how often each interesting case came up
// Sanitizer builds run fewer sequences by default.
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/core/differential_iommu.h"
#include "tests/core/differential_sequence.h"
#include "tests/core/random_choices.h"

namespace iommu_broker::reference {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDefaultSequences = 1200;
#else
constexpr int kDefaultSequences = 3000;
#endif
constexpr int kDefaultOps = 80;

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

// The seed and how to run it alone, then the sequence's report.
std::string Reproduce(Scenario scenario, uint64_t seed, const DifferentialSequence& sequence) {
  return absl::StrCat("seed ", seed, "; reproduce: IOMMU_DIFF_SEED=", seed,
                      " iommu_differential_test --gtest_filter='*", ScenarioName(scenario), "*'\n",
                      sequence.Report());
}

class IommuDifferentialTest : public ::testing::TestWithParam<Scenario> {};

TEST_P(IommuDifferentialTest, RandomSequencesMatchTheModel) {
  const Scenario scenario = GetParam();
  DifferentialIommu::Coverage coverage;
  const int ops = static_cast<int>(EnvNumber("IOMMU_DIFF_OPS").value_or(kDefaultOps));
  if (std::optional<uint64_t> seed = EnvNumber("IOMMU_DIFF_SEED")) {
    RandomChoices choices(*seed);
    DifferentialSequence sequence(scenario, choices, &coverage);
    EXPECT_TRUE(sequence.Run(ops)) << Reproduce(scenario, *seed, sequence);
    return;
  }
  const uint64_t sequences = EnvNumber("IOMMU_DIFF_SEQUENCES").value_or(kDefaultSequences);
  const uint64_t base = EnvNumber("IOMMU_DIFF_BASE_SEED").value_or(0x5eed0000);
  std::seed_seq mix{base, static_cast<uint64_t>(scenario)};
  std::mt19937_64 seeds(mix);
  for (uint64_t i = 0; i < sequences; ++i) {
    const uint64_t seed = seeds();
    RandomChoices choices(seed);
    DifferentialSequence sequence(scenario, choices, &coverage);
    if (!sequence.Run(ops)) {
      ADD_FAILURE() << "sequence " << i << " of " << sequences << ": "
                    << Reproduce(scenario, seed, sequence);
      return;  // one reproducible failure is enough
    }
  }
  if (std::getenv("IOMMU_DIFF_COVERAGE") != nullptr) {
    for (const auto& [what, count] : coverage) std::cout << "  " << what << ": " << count << "\n";
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, IommuDifferentialTest, ::testing::ValuesIn(kScenarios),
                         [](const ::testing::TestParamInfo<Scenario>& info) {
                           return ScenarioName(info.param);
                         });

}  // namespace
}  // namespace iommu_broker::reference
