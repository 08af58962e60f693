// How `iommuctl bench` shows a load run's report (client/cpp/load_generator.h):
// aligned tables for people, or one JSON object for scripts, and the live
// progress line while the run goes on.
//
//   std::fputs(LoadReportTable(report).c_str(), stdout);
//   std::fputs(LoadReportJson(report).c_str(), stdout);
//
// JSON follows protobuf's JSON mapping conventions: lowerCamelCase keys,
// durations as strings of seconds ("0.000012s").
//
// Thread-safety: stateless functions.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_BENCH_REPORT_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_BENCH_REPORT_H_

#include <string>

#include "client/cpp/load_generator.h"

namespace iommu_broker::iommuctl {

// Totals, then a latency table (one row per operation kind), then errors by
// code if any, then a line saying the run was interrupted if it was, then a
// cleanup failure if any.
std::string LoadReportTable(const client::LoadReport& report);
// One line.
std::string LoadReportJson(const client::LoadReport& report);
// "12.0s  1234567 ops  102345 ops/s  0 errors", no newline.
std::string ProgressLine(const client::LoadProgress& progress);

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_BENCH_REPORT_H_
