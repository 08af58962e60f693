// iommuctl's subcommands. Each function adds one group to the root app; the
// subcommands run through `cli` (cli.h) when CLI11 has parsed them.
//
//   CLI::App app("iommuctl");
//   Cli cli(app);
//   AddDomainCommands(app, cli);
//
// Thread-safety: not thread-safe; CLI11 parses and runs on one thread.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_COMMANDS_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_COMMANDS_H_

#include "CLI/CLI.hpp"
#include "client/iommuctl/cli.h"

namespace iommu_broker::iommuctl {

// domain create|list|get|destroy|policy
void AddDomainCommands(CLI::App& app, Cli& cli);
// device register|list|get|update|unregister|attach|detach
void AddDeviceCommands(CLI::App& app, Cli& cli);
// map, unmap, translate, flush
void AddDataPathCommands(CLI::App& app, Cli& cli);
// events: WatchEvents until interrupted
void AddEventsCommand(CLI::App& app, Cli& cli);
// stats: GetStats
void AddStatsCommand(CLI::App& app, Cli& cli);
// health: the gRPC health check
void AddHealthCommand(CLI::App& app, Cli& cli);
// bench: the load generator
void AddBenchCommand(CLI::App& app, Cli& cli);

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_COMMANDS_H_
