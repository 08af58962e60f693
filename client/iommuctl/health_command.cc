// health: the gRPC health check, for people and the container HEALTHCHECK.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/iommuctl/commands.h"

namespace iommu_broker::iommuctl {
namespace {

void CheckHealth(Cli& cli, const std::string& service) {
  std::unique_ptr<client::BrokerClient> client = cli.Connect();
  if (client == nullptr) return;
  absl::StatusOr<client::ServingStatus> status = client->CheckHealth(service);
  if (!status.ok()) return cli.ReportCallError(*client, status.status());
  const absl::string_view name = client::ServingStatusName(*status);
  cli.Print(cli.format() == OutputFormat::kJson ? absl::StrCat("{\"status\":\"", name, "\"}\n")
                                                : absl::StrCat(name, "\n"));
  if (*status != client::ServingStatus::kServing) cli.set_exit_code(ExitCode::kRefused);
}

}  // namespace

void AddHealthCommand(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "health", "gRPC health check: prints the serving status; exits 0 only if SERVING");
  auto service = std::make_shared<std::string>();
  command->add_option("--service", *service,
                      "Service to ask about (default: the broker as a whole; "
                      "or iommu_broker.v1.IommuBroker)");
  command->callback([&cli, service] { CheckHealth(cli, *service); });
}

}  // namespace iommu_broker::iommuctl
