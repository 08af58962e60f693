#include "client/cpp/load_generator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/cpp/batcher.h"
#include "client/cpp/connection.h"
#include "client/cpp/latency_histogram.h"
#include "grpcpp/client_context.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"

namespace iommu_broker::client {
namespace {

using Clock = std::chrono::steady_clock;
using Stub = v1::IommuBroker::Stub;

constexpr uint64_t kGranule = 4096;
// Buffers start above 4 GiB: clear of the x86 MSI window, so that pt's
// identity mappings (IOVA = PA) never meet a reserved region.
constexpr uint64_t kPhysBase = uint64_t{4} << 30;
constexpr uint64_t kMaxMapBytes = uint64_t{1} << 30;
constexpr int kMaxThreads = 1024;
constexpr int kMaxBuffersPerWorker = 4096;
constexpr int kMaxTranslatePerMap = 1024;
constexpr size_t kMaxNamePrefixBytes = 200;
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
constexpr absl::Duration kProgressInterval = absl::Seconds(1);

enum class Kind { kMap, kTranslate, kUnmap };
constexpr size_t kKinds = 3;

size_t IndexOf(Kind kind) { return static_cast<size_t>(kind); }

// ---------------------------------------------------------------------------
// Options

template <typename T>
absl::Status CheckRange(absl::string_view field, T value, T low, T high) {
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, " ", value, " is outside [", low, ", ", high, "]"));
}

absl::Status CheckMapBytes(uint64_t map_bytes) {
  if (map_bytes % kGranule != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("map_bytes ", map_bytes, " is not a multiple of ", kGranule));
  }
  return CheckRange<uint64_t>("map_bytes", map_bytes, kGranule, kMaxMapBytes);
}

absl::Status CheckPolicy(v1::Policy policy) {
  if (policy == v1::POLICY_PARANOID || policy == v1::POLICY_FAST || policy == v1::POLICY_PT) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("policy ", v1::Policy_Name(policy), " is not paranoid, fast or pt"));
}

absl::Status CheckRunLength(const LoadOptions& options) {
  if (options.operations.has_value() && *options.operations == 0) {
    return absl::InvalidArgumentError("operations 0 must be positive (or unset to use duration)");
  }
  if (!options.operations.has_value() && options.duration <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("duration ", absl::FormatDuration(options.duration), " must be positive"));
  }
  return absl::OkStatus();
}

absl::Status CheckNamePrefix(const std::string& prefix) {
  const bool printable =
      std::all_of(prefix.begin(), prefix.end(), [](char c) { return c > ' ' && c <= '~'; });
  if (prefix.empty() || prefix.size() > kMaxNamePrefixBytes || !printable) {
    return absl::InvalidArgumentError(absl::StrCat("name_prefix \"", prefix, "\" is not 1-",
                                                   kMaxNamePrefixBytes,
                                                   " printable ASCII bytes without spaces"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Calls and requests

template <typename Request, typename Response>
using UnaryMethod = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

template <typename Request, typename Response>
absl::Status Call(Stub& stub, UnaryMethod<Request, Response> method, const Request& request,
                  Response* response) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  return FromGrpcStatus((stub.*method)(&context, request, response));
}

std::string DeviceId(const LoadOptions& options, int worker) {
  return absl::StrCat(options.name_prefix, "-", worker);
}

v1::MapRequest MapBuffer(const std::string& device_id, uint64_t phys, uint64_t bytes) {
  v1::MapRequest request;
  request.set_device_id(device_id);
  request.set_phys(phys);
  request.set_size(bytes);
  request.mutable_permissions()->set_read(true);
  request.mutable_permissions()->set_write(true);
  return request;
}

// The `index`-th translation of a buffer: its pages in turn, reads and
// writes alternating, as a device's DMA would walk it.
v1::TranslateRequest TranslatePage(const std::string& device_id, uint64_t iova, uint64_t bytes,
                                   int index) {
  v1::TranslateRequest request;
  request.set_device_id(device_id);
  request.set_iova(iova + (static_cast<uint64_t>(index) * kGranule) % bytes);
  request.set_size(kGranule);
  request.set_access(index % 2 == 0 ? v1::ACCESS_WRITE : v1::ACCESS_READ);
  return request;
}

v1::UnmapRequest UnmapBuffer(const std::string& device_id, uint64_t iova, uint64_t bytes) {
  v1::UnmapRequest request;
  request.set_device_id(device_id);
  request.set_iova(iova);
  request.set_size(bytes);
  return request;
}

// ---------------------------------------------------------------------------
// What the run created on the broker, so that exactly that is removed.

struct Fixture {
  bool domain_created = false;
  std::vector<std::string> devices;  // registered
};

absl::Status Annotate(const absl::Status& status, absl::string_view what) {
  return absl::Status(status.code(), absl::StrCat(what, ": ", status.message()));
}

absl::Status SetUp(Stub& stub, const LoadOptions& options, Fixture& fixture) {
  v1::CreateDomainRequest create;
  create.mutable_domain()->set_id(options.name_prefix);
  create.mutable_domain()->set_policy(options.policy);
  v1::Domain domain;
  absl::Status status = Call(stub, &Stub::CreateDomain, create, &domain);
  if (!status.ok()) return Annotate(status, absl::StrCat("creating domain ", options.name_prefix));
  fixture.domain_created = true;
  for (int worker = 0; worker < options.threads; ++worker) {
    const std::string device_id = DeviceId(options, worker);
    v1::RegisterDeviceRequest registration;
    registration.mutable_device()->set_id(device_id);
    v1::Device device;
    status = Call(stub, &Stub::RegisterDevice, registration, &device);
    if (!status.ok()) return Annotate(status, absl::StrCat("registering device ", device_id));
    fixture.devices.push_back(device_id);
    v1::AttachDeviceRequest attach;
    attach.set_device_id(device_id);
    attach.set_domain_id(options.name_prefix);
    v1::AttachDeviceResponse attached;
    status = Call(stub, &Stub::AttachDevice, attach, &attached);
    if (!status.ok()) return Annotate(status, absl::StrCat("attaching device ", device_id));
  }
  return absl::OkStatus();
}

// Removes everything in `fixture`, trying all of it; the first failure.
absl::Status TearDown(Stub& stub, const LoadOptions& options, const Fixture& fixture) {
  absl::Status first_failure;
  if (fixture.domain_created) {
    v1::DestroyDomainRequest destroy;
    destroy.set_domain_id(options.name_prefix);
    destroy.set_force(true);
    v1::DestroyDomainResponse destroyed;
    absl::Status status = Call(stub, &Stub::DestroyDomain, destroy, &destroyed);
    if (!status.ok()) {
      first_failure = Annotate(status, absl::StrCat("destroying domain ", options.name_prefix));
    }
  }
  for (const std::string& device_id : fixture.devices) {
    v1::UnregisterDeviceRequest unregister;
    unregister.set_device_id(device_id);
    v1::UnregisterDeviceResponse unregistered;
    absl::Status status = Call(stub, &Stub::UnregisterDevice, unregister, &unregistered);
    if (!status.ok() && first_failure.ok()) {
      first_failure = Annotate(status, absl::StrCat("unregistering device ", device_id));
    }
  }
  return first_failure;
}

// ---------------------------------------------------------------------------
// Running

// Hands out cycles to workers until the operation count is reached, the
// duration has passed, the run is stopped (the broker lost), or the caller's
// `stop` is notified.
class CycleBudget final {
 public:
  CycleBudget(const LoadOptions& options, Clock::time_point start, const absl::Notification* stop)
      : limited_(options.operations.has_value()),
        remaining_(limited_ ? CyclesFor(*options.operations, options.translate_per_map) : 0),
        deadline_(start + absl::ToChronoNanoseconds(options.duration)),
        caller_stop_(stop) {}

  // Up to `wanted` cycles to run now; 0 once the run is over.
  uint64_t Claim(uint64_t wanted) {
    if (stopped_.load(std::memory_order_relaxed)) return 0;
    if (!limited_) return Clock::now() < deadline_ && !Interrupt() ? wanted : 0;
    uint64_t remaining = remaining_.load(std::memory_order_relaxed);
    if (remaining == 0 || Interrupt()) return 0;
    uint64_t granted = 0;
    do {
      granted = std::min(wanted, remaining);
    } while (granted > 0 && !remaining_.compare_exchange_weak(remaining, remaining - granted,
                                                              std::memory_order_relaxed));
    return granted;
  }

  void Stop() { stopped_.store(true, std::memory_order_relaxed); }

  // Whether the caller's stop refused a cycle the run had left to do.
  bool interrupted() const { return interrupted_.load(std::memory_order_relaxed); }

 private:
  static uint64_t CyclesFor(uint64_t operations, int translate_per_map) {
    const uint64_t per_cycle = 2 + static_cast<uint64_t>(translate_per_map);
    return (operations + per_cycle - 1) / per_cycle;
  }

  // Asked only while cycles remain, so that a stop arriving after the run
  // is done does not mark a complete run interrupted.
  bool Interrupt() {
    if (caller_stop_ == nullptr || !caller_stop_->HasBeenNotified()) return false;
    interrupted_.store(true, std::memory_order_relaxed);
    return true;
  }

  const bool limited_;
  std::atomic<uint64_t> remaining_;
  const Clock::time_point deadline_;
  const absl::Notification* const caller_stop_;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> interrupted_{false};
};

// Counts arrivals down to zero; Wait returns at zero. Arrive notifies under
// the lock, so the waiter may destroy the Countdown as soon as it wakes.
class Countdown final {
 public:
  explicit Countdown(size_t count) : remaining_(count) {}

  void Arrive() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--remaining_ == 0) zero_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    zero_.wait(lock, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return remaining_ == 0; });
  }
  // False if `timeout` passed first.
  bool WaitFor(absl::Duration timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return zero_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                          [this]()
                              ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return remaining_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable zero_;
  size_t remaining_ ABSL_GUARDED_BY(mutex_);
};

// One worker's results. Only the worker writes them; the progress thread
// reads the two atomics while it runs, RunLoad the rest after it ended.
struct alignas(64) WorkerStats {
  std::atomic<uint64_t> operations{0};
  std::atomic<uint64_t> errors{0};
  std::array<uint64_t, kKinds> issued{};
  std::array<LatencyHistogram, kKinds> latency;
  uint64_t faults = 0;
  uint64_t stale_translations = 0;
  std::map<absl::StatusCode, uint64_t> errors_by_code;
  std::map<absl::StatusCode, std::string> first_error_message;
};

// A worker's device, buffers and results. Record counts an operation and
// stops the run when the broker is unavailable.
struct Worker {
  const LoadOptions& options;
  std::string device_id;
  uint64_t phys_base;  // of its buffers, each options.map_bytes
  CycleBudget& budget;
  WorkerStats& stats;

  uint64_t PhysOf(uint64_t buffer) const { return phys_base + buffer * options.map_bytes; }

  void Record(Kind kind, Clock::duration latency, const absl::Status& status) {
    ++stats.issued[IndexOf(kind)];
    stats.latency[IndexOf(kind)].Record(absl::FromChrono(latency));
    if (!status.ok()) {
      ++stats.errors_by_code[status.code()];
      stats.first_error_message.emplace(status.code(), std::string(status.message()));
      stats.errors.fetch_add(1, std::memory_order_relaxed);
      if (absl::IsUnavailable(status)) budget.Stop();
    }
    stats.operations.fetch_add(1, std::memory_order_relaxed);
  }

  void RecordTranslation(const v1::TranslateResponse& response) {
    if (response.has_fault()) ++stats.faults;
    if (response.stale()) ++stats.stale_translations;
  }
};

template <typename Request, typename Response>
absl::Status TimedCall(Worker& worker, Stub& stub, Kind kind, UnaryMethod<Request, Response> method,
                       const Request& request, Response* response) {
  const Clock::time_point start = Clock::now();
  absl::Status status = Call(stub, method, request, response);
  worker.Record(kind, Clock::now() - start, status);
  return status;
}

// One blocking RPC at a time: Map, its translations, Unmap.
void RunUnaryWorker(Worker& worker, Stub& stub) {
  const uint64_t bytes = worker.options.map_bytes;
  while (worker.budget.Claim(1) == 1) {
    v1::MapResponse mapped;
    if (!TimedCall(worker, stub, Kind::kMap, &Stub::Map,
                   MapBuffer(worker.device_id, worker.PhysOf(0), bytes), &mapped)
             .ok()) {
      continue;
    }
    for (int index = 0; index < worker.options.translate_per_map; ++index) {
      v1::TranslateResponse translated;
      if (TimedCall(worker, stub, Kind::kTranslate, &Stub::Translate,
                    TranslatePage(worker.device_id, mapped.iova(), bytes, index), &translated)
              .ok()) {
        worker.RecordTranslation(translated);
      }
    }
    v1::UnmapResponse unmapped;
    TimedCall(worker, stub, Kind::kUnmap, &Stub::Unmap,
              UnmapBuffer(worker.device_id, mapped.iova(), bytes), &unmapped)
        .IgnoreError();
  }
}

// An operation submitted to a Batcher: when, and what came back when.
struct Submitted {
  Kind kind = Kind::kMap;
  v1::Operation operation;
  Clock::time_point submitted;
  Clock::time_point completed;
  absl::StatusOr<v1::OperationResult> result;
};

// Submits every operation of `round` and waits for all their results.
void SubmitAll(Batcher& batcher, std::vector<Submitted>& round) {
  Countdown results(round.size());
  for (Submitted& entry : round) {
    entry.submitted = Clock::now();
    batcher.Submit(std::move(entry.operation),
                   [&entry, &results](absl::StatusOr<v1::OperationResult> result) {
                     entry.completed = Clock::now();
                     entry.result = std::move(result);
                     results.Arrive();
                   });
  }
  results.Wait();
}

void RecordRound(Worker& worker, const std::vector<Submitted>& round) {
  for (const Submitted& entry : round) {
    worker.Record(entry.kind, entry.completed - entry.submitted, entry.result.status());
    if (entry.kind == Kind::kTranslate && entry.result.ok()) {
      worker.RecordTranslation(entry.result->translate());
    }
  }
}

// A Map of each of the worker's first `buffers` buffers.
std::vector<Submitted> MapsOf(const Worker& worker, uint64_t buffers) {
  std::vector<Submitted> maps(buffers);
  for (uint64_t buffer = 0; buffer < buffers; ++buffer) {
    maps[buffer].kind = Kind::kMap;
    *maps[buffer].operation.mutable_map() =
        MapBuffer(worker.device_id, worker.PhysOf(buffer), worker.options.map_bytes);
  }
  return maps;
}

// The translations and the Unmap of every buffer that `maps` mapped.
std::vector<Submitted> FollowupsOf(const Worker& worker, const std::vector<Submitted>& maps) {
  const LoadOptions& options = worker.options;
  std::vector<Submitted> followups;
  for (const Submitted& map : maps) {
    if (!map.result.ok()) continue;
    const uint64_t iova = map.result->map().iova();
    for (int index = 0; index < options.translate_per_map; ++index) {
      Submitted& translate = followups.emplace_back();
      translate.kind = Kind::kTranslate;
      *translate.operation.mutable_translate() =
          TranslatePage(worker.device_id, iova, options.map_bytes, index);
    }
    Submitted& unmap = followups.emplace_back();
    unmap.kind = Kind::kUnmap;
    *unmap.operation.mutable_unmap() = UnmapBuffer(worker.device_id, iova, options.map_bytes);
  }
  return followups;
}

// Rounds of up to buffers_per_worker cycles: every Map, then every
// translation and Unmap of the buffers mapped, each step all in flight at
// once (the Unmaps need the IOVAs the broker picked).
void RunBatchWorker(Worker& worker, Batcher& batcher) {
  while (const uint64_t cycles = worker.budget.Claim(worker.options.buffers_per_worker)) {
    std::vector<Submitted> maps = MapsOf(worker, cycles);
    SubmitAll(batcher, maps);
    RecordRound(worker, maps);
    std::vector<Submitted> followups = FollowupsOf(worker, maps);
    SubmitAll(batcher, followups);
    RecordRound(worker, followups);
  }
}

// ---------------------------------------------------------------------------
// Reporting

LatencySummary Summarize(const LatencyHistogram& histogram) {
  LatencySummary summary;
  summary.count = histogram.count();
  summary.p50 = histogram.Percentile(50);
  summary.p90 = histogram.Percentile(90);
  summary.p99 = histogram.Percentile(99);
  summary.p999 = histogram.Percentile(99.9);
  summary.max = histogram.max();
  return summary;
}

LoadReport BuildReport(const std::vector<std::unique_ptr<WorkerStats>>& workers,
                       absl::Duration elapsed) {
  LoadReport report;
  std::array<LatencyHistogram, kKinds> by_kind;
  for (const std::unique_ptr<WorkerStats>& stats : workers) {
    for (size_t kind = 0; kind < kKinds; ++kind) by_kind[kind].Merge(stats->latency[kind]);
    report.maps += stats->issued[IndexOf(Kind::kMap)];
    report.translations += stats->issued[IndexOf(Kind::kTranslate)];
    report.unmaps += stats->issued[IndexOf(Kind::kUnmap)];
    report.faults += stats->faults;
    report.stale_translations += stats->stale_translations;
    for (const auto& [code, count] : stats->errors_by_code) {
      report.errors_by_code[code] += count;
      report.errors += count;
    }
    report.first_error_message.insert(stats->first_error_message.begin(),
                                      stats->first_error_message.end());
  }
  LatencyHistogram all;
  for (const LatencyHistogram& histogram : by_kind) all.Merge(histogram);
  report.operations = report.maps + report.translations + report.unmaps;
  report.elapsed = elapsed;
  if (elapsed > absl::ZeroDuration()) {
    report.operations_per_second =
        static_cast<double>(report.operations) / absl::ToDoubleSeconds(elapsed);
  }
  report.latency = Summarize(all);
  report.map_latency = Summarize(by_kind[IndexOf(Kind::kMap)]);
  report.translate_latency = Summarize(by_kind[IndexOf(Kind::kTranslate)]);
  report.unmap_latency = Summarize(by_kind[IndexOf(Kind::kUnmap)]);
  return report;
}

// Calls `progress` about once a second until every worker has arrived.
void ReportProgressUntilDone(Countdown& workers_done,
                             const std::vector<std::unique_ptr<WorkerStats>>& workers,
                             Clock::time_point start, ProgressCallback& progress) {
  uint64_t previous_operations = 0;
  Clock::time_point previous = start;
  while (!workers_done.WaitFor(kProgressInterval)) {
    if (progress == nullptr) continue;
    LoadProgress snapshot;
    for (const std::unique_ptr<WorkerStats>& stats : workers) {
      snapshot.operations += stats->operations.load(std::memory_order_relaxed);
      snapshot.errors += stats->errors.load(std::memory_order_relaxed);
    }
    const Clock::time_point now = Clock::now();
    snapshot.elapsed = absl::FromChrono(now - start);
    snapshot.operations_per_second =
        static_cast<double>(snapshot.operations - previous_operations) /
        absl::ToDoubleSeconds(absl::FromChrono(now - previous));
    previous_operations = snapshot.operations;
    previous = now;
    progress(snapshot);
  }
}

absl::StatusOr<std::vector<std::unique_ptr<Batcher>>> MakeBatchers(
    const std::shared_ptr<grpc::Channel>& channel, const LoadOptions& options) {
  std::vector<std::unique_ptr<Batcher>> batchers;
  if (options.mode != LoadMode::kBatch) return batchers;
  BatcherOptions batcher_options;
  batcher_options.max_operations_per_message = options.batch_size;
  for (int stream = 0; stream < options.streams; ++stream) {
    absl::StatusOr<std::unique_ptr<Batcher>> batcher = Batcher::Create(channel, batcher_options);
    if (!batcher.ok()) return batcher.status();
    batchers.push_back(*std::move(batcher));
  }
  return batchers;
}

// Runs the workers on the set-up fixture; the report without cleanup.
absl::StatusOr<LoadReport> RunWorkers(const std::shared_ptr<grpc::Channel>& channel, Stub& stub,
                                      const LoadOptions& options, ProgressCallback& progress,
                                      const absl::Notification* stop) {
  absl::StatusOr<std::vector<std::unique_ptr<Batcher>>> batchers = MakeBatchers(channel, options);
  if (!batchers.ok()) return batchers.status();
  const uint64_t buffers_per_worker =
      options.mode == LoadMode::kBatch ? static_cast<uint64_t>(options.buffers_per_worker) : 1;
  std::vector<std::unique_ptr<WorkerStats>> stats;
  for (int i = 0; i < options.threads; ++i) stats.push_back(std::make_unique<WorkerStats>());

  const Clock::time_point start = Clock::now();
  CycleBudget budget(options, start, stop);
  Countdown workers_done(static_cast<size_t>(options.threads));
  std::vector<std::thread> threads;
  for (int i = 0; i < options.threads; ++i) {
    threads.emplace_back([&, i] {
      Worker worker{options, DeviceId(options, i),
                    kPhysBase + static_cast<uint64_t>(i) * buffers_per_worker * options.map_bytes,
                    budget, *stats[i]};
      if (options.mode == LoadMode::kBatch) {
        RunBatchWorker(worker, *(*batchers)[static_cast<size_t>(i % options.streams)]);
      } else {
        RunUnaryWorker(worker, stub);
      }
      workers_done.Arrive();
    });
  }
  ReportProgressUntilDone(workers_done, stats, start, progress);
  for (std::thread& thread : threads) thread.join();
  LoadReport report = BuildReport(stats, absl::FromChrono(Clock::now() - start));
  report.interrupted = budget.interrupted();
  return report;
}

}  // namespace

absl::Status ValidateLoadOptions(const LoadOptions& options) {
  absl::Status status = CheckRange("threads", options.threads, 1, kMaxThreads);
  if (status.ok()) status = CheckRange("batch_size", options.batch_size, 1, kMaxBatchOperations);
  if (status.ok()) status = CheckRange("streams", options.streams, 1, std::max(1, options.threads));
  if (status.ok()) {
    status = CheckRange("buffers_per_worker", options.buffers_per_worker, 1, kMaxBuffersPerWorker);
  }
  if (status.ok()) {
    status = CheckRange("translate_per_map", options.translate_per_map, 0, kMaxTranslatePerMap);
  }
  if (status.ok()) status = CheckMapBytes(options.map_bytes);
  if (status.ok()) status = CheckPolicy(options.policy);
  if (status.ok()) status = CheckRunLength(options);
  if (status.ok()) status = CheckNamePrefix(options.name_prefix);
  return status;
}

absl::StatusOr<LoadReport> RunLoad(std::shared_ptr<grpc::Channel> channel,
                                   const LoadOptions& options, ProgressCallback progress,
                                   const absl::Notification* stop) {
  if (channel == nullptr) return absl::InvalidArgumentError("channel is null");
  if (absl::Status valid = ValidateLoadOptions(options); !valid.ok()) return valid;
  std::unique_ptr<Stub> stub = v1::IommuBroker::NewStub(channel);
  Fixture fixture;
  absl::Status set_up = SetUp(*stub, options, fixture);
  absl::StatusOr<LoadReport> report =
      set_up.ok() ? RunWorkers(channel, *stub, options, progress, stop) : set_up;
  absl::Status cleanup = TearDown(*stub, options, fixture);
  if (report.ok()) report->cleanup = cleanup;
  return report;
}

}  // namespace iommu_broker::client
