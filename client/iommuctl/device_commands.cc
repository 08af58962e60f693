// device register|list|get|update|unregister|attach|detach
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/iommuctl/commands.h"
#include "client/iommuctl/table.h"

namespace iommu_broker::iommuctl {
namespace {

using client::BrokerClient;

std::string DeviceTable(const v1::ListDevicesResponse& reply) {
  Table table({"ID", "DOMAIN", "DMA_MASK_BITS", "ALLOW_BYPASS", "REQUESTER_ID", "LEAKED"});
  for (const v1::Device& device : reply.devices()) {
    table.AddRow({device.spec().id(), device.domain_id().empty() ? "-" : device.domain_id(),
                  absl::StrCat(device.spec().dma_mask_bits()),
                  device.spec().allow_bypass() ? "yes" : "no",
                  absl::StrCat(device.requester_id()),
                  absl::StrCat(device.debug().leaked_mappings())});
  }
  return table.Render();
}

// The positional device id every device subcommand starts with.
void AddDeviceId(CLI::App& command, std::string* id) {
  command.add_option("device", *id, "Device id, e.g. a PCI address 0000:3b:00.0")->required();
}

void AddRegister(CLI::App& device, Cli& cli) {
  CLI::App* command = device.add_subcommand("register", "Register a device");
  auto request = std::make_shared<v1::RegisterDeviceRequest>();
  v1::DeviceSpec* spec = request->mutable_device();
  AddDeviceId(*command, spec->mutable_id());
  command->add_option_function<uint32_t>(
      "--dma-mask-bits", [spec](uint32_t bits) { spec->set_dma_mask_bits(bits); },
      "Address bits the device's DMA drives, 12-64 (default 64)");
  command->add_flag_function(
      "--allow-bypass", [spec](int64_t) { spec->set_allow_bypass(true); },
      "Consent to bypass on fast domains when the driver asks for it");
  command->callback([&cli, request] { cli.Call(&BrokerClient::RegisterDevice, *request); });
}

void AddListDevices(CLI::App& device, Cli& cli) {
  CLI::App* command = device.add_subcommand("list", "List devices");
  auto request = std::make_shared<v1::ListDevicesRequest>();
  command->add_option("--domain", *request->mutable_domain_id(),
                      "Only devices attached to this domain");
  command->callback(
      [&cli, request] { cli.Call(&BrokerClient::ListDevices, *request, DeviceTable); });
}

void AddGetDevice(CLI::App& device, Cli& cli) {
  CLI::App* command = device.add_subcommand("get", "Show a device");
  auto request = std::make_shared<v1::GetDeviceRequest>();
  AddDeviceId(*command, request->mutable_device_id());
  command->callback([&cli, request] { cli.Call(&BrokerClient::GetDevice, *request); });
}

void AddUpdate(CLI::App& device, Cli& cli) {
  CLI::App* command =
      device.add_subcommand("update", "Change a device's settings; unset ones stay");
  auto request = std::make_shared<v1::UpdateDeviceRequest>();
  AddDeviceId(*command, request->mutable_device_id());
  command->add_option_function<uint32_t>(
      "--dma-mask-bits", [request](uint32_t bits) { request->set_dma_mask_bits(bits); },
      "Address bits, 12-64; only while the device is detached");
  command->add_option_function<bool>(
      "--allow-bypass", [request](bool allow) { request->set_allow_bypass(allow); },
      "true or false");
  command->callback([&cli, request] { cli.Call(&BrokerClient::UpdateDevice, *request); });
}

void AddUnregister(CLI::App& device, Cli& cli) {
  CLI::App* command =
      device.add_subcommand("unregister", "Remove a device (detaching it first); reports leaks");
  auto request = std::make_shared<v1::UnregisterDeviceRequest>();
  AddDeviceId(*command, request->mutable_device_id());
  command->callback([&cli, request] { cli.Call(&BrokerClient::UnregisterDevice, *request); });
}

void AddAttach(CLI::App& device, Cli& cli) {
  CLI::App* command = device.add_subcommand(
      "attach", "Attach a device to a domain (moving it if attached elsewhere)");
  auto request = std::make_shared<v1::AttachDeviceRequest>();
  AddDeviceId(*command, request->mutable_device_id());
  command->add_option("domain", *request->mutable_domain_id(), "Domain id")->required();
  command->callback([&cli, request] { cli.Call(&BrokerClient::AttachDevice, *request); });
}

void AddDetach(CLI::App& device, Cli& cli) {
  CLI::App* command =
      device.add_subcommand("detach", "Detach a device from its domain; reports leaks");
  auto request = std::make_shared<v1::DetachDeviceRequest>();
  AddDeviceId(*command, request->mutable_device_id());
  command->callback([&cli, request] { cli.Call(&BrokerClient::DetachDevice, *request); });
}

}  // namespace

void AddDeviceCommands(CLI::App& app, Cli& cli) {
  CLI::App* device = app.add_subcommand("device", "Register, attach and inspect devices");
  device->require_subcommand(1);
  AddRegister(*device, cli);
  AddListDevices(*device, cli);
  AddGetDevice(*device, cli);
  AddUpdate(*device, cli);
  AddUnregister(*device, cli);
  AddAttach(*device, cli);
  AddDetach(*device, cli);
}

}  // namespace iommu_broker::iommuctl
