#include "server/log.h"

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

// Everything written to `file` so far.
std::string Contents(std::FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::string text;
  char buffer[256];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, n);
  return text;
}

TEST(LogFormatTest, LevelThenEventThenFieldsInOrder) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "domain_created",
                           {{"domain", "vm1"}, {"policy", "fast"}}),
            "level=info event=domain_created domain=vm1 policy=fast");
}

TEST(LogFormatTest, EveryLevelHasItsName) {
  EXPECT_THAT(Logger::Format(LogLevel::kDebug, "e", {}), StartsWith("level=debug "));
  EXPECT_THAT(Logger::Format(LogLevel::kInfo, "e", {}), StartsWith("level=info "));
  EXPECT_THAT(Logger::Format(LogLevel::kWarning, "e", {}), StartsWith("level=warning "));
  EXPECT_THAT(Logger::Format(LogLevel::kError, "e", {}), StartsWith("level=error "));
}

TEST(LogFormatTest, NoFieldsIsJustLevelAndEvent) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "stopped", {}), "level=info event=stopped");
}

TEST(LogFormatTest, MoreFollowsFields) {
  EXPECT_EQ(Logger::Format(LogLevel::kWarning, "e", {{"b", "2"}, {"a", "1"}},
                           {{"z", "26"}, {"c", "3"}}),
            "level=warning event=e b=2 a=1 z=26 c=3");
}

TEST(LogFormatTest, NumbersAreWrittenPlain) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e",
                           {{"port", 50051}, {"neg", -3}, {"big", uint64_t{1} << 63}}),
            "level=info event=e port=50051 neg=-3 big=9223372036854775808");
}

TEST(LogFormatTest, QuotesValuesWithSpaces) {
  EXPECT_EQ(Logger::Format(LogLevel::kError, "e", {{"error", "listen address taken"}}),
            "level=error event=e error=\"listen address taken\"");
}

TEST(LogFormatTest, QuotesAndEscapesQuotes) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e", {{"v", "say \"hi\""}}),
            "level=info event=e v=\"say \\\"hi\\\"\"");
  // A lone quote still needs quoting: unquoted it would open a string.
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e", {{"v", "a\"b"}}),
            "level=info event=e v=\"a\\\"b\"");
}

TEST(LogFormatTest, QuotesEqualsSign) {
  // Unquoted, "a=b" would read as a second field.
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e", {{"v", "a=b"}}),
            "level=info event=e v=\"a=b\"");
}

TEST(LogFormatTest, QuotesEmptyValue) {
  // `k=` alone is ambiguous to some parsers; `k=""` is not.
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e", {{"domain", ""}}),
            "level=info event=e domain=\"\"");
}

TEST(LogFormatTest, EscapesBackslashAndControlCharacters) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e", {{"v", "a\\b"}}),
            "level=info event=e v=\"a\\\\b\"");
  // A newline must never split one event over two lines.
  const std::string line = Logger::Format(LogLevel::kInfo, "e", {{"v", "a\nb\tc"}});
  EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  EXPECT_EQ(line.find('\t'), std::string::npos) << line;
  EXPECT_EQ(line, "level=info event=e v=\"a\\nb\\tc\"");
}

TEST(LogFormatTest, EscapesNonAscii) {
  // UTF-8 "é" (0xc3 0xa9): the line stays 7-bit ASCII.
  const std::string line = Logger::Format(LogLevel::kInfo, "e", {{"v", "caf\xc3\xa9"}});
  EXPECT_EQ(line, "level=info event=e v=\"caf\\xc3\\xa9\"");
  for (char c : line) EXPECT_TRUE(c >= ' ' && c <= '~') << line;
  // DEL (0x7f) is not printable either.
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e", {{"v", "\x7f"}}),
            "level=info event=e v=\"\\x7f\"");
}

TEST(LogFormatTest, PlainPrintableValuesStayUnquoted) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "e",
                           {{"device", "0000:3b:00.0"}, {"address", "unix:/tmp/x.sock"}}),
            "level=info event=e device=0000:3b:00.0 address=unix:/tmp/x.sock");
}

TEST(LogFormatTest, EventNameIsQuotedLikeAValue) {
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "two words", {}),
            "level=info event=\"two words\"");
  EXPECT_EQ(Logger::Format(LogLevel::kInfo, "", {}), "level=info event=\"\"");
}

class LoggerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    file_ = std::tmpfile();
    ASSERT_NE(file_, nullptr);
  }
  void TearDown() override {
    if (file_ != nullptr) std::fclose(file_);
  }

  std::FILE* file_ = nullptr;
};

TEST_F(LoggerTest, WritesOneTimestampedLinePerEvent) {
  Logger log(file_);
  log.Info("starting", {{"version", "0.1.0"}});
  log.Error("start_failed", {{"error", "bad config"}});
  const std::string text = Contents(file_);
  EXPECT_THAT(text,
              MatchesRegex("ts=[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
                           "level=info event=starting version=0\\.1\\.0\n"
                           "ts=[^ ]+ level=error event=start_failed error=\"bad config\"\n"));
}

TEST_F(LoggerTest, SkipsLinesBelowMinimumLevel) {
  Logger log(file_, LogLevel::kWarning);
  log.Log(LogLevel::kDebug, "debug_event", {});
  log.Info("info_event");
  log.Warning("warning_event");
  log.Error("error_event");
  const std::string text = Contents(file_);
  EXPECT_THAT(text, Not(HasSubstr("debug_event")));
  EXPECT_THAT(text, Not(HasSubstr("info_event")));
  EXPECT_THAT(text, HasSubstr("level=warning event=warning_event\n"));
  EXPECT_THAT(text, EndsWith("level=error event=error_event\n"));
}

TEST_F(LoggerTest, DefaultMinimumLevelIsInfo) {
  Logger log(file_);
  log.Log(LogLevel::kDebug, "debug_event", {});
  log.Info("info_event");
  const std::string text = Contents(file_);
  EXPECT_THAT(text, Not(HasSubstr("debug_event")));
  EXPECT_THAT(text, HasSubstr("event=info_event"));
}

TEST_F(LoggerTest, DebugLevelLetsEverythingThrough) {
  Logger log(file_, LogLevel::kDebug);
  log.Log(LogLevel::kDebug, "debug_event", {{"k", "v"}}, {{"extra", 1}});
  EXPECT_THAT(Contents(file_), HasSubstr("level=debug event=debug_event k=v extra=1\n"));
}

}  // namespace
}  // namespace iommu_broker
