// ValidateBearerToken and ReadTokenFile: which tokens pass, how a token file
// is read, and that no error message repeats the token.
#include "client/cpp/bearer_token.h"

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/temp_dir.h"

namespace iommu_broker::client {
namespace {

using ::iommu_broker::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSecret[] = "s3cret";

TEST(ValidateBearerTokenTest, AcceptsPrintableAsciiWithoutSpaces) {
  EXPECT_TRUE(ValidateBearerToken("x").ok());
  EXPECT_TRUE(ValidateBearerToken("abc-DEF_123.~+/=").ok());
  EXPECT_TRUE(ValidateBearerToken(std::string(4096, '!')).ok());
}

TEST(ValidateBearerTokenTest, RefusesEmptyToken) {
  const absl::Status status = ValidateBearerToken("");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("empty"));
}

TEST(ValidateBearerTokenTest, RefusesSpacesControlAndNonAsciiWithoutEchoingTheToken) {
  for (const std::string& token :
       {absl::StrCat(kSecret, " x"), absl::StrCat(kSecret, "\t"), absl::StrCat(kSecret, "\n"),
        absl::StrCat(kSecret, "\x7f"), absl::StrCat(kSecret, "\xc3\xa9"),
        absl::StrCat(kSecret, std::string(1, '\0'))}) {
    SCOPED_TRACE(absl::StrCat("token of ", token.size(), " bytes"));
    const absl::Status status = ValidateBearerToken(token);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("byte 6"));
    EXPECT_THAT(status.message(), Not(HasSubstr(kSecret)));
  }
}

class ReadTokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed"; }

  std::string Write(const std::string& contents) {
    const std::string path = absl::StrCat(dir_.path(), "/token");
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  TempDir dir_{"bearer_token_test"};
};

TEST_F(ReadTokenFileTest, ReadsFirstLineWithoutTrailingWhitespace) {
  for (const std::string& contents :
       {std::string(kSecret), absl::StrCat(kSecret, "\n"), absl::StrCat(kSecret, "\r\n"),
        absl::StrCat(kSecret, " \t\n"), absl::StrCat(kSecret, "\nsecond line\n")}) {
    SCOPED_TRACE(contents);
    absl::StatusOr<std::string> token = ReadTokenFile(Write(contents));
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_EQ(*token, kSecret);
  }
}

TEST_F(ReadTokenFileTest, MissingFileIsNotFoundNamingIt) {
  const std::string path = absl::StrCat(dir_.path(), "/missing");
  absl::StatusOr<std::string> token = ReadTokenFile(path);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(token.status().message(), HasSubstr(path));
}

TEST_F(ReadTokenFileTest, EmptyFileIsInvalidNamingIt) {
  for (const std::string contents : {"", "\n", "   \n", "\nsecond line\n"}) {
    SCOPED_TRACE(contents);
    const std::string path = Write(contents);
    absl::StatusOr<std::string> token = ReadTokenFile(path);
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(token.status().message(), HasSubstr(path));
    EXPECT_THAT(token.status().message(), HasSubstr("empty"));
  }
}

TEST_F(ReadTokenFileTest, InvalidTokenIsRefusedNamingTheFileNotTheToken) {
  const std::string path = Write(absl::StrCat(" ", kSecret, "\n"));  // a leading space
  absl::StatusOr<std::string> token = ReadTokenFile(path);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(token.status().message(), HasSubstr(path));
  EXPECT_THAT(token.status().message(), Not(HasSubstr(kSecret)));
}

}  // namespace
}  // namespace iommu_broker::client
