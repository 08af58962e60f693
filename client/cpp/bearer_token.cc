#include "client/cpp/bearer_token.h"

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/support/interceptor.h"

namespace iommu_broker::client {
namespace {

class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  // The channel owns the factory that owns `header_value`, and every call
  // holds a reference to its channel, so it outlives the interceptor.
  explicit BearerTokenInterceptor(const std::string& header_value) : header_value_(header_value) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kAuthorizationMetadataKey, header_value_);
    }
    methods->Proceed();
  }

 private:
  const std::string& header_value_;
};

}  // namespace

absl::Status ValidateBearerToken(absl::string_view token) {
  if (token.empty()) return absl::InvalidArgumentError("bearer token is empty");
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      // The position helps find a stray character; the token itself is a
      // secret and stays out of messages (and so out of logs).
      return absl::InvalidArgumentError(
          absl::StrCat("bearer token has a space, control or non-ASCII character at byte ", i,
                       ": it must be printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  if (!file || (!std::getline(file, line) && !file.eof())) {
    return absl::NotFoundError(absl::StrCat("token file ", path, " cannot be read"));
  }
  absl::StripTrailingAsciiWhitespace(&line);
  if (absl::Status valid = ValidateBearerToken(line); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("token file ", path, ": ", valid.message()));
  }
  return line;
}

BearerTokenInterceptorFactory::BearerTokenInterceptorFactory(absl::string_view token)
    : header_value_(absl::StrCat(kBearerPrefix, token)) {}

grpc::experimental::Interceptor* BearerTokenInterceptorFactory::CreateClientInterceptor(
    grpc::experimental::ClientRpcInfo* /*info*/) {
  // gRPC owns (and deletes) the interceptors its factories return.
  return new BearerTokenInterceptor(header_value_);
}

}  // namespace iommu_broker::client
