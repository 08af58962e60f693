// Measures the broker's gRPC data path end to end (client stub, HTTP/2 over
// loopback TCP, the callback server, the service, the engine) against a
// baseline in the same binary: a server with the SAME generated service
// (iommu_broker.v1.IommuBroker) whose Map, Unmap and Batch handlers only
// reply OK. The ratio real / empty is the share of the gRPC stack's rate the
// broker keeps; what the engine costs on its own is bench/iommu_bench.cc.
//
// Both servers run in this process, each on 127.0.0.1:0, and serve their
// callers on gRPC's callback thread pool; clients and servers share the
// machine's cores, as a broker and its local clients would.
//
// The real server is BrokerServer (health, reflection and all) with the
// engine's defaults (16 GiB, invalidation cost 0), metrics "none", one
// fast-policy domain "bench" and one device "dev" attached to it.
//
// Workloads:
//   BM_UnaryMapUnmap<Server>/threads:N   N callers, each in a loop: Map 4 KiB
//       (the broker allocates the IOVA), then Unmap that IOVA; one item is
//       one pair (two RPCs). All callers share one channel (one HTTP/2
//       connection), as threads of one client process would.
//   BM_BatchMapUnmap<Server>/in_flight:K  one Batch stream; each message is
//       256 operations, 128 maps (allocated IOVAs) followed by 128 unmaps of
//       the IOVAs an earlier message's maps returned (the one whose response
//       just arrived), so the number of live mappings stays constant; one
//       item is one operation. K messages are outstanding at any time: K = 1
//       waits for each response before sending (a round trip per message),
//       K = 4 keeps the pipe full (client and server work overlap).
//
// Counters (wall time throughout, ->UseRealTime()):
//   items_per_second  total pairs (unary) or operations (Batch) per second;
//   p50_us, p99_us    per-pair latency (Map + Unmap as one caller sees it)
//                     over every pair of every caller in the run;
//   call_p50_us, call_p99_us  per-call latency (each Map and each Unmap
//                     RPC on its own) over every call of the run.
// Batch's Time is per message (256 operations).
//
// Run a Release build:
//   cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release
//   ninja -C build-release rpc_bench
//   build-release/bench/rpc_bench --benchmark_min_time=0.5 --benchmark_repetitions=3
//       --benchmark_report_aggregates_only=true

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "server/arena_message.h"
#include "server/batch_reactor.h"
#include "server/broker_server.h"
#include "server/log.h"

namespace iommu_broker {
namespace {

constexpr uint64_t kPage = 4096;
constexpr int kOpsPerMessage = 256;
constexpr int kMapsPerMessage = kOpsPerMessage / 2;
constexpr char kDeviceId[] = "dev";

// The baseline: the same service, every handler we call answers OK at once
// (Map echoes the physical address as the IOVA so the client's Unmap has
// something to send). Batch answers each operation with an OK result of the
// operation's kind, so the response has the real one's shape and count.
class EmptyService final : public v1::IommuBroker::CallbackService {
 public:
  grpc::ServerUnaryReactor* Map(grpc::CallbackServerContext* context, const v1::MapRequest* request,
                                v1::MapResponse* response) override {
    response->set_iova(request->phys());
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Unmap(grpc::CallbackServerContext* context,
                                  const v1::UnmapRequest* /*request*/,
                                  v1::UnmapResponse* /*response*/) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse>* Batch(
      grpc::CallbackServerContext* /*context*/) override {
    return new EmptyBatch();
  }

 private:
  class EmptyBatch final : public grpc::ServerBidiReactor<v1::BatchRequest, v1::BatchResponse> {
   public:
    // Messages kept as the broker's BatchReactor keeps them, so both pay alike.
    EmptyBatch()
        : request_(BatchReactor::kArenaBlockBytes), response_(BatchReactor::kArenaBlockBytes) {
      StartRead(request_.get());
    }

    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::OK);
        return;
      }
      v1::BatchResponse& response = response_.Renew();
      for (const v1::Operation& operation : request_->operations()) {
        v1::OperationResult* result = response.add_results();
        result->mutable_status();
        if (operation.has_map()) {
          result->mutable_map();
        } else {
          result->mutable_unmap();
        }
      }
      StartWrite(&response);
    }

    void OnWriteDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::CANCELLED);
        return;
      }
      StartRead(&request_.Renew());
    }

    void OnDone() override { delete this; }

   private:
    ArenaMessage<v1::BatchRequest> request_;
    ArenaMessage<v1::BatchResponse> response_;
  };
};

// Logs to a sink: start-up lines would interleave with the results.
std::FILE* NullFile() {
  static std::FILE* file = std::fopen("/dev/null", "w");
  return file;
}

// The two servers, started once for the whole binary and left running
// (benchmark binaries exit without tearing them down).
class Servers {
 public:
  static Servers& Get() {
    static Servers* servers = new Servers();
    return *servers;
  }

  std::shared_ptr<grpc::Channel> real_channel() const { return real_channel_; }
  std::shared_ptr<grpc::Channel> empty_channel() const { return empty_channel_; }

 private:
  Servers() : log_(NullFile()) {
    v1::BrokerConfig config;
    config.set_listen_address("127.0.0.1:0");
    config.set_metrics_listen_address("none");
    v1::DomainSpec* domain = config.add_domains();
    domain->set_id("bench");
    domain->set_policy(v1::POLICY_FAST);
    v1::StartupDevice* device = config.add_devices();
    device->mutable_device()->set_id(kDeviceId);
    device->set_attach_to_domain_id("bench");
    absl::StatusOr<std::unique_ptr<BrokerServer>> real = BrokerServer::Start(config, log_);
    if (!real.ok()) {
      std::fprintf(stderr, "BrokerServer::Start: %s\n", real.status().ToString().c_str());
      std::abort();
    }
    real_ = *std::move(real);

    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    // The broker's default message limit, so both servers parse alike.
    builder.SetMaxReceiveMessageSize(4 << 20);
    builder.SetMaxSendMessageSize(4 << 20);
    builder.RegisterService(&empty_service_);
    empty_ = builder.BuildAndStart();
    if (empty_ == nullptr) {
      std::fprintf(stderr, "the empty-handler server did not start\n");
      std::abort();
    }
    real_channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", real_->port()),
                                        grpc::InsecureChannelCredentials());
    empty_channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  }

  Logger log_;
  std::unique_ptr<BrokerServer> real_;
  EmptyService empty_service_;
  std::unique_ptr<grpc::Server> empty_;
  std::shared_ptr<grpc::Channel> real_channel_;
  std::shared_ptr<grpc::Channel> empty_channel_;
};

enum class Target { kReal, kEmpty };

std::shared_ptr<grpc::Channel> ChannelFor(Target target) {
  return target == Target::kReal ? Servers::Get().real_channel() : Servers::Get().empty_channel();
}

// Latencies of every caller of one run. Callers record into their own
// vectors and hand them over after the timed loop; the last one to hand over
// computes the percentiles (the others then report 0, and Google Benchmark
// sums a counter over threads, so the run shows that one value).
struct LatencyPool {
  std::mutex mutex;
  std::vector<int64_t> pair_nanos;  // Map + Unmap
  std::vector<int64_t> call_nanos;  // each RPC
  int handed_over = 0;
};

LatencyPool& Latencies() {
  static LatencyPool* pool = new LatencyPool();
  return *pool;
}

double Percentile(const std::vector<int64_t>& sorted, double fraction) {
  if (sorted.empty()) return 0;
  const size_t index = std::min(sorted.size() - 1, static_cast<size_t>(fraction * sorted.size()));
  return static_cast<double>(sorted[index]);
}

template <Target kTarget>
void BM_UnaryMapUnmap(benchmark::State& state) {
  LatencyPool& pool = Latencies();
  if (state.thread_index() == 0) {
    // Before the loop's start barrier, so no caller of this run records yet.
    std::lock_guard<std::mutex> lock(pool.mutex);
    pool.pair_nanos.clear();
    pool.call_nanos.clear();
    pool.handed_over = 0;
  }
  std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(ChannelFor(kTarget));
  v1::MapRequest map;
  map.set_device_id(kDeviceId);
  // Callers map different pages (the engine allows aliases; this keeps them
  // apart in its debug accounting).
  map.set_phys((static_cast<uint64_t>(state.thread_index()) + 16) * kPage);
  map.set_size(kPage);
  map.mutable_permissions()->set_read(true);
  map.mutable_permissions()->set_write(true);
  v1::UnmapRequest unmap;
  unmap.set_device_id(kDeviceId);
  unmap.set_size(kPage);
  std::vector<int64_t> pair_latencies;
  std::vector<int64_t> call_latencies;
  pair_latencies.reserve(1 << 16);
  call_latencies.reserve(1 << 17);
  auto nanos_since = [](std::chrono::steady_clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                start)
        .count();
  };

  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    v1::MapResponse mapped;
    grpc::ClientContext map_context;
    grpc::Status status = stub->Map(&map_context, map, &mapped);
    if (!status.ok()) {
      state.SkipWithError(absl::StrCat("Map: ", status.error_message()).c_str());
      break;
    }
    const int64_t map_nanos = nanos_since(start);
    const auto unmap_start = std::chrono::steady_clock::now();
    unmap.set_iova(mapped.iova());
    v1::UnmapResponse unmapped;
    grpc::ClientContext unmap_context;
    status = stub->Unmap(&unmap_context, unmap, &unmapped);
    if (!status.ok()) {
      state.SkipWithError(absl::StrCat("Unmap: ", status.error_message()).c_str());
      break;
    }
    call_latencies.push_back(map_nanos);
    call_latencies.push_back(nanos_since(unmap_start));
    pair_latencies.push_back(nanos_since(start));
  }
  state.SetItemsProcessed(state.iterations());

  std::lock_guard<std::mutex> lock(pool.mutex);
  pool.pair_nanos.insert(pool.pair_nanos.end(), pair_latencies.begin(), pair_latencies.end());
  pool.call_nanos.insert(pool.call_nanos.end(), call_latencies.begin(), call_latencies.end());
  const bool last = ++pool.handed_over == state.threads();
  auto report = [&](const char* prefix, std::vector<int64_t>& nanos) {
    if (last) std::sort(nanos.begin(), nanos.end());
    state.counters[absl::StrCat(prefix, "p50_us")] = last ? Percentile(nanos, 0.50) / 1000 : 0;
    state.counters[absl::StrCat(prefix, "p99_us")] = last ? Percentile(nanos, 0.99) / 1000 : 0;
  };
  report("", pool.pair_nanos);
  report("call_", pool.call_nanos);
}

template <Target kTarget>
void BM_BatchMapUnmap(benchmark::State& state) {
  const int in_flight = static_cast<int>(state.range(0));
  std::unique_ptr<v1::IommuBroker::Stub> stub = v1::IommuBroker::NewStub(ChannelFor(kTarget));
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::BatchRequest, v1::BatchResponse>> stream =
      stub->Batch(&context);

  // Built once; each message only rewrites the unmaps' IOVAs.
  v1::BatchRequest request;
  for (int i = 0; i < kMapsPerMessage; ++i) {
    v1::MapRequest* map = request.add_operations()->mutable_map();
    map->set_device_id(kDeviceId);
    map->set_phys((static_cast<uint64_t>(i) + 1024) * kPage);
    map->set_size(kPage);
    map->mutable_permissions()->set_read(true);
    map->mutable_permissions()->set_write(true);
  }
  const v1::BatchRequest prime = request;  // maps only: 128 live IOVAs per message
  for (int i = 0; i < kMapsPerMessage; ++i) {
    v1::UnmapRequest* unmap = request.add_operations()->mutable_unmap();
    unmap->set_device_id(kDeviceId);
    unmap->set_size(kPage);
  }
  v1::BatchResponse response;
  // IOVAs mapped by messages whose responses came back, not yet unmapped
  // (for the clean-up only).
  std::vector<uint64_t> live;

  // Checks `response` and takes its maps' IOVAs into the next message's
  // unmaps (and `live`); false (the run skipped) if anything failed.
  auto consume = [&]() {
    if (response.results_size() < kMapsPerMessage) {
      state.SkipWithError(absl::StrCat(response.results_size(), " results").c_str());
      return false;
    }
    for (int i = 0; i < response.results_size(); ++i) {
      const v1::OperationResult& result = response.results(i);
      if (result.status().code() != 0) {
        state.SkipWithError(absl::StrCat("operation ", i, ": ", result.status().message()).c_str());
        return false;
      }
      if (i < kMapsPerMessage) {
        request.mutable_operations(kMapsPerMessage + i)
            ->mutable_unmap()
            ->set_iova(result.map().iova());
      }
    }
    return true;
  };

  // `in_flight` messages are always outstanding: each iteration reads the
  // oldest response and sends a message unmapping what that response's maps
  // mapped. Responses come in order, so every IOVA is unmapped exactly once,
  // after its map completed.
  bool ok = true;
  for (int i = 0; i < in_flight && ok; ++i) ok = stream->Write(prime);
  if (!ok) state.SkipWithError("the Batch stream failed at start");
  int64_t messages = 0;
  for (auto _ : state) {
    if (!stream->Read(&response)) {
      state.SkipWithError("the Batch stream failed");
      break;
    }
    if (!consume()) break;
    if (!stream->Write(request)) {
      state.SkipWithError("the Batch stream failed");
      break;
    }
    ++messages;
  }
  // One completed message per iteration (the primes' answers are read in the
  // first iterations, the last messages' after the loop).
  state.SetItemsProcessed(messages * kOpsPerMessage);

  // Untimed: collect the outstanding answers, unmap everything still live,
  // end the stream.
  if (!state.error_occurred()) {
    for (int i = 0; i < in_flight; ++i) {
      if (!stream->Read(&response) || !consume()) break;
      for (int j = 0; j < kMapsPerMessage; ++j) live.push_back(response.results(j).map().iova());
    }
    v1::BatchRequest cleanup;
    for (uint64_t iova : live) {
      v1::UnmapRequest* unmap = cleanup.add_operations()->mutable_unmap();
      unmap->set_device_id(kDeviceId);
      unmap->set_iova(iova);
      unmap->set_size(kPage);
    }
    if (stream->Write(cleanup)) stream->Read(&response);
  }
  stream->WritesDone();
  const grpc::Status status = stream->Finish();
  if (!status.ok() && !state.error_occurred()) {
    state.SkipWithError(absl::StrCat("Batch: ", status.error_message()).c_str());
  }
}

// Real and empty alternate, so a slow stretch of the shared machine hits
// both sides of a ratio rather than one.
BENCHMARK(BM_UnaryMapUnmap<Target::kReal>)->Threads(1)->UseRealTime();
BENCHMARK(BM_UnaryMapUnmap<Target::kEmpty>)->Threads(1)->UseRealTime();
BENCHMARK(BM_UnaryMapUnmap<Target::kReal>)->Threads(16)->UseRealTime();
BENCHMARK(BM_UnaryMapUnmap<Target::kEmpty>)->Threads(16)->UseRealTime();
BENCHMARK(BM_BatchMapUnmap<Target::kReal>)->ArgName("in_flight")->Arg(1)->UseRealTime();
BENCHMARK(BM_BatchMapUnmap<Target::kEmpty>)->ArgName("in_flight")->Arg(1)->UseRealTime();
BENCHMARK(BM_BatchMapUnmap<Target::kReal>)->ArgName("in_flight")->Arg(4)->UseRealTime();
BENCHMARK(BM_BatchMapUnmap<Target::kEmpty>)->ArgName("in_flight")->Arg(4)->UseRealTime();

}  // namespace
}  // namespace iommu_broker

BENCHMARK_MAIN();
