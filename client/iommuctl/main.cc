// iommuctl: the command-line client of iommu-brokerd. One subcommand per
// RPC (see `iommuctl --help` and docs/CLIENT.md); aligned tables by default,
// `-o json` for scripts. Exit codes: 0 ok, 1 the broker said no, 2 the
// broker cannot be reached, 3 invalid arguments, 130 bench interrupted
// (exit_code.h).
#include "CLI/CLI.hpp"
#include "client/iommuctl/cli.h"
#include "client/iommuctl/commands.h"
#include "client/iommuctl/exit_code.h"

namespace iommu_broker::iommuctl {
namespace {

int Run(int argc, char** argv) {
  CLI::App app(
      "iommuctl: command-line client of iommu-brokerd, the emulated IOMMU broker.\n"
      "Sizes and addresses take 4096, 0x1000, 4K, 2M, 1G.",
      "iommuctl");
  // Global flags may also follow the subcommand: `iommuctl domain list -o json`.
  app.fallthrough();
  app.require_subcommand(1);
  app.set_version_flag("--version", IOMMU_BROKER_VERSION);
  Cli cli(app);
  AddDomainCommands(app, cli);
  AddDeviceCommands(app, cli);
  AddDataPathCommands(app, cli);
  AddEventsCommand(app, cli);
  AddStatsCommand(app, cli);
  AddHealthCommand(app, cli);
  AddBenchCommand(app, cli);
  try {
    app.parse(argc, argv);  // runs the chosen subcommand
  } catch (const CLI::ParseError& error) {
    // --help and --version are ParseErrors too, with exit code 0.
    return app.exit(error) == 0 ? 0 : static_cast<int>(ExitCode::kInvalidArguments);
  }
  return static_cast<int>(cli.exit_code());
}

}  // namespace
}  // namespace iommu_broker::iommuctl

int main(int argc, char** argv) { return iommu_broker::iommuctl::Run(argc, argv); }
