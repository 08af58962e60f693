// MeasureCpuClockGhz() reads the clock the calling thread's core runs at right
// now, by timing a chain of dependent register additions (one a cycle on any
// x86-64 or Arm64 core). The benchmarks report it beside their times and turn times into
// cycles with it, because on the VMs they run on the clock is not what the
// machine says: /proc/cpuinfo and Google Benchmark's context show the nominal
// 2.6 GHz while the host boosts the vCPUs anywhere from 3.4 to 4.2 GHz, and
// the VM exposes no cycle counter (perf reports cycles "not supported").
//
//   if (std::optional<double> ghz = MeasureCpuClockGhz()) {
//     state.counters["cpu_ghz"] = *ghz;
//   }
//
// Takes about 5 ms. Thread-safe.
#ifndef IOMMU_BROKER_BENCH_CPU_CLOCK_H_
#define IOMMU_BROKER_BENCH_CPU_CLOCK_H_

#include <optional>

namespace iommu_broker {

// The core's current clock in GHz; nullopt on architectures other than x86-64
// and Arm64.
std::optional<double> MeasureCpuClockGhz();

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_BENCH_CPU_CLOCK_H_
