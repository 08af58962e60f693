// BrokerMetrics is the broker's Prometheus collectable: when /metrics is
// scraped it reads the engine (flush latencies, domain and device
// statistics, faults), the data path's operation counts and the RPC
// counts, and builds the metric families docs/METRICS.md lists. Nothing is
// recorded through prometheus-cpp's own metrics, whose every update takes a
// mutex: the sources keep lock-free counters, and this reads them.
//
//   auto metrics = std::make_shared<BrokerMetrics>(BrokerMetrics::Sources{...});
//   exposer.RegisterCollectable(metrics);
//
// Thread-safety: thread-safe; the sources must outlive it.
#ifndef IOMMU_BROKER_SERVER_BROKER_METRICS_H_
#define IOMMU_BROKER_SERVER_BROKER_METRICS_H_

#include <deque>
#include <string>
#include <vector>

#include "core/iommu/iommu.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "server/operation_metrics.h"
#include "server/rpc_metrics.h"

namespace iommu_broker {

class BrokerMetrics final : public prometheus::Collectable {
 public:
  struct Sources {
    const Iommu* iommu = nullptr;
    const OperationMetrics* operations = nullptr;
    const RpcMetrics* rpcs = nullptr;
    bool domain_label = false;  // label domain-scoped metrics by domain
    std::string version;
    std::string git_commit;
  };

  explicit BrokerMetrics(Sources sources) : sources_(std::move(sources)) {}
  BrokerMetrics(const BrokerMetrics&) = delete;
  BrokerMetrics& operator=(const BrokerMetrics&) = delete;

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  void CollectFlushes(std::deque<prometheus::MetricFamily>& families) const;
  void CollectOperations(std::deque<prometheus::MetricFamily>& families) const;
  void CollectDomains(std::deque<prometheus::MetricFamily>& families) const;
  void CollectFaultsAndDevices(std::deque<prometheus::MetricFamily>& families) const;
  void CollectRpcs(std::deque<prometheus::MetricFamily>& families) const;

  const Sources sources_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_BROKER_METRICS_H_
