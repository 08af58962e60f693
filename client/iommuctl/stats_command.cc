// stats: per-domain, per-device and per-unit counters (GetStats).
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/iommuctl/commands.h"
#include "client/iommuctl/sizes.h"
#include "client/iommuctl/table.h"
#include "google/protobuf/util/time_util.h"

namespace iommu_broker::iommuctl {
namespace {

using client::BrokerClient;

// Protobuf maps have no order; tables are sorted by id.
template <typename Value>
std::map<std::string, Value> Sorted(const google::protobuf::Map<std::string, Value>& map) {
  return std::map<std::string, Value>(map.begin(), map.end());
}

std::string Duration(const google::protobuf::Duration& duration) {
  return absl::FormatDuration(
      absl::Nanoseconds(google::protobuf::util::TimeUtil::DurationToNanoseconds(duration)));
}

Table DomainStatsTable(const v1::GetStatsResponse& reply) {
  Table table({"DOMAIN", "MAPPINGS", "MAPS", "UNMAPS", "TRANSLATIONS", "FAULTS", "STALE",
               "IOTLB_HITS", "IOTLB_MISSES", "FQ_PENDING", "IOVA_ALLOCATED"});
  for (const auto& [id, stats] : Sorted(reply.domains())) {
    table.AddRow({id, absl::StrCat(stats.live_mappings()), absl::StrCat(stats.maps()),
                  absl::StrCat(stats.unmaps()), absl::StrCat(stats.translations()),
                  absl::StrCat(stats.faults()), absl::StrCat(stats.stale_translations()),
                  absl::StrCat(stats.iotlb().hits()), absl::StrCat(stats.iotlb().misses()),
                  absl::StrCat(stats.flush_queue().pending()),
                  FormatSize(stats.iova().allocated_bytes())});
  }
  return table;
}

Table DeviceStatsTable(const v1::GetStatsResponse& reply) {
  Table table({"DEVICE", "WRONG_SIZE_UNMAPS", "DOUBLE_UNMAPS", "DMA_AFTER_UNMAP",
               "LEAKED_MAPPINGS", "LEAKED_BYTES"});
  for (const auto& [id, debug] : Sorted(reply.devices())) {
    table.AddRow({id, absl::StrCat(debug.wrong_size_unmaps()),
                  absl::StrCat(debug.double_unmaps()), absl::StrCat(debug.dma_after_unmap()),
                  absl::StrCat(debug.leaked_mappings()), FormatSize(debug.leaked_bytes())});
  }
  return table;
}

Table UnitStatsTable(const v1::GetStatsResponse& reply) {
  Table table({"UNIT", "CALLS", "BATCHES", "DESCRIPTORS", "PROMOTED", "BUSY", "WAIT"});
  for (const v1::InvalidationUnitStats& unit : reply.units()) {
    table.AddRow({absl::StrCat(unit.unit()), absl::StrCat(unit.calls()),
                  absl::StrCat(unit.batches()), absl::StrCat(unit.descriptors()),
                  absl::StrCat(unit.promoted_batches()), Duration(unit.busy()),
                  Duration(unit.wait())});
  }
  return table;
}

// The three tables that have rows, a blank line between them.
std::string StatsTables(const v1::GetStatsResponse& reply) {
  std::string out;
  for (const Table& table : {DomainStatsTable(reply), DeviceStatsTable(reply),
                             UnitStatsTable(reply)}) {
    if (table.empty()) continue;
    if (!out.empty()) out += "\n";
    out += table.Render();
  }
  return out;
}

}  // namespace

void AddStatsCommand(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "stats", "Counters per domain, per device (DMA-API debug) and per IOMMU unit");
  auto request = std::make_shared<v1::GetStatsRequest>();
  command->add_option("--domain", *request->mutable_domain_id(), "Only this domain");
  command->add_option("--device", *request->mutable_device_id(), "Only this device");
  command->callback(
      [&cli, request] { cli.Call(&BrokerClient::GetStats, *request, StatsTables); });
}

}  // namespace iommu_broker::iommuctl
