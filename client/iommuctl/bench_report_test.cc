#include "client/iommuctl/bench_report.h"

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"

namespace iommu_broker::iommuctl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

client::LoadReport SampleReport() {
  client::LoadReport report;
  report.maps = 100;
  report.translations = 400;
  report.unmaps = 100;
  report.operations = 600;
  report.faults = 2;
  report.elapsed = absl::Milliseconds(1500);
  report.operations_per_second = 400;
  report.latency = {600, absl::Microseconds(12), absl::Microseconds(20), absl::Microseconds(45),
                    absl::Microseconds(80), absl::Microseconds(120)};
  report.map_latency.count = 100;
  return report;
}

TEST(LoadReportTableTest, TotalsThenAnAlignedLatencyTable) {
  const std::string table = LoadReportTable(SampleReport());
  EXPECT_THAT(table, HasSubstr("operations             600\n"));
  EXPECT_THAT(table, HasSubstr("elapsed                1.5s\n"));
  EXPECT_THAT(table, HasSubstr("operations_per_second  400\n"));
  EXPECT_THAT(table, HasSubstr("LATENCY_US  COUNT  P50    P90    P99    P99.9  MAX\n"
                               "all         600    12.00  20.00  45.00  80.00  120.00\n"
                               "map         100    0.00"));
  EXPECT_THAT(table, Not(HasSubstr("ERROR")));
  EXPECT_THAT(table, Not(HasSubstr("interrupted")));
  EXPECT_THAT(table, Not(HasSubstr("cleanup")));
}

TEST(LoadReportTableTest, SaysWhenTheRunWasInterrupted) {
  client::LoadReport report = SampleReport();
  report.interrupted = true;
  EXPECT_THAT(LoadReportTable(report), HasSubstr("\ninterrupted: stopped before its end"));
}

TEST(LoadReportTableTest, ErrorsByCodeAndCleanupFailure) {
  client::LoadReport report = SampleReport();
  report.errors = 3;
  report.errors_by_code[absl::StatusCode::kResourceExhausted] = 3;
  report.first_error_message[absl::StatusCode::kResourceExhausted] = "IOVA space exhausted";
  report.cleanup = absl::UnavailableError("broker gone");
  const std::string table = LoadReportTable(report);
  EXPECT_THAT(table, HasSubstr("ERROR               COUNT  FIRST_MESSAGE\n"
                               "RESOURCE_EXHAUSTED  3      IOVA space exhausted\n"));
  EXPECT_THAT(table, HasSubstr("cleanup failed: UNAVAILABLE: broker gone"));
}

TEST(LoadReportJsonTest, IsOneObjectWithCamelCaseKeysAndDurationStrings) {
  client::LoadReport report = SampleReport();
  report.errors_by_code[absl::StatusCode::kNotFound] = 1;
  report.first_error_message[absl::StatusCode::kNotFound] = "device x does not exist";
  const std::string json = LoadReportJson(report);
  EXPECT_THAT(json, Not(HasSubstr("\n")));
  google::protobuf::Struct parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &parsed).ok()) << json;
  const auto& fields = parsed.fields();
  EXPECT_EQ(fields.at("operations").number_value(), 600);
  EXPECT_EQ(fields.at("operationsPerSecond").number_value(), 400);
  EXPECT_EQ(fields.at("elapsed").string_value(), "1.500s");
  EXPECT_EQ(fields.at("cleanup").string_value(), "OK");
  EXPECT_EQ(fields.at("interrupted").kind_case(), google::protobuf::Value::kBoolValue);
  EXPECT_FALSE(fields.at("interrupted").bool_value());
  const auto& all = fields.at("latency").struct_value().fields().at("all").struct_value().fields();
  EXPECT_EQ(all.at("count").number_value(), 600);
  EXPECT_EQ(all.at("p99").string_value(), "0.000045s");
  const auto& not_found =
      fields.at("errorsByCode").struct_value().fields().at("NOT_FOUND").struct_value().fields();
  EXPECT_EQ(not_found.at("firstMessage").string_value(), "device x does not exist");
}

TEST(LoadReportJsonTest, InterruptedIsABoolean) {
  client::LoadReport report = SampleReport();
  report.interrupted = true;
  google::protobuf::Struct parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(LoadReportJson(report), &parsed).ok());
  EXPECT_TRUE(parsed.fields().at("interrupted").bool_value());
}

TEST(ProgressLineTest, ElapsedOperationsRateAndErrors) {
  client::LoadProgress progress;
  progress.elapsed = absl::Milliseconds(12345);
  progress.operations = 1234567;
  progress.operations_per_second = 102345.4;
  EXPECT_EQ(ProgressLine(progress), "12.3s  1234567 ops  102345 ops/s  0 errors");
}

}  // namespace
}  // namespace iommu_broker::iommuctl
