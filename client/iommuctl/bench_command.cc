// bench: a synthetic DMA workload against the broker (client/cpp/
// load_generator.h), with a live progress line and the final report. Ctrl-C
// (or SIGTERM) stops the run early: the cycles in flight finish, the run's
// domain and devices are removed, the partial report is printed and the exit
// code is 130.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/cpp/load_generator.h"
#include "client/iommuctl/arguments.h"
#include "client/iommuctl/bench_report.h"
#include "client/iommuctl/commands.h"
#include "client/iommuctl/enum_names.h"
#include "client/iommuctl/interrupt.h"
#include "client/iommuctl/sizes.h"

namespace iommu_broker::iommuctl {
namespace {

using client::LoadMode;
using client::LoadOptions;

absl::StatusOr<LoadMode> ParseLoadMode(absl::string_view field, absl::string_view text) {
  if (text == "unary") return LoadMode::kUnary;
  if (text == "batch") return LoadMode::kBatch;
  return absl::InvalidArgumentError(
      absl::StrCat(field, " '", text, "' is not a mode: use unary or batch"));
}

// Progress goes where it does not mix with the data: stdout for a table,
// stderr under -o json. A terminal gets one line redrawn in place; a file
// or pipe a line per update.
class ProgressPrinter final {
 public:
  explicit ProgressPrinter(OutputFormat format)
      : out_(format == OutputFormat::kJson ? stderr : stdout), live_(isatty(fileno(out_)) == 1) {}

  void Update(const client::LoadProgress& progress) {
    // \033[K erases what a longer previous line left.
    std::fprintf(out_, live_ ? "\r%s\033[K" : "%s\n", ProgressLine(progress).c_str());
    std::fflush(out_);
    drawn_ = true;
  }

  // Ends the live line so that what follows starts on its own.
  void Finish() {
    if (live_ && drawn_) std::fputs("\n", out_);
  }

 private:
  std::FILE* out_;
  bool live_;
  bool drawn_ = false;
};

void Bench(Cli& cli, const LoadOptions& options) {
  if (absl::Status valid = client::ValidateLoadOptions(options); !valid.ok()) {
    std::cerr << "iommuctl: " << valid.message() << "\n";
    return cli.set_exit_code(ExitCode::kInvalidArguments);
  }
  // Killed by Ctrl-C, the run would leave its domain and devices on the
  // broker; stopped instead, RunLoad removes them.
  const InterruptsBlocked blocked;  // before Connect starts gRPC's threads
  std::unique_ptr<client::BrokerClient> client = cli.Connect();
  if (client == nullptr) return;
  absl::Notification stop;
  const InterruptHandler interrupt([&stop] { stop.Notify(); });
  ProgressPrinter progress(cli.format());
  absl::StatusOr<client::LoadReport> report = client::RunLoad(
      client->channel(), options,
      [&progress](const client::LoadProgress& now) { progress.Update(now); }, &stop);
  progress.Finish();
  if (!report.ok()) return cli.ReportCallError(*client, report.status());
  cli.Print(cli.format() == OutputFormat::kJson ? LoadReportJson(*report) + "\n"
                                                : LoadReportTable(*report));
  // Not the benchmark asked for: a script must not take it for one.
  if (report->interrupted) return cli.set_exit_code(ExitCode::kInterrupted);
  // The run's own operations may fail (they are counted); a broker that
  // refused all of them did not do the benchmark.
  if (report->errors > 0 && report->errors == report->operations) {
    cli.set_exit_code(ExitCode::kRefused);
  }
}

void AddOptions(CLI::App& command, LoadOptions* options) {
  command.add_option("--threads", options->threads, "Worker threads, one device each (1-1024)")
      ->capture_default_str();
  AddParsedArgument<LoadMode>(
      command, "--mode", "unary|batch", ParseLoadMode,
      [options](LoadMode mode) { options->mode = mode; },
      "unary: one blocking RPC at a time per worker; batch: Batch streams, many in flight")
      ->default_str(options->mode == LoadMode::kUnary ? "unary" : "batch");
  command.add_option("--batch-size", options->batch_size,
                     "batch: operations per Batch message at most (1-4096)")
      ->capture_default_str();
  command.add_option("--streams", options->streams, "batch: Batch streams (1-threads)")
      ->capture_default_str();
  command.add_option("--buffers-per-worker", options->buffers_per_worker,
                     "batch: buffers a worker maps at once (1-4096)")
      ->capture_default_str();
  command.add_option("--translate-per-map", options->translate_per_map,
                     "Translations of each buffer between its map and unmap (0-1024)")
      ->capture_default_str();
  AddSizeArgument(
      command, "--map-bytes", [options](uint64_t bytes) { options->map_bytes = bytes; },
      "Bytes per map, a multiple of 4K up to 1G")
      ->default_str(FormatSize(options->map_bytes));
  AddEnumArgument<v1::Policy>(
      command, "--policy", [options](v1::Policy policy) { options->policy = policy; },
      "Policy of the domain the run creates")
      ->default_str(EnumName(options->policy));
  command.add_option_function<uint64_t>(
      "--operations", [options](uint64_t count) { options->operations = count; },
      "Stop after this many operations (whole cycles) instead of --duration");
  AddDurationArgument(
      command, "--duration",
      [options](absl::Duration duration) { options->duration = duration; },
      "Run time when --operations is not given")
      ->default_str(absl::FormatDuration(options->duration));
  command.add_option("--name-prefix", options->name_prefix,
                     "Id of the domain the run creates and prefix of its devices; "
                     "must not exist")
      ->capture_default_str();
}

}  // namespace

void AddBenchCommand(CLI::App& app, Cli& cli) {
  CLI::App* command = app.add_subcommand(
      "bench",
      "Drive the broker with map/translate/unmap cycles and report throughput and latency; "
      "creates and then removes its own domain and devices. Ctrl-C stops it early: the "
      "report of what ran is printed, marked interrupted, and the exit code is 130");
  auto options = std::make_shared<LoadOptions>();
  AddOptions(*command, options.get());
  command->callback([&cli, options] { Bench(cli, *options); });
}

}  // namespace iommu_broker::iommuctl
