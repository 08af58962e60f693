// Cli holds iommuctl's global flags (--target, --timeout, --tls-*,
// --token-file, -o) and the plumbing every subcommand shares: connecting,
// printing a reply as an aligned table or JSON, reporting an error and
// choosing the exit code.
//
//   CLI::App app("iommuctl");
//   Cli cli(app);
//   auto request = std::make_shared<v1::GetDomainRequest>();
//   get->callback([&cli, request] { cli.Call(&BrokerClient::GetDomain, *request); });
//   ... app.parse(argc, argv) ...
//   return static_cast<int>(cli.exit_code());
//
// Data goes to stdout, errors to stderr.
//
// Thread-safety: not thread-safe; the command runs on the main thread.
#ifndef IOMMU_BROKER_CLIENT_IOMMUCTL_CLI_H_
#define IOMMU_BROKER_CLIENT_IOMMUCTL_CLI_H_

#include <functional>
#include <memory>
#include <string>
#include <type_traits>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/broker_client.h"
#include "client/cpp/connection.h"
#include "client/iommuctl/exit_code.h"
#include "google/protobuf/message.h"

namespace iommu_broker::iommuctl {

enum class OutputFormat { kTable, kJson };

// Renders a reply for humans.
template <typename Response>
using TableFormatter = std::function<std::string(const Response&)>;

// The reply's fields as a two-column listing (message_fields.h).
std::string FieldTable(const google::protobuf::Message& reply);
// One line of protobuf's JSON mapping, every field included.
std::string ToJson(const google::protobuf::Message& message);

class Cli final {
 public:
  // Adds the global flags to `app`.
  explicit Cli(CLI::App& app);
  Cli(const Cli&) = delete;
  Cli& operator=(const Cli&) = delete;

  OutputFormat format() const { return format_; }
  ExitCode exit_code() const { return exit_code_; }
  void set_exit_code(ExitCode code) { exit_code_ = code; }

  // The connection the flags ask for, its every call (streams included)
  // carrying the token of --token-file. An unreadable TLS or token file, or
  // an invalid token, is reported (exit 3) and gives null.
  std::unique_ptr<client::BrokerClient> Connect();
  const client::ConnectionOptions& connection_options() const { return options_; }

  // Runs one unary call and prints its reply: JSON, or `table`'s text.
  template <typename Request, typename Response>
  void Call(absl::StatusOr<Response> (client::BrokerClient::*method)(const Request&) const,
            const Request& request,
            std::type_identity_t<TableFormatter<Response>> table = FieldTable) {
    std::unique_ptr<client::BrokerClient> client = Connect();
    if (client == nullptr) return;
    absl::StatusOr<Response> reply = (client.get()->*method)(request);
    if (!reply.ok()) return ReportCallError(*client, reply.status());
    Print(format_ == OutputFormat::kJson ? ToJson(*reply) + "\n" : table(*reply));
  }

  // Prints the error and sets the exit code for it (exit_code.h).
  void ReportCallError(const client::BrokerClient& client, const absl::Status& status);
  // Writes `text` to stdout and flushes it (a pipe must see each line).
  void Print(const std::string& text);

 private:
  client::ConnectionOptions options_;
  std::string tls_ca_;
  std::string tls_cert_;
  std::string tls_key_;
  OutputFormat format_ = OutputFormat::kTable;
  ExitCode exit_code_ = ExitCode::kOk;
};

}  // namespace iommu_broker::iommuctl

#endif  // IOMMU_BROKER_CLIENT_IOMMUCTL_CLI_H_
