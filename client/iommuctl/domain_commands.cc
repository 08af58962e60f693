// domain create|list|get|destroy|policy
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/iommuctl/arguments.h"
#include "client/iommuctl/commands.h"
#include "client/iommuctl/enum_names.h"
#include "client/iommuctl/table.h"
#include "google/protobuf/util/time_util.h"

namespace iommu_broker::iommuctl {
namespace {

using client::BrokerClient;

std::string DomainTable(const v1::ListDomainsResponse& reply) {
  Table table({"ID", "POLICY", "DEVICES", "MAPPINGS", "TRANSLATIONS", "FAULTS", "STALE"});
  for (const v1::Domain& domain : reply.domains()) {
    const v1::DomainStats& stats = domain.stats();
    table.AddRow({domain.spec().id(), EnumName(domain.spec().policy()),
                  domain.device_ids().empty() ? "-" : absl::StrJoin(domain.device_ids(), ","),
                  absl::StrCat(stats.live_mappings()), absl::StrCat(stats.translations()),
                  absl::StrCat(stats.faults()), absl::StrCat(stats.stale_translations())});
  }
  return table.Render();
}

void AddSpecOptions(CLI::App& create, v1::DomainSpec* spec) {
  AddAddressArgument(
      create, "--aperture-first", [spec](uint64_t iova) { spec->set_aperture_first(iova); },
      "First IOVA of the aperture (default 0x1000)");
  AddAddressArgument(
      create, "--aperture-last", [spec](uint64_t iova) { spec->set_aperture_last(iova); },
      "Last IOVA of the aperture, inclusive (default 0xffffffffffff)");
  AddRepeatedArgument<v1::PageSize>(
      create, "--page-size", "4k|2m|1g", ParseEnum<v1::PageSize>,
      [spec](v1::PageSize size) { spec->add_page_sizes(size); },
      "Leaf size allowed; repeat or list (default all; 4k always)");
  create.add_option_function<uint32_t>(
      "--iotlb-sets", [spec](uint32_t sets) { spec->set_iotlb_sets(sets); },
      "IOTLB sets, a power of two (default 64)");
  create.add_option_function<uint32_t>(
      "--iotlb-ways", [spec](uint32_t ways) { spec->set_iotlb_ways(ways); },
      "IOTLB ways (default 8)");
  create.add_option_function<uint32_t>(
      "--flush-queue-capacity",
      [spec](uint32_t capacity) { spec->set_flush_queue_capacity(capacity); },
      "Flush queue entries, fast and pt (default 256)");
  AddDurationArgument(
      create, "--flush-queue-timeout",
      [spec](absl::Duration timeout) {
        *spec->mutable_flush_queue_timeout() =
            google::protobuf::util::TimeUtil::NanosecondsToDuration(
                absl::ToInt64Nanoseconds(timeout));
      },
      "Oldest flush queue entry's wait before a batch invalidation (default 10ms)");
  CLI::Option* reserved = AddRepeatedArgument<v1::ReservedRegion>(
      create, "--reserved", "START:SIZE[:NAME]", ParseReservedRegion,
      [spec](v1::ReservedRegion region) {
        *spec->mutable_reserved_regions()->add_regions() = std::move(region);
      },
      "Reserved IOVA region, repeatable; replaces the default MSI window");
  create.add_flag_function(
      "--no-reserved",
      [spec](int64_t) { spec->mutable_reserved_regions(); },
      "No reserved region at all (not even the MSI window)")
      ->excludes(reserved);
  create.add_flag_function(
      "--identity-first", [spec](int64_t) { spec->set_identity_first(true); },
      "fast only: map IOVA = PA where that range is free");
  create.add_option_function<uint64_t>(
      "--max-mappings", [spec](uint64_t limit) { spec->set_max_mappings(limit); },
      "Live mappings allowed (default 1048576)");
  AddAddressArgument(
      create, "--bypass-window-base", [spec](uint64_t base) { spec->set_bypass_window_base(base); },
      "Bypass addresses are base + PA (default 0x800000000000000)");
  create.add_option_function<uint32_t>(
      "--iommu-unit", [spec](uint32_t unit) { spec->set_iommu_unit(unit); },
      "IOMMU unit (invalidation queue) the domain sits on (default 0)");
}

void AddCreate(CLI::App& domain, Cli& cli) {
  CLI::App* create =
      domain.add_subcommand("create", "Create a domain; unset options take the broker's defaults");
  auto request = std::make_shared<v1::CreateDomainRequest>();
  v1::DomainSpec* spec = request->mutable_domain();
  create->add_option("id", *spec->mutable_id(), "Domain id")->required();
  AddEnumArgument<v1::Policy>(
      *create, "--policy", [spec](v1::Policy policy) { spec->set_policy(policy); },
      "How strictly unmaps invalidate (see docs/API.md)")
      ->required();
  AddSpecOptions(*create, spec);
  create->callback([&cli, request] { cli.Call(&BrokerClient::CreateDomain, *request); });
}

void AddListDomains(CLI::App& domain, Cli& cli) {
  CLI::App* list = domain.add_subcommand("list", "List domains with their devices and counters");
  list->callback([&cli] {
    cli.Call(&BrokerClient::ListDomains, v1::ListDomainsRequest(), DomainTable);
  });
}

void AddGetDomain(CLI::App& domain, Cli& cli) {
  CLI::App* get = domain.add_subcommand("get", "Show a domain: spec, devices and counters");
  auto request = std::make_shared<v1::GetDomainRequest>();
  get->add_option("id", *request->mutable_domain_id(), "Domain id")->required();
  get->callback([&cli, request] { cli.Call(&BrokerClient::GetDomain, *request); });
}

void AddDestroy(CLI::App& domain, Cli& cli) {
  CLI::App* destroy =
      domain.add_subcommand("destroy", "Destroy a domain; reports devices detached and leaks");
  auto request = std::make_shared<v1::DestroyDomainRequest>();
  destroy->add_option("id", *request->mutable_domain_id(), "Domain id")->required();
  destroy->add_flag_function(
      "--force", [request](int64_t) { request->set_force(true); },
      "Detach attached devices first (otherwise a domain with devices is refused)");
  destroy->callback([&cli, request] { cli.Call(&BrokerClient::DestroyDomain, *request); });
}

void AddPolicy(CLI::App& domain, Cli& cli) {
  CLI::App* policy = domain.add_subcommand(
      "policy", "Switch a domain's policy (to paranoid: drains the flush queue first)");
  auto request = std::make_shared<v1::SetDomainPolicyRequest>();
  policy->add_option("id", *request->mutable_domain_id(), "Domain id")->required();
  AddEnumArgument<v1::Policy>(
      *policy, "policy", [request](v1::Policy value) { request->set_policy(value); },
      "The new policy")
      ->required();
  policy->callback([&cli, request] { cli.Call(&BrokerClient::SetDomainPolicy, *request); });
}

}  // namespace

void AddDomainCommands(CLI::App& app, Cli& cli) {
  CLI::App* domain = app.add_subcommand("domain", "Create, inspect and destroy domains");
  domain->require_subcommand(1);
  AddCreate(*domain, cli);
  AddListDomains(*domain, cli);
  AddGetDomain(*domain, cli);
  AddDestroy(*domain, cli);
  AddPolicy(*domain, cli);
}

}  // namespace iommu_broker::iommuctl
