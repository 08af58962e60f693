// RunLoad drives a broker with a synthetic DMA workload and measures it: the
// engine of `iommuctl bench` and the tool behind docs/PERFORMANCE.md.
//
//   LoadOptions options;                 // 4 workers, unary RPCs, fast policy, 10 s
//   options.mode = LoadMode::kBatch;
//   options.operations = 1'000'000;      // instead of a duration
//   absl::Notification stop;             // Notify() from any thread ends it early
//   absl::StatusOr<LoadReport> report = RunLoad(channel, options,
//       [](const LoadProgress& progress) { ...draw a live line... }, &stop);
//   if (report.ok()) ...report->operations_per_second, report->latency.p99...
//
// The run creates a domain `name_prefix` with `policy` and one device per
// worker (`name_prefix`-0, -1, ...) attached to it; each worker repeats a
// cycle on its own device: Map `map_bytes` (the broker picks the IOVA),
// `translate_per_map` translations of the buffer, Unmap. Whatever the run
// created is destroyed afterwards, also when it fails part-way or is
// stopped.
//
// Thread-safety: RunLoad is thread-safe (no shared state); two concurrent
// runs need different name prefixes.
#ifndef IOMMU_BROKER_CLIENT_CPP_LOAD_GENERATOR_H_
#define IOMMU_BROKER_CLIENT_CPP_LOAD_GENERATOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "iommu_broker/v1/iommu_broker.pb.h"

namespace iommu_broker::client {

// How workers reach the broker.
enum class LoadMode {
  kUnary,  // one blocking RPC at a time per worker
  kBatch,  // operations submitted to Batchers (Batch streams), many in flight
};

struct LoadOptions {
  // Worker threads, each with a device of its own. 1-1024.
  int threads = 4;
  LoadMode mode = LoadMode::kUnary;
  // kBatch: operations per Batch message at most. 1-4096 (the broker's
  // default max_batch_operations).
  int batch_size = 256;
  // kBatch: Batch streams (one Batcher each); worker i uses stream
  // i % streams. 1-threads.
  int streams = 1;
  // kBatch: buffers a worker maps at once; its cycles run in rounds of this
  // many (all maps, then all translations and unmaps). 1-4096.
  int buffers_per_worker = 64;
  // Translations of each mapped buffer, page by page, between its Map and its
  // Unmap. 0-1024.
  int translate_per_map = 4;
  // Bytes per Map: a positive multiple of 4096, at most 1 GiB. Buffers use
  // distinct physical ranges from 4 GiB up (so pt's identity IOVAs never
  // collide), which must fit in the broker's physical memory:
  // threads x buffers_per_worker (1 in kUnary) x map_bytes.
  uint64_t map_bytes = 4096;
  // The policy of the domain the run creates: paranoid, fast or pt.
  v1::Policy policy = v1::POLICY_FAST;
  // Stop after this many operations (rounded up to whole cycles of
  // 2 + translate_per_map operations); unset: run for `duration`.
  std::optional<uint64_t> operations;
  // Run time when `operations` is unset: workers stop starting cycles after
  // it and finish the ones started. Positive.
  absl::Duration duration = absl::Seconds(10);
  // The domain's id and the devices' prefix; must not name an existing
  // domain or device. 1-200 printable ASCII bytes without spaces.
  std::string name_prefix = "iommuctl-bench";
};

// Latency percentiles of a set of operations, each within 1/64 (1.6%) of the
// exact value (see LatencyHistogram). All zero when count is 0.
struct LatencySummary {
  uint64_t count = 0;
  absl::Duration p50;
  absl::Duration p90;
  absl::Duration p99;
  absl::Duration p999;
  absl::Duration max;
};

// What a run did. Latency is per operation: the RPC (kUnary), or from Submit
// to the result (kBatch).
struct LoadReport {
  // Operations issued, by kind (succeeded or failed).
  uint64_t maps = 0;
  uint64_t translations = 0;
  uint64_t unmaps = 0;
  uint64_t operations = 0;  // maps + translations + unmaps
  // Translations answered with a fault (a result, not an error) or stale.
  uint64_t faults = 0;
  uint64_t stale_translations = 0;
  // Failed operations by code, and their total; with one message per code.
  std::map<absl::StatusCode, uint64_t> errors_by_code;
  std::map<absl::StatusCode, std::string> first_error_message;
  uint64_t errors = 0;
  absl::Duration elapsed;            // first operation to last result
  double operations_per_second = 0;  // operations / elapsed
  LatencySummary latency;            // every operation
  LatencySummary map_latency;
  LatencySummary translate_latency;
  LatencySummary unmap_latency;
  // Removing the domain and devices the run created: OK, or why some may
  // remain on the broker.
  absl::Status cleanup;
  // The caller's stop ended the run before its operations or duration were
  // done; the counts cover the cycles that ran.
  bool interrupted = false;
};

// A snapshot for a live progress line.
struct LoadProgress {
  absl::Duration elapsed;
  uint64_t operations = 0;           // so far
  uint64_t errors = 0;               // so far
  double operations_per_second = 0;  // since the previous snapshot
};

// Called about once a second, always from the thread that called RunLoad.
using ProgressCallback = absl::AnyInvocable<void(const LoadProgress&)>;

// INVALID_ARGUMENT naming the field and value if `options` is unusable.
absl::Status ValidateLoadOptions(const LoadOptions& options);

// Runs the load. Fails with INVALID_ARGUMENT for bad options, or with the
// broker's error if the domain or a device cannot be set up (after removing
// what was created); errors of the load's own operations are counted in the
// report instead. A worker seeing UNAVAILABLE (broker gone or draining) stops
// the run early. `progress` may be null.
//
// Once `stop` (if not null) is notified, from any thread, no worker starts
// another cycle; the cycles in flight finish (their unmaps included), the
// domain and devices are removed as usual and the report is `interrupted`.
absl::StatusOr<LoadReport> RunLoad(std::shared_ptr<grpc::Channel> channel,
                                   const LoadOptions& options, ProgressCallback progress = nullptr,
                                   const absl::Notification* stop = nullptr);

}  // namespace iommu_broker::client

#endif  // IOMMU_BROKER_CLIENT_CPP_LOAD_GENERATOR_H_
