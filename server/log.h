// Logger writes structured logs: one event per line, `key=value` fields,
// values quoted only when they need it, e.g.
//
//   ts=2026-12-01T22:54:42.123Z level=info event=domain_created domain=vm1 policy=fast
//
//   Logger log(stderr);
//   log.Info("domain_created", {{"domain", id}, {"policy", "fast"}});
//
// For start-up, configuration, admin actions and errors; never for
// data-path operations.
//
// Thread-safety: thread-safe (each line is written with one call).
#ifndef IOMMU_BROKER_SERVER_LOG_H_
#define IOMMU_BROKER_SERVER_LOG_H_

#include <cstdio>
#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace iommu_broker {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

struct LogField {
  absl::string_view key;
  absl::AlphaNum value;
};

class Logger final {
 public:
  // `out` must outlive the logger; lines below `min_level` are skipped.
  explicit Logger(std::FILE* out, LogLevel min_level = LogLevel::kInfo);

  // `more` follows `fields` on the line (for callers that add their own).
  void Log(LogLevel level, absl::string_view event, std::initializer_list<LogField> fields,
           std::initializer_list<LogField> more = {});
  void Info(absl::string_view event, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kInfo, event, fields);
  }
  void Warning(absl::string_view event, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kWarning, event, fields);
  }
  void Error(absl::string_view event, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kError, event, fields);
  }

  // The line Log writes, without the timestamp (for tests).
  static std::string Format(LogLevel level, absl::string_view event,
                            std::initializer_list<LogField> fields,
                            std::initializer_list<LogField> more = {});

 private:
  std::FILE* const out_;
  const LogLevel min_level_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_LOG_H_
