// AccessPolicy: the broker's known clients (identities) and their roles,
// built from the config's AuthConfig (protos/iommu_broker/v1/config.proto).
// It finds the identity a bearer token or a client certificate SAN belongs
// to; Identity says what that identity may call (docs/SECURITY.md).
//
//   absl::StatusOr<AccessPolicy> policy = AccessPolicy::Create(config.auth());
//   const Identity* who = policy->FindByToken(token);  // null: nobody known
//   if (who != nullptr && who->May(CallKind::kDataPath)) ...
//
// An empty policy (no identities) is a broker without authentication.
//
// Thread-safety: constant after construction.
#ifndef IOMMU_BROKER_SERVER_ACCESS_POLICY_H_
#define IOMMU_BROKER_SERVER_ACCESS_POLICY_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "iommu_broker/v1/config.pb.h"

namespace iommu_broker {

enum class Role { kOperator, kDriver, kViewer };

// The kinds of RPC, by who may make them.
enum class CallKind {
  kAdmin,     // domains, devices, policies: operators
  kRead,      // Get*, List*: operators, viewers
  kObserve,   // GetStats, WatchEvents: operators, viewers, drivers (their devices)
  kDataPath,  // Map, Unmap, Translate, Flush, Batch, LinkDeviceIotlb: operators, drivers
};

absl::string_view RoleName(Role role);

struct Identity {
  std::string name;
  Role role = Role::kViewer;
  absl::flat_hash_set<std::string> device_ids;  // drivers only

  bool May(CallKind kind) const;
  // Whether the identity may work with this device's mappings: an
  // operator any device, a driver its own.
  bool Drives(absl::string_view device_id) const;
};

class AccessPolicy final {
 public:
  // Fails, naming the field (identities[2].token_sha256 ...), on an
  // unspecified role, a malformed hash, a duplicate name, token or SAN, an
  // identity with no way to authenticate, or device_ids that do not fit
  // the role.
  static absl::StatusOr<AccessPolicy> Create(const v1::AuthConfig& config);

  // Whether any identity is configured: then every call must authenticate.
  bool enabled() const { return !identities_.empty(); }
  size_t size() const { return identities_.size(); }

  // The identity whose token_sha256 is SHA-256(token), or null.
  const Identity* FindByToken(absl::string_view token) const;
  // The identity with this certificate_san, or null.
  const Identity* FindBySan(absl::string_view san) const;

 private:
  AccessPolicy() = default;

  std::vector<Identity> identities_;
  absl::flat_hash_map<std::string, size_t> by_token_sha256_;  // lower-case hex
  absl::flat_hash_map<std::string, size_t> by_san_;
};

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_ACCESS_POLICY_H_
