// BrokerState is what a request could change in a broker, read from its
// engine: every domain (spec, attached devices, statistics) and every device
// (spec, attachment, requester id, debug counters), as the API's messages.
// A test reads it before and after a request that must have no effect and
// compares the two:
//
//   const BrokerState before = ReadBrokerState(broker->server().iommu());
//   ... a refused request ...
//   EXPECT_EQ(DiffBrokerState(before, ReadBrokerState(...)), "");
//
// Left out, because the maintenance thread changes them on its own schedule
// whatever the requests: the IOVA allocator's split between its per-thread
// caches and its arena (cached, free and largest free bytes; allocated bytes
// stay) and the count of page-table pages (freed after a grace period).
//
// Thread-safety: stateless functions; the Iommu is thread-safe.
#ifndef IOMMU_BROKER_TESTS_SERVER_BROKER_STATE_H_
#define IOMMU_BROKER_TESTS_SERVER_BROKER_STATE_H_

#include <string>

#include "core/iommu/iommu.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::testing {

struct BrokerState {
  v1::ListDomainsResponse domains;  // sorted by id
  v1::ListDevicesResponse devices;  // sorted by id
};

BrokerState ReadBrokerState(const Iommu& iommu);
// Empty when `before` and `after` agree; otherwise what changed, field by
// field.
std::string DiffBrokerState(const BrokerState& before, const BrokerState& after);

}  // namespace iommu_broker::testing

#endif  // IOMMU_BROKER_TESTS_SERVER_BROKER_STATE_H_
