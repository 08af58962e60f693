#include "core/iommu/iommu.h"

#include <memory>
#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kDevice[] = "0000:3b:00.0";
constexpr char kOther[] = "0000:3c:00.0";
constexpr uint64_t kGiB = uint64_t{1} << 30;

MapRequest Request(uint64_t phys, uint64_t size, Perms perms = {true, true}) {
  MapRequest request;
  request.phys = phys;
  request.size = size;
  request.perms = perms;
  return request;
}

MapRequest FixedRequest(uint64_t iova, uint64_t phys, uint64_t size) {
  MapRequest request = Request(phys, size);
  request.has_iova = true;
  request.iova = iova;
  return request;
}

// One IOMMU with domain "d" and device kDevice attached; no maintenance
// thread, so nothing happens behind a test's back.
class IommuTest : public ::testing::Test {
 protected:
  void SetUp() override { Build(Policy::kParanoid); }

  void Build(Policy policy, DomainConfig config = {}, DeviceConfig device = {}) {
    IommuOptions options;
    options.maintenance_interval = absl::ZeroDuration();
    iommu_ = *Iommu::Create(options);
    config.id = "d";
    config.policy = policy;
    ASSERT_TRUE(iommu_->CreateDomain(config).ok());
    device.id = kDevice;
    ASSERT_TRUE(iommu_->AddDevice(device).ok());
    ASSERT_TRUE(iommu_->Attach(kDevice, "d").ok());
  }

  TranslateResult Dma(uint64_t iova, uint64_t size = 1, Access access = Access::kRead,
                      const std::string& device = kDevice) {
    absl::StatusOr<TranslateResult> result = iommu_->Translate(device, iova, size, access);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : TranslateResult{};
  }

  DomainStats Stats(const std::string& domain = "d") { return *iommu_->GetDomainStats(domain); }

  std::unique_ptr<Iommu> iommu_;
};

TEST_F(IommuTest, MapTranslateUnmap) {
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x10000, 0x2000));
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(mapped->kind, MappingKind::kTranslated);
  TranslateResult dma = Dma(mapped->iova + 0x10, 0x1000);
  ASSERT_FALSE(dma.fault.has_value());
  ASSERT_EQ(dma.segments.size(), 1u);  // two pages, adjacent in memory: one segment
  EXPECT_EQ(dma.segments[0].phys, 0x10010u);
  EXPECT_EQ(dma.segments[0].size, 0x1000u);
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, mapped->iova, 0x2000);
  ASSERT_TRUE(unmapped.ok()) << unmapped.status();
  EXPECT_EQ(unmapped->bytes_unmapped, 0x2000u);
  dma = Dma(mapped->iova);
  ASSERT_TRUE(dma.fault.has_value());
  EXPECT_EQ(dma.fault->reason, FaultReason::kNotMapped);
}

TEST_F(IommuTest, AllocatedIovaRespectsDmaMask) {
  Build(Policy::kParanoid, {}, {.dma_mask_bits = 32});
  for (int i = 0; i < 64; ++i) {
    absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(uint64_t{8} << 30, 0x100000));
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    EXPECT_LE(mapped->iova + 0x100000 - 1, 0xffffffffu);
  }
}

TEST_F(IommuTest, MapRejectsBadInputWithDistinctErrors) {
  auto code = [&](const MapRequest& request) { return iommu_->Map(kDevice, request).status(); };
  EXPECT_THAT(code(Request(0x1000, 0x1003)).message(), HasSubstr("size 0x1003"));
  EXPECT_EQ(code(Request(0x1000, 0)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(code(Request(0x1001, 0x1000)).message(), HasSubstr("phys 0x1001"));
  EXPECT_EQ(code(Request(0x1000, 0x1000, {false, false})).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request(16 * kGiB, 0x1000)).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(code(FixedRequest(0x1003, 0x1000, 0x1000)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(FixedRequest(0, 0x1000, 0x1000)).code(), absl::StatusCode::kOutOfRange);  // page 0
  EXPECT_THAT(code(FixedRequest(0xfee00000, 0x1000, 0x1000)).message(), HasSubstr("msi"));
  ASSERT_TRUE(iommu_->Map(kDevice, FixedRequest(0x100000, 0, 0x4000)).ok());
  absl::Status overlap = code(FixedRequest(0x103000, 0, 0x2000));
  EXPECT_EQ(overlap.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(overlap.message(), HasSubstr("0x103000"));
  MapRequest bypass_fixed = FixedRequest(0x200000, 0, 0x1000);
  bypass_fixed.bypass = BypassMode::kPrefer;
  EXPECT_EQ(code(bypass_fixed).code(), absl::StatusCode::kInvalidArgument);
  // None of that changed anything.
  EXPECT_EQ(Stats().live_mappings, 1u);
}

TEST_F(IommuTest, FixedIovaAboveDmaMaskIsRefused) {
  Build(Policy::kParanoid, {}, {.dma_mask_bits = 32});
  absl::Status status = iommu_->Map(kDevice, FixedRequest(uint64_t{1} << 32, 0, 0x1000)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(status.message(), HasSubstr("32-bit DMA mask"));
}

TEST_F(IommuTest, UnattachedDeviceCannotMapAndFaultsOnDma) {
  ASSERT_TRUE(iommu_->AddDevice({.id = kOther}).ok());
  EXPECT_EQ(iommu_->Map(kOther, Request(0, 0x1000)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  TranslateResult dma = Dma(0x1000, 1, Access::kRead, kOther);
  ASSERT_TRUE(dma.fault.has_value());
  EXPECT_EQ(dma.fault->reason, FaultReason::kDeviceNotAttached);
  EXPECT_EQ(iommu_->faults().total(), 1u);
  EXPECT_EQ(iommu_->Map("no-such-device", Request(0, 0x1000)).status().code(),
            absl::StatusCode::kNotFound);
}

// The seven examples of the virtio-iommu UNMAP request, in pages.
class VirtioUnmapTest : public IommuTest {
 protected:
  absl::Status MapPages(uint64_t first, uint64_t last) {
    return iommu_
        ->Map(kDevice,
              FixedRequest(kBase + first * 0x1000, first * 0x1000, (last - first + 1) * 0x1000))
        .status();
  }
  absl::StatusOr<uint64_t> UnmapPages(uint64_t first, uint64_t last) {
    absl::StatusOr<UnmapResult> result =
        iommu_->Unmap(kDevice, kBase + first * 0x1000, (last - first + 1) * 0x1000);
    if (!result.ok()) return result.status();
    return result->bytes_unmapped / 0x1000;
  }
  static constexpr uint64_t kBase = 0x100000;
};

TEST_F(VirtioUnmapTest, WholeMapping) {
  ASSERT_TRUE(MapPages(0, 9).ok());
  EXPECT_EQ(*UnmapPages(0, 9), 10u);
}

TEST_F(VirtioUnmapTest, TwoAdjacentMappings) {
  ASSERT_TRUE(MapPages(0, 4).ok());
  ASSERT_TRUE(MapPages(5, 9).ok());
  EXPECT_EQ(*UnmapPages(0, 9), 10u);
}

TEST_F(VirtioUnmapTest, SplittingFailsAndRemovesNothing) {
  ASSERT_TRUE(MapPages(0, 9).ok());
  absl::StatusOr<uint64_t> split = UnmapPages(0, 4);
  EXPECT_EQ(split.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(Dma(kBase + 0x2000).fault.has_value());
  EXPECT_EQ(Stats().debug.wrong_size_unmaps, 1u);
  EXPECT_EQ(iommu_->DeviceDebugCounts(kDevice)->wrong_size_unmaps, 1u);
  EXPECT_EQ(*UnmapPages(0, 9), 10u);
}

TEST_F(VirtioUnmapTest, FirstOfTwo) {
  ASSERT_TRUE(MapPages(0, 4).ok());
  ASSERT_TRUE(MapPages(5, 9).ok());
  EXPECT_EQ(*UnmapPages(0, 4), 5u);
  EXPECT_TRUE(Dma(kBase).fault.has_value());
  EXPECT_FALSE(Dma(kBase + 5 * 0x1000).fault.has_value());
}

TEST_F(VirtioUnmapTest, RangeRunningPastTheMapping) {
  ASSERT_TRUE(MapPages(0, 4).ok());
  EXPECT_EQ(*UnmapPages(0, 9), 5u);
}

TEST_F(VirtioUnmapTest, MappingsAcrossAGap) {
  ASSERT_TRUE(MapPages(0, 4).ok());
  ASSERT_TRUE(MapPages(10, 14).ok());
  EXPECT_EQ(*UnmapPages(5, 9), 0u);
  EXPECT_EQ(*UnmapPages(0, 14), 10u);
}

TEST_F(VirtioUnmapTest, NothingMapped) {
  EXPECT_EQ(*UnmapPages(0, 9), 0u);
  EXPECT_EQ(Stats().debug.double_unmaps, 1u);
}

TEST_F(IommuTest, HugeLeavesUseOnePte) {
  absl::StatusOr<MapResult> two_mib = iommu_->Map(kDevice, Request(0x40000000, 0x200000));
  ASSERT_TRUE(two_mib.ok()) << two_mib.status();
  EXPECT_EQ(two_mib->leaves_2m, 1u);
  EXPECT_EQ(two_mib->leaves_4k, 0u);
  absl::StatusOr<MapResult> one_gib = iommu_->Map(kDevice, Request(kGiB, kGiB));
  ASSERT_TRUE(one_gib.ok()) << one_gib.status();
  EXPECT_EQ(one_gib->leaves_1g, 1u);
  // Misaligned physical memory cannot use a 2 MiB leaf.
  absl::StatusOr<MapResult> misaligned = iommu_->Map(kDevice, Request(0x1000, 0x200000));
  ASSERT_TRUE(misaligned.ok());
  EXPECT_EQ(misaligned->leaves_4k, 512u);
  // A 2 MiB leaf is one IOTLB entry, and one range invalidation removes it.
  EXPECT_FALSE(Dma(two_mib->iova).fault.has_value());
  EXPECT_TRUE(Dma(two_mib->iova + 0x123000).iotlb_hit);
  const uint64_t invalidated_before = Stats().iotlb.invalidated_entries;
  ASSERT_TRUE(iommu_->Unmap(kDevice, two_mib->iova, 0x200000).ok());
  EXPECT_EQ(Stats().iotlb.invalidated_entries - invalidated_before, 1u);
  EXPECT_TRUE(Dma(two_mib->iova + 0x123000).fault.has_value());
}

TEST_F(IommuTest, OnlySupportedPageSizesAreUsed) {
  Build(Policy::kParanoid, {.page_sizes = kPage4K});
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x40000000, 0x200000));
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ(mapped->leaves_4k, 512u);
  EXPECT_EQ(mapped->leaves_2m, 0u);
}

TEST_F(IommuTest, PermissionFaults) {
  absl::StatusOr<MapResult> read_only =
      iommu_->Map(kDevice, Request(0x5000, 0x1000, {true, false}));
  ASSERT_TRUE(read_only.ok());
  EXPECT_FALSE(Dma(read_only->iova, 8, Access::kRead).fault.has_value());
  TranslateResult write = Dma(read_only->iova, 8, Access::kWrite);
  ASSERT_TRUE(write.fault.has_value());
  EXPECT_EQ(write.fault->reason, FaultReason::kPermission);
  std::vector<Fault> recent = *iommu_->RecentFaults("d", 0);
  ASSERT_EQ(recent.size(), 1u);
  EXPECT_EQ(recent[0].iova, read_only->iova);
  EXPECT_EQ(recent[0].device_id, kDevice);
}

TEST_F(IommuTest, TranslateFaultReasons) {
  Build(Policy::kParanoid, {.aperture_first = 0x100000, .aperture_last = 0xffffffff},
        {.dma_mask_bits = 36});
  auto reason_at = [this](uint64_t iova) -> std::optional<FaultReason> {
    const TranslateResult dma = Dma(iova);
    if (!dma.fault.has_value()) return std::nullopt;
    return dma.fault->reason;
  };
  EXPECT_EQ(reason_at(0x1000), FaultReason::kOutsideAperture);
  EXPECT_EQ(reason_at(uint64_t{1} << 36), FaultReason::kAboveDmaMask);
  EXPECT_EQ(reason_at(0x200000), FaultReason::kNotMapped);
  EXPECT_EQ(Stats().debug.dma_after_unmap, 1u);
  EXPECT_EQ(iommu_->Translate(kDevice, 0, 0, Access::kRead).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(IommuTest, FaultSubscribersSeeEveryFault) {
  std::shared_ptr<FaultSubscription> domain_faults = *iommu_->SubscribeFaults("d", 16);
  std::shared_ptr<FaultSubscription> all_faults = *iommu_->SubscribeFaults("", 16);
  Dma(0x7000);
  std::optional<Fault> fault = domain_faults->Next(absl::Seconds(5));
  ASSERT_TRUE(fault.has_value());
  EXPECT_EQ(fault->iova, 0x7000u);
  EXPECT_EQ(fault->domain_id, "d");
  ASSERT_TRUE(all_faults->Next(absl::Seconds(5)).has_value());
}

// ---------------------------------------------------------------- Invalidation events

std::optional<InvalidationEvent> NextInvalidation(Subscription<InvalidationEvent>& sub) {
  return sub.Next(absl::ZeroDuration());  // published synchronously: no wait needed
}

TEST_F(IommuTest, ParanoidUnmapPublishesItsRangeBeforeReplying) {
  std::shared_ptr<Subscription<InvalidationEvent>> sub = *iommu_->SubscribeInvalidations("d", 16);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x2000));
  ASSERT_TRUE(mapped.ok());
  EXPECT_FALSE(NextInvalidation(*sub).has_value());  // maps invalidate nothing
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x2000).ok());
  std::optional<InvalidationEvent> event = NextInvalidation(*sub);
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->scope, InvalidationScope::kRange);
  EXPECT_EQ(event->domain_id, "d");
  EXPECT_EQ(event->iova, mapped->iova);
  EXPECT_EQ(event->size, 0x2000u);
}

TEST_F(IommuTest, FastUnmapPublishesItsRangeWithTheBatchFlush) {
  Build(Policy::kFast);
  std::shared_ptr<Subscription<InvalidationEvent>> sub = *iommu_->SubscribeInvalidations("", 16);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  EXPECT_FALSE(NextInvalidation(*sub).has_value());  // queued, not yet invalidated
  ASSERT_TRUE(iommu_->Flush("d").ok());
  std::optional<InvalidationEvent> event = NextInvalidation(*sub);
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->scope, InvalidationScope::kRange);
  EXPECT_EQ(event->iova, mapped->iova);
}

TEST_F(IommuTest, AttachDetachAndDestroyPublishDeviceAndDomainInvalidations) {
  std::shared_ptr<Subscription<InvalidationEvent>> sub = *iommu_->SubscribeInvalidations("", 16);
  const uint32_t requester = iommu_->DescribeDevice(kDevice)->requester;
  ASSERT_TRUE(iommu_->Detach(kDevice).ok());
  std::optional<InvalidationEvent> event = NextInvalidation(*sub);
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->scope, InvalidationScope::kRequester);
  EXPECT_EQ(event->device_id, kDevice);
  EXPECT_EQ(event->requester, requester);
  EXPECT_EQ(event->domain_id, "d");
  ASSERT_TRUE(iommu_->DestroyDomain("d", /*force=*/false).ok());
  event = NextInvalidation(*sub);
  ASSERT_TRUE(event.has_value());
  EXPECT_EQ(event->scope, InvalidationScope::kDomain);
  EXPECT_EQ(event->domain_id, "d");
}

TEST_F(IommuTest, InvalidationSubscriptionsAreChecked) {
  EXPECT_EQ(iommu_->SubscribeInvalidations("nope", 16).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(iommu_->SubscribeInvalidations("d", 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- Control-plane views

TEST_F(IommuTest, DescribeDomainAndDevice) {
  absl::StatusOr<DomainInfo> domain = iommu_->DescribeDomain("d");
  ASSERT_TRUE(domain.ok()) << domain.status();
  EXPECT_THAT(domain->device_ids, ElementsAre(kDevice));
  EXPECT_EQ(domain->config.policy, Policy::kParanoid);
  ASSERT_TRUE(iommu_->SetPolicy("d", Policy::kFast).ok());
  EXPECT_EQ(iommu_->DescribeDomain("d")->config.policy, Policy::kFast);  // the current one
  absl::StatusOr<DeviceInfo> device = iommu_->DescribeDevice(kDevice);
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->domain_id, "d");
  EXPECT_EQ(device->config.dma_mask_bits, 64);
  EXPECT_EQ(iommu_->DescribeDomain("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(iommu_->DescribeDevice("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(IommuTest, UpdateDeviceChangesTheMaskOnlyWhileDetached) {
  absl::Status attached =
      iommu_->UpdateDevice(kDevice, {.dma_mask_bits = 32, .allow_bypass = true});
  EXPECT_EQ(attached.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(attached.message(), HasSubstr("dma_mask_bits"));
  EXPECT_FALSE(iommu_->DescribeDevice(kDevice)->config.allow_bypass);  // all or nothing
  ASSERT_TRUE(iommu_->UpdateDevice(kDevice, {.allow_bypass = true}).ok());
  EXPECT_TRUE(iommu_->DescribeDevice(kDevice)->config.allow_bypass);
  ASSERT_TRUE(iommu_->Detach(kDevice).ok());
  ASSERT_TRUE(iommu_->UpdateDevice(kDevice, {.dma_mask_bits = 32}).ok());
  EXPECT_EQ(iommu_->DescribeDevice(kDevice)->config.dma_mask_bits, 32);
  EXPECT_EQ(iommu_->UpdateDevice(kDevice, {.dma_mask_bits = 11}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(iommu_->UpdateDevice("nope", {}).code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------- Policies

TEST_F(IommuTest, ParanoidNeverServesAStaleTranslation) {
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  EXPECT_FALSE(Dma(mapped->iova).fault.has_value());  // fills the IOTLB
  const uint64_t invalidations_before = iommu_->UnitStats(0).calls;
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  EXPECT_EQ(iommu_->UnitStats(0).calls, invalidations_before + 1);  // before it replied
  EXPECT_TRUE(Dma(mapped->iova).fault.has_value());
  EXPECT_EQ(Stats().stale_translations, 0u);
}

TEST_F(IommuTest, FastServesStaleTranslationsUntilTheFlush) {
  Build(Policy::kFast);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  EXPECT_FALSE(Dma(mapped->iova).fault.has_value());
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  TranslateResult stale = Dma(mapped->iova);
  ASSERT_FALSE(stale.fault.has_value());
  EXPECT_TRUE(stale.stale);
  EXPECT_EQ(stale.segments[0].phys, 0x9000u);
  EXPECT_EQ(Stats().stale_translations, 1u);
  EXPECT_EQ(Stats().flush_queue.pending, 1u);
  ASSERT_TRUE(iommu_->Flush("d").ok());
  EXPECT_TRUE(Dma(mapped->iova).fault.has_value());
  EXPECT_EQ(Stats().flush_queue.pending, 0u);
  EXPECT_EQ(Stats().iova.allocated_bytes, 0u);  // the IOVA went back after the flush
}

TEST_F(IommuTest, FastMarksEveryRangeOfAnUnmapStaleUntilItsOwnFlush) {
  // One unmap of three mappings into a queue of two: the first two are
  // flushed while the unmap queues them, the third waits. Until its own
  // flush, a translation of the third must still be checked and marked.
  Build(Policy::kFast, {.flush_queue = {.capacity = 2}});
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        iommu_->Map(kDevice, FixedRequest(0x100000 + i * 0x1000, 0x9000 + i * 0x1000, 0x1000))
            .ok());
    EXPECT_FALSE(Dma(0x100000 + i * 0x1000).fault.has_value());  // fills the IOTLB
  }
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, 0x100000, 0x3000);
  ASSERT_TRUE(unmapped.ok());
  EXPECT_EQ(unmapped->mappings_removed, 3u);
  EXPECT_EQ(Stats().flush_queue.full_flushes, 1u);
  EXPECT_EQ(Stats().flush_queue.pending, 1u);
  EXPECT_TRUE(Dma(0x100000).fault.has_value());  // flushed
  EXPECT_TRUE(Dma(0x101000).fault.has_value());
  TranslateResult third = Dma(0x102000);
  ASSERT_FALSE(third.fault.has_value());
  EXPECT_TRUE(third.stale);
  EXPECT_EQ(third.segments[0].phys, 0xb000u);
  EXPECT_EQ(Stats().stale_translations, 1u);
  ASSERT_TRUE(iommu_->Flush("d").ok());
  EXPECT_TRUE(Dma(0x102000).fault.has_value());
}

TEST_F(IommuTest, FastHoldsIovasUntilTheirFlush) {
  Build(Policy::kFast);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  EXPECT_GT(Stats().iova.allocated_bytes, 0u);
  iommu_->Maintain(absl::Now() + absl::Seconds(1));  // past the 10 ms timeout
  EXPECT_EQ(Stats().iova.allocated_bytes, 0u);
  EXPECT_EQ(Stats().flush_queue.timeout_flushes, 1u);
}

TEST_F(IommuTest, FastFlushesWhenTheQueueFills) {
  Build(Policy::kFast, {.flush_queue = {.capacity = 4}});
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
    ASSERT_TRUE(mapped.ok());
    ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  }
  EXPECT_EQ(Stats().flush_queue.full_flushes, 1u);
  EXPECT_EQ(Stats().flush_queue.pending, 0u);
}

TEST_F(IommuTest, FixedIovaWaitingForItsFlushCanBeMappedAgain) {
  Build(Policy::kFast);
  ASSERT_TRUE(iommu_->Map(kDevice, FixedRequest(0x100000, 0x1000, 0x1000)).ok());
  EXPECT_FALSE(Dma(0x100000).fault.has_value());
  ASSERT_TRUE(iommu_->Unmap(kDevice, 0x100000, 0x1000).ok());
  ASSERT_TRUE(iommu_->Map(kDevice, FixedRequest(0x100000, 0x2000, 0x1000)).ok());
  TranslateResult dma = Dma(0x100000);
  ASSERT_FALSE(dma.fault.has_value());
  EXPECT_FALSE(dma.stale);
  EXPECT_EQ(dma.segments[0].phys, 0x2000u);
}

TEST_F(IommuTest, SwitchingToParanoidDrainsTheFlushQueue) {
  Build(Policy::kFast);
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  EXPECT_FALSE(Dma(mapped->iova).fault.has_value());
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  ASSERT_TRUE(iommu_->SetPolicy("d", Policy::kParanoid).ok());
  EXPECT_TRUE(Dma(mapped->iova).fault.has_value());
  EXPECT_EQ(Stats().policy, Policy::kParanoid);
}

TEST_F(IommuTest, PassthroughIsIdentityWhereTheMaskReaches) {
  Build(Policy::kPassthrough, {}, {.dma_mask_bits = 32});
  absl::StatusOr<MapResult> low = iommu_->Map(kDevice, Request(0x5000, 0x1000));
  ASSERT_TRUE(low.ok());
  EXPECT_EQ(low->kind, MappingKind::kIdentity);
  EXPECT_EQ(low->iova, 0x5000u);
  // Identity for every reachable address, mapped or not.
  TranslateResult anywhere = Dma(0x12345678, 16);
  ASSERT_FALSE(anywhere.fault.has_value());
  EXPECT_EQ(anywhere.kind, MappingKind::kIdentity);
  EXPECT_EQ(anywhere.segments[0].phys, 0x12345678u);
  // Above the mask: a translated mapping.
  absl::StatusOr<MapResult> high = iommu_->Map(kDevice, Request(uint64_t{8} << 30, 0x1000));
  ASSERT_TRUE(high.ok());
  EXPECT_EQ(high->kind, MappingKind::kTranslated);
  EXPECT_LE(high->iova, 0xffffffffu);
  TranslateResult translated = Dma(high->iova);
  ASSERT_FALSE(translated.fault.has_value());
  EXPECT_EQ(translated.kind, MappingKind::kTranslated);
  EXPECT_EQ(translated.segments[0].phys, uint64_t{8} << 30);
  // Unmapping an identity map has nothing to do, and is no double unmap.
  EXPECT_EQ(iommu_->Unmap(kDevice, 0x5000, 0x1000)->bytes_unmapped, 0u);
  EXPECT_EQ(Stats().debug.double_unmaps, 0u);
}

TEST_F(IommuTest, IdentityFirstClaimsIovaEqualsPaThenFallsBack) {
  Build(Policy::kFast, {.identity_first = true});
  absl::StatusOr<MapResult> first = iommu_->Map(kDevice, Request(0x200000, 0x200000));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->kind, MappingKind::kIdentity);
  EXPECT_EQ(first->iova, 0x200000u);
  EXPECT_EQ(first->leaves_2m, 1u);
  // The same memory again: the identity range is taken, so the allocator
  // serves an address above physical memory.
  absl::StatusOr<MapResult> second = iommu_->Map(kDevice, Request(0x200000, 0x200000));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->kind, MappingKind::kTranslated);
  EXPECT_GE(second->iova, 16 * kGiB);
  EXPECT_EQ(Dma(second->iova).segments[0].phys, 0x200000u);
  // An unmapped identity range stays claimed until its flush.
  ASSERT_TRUE(iommu_->Unmap(kDevice, 0x200000, 0x200000).ok());
  absl::StatusOr<MapResult> while_pending = iommu_->Map(kDevice, Request(0x200000, 0x1000));
  ASSERT_TRUE(while_pending.ok());
  EXPECT_NE(while_pending->iova, 0x200000u);
  ASSERT_TRUE(iommu_->Flush("d").ok());
  absl::StatusOr<MapResult> after_flush = iommu_->Map(kDevice, Request(0x200000, 0x1000));
  ASSERT_TRUE(after_flush.ok());
  EXPECT_EQ(after_flush->iova, 0x200000u);
}

TEST_F(IommuTest, IdentityFirstNeedsTheFastPolicy) {
  IommuOptions options;
  options.maintenance_interval = absl::ZeroDuration();
  std::unique_ptr<Iommu> iommu = *Iommu::Create(options);
  absl::Status status =
      iommu->CreateDomain({.id = "p", .policy = Policy::kParanoid, .identity_first = true});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("identity_first"));
}

// ---------------------------------------------------------------- Bypass

TEST_F(IommuTest, ParanoidNeverHonoursBypass) {
  Build(Policy::kParanoid, {}, {.allow_bypass = true});
  MapRequest request = Request(0x9000, 0x1000);
  request.bypass = BypassMode::kRequire;
  EXPECT_EQ(iommu_->Map(kDevice, request).status().code(), absl::StatusCode::kPermissionDenied);
  request.bypass = BypassMode::kPrefer;
  absl::StatusOr<MapResult> fallback = iommu_->Map(kDevice, request);
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ(fallback->kind, MappingKind::kTranslated);
  EXPECT_THAT(fallback->bypass_refusal.value_or(""), HasSubstr("paranoid"));
}

TEST_F(IommuTest, FastBypassesOnlyWhereTheOperatorAllowed) {
  Build(Policy::kFast);
  MapRequest request = Request(0x9000, 0x1000);
  request.bypass = BypassMode::kRequire;
  absl::Status refused = iommu_->Map(kDevice, request).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.message(), HasSubstr("allow_bypass"));
  ASSERT_TRUE(iommu_->SetAllowBypass(kDevice, true).ok());
  absl::StatusOr<MapResult> bypass = iommu_->Map(kDevice, request);
  ASSERT_TRUE(bypass.ok());
  EXPECT_EQ(bypass->kind, MappingKind::kBypass);
  EXPECT_EQ(bypass->iova, (uint64_t{1} << 59) + 0x9000);
  EXPECT_EQ(Stats().live_mappings, 0u);  // no PTE
  // The window reaches all of memory, not just what was mapped.
  TranslateResult elsewhere = Dma((uint64_t{1} << 59) + 3 * kGiB, 64, Access::kWrite);
  ASSERT_FALSE(elsewhere.fault.has_value());
  EXPECT_EQ(elsewhere.kind, MappingKind::kBypass);
  EXPECT_EQ(elsewhere.segments[0].phys, 3 * kGiB);
  EXPECT_EQ(iommu_->Unmap(kDevice, bypass->iova, 0x1000)->bytes_unmapped, 0u);
  EXPECT_EQ(Stats().debug.double_unmaps, 0u);
}

TEST_F(IommuTest, BypassNeedsADmaMaskThatReachesTheWindow) {
  Build(Policy::kFast, {}, {.dma_mask_bits = 32, .allow_bypass = true});
  MapRequest request = Request(0x9000, 0x1000);
  request.bypass = BypassMode::kRequire;
  EXPECT_EQ(iommu_->Map(kDevice, request).status().code(), absl::StatusCode::kFailedPrecondition);
  request.bypass = BypassMode::kPrefer;
  absl::StatusOr<MapResult> fallback = iommu_->Map(kDevice, request);
  ASSERT_TRUE(fallback.ok());
  EXPECT_THAT(fallback->bypass_refusal.value_or(""), HasSubstr("32-bit DMA mask"));
}

// ---------------------------------------------------------------- Devices and domains

TEST_F(IommuTest, AttachingAnAttachedDeviceMovesIt) {
  ASSERT_TRUE(iommu_->CreateDomain({.id = "e"}).ok());
  ASSERT_TRUE(iommu_->Map(kDevice, Request(0x9000, 0x3000)).ok());
  absl::StatusOr<std::optional<DetachResult>> moved = iommu_->Attach(kDevice, "e");
  ASSERT_TRUE(moved.ok());
  ASSERT_TRUE(moved->has_value());
  EXPECT_EQ((*moved)->domain_id, "d");
  EXPECT_EQ((*moved)->leaked.mappings, 1u);
  EXPECT_EQ((*moved)->leaked.bytes, 0x3000u);
  EXPECT_EQ(iommu_->DeviceDebugCounts(kDevice)->leaked_mappings, 1u);
  // A refused move changes nothing.
  EXPECT_EQ(iommu_->Attach(kDevice, "nowhere").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(iommu_->Map(kDevice, Request(0x9000, 0x1000)).ok());
  EXPECT_EQ(Stats("e").live_mappings, 1u);
}

TEST_F(IommuTest, MoveRefusedWhenTheMaskCannotReachTheAperture) {
  ASSERT_TRUE(iommu_->CreateDomain({.id = "high", .aperture_first = uint64_t{1} << 40}).ok());
  ASSERT_TRUE(iommu_->AddDevice({.id = kOther, .dma_mask_bits = 32}).ok());
  ASSERT_TRUE(iommu_->Attach(kOther, "d").ok());
  EXPECT_EQ(iommu_->Attach(kOther, "high").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(iommu_->Map(kOther, Request(0x9000, 0x1000)).ok());  // still in "d"
}

TEST_F(IommuTest, DestroyNeedsForceWhileDevicesAreAttached) {
  ASSERT_TRUE(iommu_->Map(kDevice, Request(0x9000, 0x2000)).ok());
  absl::StatusOr<DestroyResult> refused = iommu_->DestroyDomain("d", /*force=*/false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr(kDevice));
  absl::StatusOr<DestroyResult> destroyed = iommu_->DestroyDomain("d", /*force=*/true);
  ASSERT_TRUE(destroyed.ok());
  EXPECT_THAT(destroyed->detached_devices, ElementsAre(kDevice));
  EXPECT_EQ(destroyed->leaked.mappings, 1u);
  EXPECT_EQ(destroyed->leaked.bytes, 0x2000u);
  EXPECT_EQ(iommu_->Map(kDevice, Request(0x9000, 0x1000)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(iommu_->GetDomainStats("d").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(IommuTest, DetachReportsLeaksAndKeepsTheMappings) {
  ASSERT_TRUE(iommu_->AddDevice({.id = kOther}).ok());
  ASSERT_TRUE(iommu_->Attach(kOther, "d").ok());
  ASSERT_TRUE(iommu_->Map(kDevice, Request(0x9000, 0x1000)).ok());
  absl::StatusOr<MapResult> other = iommu_->Map(kOther, Request(0xa000, 0x2000));
  ASSERT_TRUE(other.ok());
  absl::StatusOr<DetachResult> detached = iommu_->Detach(kDevice);
  ASSERT_TRUE(detached.ok());
  EXPECT_EQ(detached->leaked.mappings, 1u);  // only its own
  EXPECT_EQ(Stats().live_mappings, 2u);
  EXPECT_FALSE(Dma(other->iova, 1, Access::kRead, kOther).fault.has_value());
  EXPECT_EQ(iommu_->Detach(kDevice).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(IommuTest, ControlPlaneErrors) {
  EXPECT_EQ(iommu_->CreateDomain({.id = "d"}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(iommu_->CreateDomain({.id = "bad id"}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(iommu_->CreateDomain({.id = "x", .iommu_unit = 3}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(iommu_->CreateDomain({.id = "x", .aperture_first = 0x1001}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(iommu_->CreateDomain({.id = "x", .page_sizes = kPage2M}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(iommu_->AddDevice({.id = kDevice}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(iommu_->AddDevice({.id = "x", .dma_mask_bits = 65}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(iommu_->SetPolicy("nope", Policy::kFast).code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(iommu_->DomainIds(), ElementsAre("d"));
  EXPECT_THAT(iommu_->DeviceIds(), ElementsAre(kDevice));
}

TEST_F(IommuTest, LimitsAnswerResourceExhausted) {
  Build(Policy::kParanoid, {.max_mappings = 3});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(iommu_->Map(kDevice, Request(0x9000, 0x1000)).ok());
  absl::Status full = iommu_->Map(kDevice, Request(0x9000, 0x1000)).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("max_mappings"));

  IommuOptions options;
  options.maintenance_interval = absl::ZeroDuration();
  options.max_domains = 1;
  options.max_devices = 1;
  std::unique_ptr<Iommu> small = *Iommu::Create(options);
  ASSERT_TRUE(small->CreateDomain({.id = "a"}).ok());
  EXPECT_EQ(small->CreateDomain({.id = "b"}).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(small->AddDevice({.id = "a"}).ok());
  EXPECT_EQ(small->AddDevice({.id = "b"}).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(small->RemoveDevice("a").ok());
  EXPECT_TRUE(small->AddDevice({.id = "b"}).ok());  // its requester id was freed
}

TEST_F(IommuTest, InvalidationCostMakesTheCallerWait) {
  IommuOptions options;
  options.maintenance_interval = absl::ZeroDuration();
  options.invalidation.cost.fixed = absl::Milliseconds(5);
  iommu_ = *Iommu::Create(options);
  ASSERT_TRUE(iommu_->CreateDomain({.id = "d", .policy = Policy::kParanoid}).ok());
  ASSERT_TRUE(iommu_->AddDevice({.id = kDevice}).ok());
  ASSERT_TRUE(iommu_->Attach(kDevice, "d").ok());
  absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x9000, 0x1000));
  ASSERT_TRUE(mapped.ok());
  const absl::Time start = absl::Now();
  ASSERT_TRUE(iommu_->Unmap(kDevice, mapped->iova, 0x1000).ok());
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(5));  // a lower bound: the modelled cost
}

}  // namespace
}  // namespace iommu_broker
