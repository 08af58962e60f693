// Device is a DMA endpoint known to the broker: an id (a PCI address such as
// "0000:3b:00.0", or any name), the address bits its DMA can drive, the
// operator's allow_bypass setting, the requester id that tags its IOTLB
// entries and PTEs, and its DMA-API debugging counters.
//
// The Iommu creates devices and attaches them to domains; a Device only
// records where it is attached, for operations to find under an epoch guard.
//
// Thread-safety: thread-safe. id and requester are constant after
// construction; the DMA mask, allow_bypass, the attachment and the counters
// are atomics (the Iommu changes the mask only while the device is detached).
#ifndef IOMMU_BROKER_CORE_IOMMU_DEVICE_H_
#define IOMMU_BROKER_CORE_IOMMU_DEVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/iommu/dma_debug.h"

namespace iommu_broker {

class Domain;

struct DeviceConfig {
  std::string id = {};
  int dma_mask_bits = 64;  // 12..64
  bool allow_bypass = false;
};

// INVALID_ARGUMENT naming the field if `config` is unusable.
absl::Status ValidateDeviceConfig(const DeviceConfig& config);

class Device final {
 public:
  Device(const DeviceConfig& config, uint32_t requester);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& id() const { return id_; }
  uint32_t requester() const { return requester_; }
  int dma_mask_bits() const { return dma_mask_bits_.load(std::memory_order_relaxed); }
  // The highest address the device's DMA can drive.
  uint64_t dma_mask() const { return dma_mask_.load(std::memory_order_relaxed); }
  // `bits` must be valid (ValidateDeviceConfig).
  void set_dma_mask_bits(int bits);

  bool allow_bypass() const { return allow_bypass_.load(std::memory_order_relaxed); }
  void set_allow_bypass(bool allow) { allow_bypass_.store(allow, std::memory_order_relaxed); }

  // The domain it is attached to, or nullptr. Dereference only inside the
  // Iommu's epoch guard (a destroyed domain is freed after a grace period).
  Domain* domain() const { return domain_.load(std::memory_order_seq_cst); }
  void set_domain(Domain* domain) { domain_.store(domain, std::memory_order_seq_cst); }

  // DMA-API debugging events caused by this device.
  DmaDebugCounters& debug() { return debug_; }
  const DmaDebugCounters& debug() const { return debug_; }

 private:
  const std::string id_;
  const uint32_t requester_;
  std::atomic<int> dma_mask_bits_;
  std::atomic<uint64_t> dma_mask_;
  std::atomic<bool> allow_bypass_;
  std::atomic<Domain*> domain_{nullptr};
  DmaDebugCounters debug_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOMMU_DEVICE_H_
