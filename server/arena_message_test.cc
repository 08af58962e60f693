#include "server/arena_message.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker {
namespace {

constexpr size_t kBlockBytes = 4096;

// Adds `count` map operations, each with its own oneof sub-message.
void AddMaps(v1::BatchRequest& request, int count) {
  for (int i = 0; i < count; ++i) {
    v1::MapRequest* map = request.add_operations()->mutable_map();
    map->set_device_id("0000:3b:00." + std::to_string(i % 8));
    map->set_phys(static_cast<uint64_t>(i) * 4096);
    map->set_size(4096);
  }
}

TEST(ArenaMessageTest, TheMessageLivesOnTheArena) {
  ArenaMessage<v1::BatchRequest> request(kBlockBytes);
  ASSERT_NE(request->GetArena(), nullptr);
  AddMaps(*request, 1);
  EXPECT_EQ(request->operations(0).GetArena(), request->GetArena());
}

TEST(ArenaMessageTest, RenewHandsOutAnEmptyMessage) {
  ArenaMessage<v1::BatchRequest> request(kBlockBytes);
  AddMaps(*request, 3);
  v1::BatchRequest& renewed = request.Renew();
  EXPECT_EQ(&renewed, request.get());
  EXPECT_EQ(renewed.operations_size(), 0);
  AddMaps(renewed, 2);
  EXPECT_EQ(renewed.operations(1).map().phys(), 4096u);
}

TEST(ArenaMessageTest, AMessageLargerThanTheBlockKeepsEverythingUntilRenewed) {
  ArenaMessage<v1::BatchRequest> request(kBlockBytes);
  AddMaps(*request, 1000);  // far beyond 4 KiB
  ASSERT_EQ(request->operations_size(), 1000);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(request->operations(i).map().phys(), static_cast<uint64_t>(i) * 4096) << i;
  }
  EXPECT_GT(request->GetArena()->SpaceAllocated(), kBlockBytes);
}

TEST(ArenaMessageTest, RenewGivesBackWhatALargeMessageSpilled) {
  ArenaMessage<v1::BatchRequest> request(kBlockBytes);
  for (int round = 0; round < 5; ++round) {
    AddMaps(request.Renew(), 1000);
  }
  request.Renew();
  // Only the owned block is left: memory is bounded by one message, not by
  // the stream's history.
  EXPECT_LE(request->GetArena()->SpaceAllocated(), kBlockBytes);
}

}  // namespace
}  // namespace iommu_broker
