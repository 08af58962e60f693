// AccessPolicy: every malformed AuthConfig is refused naming the field, and
// tokens and SANs find their identity; Identity's role table.
#include "server/access_policy.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

using ::testing::HasSubstr;

v1::AuthConfig Parse(const std::string& text) {
  v1::AuthConfig config;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &config)) << text;
  return config;
}

TEST(Sha256HexTest, KnownDigest) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(AccessPolicyTest, EmptyConfigDisablesAuthentication) {
  absl::StatusOr<AccessPolicy> policy = AccessPolicy::Create(v1::AuthConfig());
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_FALSE(policy->enabled());
  EXPECT_EQ(policy->FindByToken("anything"), nullptr);
}

TEST(AccessPolicyTest, FindsIdentitiesByTokenAndSan) {
  const std::string text = absl::StrCat(
      R"(identities { name: "ops" role: ROLE_OPERATOR token_sha256: ")", Sha256Hex("ops-token"),
      R"(" }
         identities { name: "vm1" role: ROLE_DRIVER certificate_san: "vm1.example"
                      device_ids: "0000:00:01.0" device_ids: "0000:00:02.0" })");
  absl::StatusOr<AccessPolicy> policy = AccessPolicy::Create(Parse(text));
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_TRUE(policy->enabled());
  ASSERT_NE(policy->FindByToken("ops-token"), nullptr);
  EXPECT_EQ(policy->FindByToken("ops-token")->name, "ops");
  EXPECT_EQ(policy->FindByToken("ops-token "), nullptr);
  EXPECT_EQ(policy->FindByToken(Sha256Hex("ops-token")), nullptr) << "the hash is no token";
  const Identity* driver = policy->FindBySan("vm1.example");
  ASSERT_NE(driver, nullptr);
  EXPECT_EQ(driver->name, "vm1");
  EXPECT_TRUE(driver->Drives("0000:00:02.0"));
  EXPECT_FALSE(driver->Drives("0000:00:03.0"));
  EXPECT_EQ(policy->FindBySan("vm2.example"), nullptr);
}

TEST(AccessPolicyTest, RolesMayMakeTheirKindsOfCall) {
  const Identity operator_identity{"o", Role::kOperator, {}};
  const Identity driver{"d", Role::kDriver, {"dev"}};
  const Identity viewer{"v", Role::kViewer, {}};
  for (CallKind kind : {CallKind::kAdmin, CallKind::kRead, CallKind::kObserve,
                        CallKind::kDataPath}) {
    EXPECT_TRUE(operator_identity.May(kind));
  }
  EXPECT_TRUE(operator_identity.Drives("any"));
  EXPECT_FALSE(driver.May(CallKind::kAdmin));
  EXPECT_FALSE(driver.May(CallKind::kRead));
  EXPECT_TRUE(driver.May(CallKind::kObserve));
  EXPECT_TRUE(driver.May(CallKind::kDataPath));
  EXPECT_FALSE(viewer.May(CallKind::kAdmin));
  EXPECT_TRUE(viewer.May(CallKind::kRead));
  EXPECT_TRUE(viewer.May(CallKind::kObserve));
  EXPECT_FALSE(viewer.May(CallKind::kDataPath));
  EXPECT_FALSE(viewer.Drives("dev"));
}

struct BadConfig {
  std::string text;
  std::string error;
};

class AccessPolicyRefusesTest : public ::testing::TestWithParam<BadConfig> {};

TEST_P(AccessPolicyRefusesTest, NamingTheField) {
  absl::StatusOr<AccessPolicy> policy = AccessPolicy::Create(Parse(GetParam().text));
  ASSERT_FALSE(policy.ok()) << GetParam().text;
  EXPECT_EQ(policy.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(policy.status().message(), HasSubstr(GetParam().error));
}

const std::string kHash = Sha256Hex("t");

INSTANTIATE_TEST_SUITE_P(
    Configs, AccessPolicyRefusesTest,
    ::testing::Values(
        BadConfig{R"(identities { role: ROLE_VIEWER certificate_san: "a" })",
                  "auth.identities[0].name is empty"},
        BadConfig{R"(identities { name: "a" certificate_san: "a" })",
                  "auth.identities[0].role ROLE_UNSPECIFIED"},
        BadConfig{R"(identities { name: "a" role: ROLE_VIEWER })",
                  "auth.identities[0].token_sha256 and certificate_san are both empty"},
        BadConfig{R"(identities { name: "a" role: ROLE_VIEWER token_sha256: "abc" })",
                  "auth.identities[0].token_sha256 is not 64 lower-case hex digits"},
        BadConfig{absl::StrCat(R"(identities { name: "a" role: ROLE_VIEWER token_sha256: ")",
                               absl::AsciiStrToUpper(kHash), R"(" })"),
                  "auth.identities[0].token_sha256 is not 64 lower-case hex digits"},
        BadConfig{R"(identities { name: "a" role: ROLE_DRIVER certificate_san: "a" })",
                  "auth.identities[0].device_ids is empty"},
        BadConfig{R"(identities { name: "a" role: ROLE_VIEWER certificate_san: "a"
                                  device_ids: "d" })",
                  "auth.identities[0].device_ids is set for role ROLE_VIEWER"},
        BadConfig{R"(identities { name: "a" role: ROLE_DRIVER certificate_san: "a"
                                  device_ids: "" })",
                  "auth.identities[0].device_ids holds an empty id"},
        BadConfig{R"(identities { name: "a" role: ROLE_VIEWER certificate_san: "a" }
                     identities { name: "a" role: ROLE_VIEWER certificate_san: "b" })",
                  "auth.identities[1].name a is used twice"},
        BadConfig{R"(identities { name: "a" role: ROLE_VIEWER certificate_san: "s" }
                     identities { name: "b" role: ROLE_VIEWER certificate_san: "s" })",
                  "auth.identities[1].certificate_san s is another identity's too"},
        BadConfig{absl::StrCat(R"(identities { name: "a" role: ROLE_VIEWER token_sha256: ")",
                               kHash, R"(" } identities { name: "b" role: ROLE_VIEWER token_sha256: ")",
                               kHash, R"(" })"),
                  "auth.identities[1].token_sha256 is another identity's token too"}));

}  // namespace
}  // namespace iommu_broker
