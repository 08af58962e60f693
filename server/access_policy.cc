#include "server/access_policy.h"

#include <openssl/evp.h>

#include <array>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace iommu_broker {
namespace {

constexpr size_t kSha256HexLength = 64;

absl::Status FieldError(int index, absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("auth.identities[", index, "].", field, " ",
                                                 problem));
}

bool IsLowerHex(absl::string_view text) {
  for (char c : text) {
    if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
  }
  return true;
}

absl::StatusOr<Role> RoleFromProto(v1::Role role, int index) {
  switch (role) {
    case v1::ROLE_OPERATOR:
      return Role::kOperator;
    case v1::ROLE_DRIVER:
      return Role::kDriver;
    case v1::ROLE_VIEWER:
      return Role::kViewer;
    default:
      return FieldError(index, "role", absl::StrCat(v1::Role_Name(role),
                                                    " is not one of ROLE_OPERATOR, ROLE_DRIVER, "
                                                    "ROLE_VIEWER"));
  }
}

absl::StatusOr<Identity> IdentityFromProto(const v1::Identity& proto, int index) {
  Identity identity;
  if (proto.name().empty()) return FieldError(index, "name", "is empty");
  identity.name = proto.name();
  absl::StatusOr<Role> role = RoleFromProto(proto.role(), index);
  if (!role.ok()) return role.status();
  identity.role = *role;
  if (proto.token_sha256().empty() && proto.certificate_san().empty()) {
    return FieldError(index, "token_sha256",
                      "and certificate_san are both empty: the identity cannot authenticate");
  }
  if (!proto.token_sha256().empty() &&
      (proto.token_sha256().size() != kSha256HexLength || !IsLowerHex(proto.token_sha256()))) {
    return FieldError(index, "token_sha256", "is not 64 lower-case hex digits");
  }
  if (identity.role == Role::kDriver && proto.device_ids().empty()) {
    return FieldError(index, "device_ids", "is empty: a driver drives at least one device");
  }
  if (identity.role != Role::kDriver && !proto.device_ids().empty()) {
    return FieldError(index, "device_ids",
                      absl::StrCat("is set for role ", v1::Role_Name(proto.role()),
                                   ": only drivers are limited to devices"));
  }
  for (const std::string& device_id : proto.device_ids()) {
    if (device_id.empty()) return FieldError(index, "device_ids", "holds an empty id");
    identity.device_ids.insert(device_id);
  }
  return identity;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kOperator:
      return "operator";
    case Role::kDriver:
      return "driver";
    case Role::kViewer:
      return "viewer";
  }
  return "unknown";
}

bool Identity::May(CallKind kind) const {
  switch (role) {
    case Role::kOperator:
      return true;
    case Role::kDriver:
      return kind == CallKind::kDataPath || kind == CallKind::kObserve;
    case Role::kViewer:
      return kind == CallKind::kRead || kind == CallKind::kObserve;
  }
  return false;
}

bool Identity::Drives(absl::string_view device_id) const {
  return role == Role::kOperator || (role == Role::kDriver && device_ids.contains(device_id));
}

absl::StatusOr<AccessPolicy> AccessPolicy::Create(const v1::AuthConfig& config) {
  AccessPolicy policy;
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < config.identities_size(); ++i) {
    const v1::Identity& proto = config.identities(i);
    absl::StatusOr<Identity> identity = IdentityFromProto(proto, i);
    if (!identity.ok()) return identity.status();
    if (!names.insert(identity->name).second) {
      return FieldError(i, "name", absl::StrCat(identity->name, " is used twice"));
    }
    const size_t position = policy.identities_.size();
    if (!proto.token_sha256().empty() &&
        !policy.by_token_sha256_.emplace(proto.token_sha256(), position).second) {
      return FieldError(i, "token_sha256", "is another identity's token too");
    }
    if (!proto.certificate_san().empty() &&
        !policy.by_san_.emplace(proto.certificate_san(), position).second) {
      return FieldError(i, "certificate_san",
                        absl::StrCat(proto.certificate_san(), " is another identity's too"));
    }
    policy.identities_.push_back(*std::move(identity));
  }
  return policy;
}

const Identity* AccessPolicy::FindByToken(absl::string_view token) const {
  auto it = by_token_sha256_.find(Sha256Hex(token));
  return it == by_token_sha256_.end() ? nullptr : &identities_[it->second];
}

const Identity* AccessPolicy::FindBySan(absl::string_view san) const {
  auto it = by_san_.find(san);
  return it == by_san_.end() ? nullptr : &identities_[it->second];
}

std::string Sha256Hex(absl::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest;
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest.data()), length));
}

}  // namespace iommu_broker
