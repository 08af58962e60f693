#include "server/access_control.h"

#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/auth_context.h"

namespace iommu_broker {
namespace {

constexpr absl::string_view kAuthorizationHeader = "authorization";
constexpr absl::string_view kBearerPrefix = "Bearer ";
// The AuthContext property gRPC's TLS stack fills with each SAN.
constexpr absl::string_view kSanProperty = "x509_subject_alternative_name";

absl::Status Denied(absl::string_view message) { return absl::PermissionDeniedError(message); }

// The device's domain, or empty when it is unknown or detached.
std::string DomainOf(const Iommu& iommu, absl::string_view device_id) {
  absl::StatusOr<DeviceInfo> device = iommu.DescribeDevice(device_id);
  return device.ok() ? device->domain_id : std::string();
}

}  // namespace

absl::string_view Caller::name() const {
  return identity_ == nullptr ? "anonymous" : absl::string_view(identity_->name);
}

absl::Status Caller::Permit(CallKind kind, absl::string_view rpc) const {
  if (identity_ == nullptr || identity_->May(kind)) return absl::OkStatus();
  return Denied(absl::StrCat("identity ", identity_->name, " (", RoleName(identity_->role),
                             ") may not call ", rpc));
}

absl::Status Caller::PermitDevice(absl::string_view device_id) const {
  if (identity_ == nullptr || identity_->Drives(device_id)) return absl::OkStatus();
  return Denied(absl::StrCat("identity ", identity_->name, " may not use device ", device_id,
                             ": it is not among its device_ids"));
}

absl::Status Caller::PermitDomain(const Iommu& iommu, absl::string_view domain_id) const {
  if (!is_driver()) return absl::OkStatus();
  for (const std::string& device_id : identity_->device_ids) {
    if (!domain_id.empty() && DomainOf(iommu, device_id) == domain_id) return absl::OkStatus();
  }
  return Denied(absl::StrCat("identity ", identity_->name, " may not use domain ", domain_id,
                             ": none of its devices is attached to it"));
}

absl::Status Caller::PermitOperation(const Iommu& iommu, const v1::Operation& operation) const {
  switch (operation.op_case()) {
    case v1::Operation::kMap:
      return PermitDevice(operation.map().device_id());
    case v1::Operation::kUnmap:
      return PermitDevice(operation.unmap().device_id());
    case v1::Operation::kTranslate:
      return PermitDevice(operation.translate().device_id());
    case v1::Operation::kFlush:
      return PermitDomain(iommu, operation.flush().domain_id());
    case v1::Operation::OP_NOT_SET:
      break;
  }
  return absl::OkStatus();  // the data path refuses an empty operation itself
}

absl::Status Caller::PermitObservation(const Iommu& iommu, absl::string_view domain_id,
                                       absl::string_view device_id) const {
  if (!is_driver()) return absl::OkStatus();
  if (device_id.empty()) {
    return Denied(absl::StrCat("identity ", identity_->name,
                               " (driver) must name one of its devices in device_id"));
  }
  if (absl::Status status = PermitDevice(device_id); !status.ok()) return status;
  if (!domain_id.empty() && DomainOf(iommu, device_id) != domain_id) {
    return Denied(absl::StrCat("identity ", identity_->name, " may not observe domain ", domain_id,
                               ": device ", device_id, " is not attached to it"));
  }
  return absl::OkStatus();
}

AccessControl::AccessControl(AccessPolicy policy)
    : policy_(std::make_shared<const AccessPolicy>(std::move(policy))) {}

void AccessControl::Replace(AccessPolicy policy) {
  auto replacement = std::make_shared<const AccessPolicy>(std::move(policy));
  absl::MutexLock lock(&mutex_);
  policy_ = std::move(replacement);
}

std::shared_ptr<const AccessPolicy> AccessControl::Current() const {
  absl::ReaderMutexLock lock(&mutex_);
  return policy_;
}

bool AccessControl::enabled() const { return Current()->enabled(); }

absl::StatusOr<Caller> AccessControl::Authenticate(const grpc::ServerContextBase& context) const {
  std::shared_ptr<const AccessPolicy> policy = Current();
  if (!policy->enabled()) return Caller::Anonymous();

  const auto& metadata = context.client_metadata();
  const auto [first, last] = metadata.equal_range(
      grpc::string_ref(kAuthorizationHeader.data(), kAuthorizationHeader.size()));
  if (first != last) {
    if (std::next(first) != last) {
      return absl::UnauthenticatedError("more than one authorization header");
    }
    const absl::string_view header(first->second.data(), first->second.size());
    if (!absl::StartsWithIgnoreCase(header, kBearerPrefix)) {
      return absl::UnauthenticatedError("the authorization header is not \"Bearer <token>\"");
    }
    const Identity* identity = policy->FindByToken(header.substr(kBearerPrefix.size()));
    if (identity == nullptr) return absl::UnauthenticatedError("unknown bearer token");
    return Caller(policy, identity);
  }

  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    for (const grpc::string_ref& san :
         auth->FindPropertyValues(std::string(kSanProperty))) {
      const Identity* identity = policy->FindBySan(absl::string_view(san.data(), san.size()));
      if (identity != nullptr) return Caller(policy, identity);
    }
    return absl::UnauthenticatedError(
        "the client certificate names no known identity (certificate_san)");
  }
  return absl::UnauthenticatedError(
      "authentication is required: send a bearer token (authorization: Bearer <token>) or a "
      "client certificate of a configured identity");
}

}  // namespace iommu_broker
