// Load: clients on their own threads, over unary calls and over Batch
// streams, churn map/unmap/translate in a domain of every policy at once
// while a watcher streams the faults. Each client checks every reply
// against its own model of what the broker acknowledged; afterwards the
// broker's state (live mappings, counters, allocated and free IOVA space)
// must be exactly what the acknowledged operations imply, and no fault may
// be lost without being counted. The ASan build runs it too: a leak in any
// path it drives fails the test binary at exit.
//
// Bounded by operation counts, not by time; every call has a deadline
// (test_broker.h) and no test asserts on time.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "iommu_broker/v1/iommu_broker.grpc.pb.h"
#include "tests/server/rpc_helpers.h"
#include "tests/server/test_broker.h"

namespace iommu_broker::testing {
namespace {

using ::grpc::StatusCode;

constexpr uint64_t kPage = 0x1000;
// Each client maps only inside its own gigabyte of physical memory, in
// slots of kSlotPages so its mappings never share a page.
constexpr uint64_t kClientPhysSpan = uint64_t{1} << 30;
constexpr uint64_t kSlotPages = 8;
constexpr int kMaxMapPages = 4;
// Recently unmapped ranges a client keeps for translations and unmaps of
// what is no longer there.
constexpr size_t kUnmappedHistory = 32;

struct Mapping {
  uint64_t iova;
  uint64_t phys;
  uint64_t size;
};

// What the acknowledged operations of one client imply for its domain's
// and device's counters.
struct ExpectedCounts {
  uint64_t maps = 0;           // translated: in the page table
  uint64_t identity_maps = 0;  // pt: nothing recorded, nothing to unmap
  uint64_t unmaps = 0;         // mappings removed
  uint64_t translations = 0;
  uint64_t faults = 0;
  uint64_t stale_translations = 0;
  uint64_t wrong_size_unmaps = 0;
  uint64_t double_unmaps = 0;
};

// The operations a client sends: what each one expects depends on the
// model's state when the batch was made.
enum class Intent {
  kMap,
  kUnmap,              // a whole live mapping
  kWrongSizeUnmap,     // the first page of a live multi-page mapping
  kUnmapOfNothing,     // a range unmapped earlier and not mapped again
  kTranslateLive,      // part of a live mapping
  kTranslateUnmapped,  // a range unmapped earlier and not mapped again
  kFlush,
};

struct PlannedOperation {
  Intent intent;
  Mapping target;  // the mapping or unmapped range the operation is about
  v1::Operation operation;
};

// One client's domain, device and model: the mappings the broker
// acknowledged and the counters they imply. In a pt domain a map is an
// identity map: the broker records nothing, so unmaps find nothing to
// remove (and count no misuse). Plans batches of operations
// that are each valid against the model as it was before the batch (no two
// operations of a batch touch the same range; maps come last, so no other
// operation of the batch can see their IOVAs) and checks every result.
//
// Thread-compatible: each client runs on one thread.
class ChurnClient final {
 public:
  ChurnClient(std::string name, v1::Policy policy, uint64_t phys_base, uint32_t seed)
      : name_(std::move(name)), policy_(policy), phys_base_(phys_base), random_(seed) {}

  const std::string& domain() const { return name_; }
  const std::string& device() const { return name_; }
  v1::Policy policy() const { return policy_; }
  bool identity() const { return policy_ == v1::POLICY_PT; }
  // What the client mapped and did not unmap (in pt, identity maps).
  const std::map<uint64_t, Mapping>& live() const { return live_; }
  const ExpectedCounts& expected() const { return expected_; }

  std::vector<PlannedOperation> Plan(int size) {
    std::vector<PlannedOperation> plan;
    std::vector<Mapping> live_choices = Shuffled(live_);
    std::vector<Mapping> unmapped_choices = UnmappedNotLive();
    int maps = 0;
    for (int i = 0; i < size; ++i) {
      const int roll = Uniform(0, 99);
      if (roll < 40 || (live_choices.empty() && unmapped_choices.empty())) {
        ++maps;
      } else if (roll < 85 && !live_choices.empty()) {
        plan.push_back(PlanOnLive(roll, live_choices.back()));
        live_choices.pop_back();
      } else if (roll < 97 && !unmapped_choices.empty()) {
        plan.push_back(PlanOnUnmapped(roll, unmapped_choices.back()));
        unmapped_choices.pop_back();
      } else {
        plan.push_back({Intent::kFlush, {}, FlushOp(name_)});
      }
    }
    for (int i = 0; i < maps; ++i) plan.push_back(PlanMap());
    return plan;
  }

  // Checks each result against what its operation expected and applies it
  // to the model, in order.
  void Apply(const std::vector<PlannedOperation>& plan,
             const std::vector<v1::OperationResult>& results) {
    ASSERT_EQ(results.size(), plan.size()) << name_;
    for (size_t i = 0; i < plan.size(); ++i) {
      SCOPED_TRACE(absl::StrCat(name_, ": ", plan[i].operation.ShortDebugString(), " -> ",
                                results[i].ShortDebugString()));
      ApplyOne(plan[i], results[i]);
    }
  }

 private:
  PlannedOperation PlanMap() {
    const uint64_t pages = static_cast<uint64_t>(Uniform(1, kMaxMapPages));
    const uint64_t phys = phys_base_ + (next_slot_++ * kSlotPages * kPage) % kClientPhysSpan;
    return {Intent::kMap, {0, phys, pages * kPage}, MapOp(MapAnywhere(name_, phys, pages * kPage))};
  }

  PlannedOperation PlanOnLive(int roll, const Mapping& mapping) {
    if (roll < 58) {
      return {Intent::kUnmap, mapping, UnmapOp(UnmapOf(name_, mapping.iova, mapping.size))};
    }
    if (roll < 61 && mapping.size > kPage) {
      return {Intent::kWrongSizeUnmap, mapping, UnmapOp(UnmapOf(name_, mapping.iova, kPage))};
    }
    // A random part of the mapping, from one byte to all of it.
    const uint64_t offset = static_cast<uint64_t>(Uniform(0, static_cast<int>(mapping.size) - 1));
    const uint64_t size =
        static_cast<uint64_t>(Uniform(1, static_cast<int>(mapping.size - offset)));
    const Mapping part{mapping.iova + offset, mapping.phys + offset, size};
    return {Intent::kTranslateLive, part,
            TranslateOp(TranslateOf(name_, part.iova, part.size, v1::ACCESS_WRITE))};
  }

  PlannedOperation PlanOnUnmapped(int roll, const Mapping& gone) {
    if (roll < 91) {
      return {Intent::kTranslateUnmapped, gone,
              TranslateOp(TranslateOf(name_, gone.iova, gone.size, v1::ACCESS_READ))};
    }
    return {Intent::kUnmapOfNothing, gone, UnmapOp(UnmapOf(name_, gone.iova, gone.size))};
  }

  void ApplyOne(const PlannedOperation& planned, const v1::OperationResult& result) {
    switch (planned.intent) {
      case Intent::kMap:
        return ApplyMap(planned.target, result);
      case Intent::kUnmap:
        ASSERT_EQ(result.status().code(), 0);
        EXPECT_EQ(result.unmap().bytes_unmapped(), identity() ? 0 : planned.target.size);
        EXPECT_EQ(result.unmap().mappings_removed(), identity() ? 0u : 1u);
        live_.erase(planned.target.iova);
        unmapped_.push_back(planned.target);
        if (unmapped_.size() > kUnmappedHistory) unmapped_.pop_front();
        if (!identity()) ++expected_.unmaps;
        return;
      case Intent::kWrongSizeUnmap:
        if (identity()) {
          ASSERT_EQ(result.status().code(), 0);
          EXPECT_EQ(result.unmap().bytes_unmapped(), 0u);
          return;
        }
        EXPECT_EQ(result.status().code(), static_cast<int>(StatusCode::FAILED_PRECONDITION));
        ++expected_.wrong_size_unmaps;
        return;
      case Intent::kUnmapOfNothing:
        ASSERT_EQ(result.status().code(), 0);
        EXPECT_EQ(result.unmap().bytes_unmapped(), 0u);
        if (!identity()) ++expected_.double_unmaps;
        return;
      case Intent::kTranslateLive:
        ASSERT_EQ(result.status().code(), 0);
        ++expected_.translations;
        EXPECT_FALSE(result.translate().has_fault());
        EXPECT_FALSE(result.translate().stale());
        ExpectSegmentsFrom(result.translate(), planned.target.phys, planned.target.size);
        return;
      case Intent::kTranslateUnmapped:
        ASSERT_EQ(result.status().code(), 0);
        ++expected_.translations;
        return ApplyTranslateUnmapped(planned.target, result.translate());
      case Intent::kFlush:
        EXPECT_EQ(result.status().code(), 0);
        return;
    }
  }

  void ApplyMap(const Mapping& asked, const v1::OperationResult& result) {
    ASSERT_EQ(result.status().code(), 0);
    const Mapping mapped{result.map().iova(), asked.phys, asked.size};
    EXPECT_EQ(mapped.iova % kPage, 0u);
    EXPECT_FALSE(OverlapsLive(mapped)) << "iova 0x" << std::hex << mapped.iova;
    live_[mapped.iova] = mapped;
    if (identity()) {
      EXPECT_EQ(result.map().kind(), v1::MAPPING_KIND_IDENTITY);
      EXPECT_EQ(mapped.iova, mapped.phys);
      ++expected_.identity_maps;
      return;
    }
    EXPECT_EQ(result.map().kind(), v1::MAPPING_KIND_TRANSLATED);
    ++expected_.maps;
  }

  // What a device's DMA to a range it no longer has mapped sees, by policy.
  void ApplyTranslateUnmapped(const Mapping& gone, const v1::TranslateResponse& translation) {
    switch (policy_) {
      case v1::POLICY_PT:  // passthrough reaches every address, mapped or not
        EXPECT_FALSE(translation.has_fault());
        ExpectSegmentsFrom(translation, gone.iova, gone.size);
        return;
      case v1::POLICY_FAST:  // until the flush, the IOTLB may still serve it
        if (translation.stale()) {
          ++expected_.stale_translations;
          ExpectSegmentsFrom(translation, gone.phys, gone.size);
          return;
        }
        break;
      default:
        break;
    }
    ASSERT_TRUE(translation.has_fault());
    EXPECT_EQ(translation.fault().reason(), v1::FAULT_REASON_NOT_MAPPED);
    ++expected_.faults;
  }

  static void ExpectSegmentsFrom(const v1::TranslateResponse& translation, uint64_t phys,
                                 uint64_t size) {
    uint64_t next = phys;
    for (const v1::PhysSegment& segment : translation.segments()) {
      EXPECT_EQ(segment.phys(), next);
      next = segment.phys() + segment.size();
    }
    EXPECT_EQ(next, phys + size);
  }

  bool OverlapsLive(const Mapping& range) const {
    auto after = live_.upper_bound(range.iova);
    if (after != live_.end() && after->second.iova < range.iova + range.size) return true;
    if (after == live_.begin()) return false;
    const Mapping& before = std::prev(after)->second;
    return before.iova + before.size > range.iova;
  }

  // Unmapped ranges that no live mapping and no later unmap overlaps. An
  // IOVA range may be unmapped, reused and unmapped again over time; a fast
  // domain's IOTLB may still serve only the latest of those (an IOVA is
  // reused only after the flush covering its earlier unmap), so an earlier
  // record of the range is never a choice.
  std::vector<Mapping> UnmappedNotLive() {
    auto overlap = [](const Mapping& a, const Mapping& b) {
      return a.iova < b.iova + b.size && b.iova < a.iova + a.size;
    };
    std::vector<Mapping> ranges;
    std::vector<Mapping> later;
    for (auto gone = unmapped_.rbegin(); gone != unmapped_.rend(); ++gone) {
      const bool superseded = std::any_of(
          later.begin(), later.end(), [&](const Mapping& newer) { return overlap(*gone, newer); });
      if (!superseded && !OverlapsLive(*gone)) ranges.push_back(*gone);
      later.push_back(*gone);
    }
    std::shuffle(ranges.begin(), ranges.end(), random_);
    return ranges;
  }

  std::vector<Mapping> Shuffled(const std::map<uint64_t, Mapping>& mappings) {
    std::vector<Mapping> all;
    for (const auto& [iova, mapping] : mappings) all.push_back(mapping);
    std::shuffle(all.begin(), all.end(), random_);
    return all;
  }

  int Uniform(int low, int high) { return std::uniform_int_distribution<int>(low, high)(random_); }

  const std::string name_;
  const v1::Policy policy_;
  const uint64_t phys_base_;
  std::mt19937 random_;
  uint64_t next_slot_ = 0;
  std::map<uint64_t, Mapping> live_;  // by IOVA
  std::deque<Mapping> unmapped_;      // oldest first
  ExpectedCounts expected_;
};

// ---------------------------------------------------------------------------
// How a client's operations reach the broker.

// One unary call per operation, its status and reply as a Batch result.
std::vector<v1::OperationResult> RunUnary(Stub& stub, const std::vector<PlannedOperation>& plan) {
  std::vector<v1::OperationResult> results;
  for (const PlannedOperation& planned : plan) {
    const v1::Operation& operation = planned.operation;
    v1::OperationResult result;
    grpc::Status status;
    if (operation.has_map()) {
      Reply<v1::MapResponse> reply = Call(stub, &Stub::Map, operation.map());
      status = reply.status;
      *result.mutable_map() = reply.response;
    } else if (operation.has_unmap()) {
      Reply<v1::UnmapResponse> reply = Call(stub, &Stub::Unmap, operation.unmap());
      status = reply.status;
      *result.mutable_unmap() = reply.response;
    } else if (operation.has_translate()) {
      Reply<v1::TranslateResponse> reply = Call(stub, &Stub::Translate, operation.translate());
      status = reply.status;
      *result.mutable_translate() = reply.response;
    } else {
      status = Call(stub, &Stub::Flush, operation.flush()).status;
      result.mutable_flush();
    }
    if (!status.ok()) {
      result.Clear();
      result.mutable_status()->set_code(status.error_code());
      result.mutable_status()->set_message(status.error_message());
    }
    results.push_back(std::move(result));
  }
  return results;
}

// One Batch message per plan, on a stream the client keeps open.
std::vector<v1::OperationResult> RunBatch(BatchReaderWriter& stream,
                                          const std::vector<PlannedOperation>& plan) {
  v1::BatchRequest request;
  for (const PlannedOperation& planned : plan) *request.add_operations() = planned.operation;
  std::optional<v1::BatchResponse> response = RoundTrip(stream, request);
  EXPECT_TRUE(response.has_value()) << "the Batch stream ended";
  if (!response.has_value()) return {};
  return {response->results().begin(), response->results().end()};
}

// ---------------------------------------------------------------------------

class BrokerLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    broker_ = TestBroker::Start();
    ASSERT_NE(broker_, nullptr);
  }

  Stub& stub() { return broker_->stub(); }

  void CreateAttached(const ChurnClient& client) {
    v1::CreateDomainRequest domain;
    *domain.mutable_domain() = DomainSpec(client.domain(), client.policy());
    ASSERT_THAT(Call(stub(), &Stub::CreateDomain, domain).status, IsOk());
    v1::RegisterDeviceRequest device;
    *device.mutable_device() = DeviceSpec(client.device());
    ASSERT_THAT(Call(stub(), &Stub::RegisterDevice, device).status, IsOk());
    v1::AttachDeviceRequest attach;
    attach.set_device_id(client.device());
    attach.set_domain_id(client.domain());
    ASSERT_THAT(Call(stub(), &Stub::AttachDevice, attach).status, IsOk());
  }

  v1::Domain GetDomain(const std::string& id) {
    v1::GetDomainRequest request;
    request.set_domain_id(id);
    Reply<v1::Domain> reply = Call(stub(), &Stub::GetDomain, request);
    EXPECT_THAT(reply.status, IsOk());
    return reply.response;
  }

  v1::Device GetDevice(const std::string& id) {
    v1::GetDeviceRequest request;
    request.set_device_id(id);
    Reply<v1::Device> reply = Call(stub(), &Stub::GetDevice, request);
    EXPECT_THAT(reply.status, IsOk());
    return reply.response;
  }

  void Flush(const std::string& domain) {
    EXPECT_THAT(Call(stub(), &Stub::Flush, FlushOf(domain)).status, IsOk());
  }

  // The domain's and device's state against what the client's
  // acknowledged operations imply; then every mapping translates as
  // acknowledged.
  void ExpectStateOf(const ChurnClient& client) {
    SCOPED_TRACE(client.domain());
    Flush(client.domain());
    const v1::DomainStats stats = GetDomain(client.domain()).stats();
    const ExpectedCounts& expected = client.expected();
    EXPECT_EQ(stats.live_mappings(), client.identity() ? 0 : client.live().size());
    EXPECT_EQ(stats.maps(), expected.maps);
    EXPECT_EQ(stats.identity_maps(), expected.identity_maps);
    EXPECT_EQ(stats.unmaps(), expected.unmaps);
    EXPECT_EQ(stats.translations(), expected.translations);
    EXPECT_EQ(stats.faults(), expected.faults);
    EXPECT_EQ(stats.stale_translations(), expected.stale_translations);
    EXPECT_EQ(stats.debug().wrong_size_unmaps(), expected.wrong_size_unmaps);
    EXPECT_EQ(stats.debug().double_unmaps(), expected.double_unmaps);
    EXPECT_EQ(stats.debug().dma_after_unmap(), expected.faults);
    EXPECT_EQ(stats.iova().allocated_bytes(), client.identity() ? 0 : LiveBytes(client));

    const v1::DmaDebugCounts device_debug = GetDevice(client.device()).debug();
    EXPECT_EQ(device_debug.wrong_size_unmaps(), expected.wrong_size_unmaps);
    EXPECT_EQ(device_debug.double_unmaps(), expected.double_unmaps);
    EXPECT_EQ(device_debug.dma_after_unmap(), expected.faults);

    for (const auto& [iova, mapping] : client.live()) {
      Reply<v1::TranslateResponse> reply =
          Call(stub(), &Stub::Translate, TranslateOf(client.device(), iova, mapping.size));
      ASSERT_THAT(reply.status, IsOk());
      ASSERT_FALSE(reply.response.has_fault()) << reply.response.ShortDebugString();
      ASSERT_EQ(reply.response.segments_size(), 1);
      EXPECT_EQ(reply.response.segments(0).phys(), mapping.phys);
    }
  }

  // Unmapping what the client left gives the domain all its IOVA space
  // back.
  void ExpectEmptyAfterUnmappingAll(const ChurnClient& client) {
    SCOPED_TRACE(client.domain());
    for (const auto& [iova, mapping] : client.live()) {
      Reply<v1::UnmapResponse> reply =
          Call(stub(), &Stub::Unmap, UnmapOf(client.device(), iova, mapping.size));
      ASSERT_THAT(reply.status, IsOk());
      EXPECT_EQ(reply.response.bytes_unmapped(), client.identity() ? 0 : mapping.size);
    }
    Flush(client.domain());
    const v1::IovaStats iova = GetDomain(client.domain()).stats().iova();
    EXPECT_EQ(GetDomain(client.domain()).stats().live_mappings(), 0u);
    EXPECT_EQ(iova.allocated_bytes(), 0u);
    EXPECT_EQ(iova.free_bytes() + iova.cached_bytes(),
              iova.aperture_bytes() - iova.reserved_bytes());
  }

  static uint64_t LiveBytes(const ChurnClient& client) {
    uint64_t bytes = 0;
    for (const auto& [iova, mapping] : client.live()) bytes += mapping.size;
    return bytes;
  }

  std::unique_ptr<TestBroker> broker_;
};

TEST_F(BrokerLoadTest, ChurnAcrossPoliciesLeavesExactlyWhatWasAcknowledged) {
  constexpr int kUnaryRounds = 40;
  constexpr int kUnaryRoundSize = 8;
  constexpr int kBatchRounds = 60;
  constexpr int kBatchRoundSize = 32;

  std::vector<std::unique_ptr<ChurnClient>> unary_clients;
  std::vector<std::unique_ptr<ChurnClient>> batch_clients;
  uint32_t seed = 1;
  const std::pair<v1::Policy, const char*> policies[] = {
      {v1::POLICY_PARANOID, "paranoid"}, {v1::POLICY_FAST, "fast"}, {v1::POLICY_PT, "pt"}};
  for (const auto& [policy, policy_name] : policies) {
    unary_clients.push_back(std::make_unique<ChurnClient>(absl::StrCat("unary-", policy_name),
                                                          policy, seed * kClientPhysSpan, seed));
    ++seed;
    batch_clients.push_back(std::make_unique<ChurnClient>(absl::StrCat("batch-", policy_name),
                                                          policy, seed * kClientPhysSpan, seed));
    ++seed;
  }
  for (const auto& client : unary_clients) CreateAttached(*client);
  for (const auto& client : batch_clients) CreateAttached(*client);
  ASSERT_FALSE(HasFatalFailure());

  // A watcher of every domain's faults: each must arrive or be counted as
  // dropped.
  EventStream watcher = Watch(stub(), WatchFaults());
  std::atomic<uint64_t> faults_seen{0};
  std::thread watch_thread([&] {
    v1::Event event;
    while (watcher.stream->Read(&event)) {
      faults_seen.fetch_add(event.dropped_before() + (event.has_fault() ? 1 : 0));
    }
  });

  std::vector<std::thread> threads;
  for (const auto& client : unary_clients) {
    threads.emplace_back([this, &client] {
      for (int round = 0; round < kUnaryRounds && !HasFailure(); ++round) {
        const std::vector<PlannedOperation> plan = client->Plan(kUnaryRoundSize);
        client->Apply(plan, RunUnary(stub(), plan));
      }
    });
  }
  for (const auto& client : batch_clients) {
    threads.emplace_back([this, &client] {
      BatchStream batch = OpenBatch(stub());
      for (int round = 0; round < kBatchRounds && !HasFailure(); ++round) {
        const std::vector<PlannedOperation> plan = client->Plan(kBatchRoundSize);
        client->Apply(plan, RunBatch(*batch.stream, plan));
      }
      batch.stream->WritesDone();
      EXPECT_THAT(batch.stream->Finish(), IsOk());
    });
  }
  for (std::thread& thread : threads) thread.join();

  uint64_t faults = 0;
  for (const auto* clients : {&unary_clients, &batch_clients}) {
    for (const auto& client : *clients) {
      ExpectStateOf(*client);
      faults += client->expected().faults;
      // The load reached every kind of operation it plans.
      EXPECT_GT(client->expected().maps + client->expected().identity_maps, 0u);
      EXPECT_GT(client->expected().translations, 0u);
    }
  }
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (faults_seen.load() < faults && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  watcher.context->TryCancel();
  watch_thread.join();
  EXPECT_EQ(faults_seen.load(), faults);

  for (const auto* clients : {&unary_clients, &batch_clients}) {
    for (const auto& client : *clients) ExpectEmptyAfterUnmappingAll(*client);
  }
}

}  // namespace
}  // namespace iommu_broker::testing
