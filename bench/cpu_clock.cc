#include "bench/cpu_clock.h"

#include <algorithm>
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
  // Eight samples of 2.5 million cycles (~0.6 ms at 4 GHz), and the fastest
  // wins: a shared host takes the vCPU away now and then (steal), which only
  // ever makes a sample slow. One 5 ms sample read anywhere from 3.4 to
  // 4.1 GHz within a second; the fastest of eight reads one of the host's
  // 100 MHz clock steps, the same one from call to call nearly always.
  constexpr uint64_t kRounds = 2'500'000 / kAddsPerRound;
  constexpr int kSamples = 8;
  RunDependentAdds(kRounds);  // wakes the core up to its running clock
  double fastest = 0;
  for (int sample = 0; sample < kSamples; ++sample) {
    const auto start = std::chrono::steady_clock::now();
    RunDependentAdds(kRounds);
    const std::chrono::duration<double, std::nano> elapsed =
        std::chrono::steady_clock::now() - start;
    fastest = std::max(fastest, static_cast<double>(kRounds * kAddsPerRound) / elapsed.count());
  }
  return fastest;
#else
  return std::nullopt;
#endif
}

}  // namespace iommu_broker
