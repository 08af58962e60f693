#include "server/tls_files.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace iommu_broker {
namespace {

// How often the credentials look for changed files.
constexpr unsigned int kRefreshIntervalSeconds = 1;

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* certificate) const { X509_free(certificate); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Certificate = std::unique_ptr<X509, X509Free>;
using PrivateKey = std::unique_ptr<EVP_PKEY, KeyFree>;

absl::StatusOr<std::string> ReadFile(absl::string_view field, const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("tls.", field, " is empty"));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("tls.", field, " ", path, " cannot be read"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

Bio MemoryBio(const std::string& data) {
  return Bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

absl::StatusOr<Certificate> FirstCertificate(absl::string_view field, const std::string& path) {
  absl::StatusOr<std::string> pem = ReadFile(field, path);
  if (!pem.ok()) return pem.status();
  Bio bio = MemoryBio(*pem);
  Certificate certificate(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (certificate == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls.", field, " ", path, " holds no PEM certificate"));
  }
  return certificate;
}

}  // namespace

bool TlsEnabled(const v1::TlsConfig& tls) {
  return !tls.certificate_file().empty() || !tls.private_key_file().empty() ||
         !tls.client_ca_file().empty() || tls.require_client_certificate();
}

absl::Status CheckTlsFiles(const v1::TlsConfig& tls) {
  if (!TlsEnabled(tls)) return absl::OkStatus();
  absl::StatusOr<Certificate> certificate =
      FirstCertificate("certificate_file", tls.certificate_file());
  if (!certificate.ok()) return certificate.status();
  absl::StatusOr<std::string> key_pem = ReadFile("private_key_file", tls.private_key_file());
  if (!key_pem.ok()) return key_pem.status();
  Bio key_bio = MemoryBio(*key_pem);
  PrivateKey key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tls.private_key_file ", tls.private_key_file(), " holds no PEM private key"));
  }
  if (X509_check_private_key(certificate->get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("tls.private_key_file ", tls.private_key_file(),
                                                   " does not match tls.certificate_file ",
                                                   tls.certificate_file()));
  }
  if (tls.require_client_certificate() && tls.client_ca_file().empty()) {
    return absl::InvalidArgumentError(
        "tls.require_client_certificate needs tls.client_ca_file to verify them");
  }
  if (!tls.client_ca_file().empty()) {
    if (absl::Status status = FirstCertificate("client_ca_file", tls.client_ca_file()).status();
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentialsFor(const v1::TlsConfig& tls) {
  if (!TlsEnabled(tls)) return grpc::InsecureServerCredentials();
  using grpc::experimental::FileWatcherCertificateProvider;
  const bool verify_clients = !tls.client_ca_file().empty();
  auto provider =
      verify_clients
          ? std::make_shared<FileWatcherCertificateProvider>(
                tls.private_key_file(), tls.certificate_file(), tls.client_ca_file(),
                kRefreshIntervalSeconds)
          : std::make_shared<FileWatcherCertificateProvider>(
                tls.private_key_file(), tls.certificate_file(), kRefreshIntervalSeconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (verify_clients) {
    options.watch_root_certs();
    options.set_cert_request_type(tls.require_client_certificate()
                                      ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                      : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace iommu_broker
