// Bearer tokens: how a client proves its identity without a TLS client
// certificate. The token travels as gRPC metadata `authorization: Bearer
// <token>` on every call of a channel, unary and streaming alike.
//
//   absl::StatusOr<std::string> token = ReadTokenFile("/run/secrets/broker-token");
//   if (!token.ok()) return token.status();   // names the file, never the token
//   options.bearer_token = *std::move(token);  // ConnectionOptions, connection.h
//
// MakeChannel (connection.h) attaches the header through
// BearerTokenInterceptorFactory rather than gRPC's call credentials, which
// gRPC sends only over TLS: a broker on a Unix socket or loopback serves
// plaintext and still authenticates tokens. Over any other network, use TLS
// too, or the token crosses it in the clear.
//
// Tokens belong in files (or code), never on a command line, where `ps`
// shows them to every user of the machine.
//
// Thread-safety: the functions are thread-safe; the interceptor factory is
// shared by a channel's calls and is immutable.
#ifndef IOMMU_BROKER_CLIENT_CPP_BEARER_TOKEN_H_
#define IOMMU_BROKER_CLIENT_CPP_BEARER_TOKEN_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/client_interceptor.h"

namespace iommu_broker::client {

// The metadata key and the prefix of its value (the broker accepts exactly
// these).
inline constexpr char kAuthorizationMetadataKey[] = "authorization";
inline constexpr char kBearerPrefix[] = "Bearer ";

// OK for a non-empty token of printable ASCII without spaces (0x21-0x7e),
// which is what a metadata value can carry unchanged; else INVALID_ARGUMENT.
// The message gives the offending byte's position, never the token.
absl::Status ValidateBearerToken(absl::string_view token);

// The token in `path`: its first line without trailing whitespace (so a
// file written by `echo` works). NOT_FOUND if the file cannot be read,
// INVALID_ARGUMENT if the token is empty or invalid; the message names the
// file.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// Makes, for every call of a channel, an interceptor that adds
// `authorization: Bearer <token>` to the call's initial metadata.
class BearerTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  // `token` must be valid (ValidateBearerToken).
  explicit BearerTokenInterceptorFactory(absl::string_view token);

  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override;

 private:
  const std::string header_value_;  // "Bearer <token>"
};

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_BEARER_TOKEN_H_
