// Faults: what a misbehaving client does to the broker. A client process
// killed mid-stream, a stream cancelled with operations in flight, a Batch
// client or a watcher that stops reading, and every limit reached: each
// leaves the broker serving, its state consistent (an operation happened
// wholly or not at all), its stream slots given back, and nothing buffered
// without bound.
//
// The remaining faults of docs/SECURITY.md are tested where their feature
// is: a device IOTLB that never acknowledges in broker_service_test
// (SilentCacheIsCutOffAndTheUnmapCompletes), SIGTERM under load in
// daemon_test (SigtermUnderLoad...) and broker_service_test
// (GracefulShutdownUnderLoad...).
//
// Every call has a deadline (test_broker.h); the waits below are bounded
// only so a broken broker fails instead of hanging. No test asserts on time.
#include <signal.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpc/impl/codegen/grpc_types.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/config.pb.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/child_process.h"
#include "tests/server/rpc_helpers.h"
#include "tests/server/test_broker.h"
#include "tests/temp_dir.h"

namespace iommu_broker::testing {
namespace {

using ::grpc::StatusCode;
using ::testing::HasSubstr;

constexpr char kDomain[] = "vm1";
constexpr char kDevice[] = "0000:3b:00.0";
constexpr uint64_t kPage = 0x1000;

// Polls `done` until it holds or a generous bound passes; whether it held.
template <typename Predicate>
bool Eventually(Predicate done) {
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (!done()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

class FaultsTest : public ::testing::Test {
 protected:
  void StartBroker(const v1::BrokerConfig& config = {}) {
    broker_ = TestBroker::Start(config);
    ASSERT_NE(broker_, nullptr);
  }

  Stub& stub() { return broker_->stub(); }

  void SetUpAttachedDevice(const std::string& device = kDevice) {
    broker_->CreateDomainWithDevice(DomainSpec(kDomain, v1::POLICY_PARANOID), device);
  }

  v1::DomainStats StatsOf(const std::string& domain) {
    v1::GetDomainRequest request;
    request.set_domain_id(domain);
    Reply<v1::Domain> reply = Call(stub(), &Stub::GetDomain, request);
    EXPECT_THAT(reply.status, IsOk());
    return reply.response.stats();
  }

  // An invariant of a domain whatever its clients did: each live mapping
  // was made and not removed.
  void ExpectConsistent(const std::string& domain) {
    const v1::DomainStats stats = StatsOf(domain);
    EXPECT_EQ(stats.live_mappings(), stats.maps() - stats.unmaps());
  }

  std::unique_ptr<TestBroker> broker_;
};

TEST_F(FaultsTest, KilledClientProcessLeavesConsistentStateAndGivesItsStreamsBack) {
  v1::BrokerConfig config;
  config.mutable_limits()->set_max_concurrent_streams(2);
  StartBroker(config);
  TempDir dir("faults_test");
  // iommuctl bench: its own domain `killed` and two devices, two Batch
  // streams of map/translate/unmap cycles, 4 KiB per map.
  ChildProcess client(dir.path(), "iommuctl",
                      {IOMMUCTL_PATH, absl::StrCat("--target=", broker_->target()), "bench",
                       "--mode=batch", "--threads=2", "--streams=2", "--policy=paranoid",
                       "--name-prefix=killed", "--map-bytes=4K", "--duration=120s"});
  ASSERT_TRUE(client.started()) << client.spawn_error();
  // Mid-stream: both streams are open once maps flow on them.
  ASSERT_TRUE(Eventually([&] {
    v1::GetDomainRequest request;
    request.set_domain_id("killed");
    Reply<v1::Domain> reply = Call(stub(), &Stub::GetDomain, request);
    return reply.status.ok() && reply.response.stats().maps() > 2000;
  })) << client.Stderr();
  ASSERT_TRUE(client.Signal(SIGKILL));
  ASSERT_TRUE(client.WaitForExit().has_value());

  // Its streams' slots come back: two new streams are served.
  ServedBatch first = OpenServedBatchEventually(stub());
  ASSERT_TRUE(first.served) << first.refusal.error_message();
  ServedBatch second = OpenServedBatchEventually(stub());
  ASSERT_TRUE(second.served) << second.refusal.error_message();

  // What it left is consistent, and reported as leaks when removed.
  ExpectConsistent("killed");
  const uint64_t live = StatsOf("killed").live_mappings();
  // Each holds the IOVA the broker picked for it, and no other is held.
  EXPECT_EQ(StatsOf("killed").iova().allocated_bytes(), live * 4 * 1024);
  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id("killed");
  destroy.set_force(true);
  Reply<v1::DestroyDomainResponse> destroyed = Call(stub(), &Stub::DestroyDomain, destroy);
  ASSERT_THAT(destroyed.status, IsOk());
  EXPECT_EQ(destroyed.response.leaked().mappings(), live);
  EXPECT_EQ(destroyed.response.leaked().bytes(), live * 4 * 1024);

  for (ServedBatch* served : {&first, &second}) {
    served->batch.stream->WritesDone();
    EXPECT_THAT(served->batch.stream->Finish(), IsOk());
  }
}

TEST_F(FaultsTest, CancelledStreamRanEachOperationWhollyOrNotAtAllAndInOrder) {
  v1::BrokerConfig config;
  config.mutable_limits()->set_max_concurrent_streams(1);
  StartBroker(config);
  SetUpAttachedDevice();
  constexpr int kMessages = 64;
  constexpr int kMapsPerMessage = 16;
  constexpr uint64_t kMapBytes = 4 * kPage;
  const auto iova_of = [](int map) { return uint64_t{1} << 32 | uint64_t(map) * 2 * kMapBytes; };
  const auto phys_of = [](int map) { return uint64_t(map) * kMapBytes; };

  // Every message written, none read, then the stream cancelled.
  BatchStream batch = OpenBatch(stub());
  for (int message = 0; message < kMessages; ++message) {
    v1::BatchRequest request;
    for (int i = 0; i < kMapsPerMessage; ++i) {
      const int map = message * kMapsPerMessage + i;
      *request.add_operations() = MapOp(MapAt(kDevice, iova_of(map), phys_of(map), kMapBytes));
    }
    if (!batch.stream->Write(request)) break;
  }
  batch.context->TryCancel();
  EXPECT_THAT(batch.stream->Finish(), StatusIs(StatusCode::CANCELLED, ::testing::_));
  ServedBatch next = OpenServedBatchEventually(stub());
  ASSERT_TRUE(next.served) << next.refusal.error_message();

  // Each map is whole or absent (every page agrees), and the ones that ran
  // are the first ones sent.
  int mapped = 0;
  for (int map = 0; map < kMessages * kMapsPerMessage; ++map) {
    int pages_mapped = 0;
    for (uint64_t page = 0; page < kMapBytes / kPage; ++page) {
      Reply<v1::TranslateResponse> reply =
          Call(stub(), &Stub::Translate, TranslateOf(kDevice, iova_of(map) + page * kPage, kPage));
      ASSERT_THAT(reply.status, IsOk());
      if (reply.response.has_fault()) continue;
      ++pages_mapped;
      ASSERT_EQ(reply.response.segments_size(), 1);
      EXPECT_EQ(reply.response.segments(0).phys(), phys_of(map) + page * kPage);
    }
    ASSERT_TRUE(pages_mapped == 0 || pages_mapped == kMapBytes / kPage) << "map " << map;
    if (pages_mapped == 0) continue;
    EXPECT_EQ(mapped, map) << "map " << map << " ran after an earlier one did not";
    ++mapped;
  }
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), static_cast<uint64_t>(mapped));
  ExpectConsistent(kDomain);

  next.batch.stream->WritesDone();
  EXPECT_THAT(next.batch.stream->Finish(), IsOk());
}

TEST_F(FaultsTest, SlowReaderStallsItsOwnStreamInsteadOfMakingTheBrokerBuffer) {
  StartBroker();
  // Long ids make every request and every refusal big, so the transport's
  // buffers fill after few operations.
  const std::string device = absl::StrCat("slow-reader-", std::string(200, 'x'));
  SetUpAttachedDevice(device);
  Reply<v1::MapResponse> mapped = Call(stub(), &Stub::Map, MapAnywhere(device, 0, 2 * kPage));
  ASSERT_THAT(mapped.status, IsOk());
  // Unmaps that would split the mapping: each refused, counted, no effect.
  v1::BatchRequest request;
  for (int i = 0; i < 256; ++i) {
    *request.add_operations() = UnmapOp(UnmapOf(device, mapped.response.iova(), kPage));
  }
  const auto operations_run = [&] {
    v1::GetDeviceRequest get;
    get.set_device_id(device);
    return Call(stub(), &Stub::GetDevice, get).response.debug().wrong_size_unmaps();
  };
  // Messages of ~60 KB: ten times what every buffer between the two held
  // when measured (a stall after ~190 messages).
  constexpr int kMessages = 2000;

  BatchStream batch = OpenBatch(stub());
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < kMessages && batch.stream->Write(request); ++i) written.fetch_add(1);
    batch.stream->WritesDone();
  });
  // Wait until neither side moves: the broker stopped reading because its
  // answers are not read, and the writer is blocked.
  int stalled_polls = 0;
  uint64_t last_run = 0;
  int last_written = 0;
  ASSERT_TRUE(Eventually([&] {
    const uint64_t run = operations_run();
    const int now_written = written.load();
    stalled_polls = (run == last_run && now_written == last_written) ? stalled_polls + 1 : 0;
    last_run = run;
    last_written = now_written;
    return stalled_polls >= 20 || now_written == kMessages;
  }));
  EXPECT_LT(written.load(), kMessages) << "the broker read every message of a client that "
                                          "read no answer";
  EXPECT_LE(last_run, static_cast<uint64_t>(written.load()) * 256);
  RecordProperty("messages_written_at_stall", written.load());
  RecordProperty("operations_run_at_stall", static_cast<int64_t>(last_run));

  // Once the client reads again, the stream flows again: answers in order,
  // and the writer gets further.
  const int written_at_stall = written.load();
  constexpr int kAnswersToRead = 64;
  v1::BatchResponse response;
  for (int answered = 0; answered < kAnswersToRead; ++answered) {
    ASSERT_TRUE(batch.stream->Read(&response));
    ASSERT_EQ(response.results_size(), 256);
    EXPECT_THAT(response.results(255).status(),
                OperationStatusIs(StatusCode::FAILED_PRECONDITION, HasSubstr("split")));
  }
  EXPECT_TRUE(Eventually([&] { return written.load() > written_at_stall; }));

  // Cancelled with all that in flight, the stream ends; the broker serves on
  // and the refused operations changed nothing.
  batch.context->TryCancel();
  writer.join();
  EXPECT_THAT(batch.stream->Finish(), StatusIs(StatusCode::CANCELLED, ::testing::_));
  EXPECT_EQ(StatsOf(kDomain).live_mappings(), 1u);
  EXPECT_EQ(StatsOf(kDomain).iova().allocated_bytes(), 2 * kPage);
}

TEST_F(FaultsTest, SlowWatcherLosesEventsButEveryLossIsCounted) {
  v1::BrokerConfig config;
  config.mutable_limits()->set_watch_queue_capacity(16);
  StartBroker(config);
  SetUpAttachedDevice();
  // The watcher's own connection, with HTTP/2 flow control at its initial
  // window (no bandwidth-delay probing to grow it): what the transport
  // holds for a client that does not read stays small.
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  std::unique_ptr<Stub> watcher_stub = v1::IommuBroker::NewStub(broker_->NewChannel(small_window));
  EventStream watcher = Watch(*watcher_stub, WatchFaults(kDomain));
  // Faults while the watcher reads nothing: DMA to IOVAs never mapped.
  constexpr int kMessages = 40;
  constexpr int kFaultsPerMessage = 256;
  BatchStream batch = OpenBatch(stub());
  v1::BatchRequest request;
  for (int i = 0; i < kFaultsPerMessage; ++i) {
    *request.add_operations() = TranslateOp(TranslateOf(kDevice, uint64_t(i) * kPage, kPage));
  }
  for (int message = 0; message < kMessages; ++message) {
    ASSERT_TRUE(RoundTrip(*batch.stream, request).has_value());
  }
  batch.stream->WritesDone();
  EXPECT_THAT(batch.stream->Finish(), IsOk());
  constexpr uint64_t kFaults = uint64_t{kMessages} * kFaultsPerMessage;
  ASSERT_EQ(StatsOf(kDomain).faults(), kFaults);

  // Each event says how many were dropped since the one before it was
  // sent; with the ones delivered, in order, they add up to every fault.
  uint64_t delivered = 0;
  uint64_t dropped = 0;
  uint64_t last_sequence = 0;
  v1::Event event;
  while (delivered + dropped < kFaults && watcher.stream->Read(&event)) {
    ASSERT_TRUE(event.has_fault()) << event.ShortDebugString();
    EXPECT_GT(event.fault().sequence(), last_sequence);
    last_sequence = event.fault().sequence();
    dropped += event.dropped_before();
    ++delivered;
  }
  EXPECT_EQ(delivered + dropped, kFaults);
  EXPECT_GT(dropped, 0u) << "every fault was held for a watcher that read none";
  RecordProperty("faults_delivered", static_cast<int64_t>(delivered));
  watcher.context->TryCancel();
  EXPECT_THAT(watcher.stream->Finish(), StatusIs(StatusCode::CANCELLED, ::testing::_));
}

TEST_F(FaultsTest, EveryLimitAnswersResourceExhaustedAndRecoversOnceFreed) {
  v1::BrokerConfig config;
  config.mutable_engine()->set_max_domains(1);
  config.mutable_engine()->set_max_devices(1);
  config.mutable_limits()->set_max_concurrent_streams(1);
  config.mutable_limits()->set_max_batch_operations(2);
  StartBroker(config);
  v1::DomainSpec spec = DomainSpec(kDomain, v1::POLICY_PARANOID);
  // An aperture of four pages: the IOVA space runs out at the fifth.
  spec.set_aperture_first(uint64_t{1} << 32);
  spec.set_aperture_last((uint64_t{1} << 32) + 4 * kPage - 1);
  spec.set_max_mappings(3);
  broker_->CreateDomainWithDevice(spec, kDevice);
  const auto exhausted = [](const char* what) {
    return StatusIs(StatusCode::RESOURCE_EXHAUSTED, HasSubstr(what));
  };

  // Domains and devices.
  v1::CreateDomainRequest second_domain;
  *second_domain.mutable_domain() = DomainSpec("vm2", v1::POLICY_FAST);
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, second_domain).status, exhausted("domains"));
  v1::RegisterDeviceRequest second_device;
  *second_device.mutable_device() = DeviceSpec("0000:3c:00.0");
  EXPECT_THAT(Call(stub(), &Stub::RegisterDevice, second_device).status, exhausted("devices"));

  // Mappings: three, then the limit.
  std::vector<uint64_t> iovas;
  for (uint64_t i = 0; i < 3; ++i) {
    Reply<v1::MapResponse> reply = Call(stub(), &Stub::Map, MapAnywhere(kDevice, i * kPage, kPage));
    ASSERT_THAT(reply.status, IsOk());
    iovas.push_back(reply.response.iova());
  }
  EXPECT_THAT(Call(stub(), &Stub::Map, MapAnywhere(kDevice, 3 * kPage, kPage)).status,
              exhausted("max_mappings"));
  for (uint64_t iova : iovas) {
    ASSERT_THAT(Call(stub(), &Stub::Unmap, UnmapOf(kDevice, iova, kPage)).status, IsOk());
  }
  // IOVA space: two maps of two pages fill the aperture.
  std::vector<uint64_t> halves;
  for (uint64_t i = 0; i < 2; ++i) {
    Reply<v1::MapResponse> reply =
        Call(stub(), &Stub::Map, MapAnywhere(kDevice, 8 * kPage * (i + 1), 2 * kPage));
    ASSERT_THAT(reply.status, IsOk());
    halves.push_back(reply.response.iova());
  }
  EXPECT_THAT(Call(stub(), &Stub::Map, MapAnywhere(kDevice, 0, kPage)).status,
              exhausted("no free IOVA range"));
  ASSERT_THAT(Call(stub(), &Stub::Unmap, UnmapOf(kDevice, halves[0], 2 * kPage)).status, IsOk());
  EXPECT_THAT(Call(stub(), &Stub::Map, MapAnywhere(kDevice, 0, kPage)).status, IsOk());
  EXPECT_THAT(Call(stub(), &Stub::Map, MapAnywhere(kDevice, kPage, kPage)).status, IsOk());

  // Streams and batch size.
  ServedBatch held = OpenServedBatch(stub());
  ASSERT_TRUE(held.served) << held.refusal.error_message();
  ServedBatch refused = OpenServedBatch(stub());
  EXPECT_FALSE(refused.served);
  EXPECT_THAT(refused.refusal, exhausted("streams"));
  v1::BatchRequest too_big;
  for (int i = 0; i < 3; ++i) *too_big.add_operations() = FlushOp(kDomain);
  EXPECT_FALSE(RoundTrip(*held.batch.stream, too_big).has_value());
  EXPECT_THAT(held.batch.stream->Finish(), exhausted("limit of 2"));

  // Everything freed: each limit lets the next request in.
  ServedBatch reopened = OpenServedBatchEventually(stub());
  ASSERT_TRUE(reopened.served) << reopened.refusal.error_message();
  v1::BatchRequest fits;
  for (int i = 0; i < 2; ++i) *fits.add_operations() = FlushOp(kDomain);
  EXPECT_TRUE(RoundTrip(*reopened.batch.stream, fits).has_value());
  reopened.batch.stream->WritesDone();
  EXPECT_THAT(reopened.batch.stream->Finish(), IsOk());

  v1::DestroyDomainRequest destroy;
  destroy.set_domain_id(kDomain);
  destroy.set_force(true);
  ASSERT_THAT(Call(stub(), &Stub::DestroyDomain, destroy).status, IsOk());
  v1::UnregisterDeviceRequest unregister;
  unregister.set_device_id(kDevice);
  ASSERT_THAT(Call(stub(), &Stub::UnregisterDevice, unregister).status, IsOk());
  EXPECT_THAT(Call(stub(), &Stub::CreateDomain, second_domain).status, IsOk());
  EXPECT_THAT(Call(stub(), &Stub::RegisterDevice, second_device).status, IsOk());
}

}  // namespace
}  // namespace iommu_broker::testing
