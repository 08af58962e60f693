#include "core/iommu/device.h"

#include "absl/strings/str_cat.h"
#include "core/iommu/id.h"

namespace iommu_broker {
namespace {

uint64_t MaskOf(int bits) { return bits >= 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1; }

}  // namespace

absl::Status ValidateDeviceConfig(const DeviceConfig& config) {
  if (absl::Status status = ValidateId("device id", config.id); !status.ok()) return status;
  if (config.dma_mask_bits < 12 || config.dma_mask_bits > 64) {
    return absl::InvalidArgumentError(absl::StrCat("device ", config.id, ": dma_mask_bits ",
                                                   config.dma_mask_bits, " is not in [12, 64]"));
  }
  return absl::OkStatus();
}

Device::Device(const DeviceConfig& config, uint32_t requester)
    : id_(config.id),
      requester_(requester),
      dma_mask_bits_(config.dma_mask_bits),
      dma_mask_(MaskOf(config.dma_mask_bits)),
      allow_bypass_(config.allow_bypass) {}

void Device::set_dma_mask_bits(int bits) {
  dma_mask_bits_.store(bits, std::memory_order_relaxed);
  dma_mask_.store(MaskOf(bits), std::memory_order_relaxed);
}

}  // namespace iommu_broker
