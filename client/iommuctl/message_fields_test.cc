#include "client/iommuctl/message_fields.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::iommuctl {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Not;
using ::testing::Pair;

TEST(MessageFieldsTest, AddressesInHexSizesWithSuffixesEnumsByName) {
  v1::MapResponse map;
  map.set_iova(0x7fffffe00000);
  map.set_kind(v1::MAPPING_KIND_TRANSLATED);
  map.set_leaves_2m(1);
  EXPECT_THAT(MessageFields(map),
              ElementsAre(Pair("iova", "0x7fffffe00000"), Pair("kind", "translated"),
                          Pair("leaves_4k", "0"), Pair("leaves_2m", "1"),
                          Pair("leaves_1g", "0")));  // bypass_refusal: empty, left out

  v1::UnmapResponse unmap;
  unmap.set_bytes_unmapped(0x200000);
  unmap.set_mappings_removed(1);
  EXPECT_THAT(MessageFields(unmap),
              ElementsAre(Pair("bytes_unmapped", "2M"), Pair("mappings_removed", "1")));
}

TEST(MessageFieldsTest, NestedRepeatedAndUnsetMessages) {
  v1::TranslateResponse translation;
  translation.add_segments()->set_phys(0x40000000);
  translation.mutable_segments(0)->set_size(4096);
  translation.set_iotlb_hit(true);
  EXPECT_THAT(MessageFields(translation),
              ElementsAre(Pair("segments[0].phys", "0x40000000"), Pair("segments[0].size", "4K"),
                          Pair("kind", "unspecified"), Pair("iotlb_hit", "true"),
                          Pair("stale", "false")));  // fault: unset, left out
}

TEST(MessageFieldsTest, RepeatedScalarsJoinAndOptionalsShowOnlyWhenSet) {
  v1::Domain domain;
  domain.mutable_spec()->set_id("vm1");
  domain.mutable_spec()->set_aperture_last(0xffffffffffff);
  domain.mutable_spec()->add_page_sizes(v1::PAGE_SIZE_4K);
  domain.mutable_spec()->add_page_sizes(v1::PAGE_SIZE_2M);
  domain.mutable_spec()->mutable_flush_queue_timeout()->set_nanos(10000000);
  domain.add_device_ids("a");
  domain.add_device_ids("b");
  const std::vector<Field> fields = MessageFields(domain);
  EXPECT_THAT(fields, Contains(Pair("spec.id", "vm1")));
  EXPECT_THAT(fields, Contains(Pair("spec.aperture_last", "0xffffffffffff")));
  EXPECT_THAT(fields, Not(Contains(Pair("spec.aperture_first", ::testing::_))));
  EXPECT_THAT(fields, Contains(Pair("spec.page_sizes", "4k,2m")));
  EXPECT_THAT(fields, Contains(Pair("spec.flush_queue_timeout", "10ms")));
  EXPECT_THAT(fields, Contains(Pair("device_ids", "a,b")));
  EXPECT_THAT(fields, Not(Contains(Pair("stats.maps", ::testing::_))));
}

TEST(MessageFieldsTest, MapsAreKeyedAndTimestampsAreRfc3339) {
  v1::GetStatsResponse stats;
  (*stats.mutable_devices())["dev"].set_leaked_bytes(8192);
  EXPECT_THAT(MessageFields(stats), Contains(Pair("devices[dev].leaked_bytes", "8K")));

  v1::Fault fault;
  fault.mutable_time()->set_seconds(1700000000);
  fault.set_iova(0x5000);
  fault.set_reason(v1::FAULT_REASON_NOT_MAPPED);
  EXPECT_EQ(FieldsLine(fault),
            "sequence=0 time=2023-11-14T22:13:20+00:00 iova=0x5000 access=unspecified "
            "reason=not_mapped");
}

}  // namespace
}  // namespace iommu_broker::iommuctl
