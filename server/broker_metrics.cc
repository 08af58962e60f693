#include "server/broker_metrics.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/iommu/flush_latencies.h"
#include "core/iommu/types.h"
#include "core/util/log2_histogram.h"

namespace iommu_broker {
namespace {

using ::prometheus::ClientMetric;
using ::prometheus::MetricFamily;
using ::prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

constexpr double kNanosToSeconds = 1e-9;
constexpr std::array<Policy, kPolicyCount> kAllPolicies = {Policy::kParanoid, Policy::kFast,
                                                           Policy::kPassthrough};

MetricFamily& AddFamily(std::deque<MetricFamily>& families, std::string name, std::string help,
                        MetricType type) {
  families.push_back({.name = std::move(name), .help = std::move(help), .type = type, .metric = {}});
  return families.back();
}

void AddCounter(MetricFamily& family, Labels labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.counter.value = value;
  family.metric.push_back(std::move(metric));
}

void AddGauge(MetricFamily& family, Labels labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.gauge.value = value;
  family.metric.push_back(std::move(metric));
}

// `unit` converts the snapshot's values (bounds and sum) to the metric's.
void AddHistogram(MetricFamily& family, Labels labels, const Log2Histogram::Snapshot& snapshot,
                  double unit) {
  ClientMetric metric;
  metric.label = std::move(labels);
  uint64_t cumulative = 0;
  for (size_t bucket = 0; bucket < snapshot.upper_bounds.size(); ++bucket) {
    cumulative += snapshot.counts[bucket];
    metric.histogram.bucket.push_back(
        {.cumulative_count = cumulative,
         .upper_bound = static_cast<double>(snapshot.upper_bounds[bucket]) * unit});
  }
  cumulative += snapshot.counts.back();
  metric.histogram.bucket.push_back(
      {.cumulative_count = cumulative, .upper_bound = std::numeric_limits<double>::infinity()});
  metric.histogram.sample_count = cumulative;
  metric.histogram.sample_sum = static_cast<double>(snapshot.sum) * unit;
  family.metric.push_back(std::move(metric));
}

void Merge(const Log2Histogram::Snapshot& from, Log2Histogram::Snapshot& into) {
  if (into.counts.empty()) {
    into = from;
    return;
  }
  for (size_t bucket = 0; bucket < into.counts.size(); ++bucket) {
    into.counts[bucket] += from.counts[bucket];
  }
  into.count += from.count;
  into.sum += from.sum;
}

std::string PolicyLabel(std::optional<Policy> policy) {
  return policy.has_value() ? std::string(PolicyName(*policy)) : "none";
}

std::string CodeName(size_t code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// The gauges of a set of domains (one policy, or one domain).
struct DomainGauges {
  uint64_t domains = 0;
  uint64_t live_mappings = 0;
  uint64_t table_pages = 0;
  uint64_t pending_ranges = 0;
  uint64_t iova_allocated = 0;
  uint64_t iova_cached = 0;
  uint64_t iova_free = 0;
  uint64_t iova_reserved = 0;
  std::optional<uint64_t> smallest_largest_free;

  void Add(const DomainStats& stats) {
    ++domains;
    live_mappings += stats.live_mappings;
    table_pages += stats.table_pages;
    pending_ranges += stats.flush_queue.pending;
    iova_allocated += stats.iova.allocated_bytes;
    iova_cached += stats.iova.cached_bytes;
    iova_free += stats.iova.free_bytes;
    iova_reserved += stats.iova.reserved_bytes;
    smallest_largest_free =
        std::min(smallest_largest_free.value_or(UINT64_MAX), stats.iova.largest_free_block_bytes);
  }
};

// The families of DomainGauges, filled series by series.
struct DomainGaugeFamilies {
  MetricFamily* domains;
  MetricFamily* live_mappings;
  MetricFamily* table_pages;
  MetricFamily* pending_ranges;
  MetricFamily* iova_bytes;
  MetricFamily* largest_free;

  void Add(const Labels& labels, const DomainGauges& gauges) const {
    AddGauge(*domains, labels, static_cast<double>(gauges.domains));
    AddGauge(*live_mappings, labels, static_cast<double>(gauges.live_mappings));
    AddGauge(*table_pages, labels, static_cast<double>(gauges.table_pages));
    AddGauge(*pending_ranges, labels, static_cast<double>(gauges.pending_ranges));
    const std::pair<const char*, uint64_t> states[] = {{"allocated", gauges.iova_allocated},
                                                       {"cached", gauges.iova_cached},
                                                       {"free", gauges.iova_free},
                                                       {"reserved", gauges.iova_reserved}};
    for (const auto& [state, bytes] : states) {
      Labels with_state = labels;
      with_state.push_back({"state", state});
      AddGauge(*iova_bytes, std::move(with_state), static_cast<double>(bytes));
    }
    AddGauge(*largest_free, labels, static_cast<double>(gauges.smallest_largest_free.value_or(0)));
  }
};

}  // namespace

std::vector<MetricFamily> BrokerMetrics::Collect() const {
  std::deque<MetricFamily> families;  // AddFamily's references stay valid as it grows
  CollectFlushes(families);
  CollectOperations(families);
  CollectDomains(families);
  CollectFaultsAndDevices(families);
  CollectRpcs(families);
  MetricFamily& build = AddFamily(families, "iommu_broker_build_info",
                                  "Always 1; labels say which broker build is running.",
                                  MetricType::Gauge);
  AddGauge(build, {{"version", sources_.version}, {"git_commit", sources_.git_commit}}, 1);
  return {std::make_move_iterator(families.begin()), std::make_move_iterator(families.end())};
}

void BrokerMetrics::CollectFlushes(std::deque<MetricFamily>& families) const {
  const Iommu& iommu = *sources_.iommu;
  MetricFamily& latency = AddFamily(
      families, "iommu_broker_flush_latency_seconds",
      "Time callers waited for an IOTLB invalidation, by the domain's policy and what asked.",
      MetricType::Histogram);
  for (Policy policy : kAllPolicies) {
    for (size_t kind = 0; kind < kFlushKinds; ++kind) {
      const FlushKind flush_kind = static_cast<FlushKind>(kind);
      AddHistogram(latency,
                   {{"policy", std::string(PolicyName(policy))},
                    {"kind", std::string(FlushKindName(flush_kind))}},
                   iommu.flush_latencies().Read(policy, flush_kind), kNanosToSeconds);
    }
  }
  Log2Histogram::Snapshot sizes;
  uint64_t batches = 0;
  uint64_t promoted = 0;
  for (uint32_t unit = 0; unit < iommu.options().units; ++unit) {
    Merge(iommu.UnitBatchSizes(unit), sizes);
    const InvalidationQueueStats stats = iommu.UnitStats(unit);
    batches += stats.batches;
    promoted += stats.promoted_batches;
  }
  AddHistogram(AddFamily(families, "iommu_broker_invalidation_batch_descriptors",
                         "Invalidation descriptors per batch the emulated queue executed.",
                         MetricType::Histogram),
               {}, sizes, 1);
  MetricFamily& scopes = AddFamily(families, "iommu_broker_invalidation_batches_total",
                                   "Invalidation batches executed: as asked (range) or promoted "
                                   "to whole-domain invalidations (domain).",
                                   MetricType::Counter);
  AddCounter(scopes, {{"scope", "range"}}, static_cast<double>(batches - promoted));
  AddCounter(scopes, {{"scope", "domain"}}, static_cast<double>(promoted));
}

void BrokerMetrics::CollectOperations(std::deque<MetricFamily>& families) const {
  MetricFamily& counts = AddFamily(families, "iommu_broker_operations_total",
                                   "Data-path operations by policy and result.",
                                   MetricType::Counter);
  for (const OperationMetrics::Reading& reading : sources_.operations->ReadCounts()) {
    AddCounter(counts,
               {{"operation", std::string(DataOperationName(reading.operation))},
                {"policy", PolicyLabel(reading.policy)},
                {"result", reading.result}},
               static_cast<double>(reading.count));
  }
  MetricFamily& latency = AddFamily(
      families, "iommu_broker_operation_latency_seconds",
      "Engine time of successful maps and unmaps, one in 16 per Batch message timed.",
      MetricType::Histogram);
  for (DataOperation operation : {DataOperation::kMap, DataOperation::kUnmap}) {
    for (Policy policy : kAllPolicies) {
      AddHistogram(latency,
                   {{"operation", std::string(DataOperationName(operation))},
                    {"policy", std::string(PolicyName(policy))}},
                   sources_.operations->ReadLatency(operation, policy), kNanosToSeconds);
    }
  }
}

void BrokerMetrics::CollectDomains(std::deque<MetricFamily>& families) const {
  DomainTotals totals;
  const std::vector<DomainReading> readings = sources_.iommu->AllDomainStats(&totals);
  const DomainGaugeFamilies gauges{
      .domains = &AddFamily(families, "iommu_broker_domains", "Domains.", MetricType::Gauge),
      .live_mappings = &AddFamily(families, "iommu_broker_live_mappings",
                                  "Mappings in page tables.", MetricType::Gauge),
      .table_pages = &AddFamily(families, "iommu_broker_page_table_pages",
                                "Page-table pages (4 KiB each) in use.", MetricType::Gauge),
      .pending_ranges = &AddFamily(families, "iommu_broker_flush_queue_pending_ranges",
                                   "Unmapped ranges waiting in flush queues for invalidation.",
                                   MetricType::Gauge),
      .iova_bytes = &AddFamily(families, "iommu_broker_iova_bytes",
                               "IOVA space by state: allocated, cached, free, reserved.",
                               MetricType::Gauge),
      .largest_free = &AddFamily(families, "iommu_broker_iova_largest_free_bytes",
                                 "Largest aligned free IOVA block of the most fragmented domain.",
                                 MetricType::Gauge),
  };
  MetricFamily& lookups = AddFamily(families, "iommu_broker_iotlb_lookups_total",
                                    "IOTLB lookups by the policy at the time and result.",
                                    MetricType::Counter);
  MetricFamily& stale = AddFamily(
      families, "iommu_broker_stale_translations_total",
      "Translations served from an IOTLB entry of an unmapped, not yet invalidated range.",
      MetricType::Counter);
  auto add_lookups = [&lookups](Labels labels, Policy policy, const IotlbLookups& counts) {
    labels.push_back({"policy", std::string(PolicyName(policy))});
    Labels misses = labels;
    labels.push_back({"result", "hit"});
    misses.push_back({"result", "miss"});
    AddCounter(lookups, std::move(labels), static_cast<double>(counts.hits));
    AddCounter(lookups, std::move(misses), static_cast<double>(counts.misses));
  };
  // Staleness is only possible in fast's window (a fast domain, or one
  // draining fast's queue as it turns paranoid), so every stale translation
  // is fast's; the paranoid series is there for the alert that says so.
  auto add_stale = [&stale](Labels labels, uint64_t fast_count) {
    for (Policy policy : kAllPolicies) {
      Labels with_policy = labels;
      with_policy.push_back({"policy", std::string(PolicyName(policy))});
      AddCounter(stale, std::move(with_policy),
                 policy == Policy::kFast ? static_cast<double>(fast_count) : 0);
    }
  };
  if (sources_.domain_label) {
    for (const DomainReading& reading : readings) {
      DomainGauges one;
      one.Add(reading.stats);
      gauges.Add({{"domain", reading.domain_id},
                  {"policy", std::string(PolicyName(reading.stats.policy))}},
                 one);
      for (Policy policy : kAllPolicies) {
        add_lookups({{"domain", reading.domain_id}}, policy,
                    reading.stats.iotlb_by_policy[static_cast<size_t>(policy)]);
      }
      add_stale({{"domain", reading.domain_id}}, reading.stats.stale_translations);
    }
  } else {
    std::array<DomainGauges, kPolicyCount> by_policy;
    for (const DomainReading& reading : readings) {
      by_policy[static_cast<size_t>(reading.stats.policy)].Add(reading.stats);
    }
    for (Policy policy : kAllPolicies) {
      gauges.Add({{"policy", std::string(PolicyName(policy))}},
                 by_policy[static_cast<size_t>(policy)]);
      add_lookups({}, policy, totals.iotlb[static_cast<size_t>(policy)]);
    }
    add_stale({}, totals.stale_translations);
  }
  MetricFamily& bypass = AddFamily(families, "iommu_broker_bypass_requests_total",
                                   "Map requests asking for bypass, by outcome.",
                                   MetricType::Counter);
  AddCounter(bypass, {{"outcome", "granted"}}, static_cast<double>(totals.bypass_maps));
  AddCounter(bypass, {{"outcome", "fell_back"}}, static_cast<double>(totals.bypass_fallbacks));
  AddCounter(bypass, {{"outcome", "refused"}}, static_cast<double>(totals.bypass_refusals));
  MetricFamily& violations = AddFamily(families, "iommu_broker_dma_api_violations_total",
                                       "DMA-API misuse, by kind.", MetricType::Counter);
  const std::pair<const char*, uint64_t> kinds[] = {
      {"wrong_size_unmap", totals.debug.wrong_size_unmaps},
      {"double_unmap", totals.debug.double_unmaps},
      {"dma_after_unmap", totals.debug.dma_after_unmap},
      {"leaked_mapping", totals.debug.leaked_mappings}};
  for (const auto& [kind, count] : kinds) {
    AddCounter(violations, {{"kind", kind}}, static_cast<double>(count));
  }
}

void BrokerMetrics::CollectFaultsAndDevices(std::deque<MetricFamily>& families) const {
  const Iommu& iommu = *sources_.iommu;
  MetricFamily& faults = AddFamily(families, "iommu_broker_faults_total",
                                   "Translation faults by reason.", MetricType::Counter);
  const std::array<uint64_t, kFaultReasonCount> by_reason = iommu.faults().TotalsByReason();
  for (size_t reason = 0; reason < kFaultReasonCount; ++reason) {
    AddCounter(faults,
               {{"reason", std::string(FaultReasonName(static_cast<FaultReason>(reason)))}},
               static_cast<double>(by_reason[reason]));
  }
  const DeviceCensus census = iommu.CountDevices();
  MetricFamily& devices =
      AddFamily(families, "iommu_broker_devices", "Registered devices.", MetricType::Gauge);
  AddGauge(devices, {{"state", "attached"}}, static_cast<double>(census.attached));
  AddGauge(devices, {{"state", "detached"}}, static_cast<double>(census.detached));
  AddGauge(AddFamily(families, "iommu_broker_bypass_devices",
                     "Devices whose operator setting allow_bypass is on.", MetricType::Gauge),
           {}, static_cast<double>(census.bypass_allowed));
}

void BrokerMetrics::CollectRpcs(std::deque<MetricFamily>& families) const {
  MetricFamily& calls = AddFamily(families, "iommu_broker_rpcs_total",
                                  "Finished RPCs by method and status code.", MetricType::Counter);
  MetricFamily& latency = AddFamily(families, "iommu_broker_rpc_latency_seconds",
                                    "RPC time from arrival to status (streams: their life).",
                                    MetricType::Histogram);
  MetricFamily& streams = AddFamily(families, "iommu_broker_streams_in_flight", "Open streams.",
                                    MetricType::Gauge);
  for (const RpcMetrics::MethodReading& method : sources_.rpcs->Read()) {
    if (method.streaming) AddGauge(streams, {{"method", method.method}}, method.streams_in_flight);
    if (method.latency.count == 0) continue;
    for (size_t code = 0; code < RpcMetrics::kCodes; ++code) {
      if (method.by_code[code] == 0) continue;
      AddCounter(calls, {{"method", method.method}, {"code", CodeName(code)}},
                 static_cast<double>(method.by_code[code]));
    }
    AddHistogram(latency, {{"method", method.method}}, method.latency, kNanosToSeconds);
  }
}

}  // namespace iommu_broker
