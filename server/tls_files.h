// The API listener's TLS: a check of the config's certificate files (so a
// bad file stops the broker at start-up or fails a SIGHUP reload, naming
// the file, instead of failing every handshake), and the gRPC server
// credentials made from them. The credentials re-read the files when they
// change, so a certificate is rotated by replacing its files.
//
//   if (absl::Status status = CheckTlsFiles(config.tls()); !status.ok()) ...
//   builder.AddListeningPort(address, ServerCredentialsFor(config.tls()));
//
// Thread-safety: thread-safe (no state).
#ifndef IOMMU_BROKER_SERVER_TLS_FILES_H_
#define IOMMU_BROKER_SERVER_TLS_FILES_H_

#include <memory>

#include "absl/status/status.h"
#include "grpcpp/security/server_credentials.h"
#include "iommu_broker/v1/config.pb.h"

namespace iommu_broker {

// Whether the config asks for TLS at all.
bool TlsEnabled(const v1::TlsConfig& tls);

// OK when TLS is off, or when the certificate chain, the key (matching the
// certificate) and the client CA bundle if any are readable PEM;
// require_client_certificate needs client_ca_file.
absl::Status CheckTlsFiles(const v1::TlsConfig& tls);

// Plaintext when TLS is off; else TLS from the files, asking clients for a
// certificate signed by client_ca_file when it is set (and refusing those
// without one when require_client_certificate).
std::shared_ptr<grpc::ServerCredentials> ServerCredentialsFor(const v1::TlsConfig& tls);

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_SERVER_TLS_FILES_H_
