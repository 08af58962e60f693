#include "bench/cpu_clock.h"

#include <chrono>
#include <cstdint>
#include <optional>

#include "absl/base/attributes.h"

namespace iommu_broker {
namespace {

// Eight additions of a register to another per round: each waits for the one
// before, so a round takes eight cycles whatever the core's width, and the
// loop's own counter and branch run alongside. A register, not an immediate:
// the Xeon this VM runs on (Sapphire Rapids or later: it has AMX) folds
// chains of immediate additions at rename, several a cycle (this loop with
// `add $1` read 22 GHz).
#if defined(__x86_64__)
#define IOMMU_BENCH_ADD_ONE "add %1, %0\n\t"
#elif defined(__aarch64__)
#define IOMMU_BENCH_ADD_ONE "add %0, %0, %1\n\t"
#endif

#ifdef IOMMU_BENCH_ADD_ONE
constexpr int kAddsPerRound = 8;

void RunDependentAdds(uint64_t rounds) {
  uint64_t chain = 0;
  const uint64_t one = 1;
  for (uint64_t round = 0; round < rounds; ++round) {
    asm volatile(IOMMU_BENCH_ADD_ONE IOMMU_BENCH_ADD_ONE IOMMU_BENCH_ADD_ONE IOMMU_BENCH_ADD_ONE
                     IOMMU_BENCH_ADD_ONE IOMMU_BENCH_ADD_ONE IOMMU_BENCH_ADD_ONE
                         IOMMU_BENCH_ADD_ONE
                 : "+r"(chain)
                 : "r"(one));
  }
}
#endif

}  // namespace

// Out of line, so that callgrind can leave it out of a benchmark's count
// (scripts/instructions.sh): its toggles act on function entry.
ABSL_ATTRIBUTE_NOINLINE std::optional<double> MeasureCpuClockGhz() {
#ifdef IOMMU_BENCH_ADD_ONE
  // 2.5 million rounds: 20 million cycles, ~5 ms at 4 GHz. Long enough that
  // the clock reads and an interrupt or two do not show; short enough to run
  // after every benchmark run.
  constexpr uint64_t kRounds = 2'500'000;
  RunDependentAdds(kRounds / 10);  // wakes the core up to its running clock
  const auto start = std::chrono::steady_clock::now();
  RunDependentAdds(kRounds);
  const std::chrono::duration<double, std::nano> elapsed =
      std::chrono::steady_clock::now() - start;
  return static_cast<double>(kRounds * kAddsPerRound) / elapsed.count();
#else
  return std::nullopt;
#endif
}

}  // namespace iommu_broker
