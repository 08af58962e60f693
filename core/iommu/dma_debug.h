// DmaDebugCounters counts DMA-API misuse as the kernel's DMA-API debugging
// does, once per domain and once per device: unmaps that would split a
// mapping (wrong size), unmaps of nothing (double unmap), translations of
// unmapped IOVAs (DMA after unmap), and mappings still live at detach or
// destroy (leaks).
//
// Thread-safety: thread-safe (relaxed atomics; these are error paths).
#ifndef IOMMU_BROKER_CORE_IOMMU_DMA_DEBUG_H_
#define IOMMU_BROKER_CORE_IOMMU_DMA_DEBUG_H_

#include <atomic>
#include <cstdint>

#include "core/iommu/types.h"

namespace iommu_broker {

class DmaDebugCounters final {
 public:
  void CountWrongSizeUnmap() { Add(wrong_size_unmaps_, 1); }
  void CountDoubleUnmap() { Add(double_unmaps_, 1); }
  void CountDmaAfterUnmap() { Add(dma_after_unmap_, 1); }
  void CountLeaks(uint64_t mappings, uint64_t bytes) {
    Add(leaked_mappings_, mappings);
    Add(leaked_bytes_, bytes);
  }

  DmaDebugCounts Snapshot() const {
    DmaDebugCounts counts;
    counts.wrong_size_unmaps = wrong_size_unmaps_.load(std::memory_order_relaxed);
    counts.double_unmaps = double_unmaps_.load(std::memory_order_relaxed);
    counts.dma_after_unmap = dma_after_unmap_.load(std::memory_order_relaxed);
    counts.leaked_mappings = leaked_mappings_.load(std::memory_order_relaxed);
    counts.leaked_bytes = leaked_bytes_.load(std::memory_order_relaxed);
    return counts;
  }

 private:
  static void Add(std::atomic<uint64_t>& counter, uint64_t delta) {
    counter.fetch_add(delta, std::memory_order_relaxed);
  }

  std::atomic<uint64_t> wrong_size_unmaps_{0};
  std::atomic<uint64_t> double_unmaps_{0};
  std::atomic<uint64_t> dma_after_unmap_{0};
  std::atomic<uint64_t> leaked_mappings_{0};
  std::atomic<uint64_t> leaked_bytes_{0};
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_DMA_DEBUG_H_
