// AccessControl: who is calling, and whether they may. It holds the current
// AccessPolicy and turns a call's credentials into a Caller: the bearer
// token of `authorization: Bearer <token>` metadata if the call sends one,
// else the SANs of its TLS client certificate. Caller then answers each
// question an RPC asks: may it make this kind of call, use this device,
// this domain, this Batch operation (docs/SECURITY.md).
//
//   absl::StatusOr<Caller> caller = access.Authenticate(*context);
//   absl::Status status = caller.ok() ? caller->Permit(CallKind::kAdmin, "CreateDomain")
//                                     : caller.status();
//
// Replace() swaps the policy (SIGHUP) without disturbing a call in flight:
// a Caller keeps the policy it was authenticated under, so a stream goes on
// under the identity it started with.
//
// Thread-safety: AccessControl is thread-safe; a Caller is constant after
// construction.
#ifndef IOMMU_BROKER_SERVER_ACCESS_CONTROL_H_
#define IOMMU_BROKER_SERVER_ACCESS_CONTROL_H_

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "core/iommu/iommu.h"
#include "grpcpp/server_context.h"
#include "iommu_broker/v1/iommu_broker.pb.h"
#include "server/access_policy.h"

namespace iommu_broker {

class Caller final {
 public:
  // Everything is permitted: the broker authenticates nobody.
  static Caller Anonymous() { return Caller(nullptr, nullptr); }
  Caller(std::shared_ptr<const AccessPolicy> policy, const Identity* identity)
      : policy_(std::move(policy)), identity_(identity) {}

  // The identity's name, or "anonymous" without authentication.
  absl::string_view name() const;
  bool is_driver() const { return identity_ != nullptr && identity_->role == Role::kDriver; }

  // PERMISSION_DENIED unless the role may make `rpc`, a call of `kind`.
  absl::Status Permit(CallKind kind, absl::string_view rpc) const;
  // PERMISSION_DENIED unless the caller may use `device_id`'s mappings.
  absl::Status PermitDevice(absl::string_view device_id) const;
  // A driver may name a domain only while one of its devices is attached
  // to it; anyone else, any domain.
  absl::Status PermitDomain(const Iommu& iommu, absl::string_view domain_id) const;
  // The device or domain a Batch operation names.
  absl::Status PermitOperation(const Iommu& iommu, const v1::Operation& operation) const;
  // GetStats and WatchEvents filters: a driver must name one of its
  // devices, and may narrow to its domain.
  absl::Status PermitObservation(const Iommu& iommu, absl::string_view domain_id,
                                 absl::string_view device_id) const;

 private:
  std::shared_ptr<const AccessPolicy> policy_;  // keeps *identity_ alive
  const Identity* identity_;                    // null: authentication is off
};

class AccessControl final {
 public:
  explicit AccessControl(AccessPolicy policy);
  AccessControl(const AccessControl&) = delete;
  AccessControl& operator=(const AccessControl&) = delete;

  // Calls from now on are authenticated under `policy`.
  void Replace(AccessPolicy policy);
  bool enabled() const;

  // The caller, or UNAUTHENTICATED (a token or certificate of no known
  // identity, or none at all) when authentication is on. The message never
  // holds the token.
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& context) const;

 private:
  std::shared_ptr<const AccessPolicy> Current() const;

  mutable absl::Mutex mutex_;
  std::shared_ptr<const AccessPolicy> policy_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_ACCESS_CONTROL_H_
