#include "client/cpp/connection.h"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/cpp/bearer_token.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace iommu_broker::client {
namespace {

absl::StatusOr<std::string> ReadPemFile(const std::string& field, const std::string& path) {
  if (path.empty()) return std::string();
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(field, " file ", path, " cannot be read"));
  return std::string(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const ConnectionOptions& options) {
  if (!options.tls) return grpc::InsecureChannelCredentials();
  const TlsFiles& files = *options.tls;
  if (files.certificate_chain.empty() != files.private_key.empty()) {
    return absl::InvalidArgumentError(
        "TLS certificate_chain and private_key must be given together (mutual TLS) or not at all");
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> roots = ReadPemFile("TLS root_certificates", files.root_certificates);
  if (!roots.ok()) return roots.status();
  absl::StatusOr<std::string> chain = ReadPemFile("TLS certificate_chain", files.certificate_chain);
  if (!chain.ok()) return chain.status();
  absl::StatusOr<std::string> key = ReadPemFile("TLS private_key", files.private_key);
  if (!key.ok()) return key.status();
  ssl.pem_root_certs = *std::move(roots);
  ssl.pem_cert_chain = *std::move(chain);
  ssl.pem_private_key = *std::move(key);
  return grpc::SslCredentials(ssl);
}

// options.bearer_token, else the token in options.token_file, else empty.
absl::StatusOr<std::string> BearerToken(const ConnectionOptions& options) {
  if (!options.bearer_token.empty()) {
    if (absl::Status valid = ValidateBearerToken(options.bearer_token); !valid.ok()) return valid;
    return options.bearer_token;
  }
  if (options.token_file.empty()) return std::string();
  return ReadTokenFile(options.token_file);
}

}  // namespace

std::string ConnectionOptions::DefaultTarget() {
  const char* target = std::getenv(kTargetEnvironmentVariable);
  return target != nullptr && target[0] != '\0' ? std::string(target) : kDefaultTarget;
}

std::string ConnectionOptions::DefaultTokenFile() {
  const char* path = std::getenv(kTokenFileEnvironmentVariable);
  return path != nullptr ? std::string(path) : std::string();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("target is empty");
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = Credentials(options);
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::string> token = BearerToken(options);
  if (!token.ok()) return token.status();
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options.max_message_bytes);
  arguments.SetMaxSendMessageSize(options.max_message_bytes);
  if (token->empty()) return grpc::CreateCustomChannel(options.target, *credentials, arguments);
  // An interceptor, not grpc::AccessTokenCredentials: gRPC sends call
  // credentials only over TLS, and a plaintext Unix socket or loopback
  // broker authenticates tokens too.
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerTokenInterceptorFactory>(*token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      options.target, *credentials, arguments, std::move(interceptors));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace iommu_broker::client
