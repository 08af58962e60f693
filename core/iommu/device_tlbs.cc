#include "core/iommu/device_tlbs.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace iommu_broker {

absl::StatusOr<std::shared_ptr<DeviceTlbPort>> DeviceTlbs::Link(std::shared_ptr<Device> device,
                                                                size_t capacity) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::erase_if(ports_, [](const auto& port) { return !port->status().ok(); });
  for (const std::shared_ptr<DeviceTlbPort>& port : ports_) {
    if (&port->device() == device.get()) {
      return absl::AlreadyExistsError(
          absl::StrCat("device ", device->id(), " already has a linked IOTLB"));
    }
  }
  ports_.push_back(std::make_shared<DeviceTlbPort>(std::move(device), capacity,
                                                   options_.ack_timeout));
  linked_.store(ports_.size(), std::memory_order_release);
  return ports_.back();
}

template <typename Predicate>
std::vector<std::shared_ptr<DeviceTlbPort>> DeviceTlbs::LinkedPorts(Predicate wanted) {
  std::vector<std::shared_ptr<DeviceTlbPort>> matching;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const std::shared_ptr<DeviceTlbPort>& port : ports_) {
    if (wanted(*port)) matching.push_back(port);
  }
  return matching;
}

std::shared_ptr<Completion> DeviceTlbs::SendToDomain(const Domain* domain,
                                                     absl::Span<const InvalidationEvent> events,
                                                     absl::AnyInvocable<void()> after_acks) {
  std::vector<std::shared_ptr<DeviceTlbPort>> ports = LinkedPorts(
      [domain](const DeviceTlbPort& port) { return port.device().domain() == domain; });
  if (ports.empty()) return nullptr;
  const absl::Time now = absl::Now();
  if (!after_acks) {
    for (const auto& port : ports) port->Send(events, nullptr, now);
    return nullptr;
  }
  // One party per cache, plus this call until it has sent to all of them.
  auto acked = std::make_shared<Completion>(static_cast<int>(ports.size()) + 1,
                                            std::move(after_acks));
  for (const auto& port : ports) {
    if (!port->Send(events, acked, now)) acked->Arrive();  // unlinked meanwhile
  }
  acked->Arrive();
  return acked;
}

void DeviceTlbs::SendToDevice(const Device& device, const InvalidationEvent& event) {
  std::vector<std::shared_ptr<DeviceTlbPort>> ports =
      LinkedPorts([&device](const DeviceTlbPort& port) { return &port.device() == &device; });
  for (const auto& port : ports) port->Send({&event, 1}, nullptr, absl::Now());
}

void DeviceTlbs::CutOffOverdue(absl::Time now) {
  std::vector<std::shared_ptr<DeviceTlbPort>> ports =
      LinkedPorts([](const DeviceTlbPort&) { return true; });
  for (const auto& port : ports) port->CutOffIfOverdue(now);
  std::lock_guard<std::mutex> lock(mutex_);
  std::erase_if(ports_, [](const auto& port) { return !port->status().ok(); });
  linked_.store(ports_.size(), std::memory_order_release);
}


void DeviceTlbs::CloseAll() {
  std::vector<std::shared_ptr<DeviceTlbPort>> ports;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ports.swap(ports_);
    linked_.store(0, std::memory_order_release);
  }
  for (const auto& port : ports) port->Close();
}

}  // namespace iommu_broker
