#include "client/iommuctl/table.h"

#include "gtest/gtest.h"

namespace iommu_broker::iommuctl {
namespace {

TEST(TableTest, PadsColumnsToTheWidestCellWithoutTrailingBlanks) {
  Table table({"ID", "POLICY", "DEVICES"});
  table.AddRow({"vm1", "fast", "0000:3b:00.0"});
  table.AddRow({"a-long-id", "pt", ""});
  EXPECT_EQ(table.Render(),
            "ID         POLICY  DEVICES\n"
            "vm1        fast    0000:3b:00.0\n"
            "a-long-id  pt\n");
}

TEST(TableTest, WithoutAHeaderPrintsOnlyRows) {
  Table table;
  EXPECT_TRUE(table.empty());
  table.AddRow({"iova", "0x1000"});
  table.AddRow({"leaves_4k", "1"});
  EXPECT_FALSE(table.empty());
  EXPECT_EQ(table.Render(),
            "iova       0x1000\n"
            "leaves_4k  1\n");
}

TEST(TableTest, AHeaderAloneIsEmpty) {
  Table table({"ID"});
  EXPECT_TRUE(table.empty());
  EXPECT_EQ(table.Render(), "ID\n");
}

TEST(TableTest, ShortRowsLeaveTheirLastCellsEmpty) {
  Table table({"A", "B", "C"});
  table.AddRow({"1"});
  table.AddRow({"1", "2", "3"});
  EXPECT_EQ(table.Render(),
            "A  B  C\n"
            "1\n"
            "1  2  3\n");
}

}  // namespace
}  // namespace iommu_broker::iommuctl
