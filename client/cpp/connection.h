// How a client reaches the broker: ConnectionOptions (target, TLS files,
// bearer token, per-call deadline, read-only retries) and the channel made
// from them.
//
//   ConnectionOptions options;            // target: IOMMU_BROKER_TARGET or 127.0.0.1:50051
//   options.target = "unix:/run/iommu-broker/grpc.sock";
//   options.token_file = "/run/secrets/broker-token";  // default: IOMMU_BROKER_TOKEN_FILE
//   absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(options);
//
// FromGrpcStatus turns a call's grpc::Status into the absl::Status every
// client API returns (same code, same message).
//
// Thread-safety: the functions are thread-safe; a channel may be shared by
// any number of threads and clients.
#ifndef IOMMU_BROKER_CLIENT_CPP_CONNECTION_H_
#define IOMMU_BROKER_CLIENT_CPP_CONNECTION_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/status.h"

namespace iommu_broker::client {

// The address used when neither the caller nor IOMMU_BROKER_TARGET names one.
inline constexpr char kDefaultTarget[] = "127.0.0.1:50051";
// The environment variable naming the broker's address.
inline constexpr char kTargetEnvironmentVariable[] = "IOMMU_BROKER_TARGET";
// The environment variable naming the file that holds the bearer token.
inline constexpr char kTokenFileEnvironmentVariable[] = "IOMMU_BROKER_TOKEN_FILE";

// PEM files for a TLS connection. Empty certificate_chain and private_key:
// server authentication only; both set: mutual TLS.
struct TlsFiles {
  std::string root_certificates;  // CA bundle that signed the server; empty: the system's
  std::string certificate_chain;  // this client's certificate (mutual TLS)
  std::string private_key;        // its key (mutual TLS)
};

struct ConnectionOptions {
  // host:port, or unix:/path for a Unix socket.
  std::string target = DefaultTarget();
  // Absent: plaintext, as a broker without TLS (loopback or Unix socket) serves.
  std::optional<TlsFiles> tls;
  // Sent as `authorization: Bearer <token>` on every call, streams included,
  // over TLS and plaintext alike (bearer_token.h). Empty: token_file's.
  std::string bearer_token;
  // A file whose first line is the token (ReadTokenFile), read by
  // MakeChannel when bearer_token is empty. Empty: no token.
  std::string token_file = DefaultTokenFile();
  // Every call's deadline, from when it is issued (streams: none).
  absl::Duration deadline = absl::Seconds(10);
  // Read-only calls (Get*, List*, Translate, GetStats) are retried this many
  // times on UNAVAILABLE, with exponential backoff from initial_backoff up to
  // max_backoff; calls that change state (Map, Unmap, ...) never are.
  int read_retries = 3;
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  // Largest message sent or received (the broker's default limit).
  int max_message_bytes = 4 << 20;

  // IOMMU_BROKER_TARGET if set and not empty, else kDefaultTarget.
  static std::string DefaultTarget();
  // IOMMU_BROKER_TOKEN_FILE if set, else empty.
  static std::string DefaultTokenFile();
};

// A channel to options.target whose calls carry the bearer token, if any.
// Fails (naming the file) if a TLS or token file cannot be read, or
// INVALID_ARGUMENT for an empty target or an invalid token (the message
// never holds the token). Connecting is lazy: an unreachable broker shows up
// as UNAVAILABLE on the first call.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options);

// The same code and message as absl::Status.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_CONNECTION_H_
