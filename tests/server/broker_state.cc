#include "tests/server/broker_state.h"

#include "absl/status/statusor.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/convert.h"

namespace iommu_broker::testing {
namespace {

void ClearMaintainedFields(v1::DomainStats* stats) {
  stats->clear_table_pages();
  v1::IovaStats* iova = stats->mutable_iova();
  iova->clear_cached_bytes();
  iova->clear_free_bytes();
  iova->clear_largest_free_block_bytes();
}

}  // namespace

BrokerState ReadBrokerState(const Iommu& iommu) {
  BrokerState state;
  for (const std::string& id : iommu.DomainIds()) {
    absl::StatusOr<DomainInfo> info = iommu.DescribeDomain(id);
    if (!info.ok()) continue;  // destroyed meanwhile
    v1::Domain* domain = state.domains.add_domains();
    DomainInfoToProto(*info, domain);
    ClearMaintainedFields(domain->mutable_stats());
  }
  for (const std::string& id : iommu.DeviceIds()) {
    absl::StatusOr<DeviceInfo> info = iommu.DescribeDevice(id);
    if (info.ok()) DeviceInfoToProto(*info, state.devices.add_devices());
  }
  return state;
}

std::string DiffBrokerState(const BrokerState& before, const BrokerState& after) {
  std::string diff;
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  differencer.Compare(before.domains, after.domains);
  differencer.Compare(before.devices, after.devices);
  return diff;
}

}  // namespace iommu_broker::testing
