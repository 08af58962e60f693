#include "client/iommuctl/cli.h"

#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "client/iommuctl/arguments.h"
#include "client/iommuctl/message_fields.h"
#include "client/iommuctl/table.h"
#include "google/protobuf/util/json_util.h"

namespace iommu_broker::iommuctl {
namespace {

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view field, absl::string_view text) {
  if (text == "table") return OutputFormat::kTable;
  if (text == "json") return OutputFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat(field, " '", text, "' is not an output format: use table or json"));
}

}  // namespace

std::string FieldTable(const google::protobuf::Message& reply) {
  Table table;
  for (auto& [path, value] : MessageFields(reply)) table.AddRow({path, value});
  return table.Render();
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  // Zero is a value in force, not an absence: scripts should not have to
  // know proto3's defaults.
  options.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) {
    return "{}";  // only a message with an invalid UTF-8 string fails
  }
  return json;
}

Cli::Cli(CLI::App& app) {
  app.add_option("--target", options_.target,
                 "Broker address, host:port or unix:/path (default: $IOMMU_BROKER_TARGET, "
                 "else 127.0.0.1:50051)")
      ->capture_default_str();
  AddDurationArgument(
      app, "--timeout", [this](absl::Duration timeout) { options_.deadline = timeout; },
      "Deadline of each call, e.g. 500ms, 10s (default 10s)");
  app.add_option("--tls-ca", tls_ca_, "PEM CA bundle that signed the broker's certificate")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", tls_cert_, "PEM client certificate (mutual TLS; with --tls-key)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", tls_key_, "PEM client key (mutual TLS; with --tls-cert)")
      ->check(CLI::ExistingFile);
  // No --token: a command line is visible to every user of the machine (ps).
  app.add_option("--token-file", options_.token_file,
                 "File whose first line is the bearer token sent on every call "
                 "(default: $IOMMU_BROKER_TOKEN_FILE)")
      ->capture_default_str();
  AddParsedArgument<OutputFormat>(
      app, "-o,--output", "table|json", ParseOutputFormat,
      [this](OutputFormat format) { format_ = format; },
      "Output: aligned tables for people (default) or JSON, one object per line");
}

std::unique_ptr<client::BrokerClient> Cli::Connect() {
  if (!tls_ca_.empty() || !tls_cert_.empty() || !tls_key_.empty()) {
    options_.tls = client::TlsFiles{tls_ca_, tls_cert_, tls_key_};
  }
  absl::StatusOr<std::unique_ptr<client::BrokerClient>> client =
      client::BrokerClient::Connect(options_);
  if (!client.ok()) {
    std::cerr << "iommuctl: " << client.status().message() << "\n";
    exit_code_ = ExitCode::kInvalidArguments;
    return nullptr;
  }
  return *std::move(client);
}

void Cli::ReportCallError(const client::BrokerClient& client, const absl::Status& status) {
  const bool connected = client.channel()->GetState(/*try_to_connect=*/false) ==
                         GRPC_CHANNEL_READY;
  exit_code_ = ExitCodeForCallError(status, connected);
  std::cerr << "iommuctl: ";
  if (exit_code_ == ExitCode::kUnreachable) {
    std::cerr << "cannot reach the broker at " << options_.target << ": ";
  }
  std::cerr << absl::StatusCodeToString(status.code()) << ": " << status.message() << "\n";
}

void Cli::Print(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace iommu_broker::iommuctl
