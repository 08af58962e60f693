// Device-side IOTLB links through the Iommu: which invalidations reach a
// linked cache, and how paranoid unmaps wait for its acknowledgement.
#include "core/iommu/device_tlbs.h"

#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/iommu/iommu.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

constexpr char kDevice[] = "0000:3b:00.0";
constexpr char kOther[] = "0000:3c:00.0";
constexpr absl::Duration kAckTimeout = absl::Seconds(30);

MapRequest Request(uint64_t size) {
  MapRequest request;
  request.phys = 0x40000;
  request.size = size;
  request.perms = {true, true};
  return request;
}

// Domain "d" with kDevice attached and one 8 KiB mapping and kOther registered but detached; the
// test drives maintenance itself.
class DeviceTlbsTest : public ::testing::Test {
 protected:
  void Build(Policy policy) {
    IommuOptions options;
    options.maintenance_interval = absl::ZeroDuration();
    options.device_tlb.ack_timeout = kAckTimeout;
    iommu_ = *Iommu::Create(options);
    ASSERT_TRUE(iommu_->CreateDomain({.id = "d", .policy = policy}).ok());
    ASSERT_TRUE(iommu_->AddDevice({.id = kDevice}).ok());
    ASSERT_TRUE(iommu_->AddDevice({.id = kOther}).ok());
    ASSERT_TRUE(iommu_->Attach(kDevice, "d").ok());
    absl::StatusOr<MapResult> mapped = iommu_->Map(kDevice, Request(0x2000));
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    iova_ = mapped->iova;
  }

  std::shared_ptr<DeviceTlbPort> Link(const char* device) {
    absl::StatusOr<std::shared_ptr<DeviceTlbPort>> port = iommu_->LinkDeviceTlb(device, 64);
    EXPECT_TRUE(port.ok()) << port.status();
    return port.ok() ? *port : nullptr;
  }

  std::vector<DeviceTlbInvalidation> Drain(DeviceTlbPort& port) {
    std::vector<DeviceTlbInvalidation> read;
    while (std::optional<DeviceTlbInvalidation> next = port.Next()) read.push_back(*next);
    return read;
  }

  uint64_t AllocatedIovaBytes() { return iommu_->GetDomainStats("d")->iova.allocated_bytes; }

  std::unique_ptr<Iommu> iommu_;
  uint64_t iova_ = 0;  // of the one 8 KiB mapping
};

TEST_F(DeviceTlbsTest, ParanoidUnmapCompletesAndFreesItsIovasOnlyOnceTheCacheAcknowledges) {
  Build(Policy::kParanoid);
  std::shared_ptr<DeviceTlbPort> port = Link(kDevice);
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, iova_, 0x2000);
  ASSERT_TRUE(unmapped.ok()) << unmapped.status();
  ASSERT_NE(unmapped->device_tlb_acks, nullptr);
  EXPECT_FALSE(unmapped->device_tlb_acks->done());
  EXPECT_EQ(AllocatedIovaBytes(), 0x2000u);  // still held for the cache
  std::vector<DeviceTlbInvalidation> sent = Drain(*port);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].event.scope, InvalidationScope::kRange);
  EXPECT_EQ(sent[0].event.iova, iova_);
  EXPECT_EQ(sent[0].event.size, 0x2000u);
  ASSERT_TRUE(port->Acknowledge(sent[0].sequence).ok());
  EXPECT_TRUE(unmapped->device_tlb_acks->done());
  EXPECT_EQ(AllocatedIovaBytes(), 0u);
}

TEST_F(DeviceTlbsTest, ParanoidUnmapWithoutLinkedCachesIsCompleteOnReturn) {
  Build(Policy::kParanoid);
  std::shared_ptr<DeviceTlbPort> elsewhere = Link(kOther);  // not attached to "d"
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, iova_, 0x2000);
  ASSERT_TRUE(unmapped.ok());
  EXPECT_EQ(unmapped->device_tlb_acks, nullptr);
  EXPECT_EQ(AllocatedIovaBytes(), 0u);
  EXPECT_TRUE(Drain(*elsewhere).empty());
}

TEST_F(DeviceTlbsTest, SilentCacheIsCutOffAfterTheAckTimeoutAndTheUnmapCompletes) {
  Build(Policy::kParanoid);
  std::shared_ptr<DeviceTlbPort> port = Link(kDevice);
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, iova_, 0x2000);
  ASSERT_TRUE(unmapped.ok());
  iommu_->Maintain(absl::Now());
  EXPECT_FALSE(unmapped->device_tlb_acks->done());
  iommu_->Maintain(absl::Now() + kAckTimeout);
  EXPECT_TRUE(unmapped->device_tlb_acks->done());
  EXPECT_EQ(port->status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(AllocatedIovaBytes(), 0u);
  // The device may link again, starting afresh.
  std::shared_ptr<DeviceTlbPort> again = Link(kDevice);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->status().ok());
}

TEST_F(DeviceTlbsTest, FastNoticesAtTheUnmapInvalidatesWithTheFlushAndWaitsForNobody) {
  Build(Policy::kFast);
  std::shared_ptr<DeviceTlbPort> port = Link(kDevice);
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, iova_, 0x2000);
  ASSERT_TRUE(unmapped.ok());
  EXPECT_EQ(unmapped->device_tlb_acks, nullptr);
  // The unmap sends only the notice; the invalidation waits for the flush.
  std::vector<DeviceTlbInvalidation> noticed = Drain(*port);
  ASSERT_EQ(noticed.size(), 1u);
  EXPECT_TRUE(noticed[0].event.flush_pending);
  EXPECT_EQ(noticed[0].event.iova, iova_);
  EXPECT_EQ(noticed[0].event.size, 0x2000u);
  EXPECT_GT(AllocatedIovaBytes(), 0u);
  ASSERT_TRUE(iommu_->Flush("d").ok());
  std::vector<DeviceTlbInvalidation> sent = Drain(*port);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_FALSE(sent[0].event.flush_pending);
  EXPECT_EQ(sent[0].event.iova, iova_);
  EXPECT_GT(sent[0].sequence, noticed[0].sequence);
  EXPECT_EQ(AllocatedIovaBytes(), 0u);
}

TEST_F(DeviceTlbsTest, DetachAndAttachDropTheDevicesEntries) {
  Build(Policy::kParanoid);
  std::shared_ptr<DeviceTlbPort> port = Link(kDevice);
  ASSERT_TRUE(iommu_->Detach(kDevice).ok());
  std::vector<DeviceTlbInvalidation> sent = Drain(*port);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].event.scope, InvalidationScope::kRequester);
  EXPECT_EQ(sent[0].event.device_id, kDevice);
}

TEST_F(DeviceTlbsTest, OneLinkPerDeviceUntilItCloses) {
  Build(Policy::kParanoid);
  std::shared_ptr<DeviceTlbPort> port = Link(kDevice);
  EXPECT_EQ(iommu_->LinkDeviceTlb(kDevice, 64).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(iommu_->LinkDeviceTlb("nope", 64).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(iommu_->LinkDeviceTlb(kDevice, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  port->Close();
  EXPECT_TRUE(iommu_->LinkDeviceTlb(kDevice, 64).ok());
}

TEST_F(DeviceTlbsTest, DestroyingTheIommuReleasesPendingUnmaps) {
  Build(Policy::kParanoid);
  std::shared_ptr<DeviceTlbPort> port = Link(kDevice);
  absl::StatusOr<UnmapResult> unmapped = iommu_->Unmap(kDevice, iova_, 0x2000);
  ASSERT_TRUE(unmapped.ok());
  iommu_.reset();
  EXPECT_TRUE(unmapped->device_tlb_acks->done());
  EXPECT_FALSE(port->status().ok());
}

}  // namespace
}  // namespace iommu_broker
