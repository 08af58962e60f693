#include "server/log.h"

#include "absl/strings/escaping.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace iommu_broker {
namespace {

absl::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

bool NeedsQuotes(absl::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c > '~') return true;
  }
  return false;
}

void AppendField(std::string& line, absl::string_view key, absl::string_view value) {
  absl::StrAppend(&line, " ", key, "=");
  if (NeedsQuotes(value)) {
    absl::StrAppend(&line, "\"", absl::CHexEscape(value), "\"");
  } else {
    absl::StrAppend(&line, value);
  }
}

}  // namespace

Logger::Logger(std::FILE* out, LogLevel min_level) : out_(out), min_level_(min_level) {}

std::string Logger::Format(LogLevel level, absl::string_view event,
                           std::initializer_list<LogField> fields,
                           std::initializer_list<LogField> more) {
  std::string line = absl::StrCat("level=", LevelName(level));
  AppendField(line, "event", event);
  for (const LogField& field : fields) AppendField(line, field.key, field.value.Piece());
  for (const LogField& field : more) AppendField(line, field.key, field.value.Piece());
  return line;
}

void Logger::Log(LogLevel level, absl::string_view event, std::initializer_list<LogField> fields,
                 std::initializer_list<LogField> more) {
  if (level < min_level_) return;
  std::string line = absl::StrCat(
      "ts=", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ",
      Format(level, event, fields, more), "\n");
  std::fwrite(line.data(), 1, line.size(), out_);
  std::fflush(out_);
}

}  // namespace iommu_broker
