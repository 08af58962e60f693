// DeviceIotlb against the real broker in-process: caching, eviction by the
// broker's invalidations, coherence with paranoid unmaps under concurrent
// map/unmap/translate, and losing and regaining the link.
#include "client/cpp/device_iotlb.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/config.pb.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::client {
namespace {

using ::iommu_broker::testing::ExpectOk;
using ::iommu_broker::testing::TestBroker;

constexpr char kDomain[] = "vm1";
constexpr char kDevice[] = "0000:3b:00.0";
constexpr uint64_t kPage = 0x1000;

class DeviceIotlbTest : public ::testing::Test {
 protected:
  void Start(v1::Policy policy, v1::BrokerConfig config = {}) {
    broker_ = TestBroker::Start(config);
    ASSERT_NE(broker_, nullptr);
    v1::DomainSpec domain;
    domain.set_id(kDomain);
    domain.set_policy(policy);
    domain.mutable_flush_queue_timeout()->set_seconds(10);
    broker_->CreateDomainWithDevice(domain, kDevice);
    absl::StatusOr<std::unique_ptr<DeviceIotlb>> iotlb =
        DeviceIotlb::Link(broker_->channel(), {.device_id = kDevice});
    ASSERT_TRUE(iotlb.ok()) << iotlb.status();
    iotlb_ = *std::move(iotlb);
  }

  using Stub = v1::IommuBroker::Stub;

  void MapAt(uint64_t iova, uint64_t phys, uint64_t size, bool write = true) {
    v1::MapRequest map;
    map.set_device_id(kDevice);
    map.set_iova(iova);
    map.set_phys(phys);
    map.set_size(size);
    map.mutable_permissions()->set_read(true);
    map.mutable_permissions()->set_write(write);
    ExpectOk(broker_->Call(&Stub::Map, map));
  }
  void Unmap(uint64_t iova, uint64_t size) {
    v1::UnmapRequest unmap;
    unmap.set_device_id(kDevice);
    unmap.set_iova(iova);
    unmap.set_size(size);
    ExpectOk(broker_->Call(&Stub::Unmap, unmap));
  }
  v1::TranslateResponse Dma(uint64_t iova, uint64_t size, DmaAccess access = DmaAccess::kRead) {
    absl::StatusOr<v1::TranslateResponse> result = iotlb_->Translate(iova, size, access);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? *result : v1::TranslateResponse();
  }

  void FlushDomain() {
    v1::FlushRequest flush;
    flush.set_domain_id(kDomain);
    ExpectOk(broker_->Call(&Stub::Flush, flush));
  }
  // Fast sends without waiting for the cache, so tests that need what was
  // sent applied wait for the cache's count. (Bounded only so a bug cannot
  // hang.)
  void AwaitInvalidations(uint64_t count) {
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (iotlb_->Stats().invalidations < count && absl::Now() < give_up) {
      std::this_thread::yield();
    }
    ASSERT_GE(iotlb_->Stats().invalidations, count);
  }

  // The coherence tests' clock: ticks as the broker's state changes.
  uint64_t Tick() { return clock_.fetch_add(1) + 1; }

  // Maps `generations` pages one after another at a few IOVAs (generation g
  // at slot g % kSlots, to a physical page of its own), giving translators a
  // chance to cache each, then runs `retire(g, iova)` (which removes it and
  // records when, with Tick()). Meanwhile two threads translate the slots
  // through the cache and hand every translation that reached memory to
  // `check(response, generation, clock when it began)`. Returns how many did.
  template <typename Check, typename Retire>
  uint64_t RemapWhileTranslating(int generations, Check check, Retire retire) {
    constexpr int kSlots = 4;
    constexpr uint64_t kIovaBase = 0x100000;
    constexpr uint64_t kPhysBase = 0x10000000;
    std::atomic<bool> done{false};
    std::atomic<uint64_t> translations{0};
    std::vector<std::thread> translators;
    for (int t = 0; t < 2; ++t) {
      translators.emplace_back([&, t] {
        for (uint64_t i = t; !done.load(); ++i) {
          const uint64_t started = clock_.load();
          absl::StatusOr<v1::TranslateResponse> dma =
              iotlb_->Translate(kIovaBase + (i % kSlots) * kPage, 8, DmaAccess::kRead);
          if (!dma.ok() || dma->has_fault()) continue;
          translations.fetch_add(1);
          check(*dma, static_cast<int>((dma->segments(0).phys() - kPhysBase) / kPage), started);
        }
      });
    }
    for (int generation = 0; generation < generations; ++generation) {
      const uint64_t iova = kIovaBase + (generation % kSlots) * kPage;
      MapAt(iova, kPhysBase + generation * kPage, kPage);
      for (int spin = 0; spin < 50; ++spin) std::this_thread::yield();
      retire(generation, iova);
    }
    done.store(true);
    for (std::thread& translator : translators) translator.join();
    return translations.load();
  }

  std::unique_ptr<TestBroker> broker_;
  std::unique_ptr<DeviceIotlb> iotlb_;
  std::atomic<uint64_t> clock_{1};
};

TEST_F(DeviceIotlbTest, CachesWhatTheBrokerTranslatesAndServesItLocally) {
  Start(v1::POLICY_PARANOID);
  MapAt(0x10000, 0x200000, 2 * kPage);
  v1::TranslateResponse first = Dma(0x10800, kPage);
  ASSERT_FALSE(first.has_fault());
  ASSERT_EQ(first.segments_size(), 1);  // two pages, adjacent in memory
  EXPECT_EQ(first.segments(0).phys(), 0x200800u);
  EXPECT_EQ(first.segments(0).size(), kPage);
  EXPECT_FALSE(first.iotlb_hit());
  v1::TranslateResponse again = Dma(0x10800, kPage);
  EXPECT_TRUE(again.iotlb_hit());
  EXPECT_EQ(again.segments(0).phys(), 0x200800u);
  EXPECT_EQ(iotlb_->Stats().hits, 2u);
}

TEST_F(DeviceIotlbTest, AnAccessTheMappingDoesNotGrantFaults) {
  Start(v1::POLICY_PARANOID);
  MapAt(0x10000, 0x200000, kPage, /*write=*/false);
  EXPECT_FALSE(Dma(0x10000, 8).has_fault());
  v1::TranslateResponse write = Dma(0x10000, 8, DmaAccess::kWrite);
  ASSERT_TRUE(write.has_fault());
  EXPECT_EQ(write.fault().reason(), v1::FAULT_REASON_PERMISSION);
  EXPECT_TRUE(Dma(0x80000, 8).has_fault());  // nothing mapped there
}

TEST_F(DeviceIotlbTest, ParanoidUnmapHasEvictedThePageWhenItReplies) {
  Start(v1::POLICY_PARANOID);
  MapAt(0x10000, 0x200000, kPage);
  ASSERT_FALSE(Dma(0x10000, 8).has_fault());
  ASSERT_TRUE(Dma(0x10000, 8).iotlb_hit());
  Unmap(0x10000, kPage);
  EXPECT_TRUE(Dma(0x10000, 8).has_fault());
}

TEST_F(DeviceIotlbTest, FastServesAnUnmappedPageAsStaleUntilTheBatchFlushEvictsIt) {
  Start(v1::POLICY_FAST);
  MapAt(0x10000, 0x200000, kPage);
  ASSERT_FALSE(Dma(0x10000, 8).has_fault());
  const uint64_t before = iotlb_->Stats().invalidations;
  Unmap(0x10000, kPage);
  AwaitInvalidations(before + 1);  // the notice that the flush is pending
  v1::TranslateResponse stale = Dma(0x10000, 8);
  EXPECT_TRUE(stale.iotlb_hit());
  EXPECT_TRUE(stale.stale());  // served, as fast allows, and marked
  ASSERT_EQ(stale.segments_size(), 1);
  EXPECT_EQ(stale.segments(0).phys(), 0x200000u);
  EXPECT_EQ(iotlb_->Stats().stale_hits, 1u);
  FlushDomain();
  AwaitInvalidations(before + 2);
  EXPECT_TRUE(Dma(0x10000, 8).has_fault());
}

// Mappings at a few IOVAs are made and removed over and over, each time to a
// new physical page, while threads translate them through the cache. A
// translation that began after the Unmap of a physical page replied must
// never return that page.
TEST_F(DeviceIotlbTest, NoTranslationReturnsAPageAfterItsParanoidUnmapReplied) {
  Start(v1::POLICY_PARANOID);
  constexpr int kGenerations = 400;
  std::vector<std::atomic<uint64_t>> unmapped_at(kGenerations);  // 0: not yet
  std::atomic<int> violations{0};
  const uint64_t translations = RemapWhileTranslating(
      kGenerations,
      [&](const v1::TranslateResponse&, int generation, uint64_t started) {
        const uint64_t unmapped = unmapped_at[generation].load();
        if (unmapped != 0 && unmapped <= started) violations.fetch_add(1);
      },
      [&](int generation, uint64_t iova) {
        Unmap(iova, kPage);
        unmapped_at[generation].store(Tick());
      });
  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(translations, 0u);
  EXPECT_GT(iotlb_->Stats().hits, 0u);
}

// The fast counterpart: each generation is mapped, unmapped and flushed while
// threads translate through the cache. Once the unmap's notice reached the
// cache, every translation that returns the page must say it is stale; once
// the flush's invalidation reached it, none may return the page.
TEST_F(DeviceIotlbTest, FastMarksUnmappedPagesStaleThenEvictsThemAtTheFlush) {
  Start(v1::POLICY_FAST);
  constexpr int kGenerations = 300;
  std::vector<std::atomic<uint64_t>> noticed_at(kGenerations);  // 0: not yet
  std::vector<std::atomic<uint64_t>> flushed_at(kGenerations);  // 0: not yet
  std::atomic<int> unmarked_stale{0};
  std::atomic<int> after_flush{0};
  std::mutex violation_mutex;
  std::string violation;
  const uint64_t translations = RemapWhileTranslating(
      kGenerations,
      [&](const v1::TranslateResponse& dma, int generation, uint64_t started) {
        const uint64_t noticed = noticed_at[generation].load();
        const uint64_t flushed = flushed_at[generation].load();
        if (noticed != 0 && noticed <= started && !dma.stale()) unmarked_stale.fetch_add(1);
        if (flushed != 0 && flushed <= started) {
          after_flush.fetch_add(1);
          std::lock_guard<std::mutex> lock(violation_mutex);
          violation = absl::StrCat("generation ", generation, " noticed ", noticed, " flushed ",
                                   flushed, " started ", started, " now ", clock_.load(), ": ",
                                   dma.ShortDebugString());
        }
      },
      [&](int generation, uint64_t iova) {
        const uint64_t before = iotlb_->Stats().invalidations;
        Unmap(iova, kPage);
        AwaitInvalidations(before + 1);
        noticed_at[generation].store(Tick());
        for (int spin = 0; spin < 50; ++spin) std::this_thread::yield();
        FlushDomain();
        AwaitInvalidations(before + 2);
        flushed_at[generation].store(Tick());
      });
  EXPECT_EQ(unmarked_stale.load(), 0);
  EXPECT_EQ(after_flush.load(), 0) << violation;
  EXPECT_GT(translations, 0u);
}

TEST_F(DeviceIotlbTest, ACutOffCacheRefusesToTranslateUntilRelinked) {
  v1::BrokerConfig config;
  config.mutable_limits()->set_watch_queue_capacity(2);
  Start(v1::POLICY_PARANOID, config);
  MapAt(0x40000, 0x300000, kPage);
  MapAt(0x41000, 0x301000, kPage);
  MapAt(0x42000, 0x302000, kPage);
  // One unmap of three mappings: three invalidations at once overflow the
  // link's queue of two, and the broker cuts the cache off.
  Unmap(0x40000, 3 * kPage);
  // The cut-off reaches the cache shortly after. (Bounded only so a bug
  // cannot hang.)
  absl::Status status;
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  do {
    status = iotlb_->Translate(0x40000, 8, DmaAccess::kRead).status();
  } while (status.ok() && absl::Now() < give_up);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_FALSE(iotlb_->link_status().ok());
  ASSERT_TRUE(iotlb_->Relink().ok());
  EXPECT_TRUE(iotlb_->link_status().ok());
  EXPECT_TRUE(Dma(0x40000, 8).has_fault());
}

TEST_F(DeviceIotlbTest, LinkFailsForUnknownDevicesAndSecondCaches) {
  Start(v1::POLICY_PARANOID);
  EXPECT_EQ(DeviceIotlb::Link(broker_->channel(), {.device_id = "0000:99:00.0"}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(DeviceIotlb::Link(broker_->channel(), {.device_id = kDevice}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(DeviceIotlb::Link(broker_->channel(), {.device_id = ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace iommu_broker::client
