#include "client/iommuctl/bench_report.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "client/iommuctl/cli.h"
#include "client/iommuctl/table.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/time_util.h"

namespace iommu_broker::iommuctl {
namespace {

using client::LatencySummary;
using client::LoadReport;
using google::protobuf::Struct;
using google::protobuf::Value;

struct LatencyRow {
  const char* kind;
  const LatencySummary* latency;
};

std::vector<LatencyRow> LatencyRows(const LoadReport& report) {
  return {{"all", &report.latency},
          {"map", &report.map_latency},
          {"translate", &report.translate_latency},
          {"unmap", &report.unmap_latency}};
}

// Microseconds with two decimals: the range a broker's latencies live in.
std::string Micros(absl::Duration duration) {
  return absl::StrFormat("%.2f", absl::ToDoubleMicroseconds(duration));
}

std::string Rate(double per_second) { return absl::StrFormat("%.0f", per_second); }

// The JSON mapping of google.protobuf.Duration.
std::string JsonDuration(absl::Duration duration) {
  return google::protobuf::util::TimeUtil::ToString(
      google::protobuf::util::TimeUtil::NanosecondsToDuration(
          absl::ToInt64Nanoseconds(duration)));
}

Value Number(double number) {
  Value value;
  value.set_number_value(number);
  return value;
}

Value String(std::string text) {
  Value value;
  value.set_string_value(std::move(text));
  return value;
}

Value Object(Struct fields) {
  Value value;
  *value.mutable_struct_value() = std::move(fields);
  return value;
}

Value LatencyJson(const LatencySummary& latency) {
  Struct fields;
  auto& out = *fields.mutable_fields();
  out["count"] = Number(static_cast<double>(latency.count));
  out["p50"] = String(JsonDuration(latency.p50));
  out["p90"] = String(JsonDuration(latency.p90));
  out["p99"] = String(JsonDuration(latency.p99));
  out["p999"] = String(JsonDuration(latency.p999));
  out["max"] = String(JsonDuration(latency.max));
  return Object(std::move(fields));
}

Value ErrorsJson(const LoadReport& report) {
  Struct errors;
  for (const auto& [code, count] : report.errors_by_code) {
    Struct error;
    (*error.mutable_fields())["count"] = Number(static_cast<double>(count));
    (*error.mutable_fields())["firstMessage"] = String(report.first_error_message.at(code));
    (*errors.mutable_fields())[absl::StatusCodeToString(code)] = Object(std::move(error));
  }
  return Object(std::move(errors));
}

}  // namespace

std::string LoadReportTable(const LoadReport& report) {
  Table totals;
  totals.AddRow({"operations", absl::StrCat(report.operations)});
  totals.AddRow({"maps", absl::StrCat(report.maps)});
  totals.AddRow({"translations", absl::StrCat(report.translations)});
  totals.AddRow({"unmaps", absl::StrCat(report.unmaps)});
  totals.AddRow({"faults", absl::StrCat(report.faults)});
  totals.AddRow({"stale_translations", absl::StrCat(report.stale_translations)});
  totals.AddRow({"errors", absl::StrCat(report.errors)});
  totals.AddRow({"elapsed", absl::FormatDuration(report.elapsed)});
  totals.AddRow({"operations_per_second", Rate(report.operations_per_second)});

  Table latency({"LATENCY_US", "COUNT", "P50", "P90", "P99", "P99.9", "MAX"});
  for (const LatencyRow& row : LatencyRows(report)) {
    latency.AddRow({row.kind, absl::StrCat(row.latency->count), Micros(row.latency->p50),
                    Micros(row.latency->p90), Micros(row.latency->p99),
                    Micros(row.latency->p999), Micros(row.latency->max)});
  }
  std::string out = absl::StrCat(totals.Render(), "\n", latency.Render());

  if (!report.errors_by_code.empty()) {
    Table errors({"ERROR", "COUNT", "FIRST_MESSAGE"});
    for (const auto& [code, count] : report.errors_by_code) {
      errors.AddRow({absl::StatusCodeToString(code), absl::StrCat(count),
                     report.first_error_message.at(code)});
    }
    absl::StrAppend(&out, "\n", errors.Render());
  }
  if (report.interrupted) {
    absl::StrAppend(&out, "\ninterrupted: stopped before its end; the counts cover what ran\n");
  }
  if (!report.cleanup.ok()) {
    absl::StrAppend(&out, "\ncleanup failed: ", report.cleanup.ToString(), "\n");
  }
  return out;
}

std::string LoadReportJson(const LoadReport& report) {
  Struct json;
  auto& fields = *json.mutable_fields();
  fields["operations"] = Number(static_cast<double>(report.operations));
  fields["maps"] = Number(static_cast<double>(report.maps));
  fields["translations"] = Number(static_cast<double>(report.translations));
  fields["unmaps"] = Number(static_cast<double>(report.unmaps));
  fields["faults"] = Number(static_cast<double>(report.faults));
  fields["staleTranslations"] = Number(static_cast<double>(report.stale_translations));
  fields["errors"] = Number(static_cast<double>(report.errors));
  fields["errorsByCode"] = ErrorsJson(report);
  fields["elapsed"] = String(JsonDuration(report.elapsed));
  fields["operationsPerSecond"] = Number(report.operations_per_second);
  Struct latency;
  for (const LatencyRow& row : LatencyRows(report)) {
    (*latency.mutable_fields())[row.kind] = LatencyJson(*row.latency);
  }
  fields["latency"] = Object(std::move(latency));
  fields["cleanup"] = String(report.cleanup.ok() ? "OK" : report.cleanup.ToString());
  fields["interrupted"].set_bool_value(report.interrupted);
  return ToJson(json);
}

std::string ProgressLine(const client::LoadProgress& progress) {
  return absl::StrFormat("%s  %d ops  %s ops/s  %d errors",
                         absl::FormatDuration(absl::Trunc(progress.elapsed, absl::Milliseconds(100))),
                         progress.operations, Rate(progress.operations_per_second),
                         progress.errors);
}

}  // namespace iommu_broker::iommuctl
