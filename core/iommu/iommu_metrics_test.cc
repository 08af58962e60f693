// What the engine counts for the broker's metrics: flush latencies by
// policy and kind, IOTLB lookups by the policy they happened under, totals
// that survive a domain's destruction, faults by reason, bypass outcomes
// and the device census.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/iommu/flush_latencies.h"
#include "core/iommu/iommu.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

constexpr char kDevice[] = "0000:3b:00.0";
constexpr char kOther[] = "0000:3c:00.0";

MapRequest Request(uint64_t phys, uint64_t size) {
  MapRequest request;
  request.phys = phys;
  request.size = size;
  request.perms = {true, true};
  return request;
}

class IommuMetricsTest : public ::testing::Test {
 protected:
  void Build(Policy policy, DomainConfig config = {}) {
    IommuOptions options;
    options.maintenance_interval = absl::ZeroDuration();
    iommu_ = *Iommu::Create(options);
    config.id = "d";
    config.policy = policy;
    ASSERT_TRUE(iommu_->CreateDomain(config).ok());
    ASSERT_TRUE(iommu_->AddDevice({.id = kDevice}).ok());
    ASSERT_TRUE(iommu_->Attach(kDevice, "d").ok());
  }

  uint64_t Flushes(Policy policy, FlushKind kind) const {
    return iommu_->flush_latencies().Read(policy, kind).count;
  }
  // Maps and unmaps one page; returns its IOVA.
  uint64_t MapAndUnmap() {
    absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
    EXPECT_TRUE(mapped.ok()) << mapped.status();
    EXPECT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
    return mapped->iova;
  }
  DomainTotals Totals() const {
    DomainTotals totals;
    iommu_->AllDomainStats(&totals);
    return totals;
  }

  std::unique_ptr<Iommu> iommu_;
};

TEST_F(IommuMetricsTest, ParanoidUnmapsRecordSyncFlushes) {
  Build(Policy::kParanoid);
  MapAndUnmap();
  MapAndUnmap();
  EXPECT_EQ(Flushes(Policy::kParanoid, FlushKind::kSyncUnmap), 2u);
  EXPECT_EQ(Flushes(Policy::kFast, FlushKind::kSyncUnmap), 0u);
  // The attach in Build invalidated the device's entries.
  EXPECT_EQ(Flushes(Policy::kParanoid, FlushKind::kDevice), 1u);
}

TEST_F(IommuMetricsTest, FastFlushesAreRecordedByWhatTriggeredThem) {
  Build(Policy::kFast, {.flush_queue = {.capacity = 2, .timeout = absl::Milliseconds(10)}});
  MapAndUnmap();
  MapAndUnmap();  // fills the queue of 2
  EXPECT_EQ(Flushes(Policy::kFast, FlushKind::kQueueFull), 1u);
  MapAndUnmap();
  iommu_->Maintain(absl::Now() + absl::Seconds(1));  // past the timeout
  EXPECT_EQ(Flushes(Policy::kFast, FlushKind::kQueueTimeout), 1u);
  MapAndUnmap();
  ASSERT_TRUE(iommu_->Flush("d").ok());
  EXPECT_EQ(Flushes(Policy::kFast, FlushKind::kExplicit), 1u);
  MapAndUnmap();
  ASSERT_TRUE(iommu_->SetPolicy("d", Policy::kParanoid).ok());  // drains the queue
  EXPECT_EQ(Flushes(Policy::kFast, FlushKind::kDomainWide), 1u);
  EXPECT_EQ(Flushes(Policy::kParanoid, FlushKind::kSyncUnmap), 0u);
  const Log2Histogram::Snapshot batches = iommu_->UnitBatchSizes(0);
  EXPECT_GE(batches.count, 5u);  // four queue batches and the attach's
}

TEST_F(IommuMetricsTest, IotlbLookupsCountUnderThePolicyTheyHappenedUnder) {
  Build(Policy::kFast);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  ASSERT_TRUE(iommu_->Translate(kDevice, mapped->iova, 8, Access::kRead).ok());  // miss
  ASSERT_TRUE(iommu_->Translate(kDevice, mapped->iova, 8, Access::kRead).ok());  // hit
  ASSERT_TRUE(iommu_->SetPolicy("d", Policy::kParanoid).ok());
  ASSERT_TRUE(iommu_->Translate(kDevice, mapped->iova, 8, Access::kRead).ok());  // hit
  const DomainStats stats = *iommu_->GetDomainStats("d");
  const IotlbLookups fast = stats.iotlb_by_policy[static_cast<size_t>(Policy::kFast)];
  const IotlbLookups paranoid = stats.iotlb_by_policy[static_cast<size_t>(Policy::kParanoid)];
  EXPECT_EQ(fast.hits, 1u);
  EXPECT_EQ(fast.misses, 1u);
  EXPECT_EQ(paranoid.hits, 1u);
  EXPECT_EQ(paranoid.misses, 0u);
  EXPECT_EQ(fast.hits + paranoid.hits, stats.iotlb.hits);
}

TEST_F(IommuMetricsTest, TotalsKeepWhatDestroyedDomainsCounted) {
  Build(Policy::kFast);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  ASSERT_TRUE(iommu_->Translate(kDevice, mapped->iova, 8, Access::kRead).ok());
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova + 0x1000, 0x1000).ok());  // a double unmap
  const DomainTotals before = Totals();
  EXPECT_EQ(before.iotlb[static_cast<size_t>(Policy::kFast)].misses, 1u);
  EXPECT_EQ(before.debug.double_unmaps, 1u);
  ASSERT_TRUE(iommu_->DestroyDomain("d", /*force=*/true).ok());  // leaks the mapping
  const DomainTotals after = Totals();
  EXPECT_EQ(after.iotlb[static_cast<size_t>(Policy::kFast)].misses, 1u);
  EXPECT_EQ(after.debug.double_unmaps, 1u);
  EXPECT_EQ(after.debug.leaked_mappings, 1u);
  DomainTotals ignored;
  EXPECT_TRUE(iommu_->AllDomainStats(&ignored).empty());
}

TEST_F(IommuMetricsTest, FaultsAreCountedByReason) {
  Build(Policy::kParanoid);
  ASSERT_TRUE(iommu_->AddDevice({.id = kOther}).ok());
  ASSERT_TRUE(iommu_->Translate(kDevice, 0x5000, 8, Access::kRead).ok());  // not mapped
  ASSERT_TRUE(iommu_->Translate(kDevice, 0x6000, 8, Access::kRead).ok());  // not mapped
  ASSERT_TRUE(iommu_->Translate(kOther, 0x5000, 8, Access::kRead).ok());   // not attached
  const auto by_reason = iommu_->faults().TotalsByReason();
  EXPECT_EQ(by_reason[static_cast<size_t>(FaultReason::kNotMapped)], 2u);
  EXPECT_EQ(by_reason[static_cast<size_t>(FaultReason::kDeviceNotAttached)], 1u);
  EXPECT_EQ(by_reason[static_cast<size_t>(FaultReason::kPermission)], 0u);
}

TEST_F(IommuMetricsTest, BypassOutcomesAndTheDeviceCensus) {
  Build(Policy::kFast);
  ASSERT_TRUE(iommu_->AddDevice({.id = kOther}).ok());
  MapRequest prefer = Request(0x9000, 0x1000);
  prefer.bypass = BypassMode::kPrefer;
  MapRequest require = prefer;
  require.bypass = BypassMode::kRequire;
  ASSERT_TRUE(iommu_->Map(kDevice, prefer).ok());     // falls back: not allowed
  ASSERT_FALSE(iommu_->Map(kDevice, require).ok());   // refused
  ASSERT_TRUE(iommu_->SetAllowBypass(kDevice, true).ok());
  ASSERT_TRUE(iommu_->Map(kDevice, require).ok());    // granted
  const DomainTotals totals = Totals();
  EXPECT_EQ(totals.bypass_fallbacks, 1u);
  EXPECT_EQ(totals.bypass_refusals, 1u);
  EXPECT_EQ(totals.bypass_maps, 1u);
  const DeviceCensus census = iommu_->CountDevices();
  EXPECT_EQ(census.attached, 1u);
  EXPECT_EQ(census.detached, 1u);
  EXPECT_EQ(census.bypass_allowed, 1u);
}

}  // namespace
}  // namespace iommu_broker
