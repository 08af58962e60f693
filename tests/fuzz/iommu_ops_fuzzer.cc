// libFuzzer target: operation sequences on the emulated IOMMU (core/iommu),
// checked against the reference model. The input bytes are the decisions
// of a DifferentialSequence (tests/core/differential_sequence.h), the same
// generator the differential test drives with a seeded PRNG: the first
// byte picks the scenario (paranoid, fast, pt, fast with identity_first),
// the rest the set-up, the operations (until the input runs out, at most
// kMaxOps) and the teardown. Any disagreement between the engine and the
// model prints the oracle's report (op log and model) and aborts, which
// libFuzzer reports as a crash; so do sanitizer findings and leaks.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>

#include "absl/strings/string_view.h"
#include "tests/core/differential_sequence.h"
#include "tests/fuzz/byte_choices.h"

namespace iommu_broker::reference {
namespace {

// Beyond the differential test's 80: long enough for flush queues to fill
// and requester ids to come back, short enough for many inputs a second.
constexpr int kMaxOps = 120;

void RunOne(absl::string_view input) {
  ByteChoices choices(input);
  const Scenario scenario = kScenarios[choices.Uniform(0, std::size(kScenarios) - 1)];
  DifferentialSequence sequence(scenario, choices, /*coverage=*/nullptr);
  if (sequence.Run(kMaxOps)) return;
  std::fprintf(stderr, "iommu_ops_fuzzer: the engine and the reference model disagree\n%s\n",
               sequence.Report().c_str());
  std::abort();
}

}  // namespace
}  // namespace iommu_broker::reference

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  iommu_broker::reference::RunOne(absl::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
