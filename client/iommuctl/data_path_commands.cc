// map, unmap, translate, flush
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/iommuctl/arguments.h"
#include "client/iommuctl/commands.h"

namespace iommu_broker::iommuctl {
namespace {

using client::BrokerClient;

absl::StatusOr<v1::Permissions> ParsePermissions(absl::string_view field,
                                                 absl::string_view text) {
  v1::Permissions permissions;
  permissions.set_read(text == "r" || text == "rw");
  permissions.set_write(text == "w" || text == "rw");
  if (!permissions.read() && !permissions.write()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " '", text, "' is not a permission: use r, w or rw"));
  }
  return permissions;
}

void AddMap(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "map", "Map [phys, phys + size) for a device's DMA; prints the IOVA");
  auto request = std::make_shared<v1::MapRequest>();
  request->mutable_permissions()->set_read(true);
  request->mutable_permissions()->set_write(true);
  command->add_option("device", *request->mutable_device_id(), "Device id")->required();
  AddAddressArgument(
      *command, "phys", [request](uint64_t phys) { request->set_phys(phys); },
      "Physical address, granule-aligned (0x40000000, 1G)")
      ->required();
  AddSizeArgument(
      *command, "size", [request](uint64_t size) { request->set_size(size); },
      "Bytes to map, granule-aligned (4K, 2M, 0x1000)")
      ->required();
  AddAddressArgument(
      *command, "--iova", [request](uint64_t iova) { request->set_iova(iova); },
      "Map exactly here (virtio-iommu / VFIO style); default: the broker picks");
  AddParsedArgument<v1::Permissions>(
      *command, "--perm", "r|w|rw", ParsePermissions,
      [request](v1::Permissions permissions) { *request->mutable_permissions() = permissions; },
      "What the device may do: read, write or both (default rw)");
  AddEnumArgument<v1::BypassMode>(
      *command, "--bypass", [request](v1::BypassMode mode) { request->set_bypass(mode); },
      "Ask for bypass; the operator's allow_bypass and the policy decide (default none)");
  command->callback([&cli, request] { cli.Call(&BrokerClient::Map, *request); });
}

void AddUnmap(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "unmap", "Unmap every mapping wholly inside [iova, iova + size)");
  auto request = std::make_shared<v1::UnmapRequest>();
  command->add_option("device", *request->mutable_device_id(), "Device id")->required();
  AddAddressArgument(
      *command, "iova", [request](uint64_t iova) { request->set_iova(iova); }, "First IOVA")
      ->required();
  AddSizeArgument(
      *command, "size", [request](uint64_t size) { request->set_size(size); }, "Bytes")
      ->required();
  command->callback([&cli, request] { cli.Call(&BrokerClient::Unmap, *request); });
}

void AddTranslate(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "translate", "What the device's DMA at an IOVA would reach: segments, or a fault");
  auto request = std::make_shared<v1::TranslateRequest>();
  request->set_size(1);
  request->set_access(v1::ACCESS_READ);
  command->add_option("device", *request->mutable_device_id(), "Device id")->required();
  AddAddressArgument(
      *command, "iova", [request](uint64_t iova) { request->set_iova(iova); }, "First IOVA")
      ->required();
  AddSizeArgument(
      *command, "size", [request](uint64_t size) { request->set_size(size); },
      "Bytes, 1 to 16M (default 1)");
  AddEnumArgument<v1::Access>(
      *command, "--access", [request](v1::Access access) { request->set_access(access); },
      "Direction of the DMA (default read)");
  command->callback([&cli, request] { cli.Call(&BrokerClient::Translate, *request); });
}

void AddFlush(CLI::App& app, Cli& cli) {
  CLI::App* command =
      app.add_subcommand("flush", "Run a domain's pending batch invalidation now");
  auto request = std::make_shared<v1::FlushRequest>();
  command->add_option("domain", *request->mutable_domain_id(), "Domain id")->required();
  command->callback([&cli, request] { cli.Call(&BrokerClient::Flush, *request); });
}

}  // namespace

void AddDataPathCommands(CLI::App& app, Cli& cli) {
  AddMap(app, cli);
  AddUnmap(app, cli);
  AddTranslate(app, cli);
  AddFlush(app, cli);
}

}  // namespace iommu_broker::iommuctl
