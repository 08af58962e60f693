// CpuRelax() is one turn of a spin-wait loop: it tells the CPU (and, through
// pause-loop exiting, a hypervisor) that this thread is spinning, so that a
// sibling hyperthread or the lock holder's vCPU gets the resources.
//
//   while (!ready.load(std::memory_order_acquire)) CpuRelax();
//
// Thread-safety: stateless.
#ifndef IOMMU_BROKER_CORE_UTIL_CPU_RELAX_H_
#define IOMMU_BROKER_CORE_UTIL_CPU_RELAX_H_

namespace iommu_broker {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_UTIL_CPU_RELAX_H_
