// events: follows WatchEvents until interrupted, one line per event.
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/iommuctl/commands.h"
#include "client/iommuctl/interrupt.h"
#include "client/iommuctl/message_fields.h"

namespace iommu_broker::iommuctl {
namespace {

// "fault sequence=1 ... reason=not_mapped", kind first.
std::string EventLine(const v1::Event& event) {
  std::string line;
  if (event.has_fault()) {
    line = absl::StrCat("fault ", FieldsLine(event.fault()));
  } else if (event.has_invalidation()) {
    line = absl::StrCat("invalidation ", FieldsLine(event.invalidation()));
  } else {
    line = absl::StrCat("event ", FieldsLine(event));  // a kind newer than this build
  }
  if (event.dropped_before() > 0) absl::StrAppend(&line, " dropped_before=", event.dropped_before());
  return line;
}

std::string Describe(const v1::WatchEventsRequest& request) {
  std::string what = request.faults() && request.invalidations() ? "faults and invalidations"
                     : request.faults()                           ? "faults"
                                                                  : "invalidations";
  absl::StrAppend(&what, " of ",
                  request.domain_id().empty() ? "every domain"
                                              : absl::StrCat("domain ", request.domain_id()));
  if (!request.device_id().empty()) absl::StrAppend(&what, ", device ", request.device_id());
  return what;
}

void WatchEvents(Cli& cli, v1::WatchEventsRequest request) {
  if (!request.faults() && !request.invalidations()) {
    request.set_faults(true);
    request.set_invalidations(true);
  }
  const InterruptsBlocked blocked;  // before Connect starts gRPC's threads
  std::unique_ptr<client::BrokerClient> client = cli.Connect();
  if (client == nullptr) return;
  absl::StatusOr<std::unique_ptr<client::EventWatch>> watch = client->WatchEvents(request);
  if (!watch.ok()) return cli.ReportCallError(*client, watch.status());
  const InterruptHandler interrupt([&watch] { (*watch)->Cancel(); });
  // On stderr, so that stdout is only events; says when none can be missed.
  std::cerr << "iommuctl: watching " << Describe(request) << "; Ctrl-C stops" << std::endl;

  v1::Event event;
  while ((*watch)->Next(&event)) {
    cli.Print(absl::StrCat(cli.format() == OutputFormat::kJson ? ToJson(event) : EventLine(event),
                           "\n"));
  }
  const absl::Status ended = (*watch)->Finish();
  if (!ended.ok() && !interrupt.fired()) cli.ReportCallError(*client, ended);
}

}  // namespace

void AddEventsCommand(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "events", "Follow faults and invalidations as they happen, until Ctrl-C");
  auto request = std::make_shared<v1::WatchEventsRequest>();
  command->add_option("--domain", *request->mutable_domain_id(), "Only this domain's events");
  command->add_option("--device", *request->mutable_device_id(),
                      "Only this device's faults and invalidations (and its domain's)");
  command->add_flag_function(
      "--faults", [request](int64_t) { request->set_faults(true); },
      "Faults (default: both kinds)");
  command->add_flag_function(
      "--invalidations", [request](int64_t) { request->set_invalidations(true); },
      "Invalidations (default: both kinds)");
  command->callback([&cli, request] { WatchEvents(cli, *request); });
}

}  // namespace iommu_broker::iommuctl
