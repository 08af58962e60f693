// Concurrency tests of the emulated IOMMU (core/iommu), run by the normal,
// AddressSanitizer and ThreadSanitizer builds (label `concurrency`): threads
// map, translate and unmap on shared domains while others translate at
// random, switch policies, move devices between domains and destroy domains.
//
// Every mapping a test makes gets a physical range that no other mapping ever
// uses (each worker owns a slice of the emulated memory), recorded in a
// Registry before the threads start; its IOVA is published as soon as Map
// returns. A translation that does not fault must therefore name, run for
// run, the physical address some recorded mapping gave that IOVA, so a wrong
// PA is always detectable. Checks run on the threads and are collected in
// Failures, which each test asserts empty at the end.
//
// Op counts, never durations, bound every test, and no check depends on
// timing: where the policy allows several outcomes (a fast unmap may leave a
// stale IOTLB entry; an IOVA freed by one thread may be reused by another at
// once), every allowed outcome is accepted and checked for what it must be.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <iostream>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/iommu/iommu.h"
#include "core/util/hex.h"
#include "gtest/gtest.h"

namespace iommu_broker {
namespace {

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kPhysBytes = 4 * kGiB;
// Each worker owns [w * kSlice, (w + 1) * kSlice) of physical memory.
constexpr uint64_t kSlice = kGiB;
constexpr int kMaxWorkers = 4;
constexpr Perms kReadWrite{.read = true, .write = true};
constexpr uint64_t kSeed = 0x10441;
constexpr char kDomain[] = "d";

// Sizes every ThreadSanitizer run on a shared 2-core machine keeps to
// seconds; the plain build gets the same counts.
constexpr int kWorkers = 3;
static_assert(kWorkers <= kMaxWorkers, "each worker needs its own kSlice of memory");
constexpr size_t kSharedDomainCycles = 4000;  // per worker, test 1
constexpr size_t kCombiningCycles = 300;      // per worker, test 2 (200 us per batch)
constexpr int kPolicyRounds = 6;              // test 3: paranoid, fast, paranoid, ...
constexpr int kCyclesPerPhase = 50;           // test 3: each worker, each phase, at least
constexpr size_t kControlPlaneCycles = 4000;  // per worker at most, test 4
constexpr int kControlRounds = 1500;          // test 4
constexpr int kFixedOps = 4000;               // per worker, test 5
constexpr int kIdentityCycles = 2000;         // per worker, test 5

IommuOptions Options(uint64_t physical_memory_bytes = kPhysBytes) {
  IommuOptions options;
  options.physical_memory_bytes = physical_memory_bytes;
  options.maintenance_interval = absl::ZeroDuration();
  return options;
}

std::unique_ptr<Iommu> NewIommu(const IommuOptions& options) {
  absl::StatusOr<std::unique_ptr<Iommu>> iommu = Iommu::Create(options);
  if (!iommu.ok()) {
    ADD_FAILURE() << iommu.status();
    return nullptr;
  }
  return *std::move(iommu);
}

std::shared_ptr<Device> AddAttachedDevice(Iommu& iommu, const std::string& id,
                                          absl::string_view domain) {
  if (absl::Status added = iommu.AddDevice({.id = id}); !added.ok()) {
    ADD_FAILURE() << added;
    return nullptr;
  }
  if (absl::StatusOr<std::optional<DetachResult>> attached = iommu.Attach(id, domain);
      !attached.ok()) {
    ADD_FAILURE() << attached.status();
    return nullptr;
  }
  absl::StatusOr<std::shared_ptr<Device>> device = iommu.FindDevice(id);
  if (!device.ok()) {
    ADD_FAILURE() << device.status();
    return nullptr;
  }
  return *std::move(device);
}

MapRequest Request(uint64_t phys, uint64_t size) {
  return MapRequest{.phys = phys, .size = size, .perms = kReadWrite};
}

MapRequest FixedRequest(uint64_t iova, uint64_t phys, uint64_t size) {
  MapRequest request = Request(phys, size);
  request.has_iova = true;
  request.iova = iova;
  return request;
}

std::string Describe(const TranslateResult& result) {
  if (result.fault.has_value()) {
    return absl::StrCat("fault ", FaultReasonName(result.fault->reason), " at ",
                        Hex(result.fault->iova));
  }
  std::vector<std::string> segments;
  for (const PhysSegment& segment : result.segments) {
    segments.push_back(absl::StrCat(Hex(segment.phys), "+", Hex(segment.size)));
  }
  return absl::StrCat("[", absl::StrJoin(segments, ", "), "]", result.stale ? " stale" : "",
                      result.iotlb_hit ? " iotlb-hit" : "");
}

// True if `result` is exactly one segment [phys, phys + size).
bool IsExactly(const TranslateResult& result, uint64_t phys, uint64_t size) {
  return !result.fault.has_value() && result.segments.size() == 1 &&
         result.segments[0].phys == phys && result.segments[0].size == size;
}

// Collects what the threads found wrong; the test asserts it is empty.
class Failures final {
 public:
  void Add(std::string message) {
    count_.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mutex_);
    if (kept_.size() < kKept) kept_.push_back(std::move(message));
  }
  size_t count() const { return count_.load(std::memory_order_relaxed); }
  std::string Summary() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return absl::StrCat(count(), " failure(s), the first ", kept_.size(), ":\n  ",
                        absl::StrJoin(kept_, "\n  "));
  }

 private:
  static constexpr size_t kKept = 20;
  std::atomic<size_t> count_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> kept_;
};

// What the threads did, to compare with the domain's own statistics.
struct Tally {
  std::atomic<uint64_t> maps{0};
  std::atomic<uint64_t> unmaps{0};  // mappings removed
  std::atomic<uint64_t> translations{0};
  std::atomic<uint64_t> faults{0};
  std::atomic<uint64_t> not_mapped{0};
  std::atomic<uint64_t> stale{0};
  // Translations of a just-unmapped range by the thread that unmapped it.
  std::atomic<uint64_t> after_unmap_faulted{0};
  std::atomic<uint64_t> after_unmap_stale_old{0};  // fast: the old PA, marked stale
  std::atomic<uint64_t> after_unmap_reused{0};     // another mapping reused the IOVA
  // The old PA, unmarked, while a switch to paranoid was draining (a known gap).
  std::atomic<uint64_t> unmarked_while_switching{0};

  void Count(const TranslateResult& result) {
    translations.fetch_add(1, std::memory_order_relaxed);
    if (result.fault.has_value()) {
      faults.fetch_add(1, std::memory_order_relaxed);
      if (result.fault->reason == FaultReason::kNotMapped) {
        not_mapped.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (result.stale) stale.fetch_add(1, std::memory_order_relaxed);
  }
};

// ---------------------------------------------------------------- Registry

// One planned mapping. Its physical range is fixed before the threads start
// and no other mapping ever uses it; its IOVA is published once Map returns.
struct Record {
  int owner = 0;
  uint64_t pa = 0;
  uint64_t size = 0;
  std::atomic<uint64_t> iova{0};
};
constexpr uint64_t kNotYet = 0;  // Map has not returned (IOVA 0 is outside every aperture)
constexpr uint64_t kNever = 1;   // Map failed: no PTE ever named this range

class Registry final {
 public:
  explicit Registry(int workers) : by_worker_(workers), published_(workers), done_(workers) {}

  // Before the threads start.
  Record& Add(int owner, uint64_t pa, uint64_t size) {
    Record& record = records_.emplace_back();
    record.owner = owner;
    record.pa = pa;
    record.size = size;
    by_worker_[owner].push_back(&record);
    return record;
  }
  // Before the threads start, after the last Add.
  void Seal() {
    for (Record& record : records_) index_.push_back(&record);
    std::sort(index_.begin(), index_.end(),
              [](const Record* a, const Record* b) { return a->pa < b->pa; });
  }

  size_t size(int worker) const { return by_worker_[worker].size(); }
  Record& at(int worker, size_t i) { return *by_worker_[worker][i]; }
  const Record& at(int worker, size_t i) const { return *by_worker_[worker][i]; }

  // Publishes record `i` of its owner, mapped at `iova` (or kNever).
  void Publish(int worker, size_t i, uint64_t iova) {
    by_worker_[worker][i]->iova.store(iova, std::memory_order_release);
    published_[worker].store(i + 1, std::memory_order_release);
  }
  // Records [0, published) of `worker` have their IOVA (or kNever).
  size_t published(int worker) const { return published_[worker].load(std::memory_order_acquire); }
  void MarkDone(int worker) { done_[worker].store(true, std::memory_order_release); }
  bool AllDone() const {
    for (const std::atomic<bool>& done : done_) {
      if (!done.load(std::memory_order_acquire)) return false;
    }
    return true;
  }

  // The record whose physical range holds `pa`, if any.
  const Record* FindByPa(uint64_t pa) const {
    auto it = std::upper_bound(index_.begin(), index_.end(), pa,
                               [](uint64_t value, const Record* r) { return value < r->pa; });
    if (it == index_.begin()) return nullptr;
    const Record* record = *std::prev(it);
    return pa < record->pa + record->size ? record : nullptr;
  }

  // Why the non-faulting translation `result` of an access at `iova` is not
  // what any recorded mapping made, or "" if every run of it is. Appends the
  // records the runs came from to `sources`.
  std::string Explain(uint64_t iova, const TranslateResult& result,
                      std::vector<const Record*>* sources = nullptr) const {
    uint64_t at = iova;
    for (const PhysSegment& segment : result.segments) {
      uint64_t phys = segment.phys;
      uint64_t left = segment.size;
      while (left > 0) {
        const Record* record = FindByPa(phys);
        if (record == nullptr) {
          return absl::StrCat("iova ", Hex(at), " -> PA ", Hex(phys),
                              ", which no mapping of the test ever named (", Describe(result), ")");
        }
        const uint64_t record_iova = AwaitIova(*record);
        if (record_iova == kNotYet || record_iova == kNever) {
          return absl::StrCat("iova ", Hex(at), " -> PA ", Hex(phys), " of mapping ",
                              Hex(record->pa), "+", Hex(record->size), ", which was never mapped");
        }
        if (at < record_iova || at - record_iova != phys - record->pa) {
          return absl::StrCat("iova ", Hex(at), " -> PA ", Hex(phys), ", but that PA is ",
                              Hex(phys - record->pa), " into the mapping of ", Hex(record->pa), "+",
                              Hex(record->size), " at iova ", Hex(record_iova), " (",
                              Describe(result), ")");
        }
        const uint64_t run = std::min(left, record->pa + record->size - phys);
        if (sources != nullptr) sources->push_back(record);
        at += run;
        phys += run;
        left -= run;
      }
    }
    return {};
  }

 private:
  // A translation can name a mapping whose Map has not returned yet (its
  // PTEs are live): wait for its owner to publish it, or to finish.
  uint64_t AwaitIova(const Record& record) const {
    while (true) {
      const uint64_t iova = record.iova.load(std::memory_order_acquire);
      if (iova != kNotYet) return iova;
      if (done_[record.owner].load(std::memory_order_acquire)) {
        return record.iova.load(std::memory_order_acquire);
      }
      std::this_thread::yield();
    }
  }

  std::deque<Record> records_;  // stable addresses
  std::vector<std::vector<Record*>> by_worker_;
  std::vector<const Record*> index_;  // by pa
  std::vector<std::atomic<size_t>> published_;
  std::vector<std::atomic<bool>> done_;
};

// Plans `count` mappings for worker `w` of [w * kSlice, (w + 1) * kSlice):
// 4 KiB..64 KiB buffers from the lower half (a free page between
// neighbours) and, one in `huge_every`, a 2 MiB-aligned 2 MiB buffer from the
// upper half. Returns how many it planned.
size_t PlanAuto(Registry& registry, int w, size_t count, int huge_every) {
  std::mt19937_64 rng(kSeed + static_cast<uint64_t>(w));
  uint64_t small = static_cast<uint64_t>(w) * kSlice + 64 * kKiB;
  const uint64_t small_end = static_cast<uint64_t>(w) * kSlice + kSlice / 2;
  uint64_t huge = small_end;
  const uint64_t huge_end = static_cast<uint64_t>(w + 1) * kSlice;
  for (size_t i = 0; i < count; ++i) {
    if (huge_every > 0 && rng() % huge_every == 0 && huge + 2 * kMiB <= huge_end) {
      registry.Add(w, huge, 2 * kMiB);
      huge += 2 * kMiB;
      continue;
    }
    const uint64_t size = kPage4K * (1 + rng() % 16);
    if (small + size > small_end) return i;
    registry.Add(w, small, size);
    small += size + kPage4K;
  }
  return count;
}

// When a policy is known to hold. Returns an even token while the domain is
// fast, an odd one while it is paranoid, and one with kSwitchingBit while a
// switch may be under way; a stretch of work that reads the same odd token
// before and after ran entirely under paranoid, after the switch to it had
// returned (see WindowOf).
using PolicyClock = std::function<uint64_t()>;

PolicyClock FixedPolicy(Policy policy) {
  const uint64_t token = policy == Policy::kParanoid ? 1 : 0;
  return [token] { return token; };
}

// ---------------------------------------------------------------- Auto-IOVA stress

// What a worker's translation of the range it had just unmapped found.
struct AfterUnmap {
  bool faulted = false;
  bool stale = false;
  bool old_pa = false;  // some run still reached the unmapped range's PA
  std::string who;
  std::string what;
};

// What is known about the policy while a stretch of work ran.
enum class Window {
  kSteady,     // no switch to paranoid was under way (fast, or paranoid throughout)
  kParanoid,   // paranoid throughout, after the switch to it had returned
  kSwitching,  // a SetPolicy may have been under way
};

// A PolicyClock token with this bit set: a SetPolicy may be under way.
constexpr uint64_t kSwitchingBit = uint64_t{1} << 62;

// From the PolicyClock tokens read before and after a stretch of work.
Window WindowOf(uint64_t before, uint64_t after) {
  if (before != after || (before & kSwitchingBit) != 0) return Window::kSwitching;
  return before % 2 == 1 ? Window::kParanoid : Window::kSteady;
}

// Map / translate / unmap / translate cycles on auto IOVAs, and random
// translations, against one domain (tests 1-3).
class AutoStress final {
 public:
  AutoStress(Iommu& iommu, Registry& registry, Failures& failures, Tally& tally)
      : iommu_(iommu), registry_(registry), failures_(failures), tally_(tally) {}

  // Record `i` of worker `w`: map it, translate all of it and a piece (its own
  // PA exactly, never stale), unmap it, translate it again. nullopt if the
  // cycle failed before the unmap.
  std::optional<AfterUnmap> Cycle(Device& device, int w, size_t i, std::mt19937_64& rng) {
    Record& record = registry_.at(w, i);
    const std::string who = absl::StrCat(device.id(), " (worker ", w, ") mapping PA ",
                                         Hex(record.pa), "+", Hex(record.size));
    absl::StatusOr<MapResult> mapped = iommu_.Map(device, Request(record.pa, record.size));
    if (!mapped.ok()) {
      registry_.Publish(w, i, kNever);
      failures_.Add(absl::StrCat(who, ": Map failed: ", mapped.status().ToString()));
      return std::nullopt;
    }
    const uint64_t iova = mapped->iova;
    registry_.Publish(w, i, iova);
    tally_.maps.fetch_add(1, std::memory_order_relaxed);
    if (mapped->kind != MappingKind::kTranslated || iova % kPage4K != 0) {
      failures_.Add(absl::StrCat(who, ": Map gave iova ", Hex(iova), " of kind ",
                                 MappingKindName(mapped->kind)));
    }
    if (record.size == 2 * kMiB) {
      if (iova % (2 * kMiB) != 0 || mapped->leaves_2m != 1 || mapped->leaves_4k != 0) {
        failures_.Add(absl::StrCat(who, ": a 2 MiB map at iova ", Hex(iova), " wrote ",
                                   mapped->leaves_2m, " 2 MiB and ", mapped->leaves_4k,
                                   " 4 KiB leaves, not one 2 MiB leaf"));
      }
    } else if (mapped->leaves_4k != record.size / kPage4K || mapped->leaves_2m != 0) {
      failures_.Add(absl::StrCat(who, ": wrote ", mapped->leaves_4k, " 4 KiB leaves"));
    }

    // Mapped: its own PA, exactly, every time.
    ExpectMapped(device, who, iova, record.pa, record.size, Access::kRead);
    const uint64_t offset = (rng() % (record.size / kPage4K)) * kPage4K + rng() % kPage4K;
    const uint64_t length = 1 + rng() % std::min<uint64_t>(record.size - offset, 3 * kPage4K);
    ExpectMapped(device, who, iova + offset, record.pa + offset, length, Access::kWrite);

    absl::StatusOr<UnmapResult> unmapped = iommu_.Unmap(device, iova, record.size);
    if (!unmapped.ok() || unmapped->bytes_unmapped != record.size ||
        unmapped->mappings_removed != 1) {
      failures_.Add(absl::StrCat(who, ": Unmap at iova ", Hex(iova), " gave ",
                                 unmapped.ok()
                                     ? absl::StrCat(Hex(unmapped->bytes_unmapped), " bytes, ",
                                                    unmapped->mappings_removed, " mappings")
                                     : unmapped.status().ToString()));
      return std::nullopt;
    }
    tally_.unmaps.fetch_add(1, std::memory_order_relaxed);
    return TranslateUnmapped(device, who, iova, record);
  }

  // Translates `record`'s range at `iova` after its unmap returned. Fails a
  // fault other than not_mapped and any run no recorded mapping explains;
  // ExpectAfterUnmap then judges the rest by policy.
  AfterUnmap TranslateUnmapped(Device& device, const std::string& who, uint64_t iova,
                               const Record& record) {
    AfterUnmap after;
    after.who = who;
    const uint64_t size = std::min<uint64_t>(record.size, 16 * kMiB);
    absl::StatusOr<TranslateResult> result = iommu_.Translate(device, iova, size, Access::kRead);
    if (!result.ok()) {
      failures_.Add(absl::StrCat(who, ": Translate after unmap: ", result.status().ToString()));
      after.faulted = true;
      return after;
    }
    tally_.Count(*result);
    after.what = Describe(*result);
    if (result->fault.has_value()) {
      after.faulted = true;
      tally_.after_unmap_faulted.fetch_add(1, std::memory_order_relaxed);
      if (result->fault->reason != FaultReason::kNotMapped || result->fault->iova < iova ||
          result->fault->iova >= iova + size) {
        failures_.Add(absl::StrCat(who, ": translate of unmapped iova ", Hex(iova),
                                   " faulted with ", after.what));
      }
      return after;
    }
    after.stale = result->stale;
    std::vector<const Record*> sources;
    if (std::string wrong = registry_.Explain(iova, *result, &sources); !wrong.empty()) {
      failures_.Add(absl::StrCat(who, ": translate after unmap: ", wrong));
      return after;
    }
    after.old_pa = std::find(sources.begin(), sources.end(), &record) != sources.end();
    after.what = absl::StrCat("iova ", Hex(iova), " -> ", after.what);
    if (after.old_pa) {
      tally_.after_unmap_stale_old.fetch_add(1, std::memory_order_relaxed);
    } else {
      tally_.after_unmap_reused.fetch_add(1, std::memory_order_relaxed);
    }
    return after;
  }

  // Judges a translation after unmap by what held meanwhile:
  //  - paranoid: nothing of the old mapping is reachable (a fault, or a
  //    mapping that reused the IOVA), and nothing is stale;
  //  - otherwise: whatever still reaches the old PA is marked stale (fast
  //    policy's window, counted in stale_translations).
  // Known gap in Domain, tolerated here: while SetPolicy(paranoid) waits for
  // the old policy's operations and drains the flush queue, translations
  // already read "paranoid", whose IOTLB hits skip the page-table check, and
  // so serve the entries of fast unmaps not yet invalidated neither marked
  // stale nor counted. Such results are tallied (unmarked_while_switching),
  // not failed, in kSwitching windows; once SetPolicy returns none remain.
  void ExpectAfterUnmap(const AfterUnmap& after, Window window) {
    switch (window) {
      case Window::kParanoid:
        if (after.stale || after.old_pa) {
          failures_.Add(absl::StrCat(after.who, ": under paranoid, after unmap: ", after.what));
        }
        break;
      case Window::kSteady:
        if (after.old_pa && !after.stale) {
          failures_.Add(
              absl::StrCat(after.who, ": after unmap, reached the old PA unmarked: ", after.what));
        }
        break;
      case Window::kSwitching:
        if (after.old_pa && !after.stale) {
          tally_.unmarked_while_switching.fetch_add(1, std::memory_order_relaxed);
        }
        break;
    }
  }

  // Runs every planned cycle of worker `w`.
  void Worker(Device& device, int w, const PolicyClock& clock) {
    std::mt19937_64 rng(kSeed * 7 + static_cast<uint64_t>(w));
    for (size_t i = 0; i < registry_.size(w); ++i) {
      const uint64_t before = clock();
      std::optional<AfterUnmap> after = Cycle(device, w, i, rng);
      if (after) ExpectAfterUnmap(*after, WindowOf(before, clock()));
    }
    registry_.MarkDone(w);
  }

  // Translates single pages at and around the newest mappings of random
  // workers until every worker is done.
  void Translator(Device& device, int workers, uint64_t seed, const PolicyClock& clock) {
    std::mt19937_64 rng(seed);
    while (!registry_.AllDone()) {
      const int u = static_cast<int>(rng() % workers);
      const size_t n = registry_.published(u);
      if (n == 0) {
        std::this_thread::yield();
        continue;
      }
      const Record& record = registry_.at(u, n - 1 - rng() % std::min<size_t>(n, 4));
      const uint64_t base = record.iova.load(std::memory_order_acquire);
      if (base == kNever || base == kNotYet) continue;
      uint64_t page = base + (rng() % (record.size / kPage4K)) * kPage4K;
      switch (rng() % 8) {
        case 0:
          if (base >= 2 * kPage4K) page = base - kPage4K;  // the neighbour below
          break;
        case 1:
          if (base + record.size < uint64_t{1} << kIovaBits) page = base + record.size;
          break;
        default:
          break;
      }
      const uint64_t iova = page + rng() % kPage4K;
      const uint64_t length = 1 + rng() % (page + kPage4K - iova);
      TranslateAndCheck(device, iova, length, rng() % 2 ? Access::kRead : Access::kWrite, clock);
    }
  }

  // One random translation: a fault must be not_mapped, anything else must
  // match a recorded mapping, and nothing is stale under paranoid.
  void TranslateAndCheck(Device& device, uint64_t iova, uint64_t length, Access access,
                         const PolicyClock& clock) {
    const uint64_t before = clock();
    absl::StatusOr<TranslateResult> result = iommu_.Translate(device, iova, length, access);
    const bool paranoid = WindowOf(before, clock()) == Window::kParanoid;
    const std::string who = absl::StrCat(device.id(), " translating ", Hex(iova), "+", Hex(length));
    if (!result.ok()) {
      failures_.Add(absl::StrCat(who, ": ", result.status().ToString()));
      return;
    }
    tally_.Count(*result);
    if (result->fault.has_value()) {
      if (result->fault->reason != FaultReason::kNotMapped) {
        failures_.Add(absl::StrCat(who, ": ", Describe(*result)));
      }
      return;
    }
    if (std::string wrong = registry_.Explain(iova, *result); !wrong.empty()) {
      failures_.Add(absl::StrCat(who, ": ", wrong));
    }
    if (paranoid && result->stale) {
      failures_.Add(absl::StrCat(who, ": stale under paranoid: ", Describe(*result)));
    }
  }

 private:
  void ExpectMapped(Device& device, const std::string& who, uint64_t iova, uint64_t phys,
                    uint64_t size, Access access) {
    absl::StatusOr<TranslateResult> result = iommu_.Translate(device, iova, size, access);
    if (!result.ok()) {
      failures_.Add(absl::StrCat(who, ": Translate: ", result.status().ToString()));
      return;
    }
    tally_.Count(*result);
    if (!IsExactly(*result, phys, size) || result->stale) {
      failures_.Add(absl::StrCat(who, ": translate of live iova ", Hex(iova), "+", Hex(size),
                                 " must give exactly PA ", Hex(phys), ", got ", Describe(*result)));
    }
  }

  Iommu& iommu_;
  Registry& registry_;
  Failures& failures_;
  Tally& tally_;
};

// The domain statistics every auto-IOVA test checks once its threads joined.
void ExpectQuiescentStats(Iommu& iommu, const Tally& tally, Policy policy) {
  absl::StatusOr<DomainStats> stats = iommu.GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->live_mappings, 0u);
  EXPECT_EQ(stats->maps, tally.maps.load());
  EXPECT_EQ(stats->unmaps, tally.unmaps.load());
  EXPECT_EQ(stats->translations, tally.translations.load());
  EXPECT_EQ(stats->faults, tally.faults.load());
  EXPECT_EQ(stats->debug.dma_after_unmap, tally.not_mapped.load());
  EXPECT_EQ(stats->stale_translations, tally.stale.load());
  EXPECT_EQ(stats->debug.double_unmaps, 0u);
  EXPECT_EQ(stats->debug.wrong_size_unmaps, 0u);
  if (policy == Policy::kParanoid) {
    EXPECT_EQ(stats->stale_translations, 0u);
    EXPECT_EQ(stats->flush_queue.queued, 0u);
  }
  ASSERT_TRUE(iommu.Flush(kDomain).ok());
  stats = iommu.GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->flush_queue.pending, 0u);
  EXPECT_EQ(stats->iova.allocated_bytes, 0u) << "IOVA space not returned after Flush";
  absl::StatusOr<DestroyResult> destroyed = iommu.DestroyDomain(kDomain, /*force=*/true);
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_EQ(destroyed->leaked.mappings, 0u);
}

std::string TallyText(const Tally& tally) {
  return absl::StrCat("maps ", tally.maps.load(), ", translations ", tally.translations.load(),
                      ", stale ", tally.stale.load(), "; after unmap: faulted ",
                      tally.after_unmap_faulted.load(), ", old PA marked stale ",
                      tally.after_unmap_stale_old.load(), ", IOVA already reused ",
                      tally.after_unmap_reused.load(), "; unmarked while switching ",
                      tally.unmarked_while_switching.load());
}

// Runs worker(0) .. worker(kWorkers - 1) and each of `others` on its own
// thread, all released from one start line, and waits for them all.
void RunTogether(const std::function<void(int)>& worker,
                 const std::vector<std::function<void()>>& others) {
  std::latch start(kWorkers + static_cast<std::ptrdiff_t>(others.size()));
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      start.arrive_and_wait();
      worker(w);
    });
  }
  for (const std::function<void()>& other : others) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      other();
    });
  }
  for (std::thread& thread : threads) thread.join();
}

// Workers on devices 0 .. kWorkers - 1 and a translator on the next device.
void RunWorkersAndTranslator(AutoStress& stress,
                             const std::vector<std::shared_ptr<Device>>& devices,
                             uint64_t translator_seed, const PolicyClock& clock) {
  RunTogether([&](int w) { stress.Worker(*devices[w], w, clock); },
              {[&] { stress.Translator(*devices[kWorkers], kWorkers, translator_seed, clock); }});
}

// ---------------------------------------------------------------- 1. Shared domain

// Workers share one domain (each with its own device, or all through one);
// a translator translates pages of their newest mappings meanwhile.
class SharedDomainTest : public ::testing::TestWithParam<std::tuple<Policy, bool>> {};

TEST_P(SharedDomainTest, MapTranslateUnmapTranslate) {
  const auto [policy, shared_device] = GetParam();
  std::unique_ptr<Iommu> iommu = NewIommu(Options());
  ASSERT_NE(iommu, nullptr);
  ASSERT_TRUE(iommu->CreateDomain({.id = kDomain, .policy = policy}).ok());
  std::vector<std::shared_ptr<Device>> devices;
  for (int i = 0; i <= kWorkers; ++i) {  // the last one is the translator's
    if (shared_device && i > 0) {
      devices.push_back(devices[0]);
    } else {
      devices.push_back(AddAttachedDevice(*iommu, absl::StrCat("dev", i), kDomain));
      ASSERT_NE(devices.back(), nullptr);
    }
  }
  Registry registry(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_EQ(PlanAuto(registry, w, kSharedDomainCycles, /*huge_every=*/16), kSharedDomainCycles);
  }
  registry.Seal();
  Failures failures;
  Tally tally;
  AutoStress stress(*iommu, registry, failures, tally);
  const PolicyClock clock = FixedPolicy(policy);

  RunWorkersAndTranslator(stress, devices, kSeed + 100, clock);

  EXPECT_EQ(failures.count(), 0u) << failures.Summary();
  EXPECT_EQ(tally.maps.load(), kWorkers * kSharedDomainCycles);
  EXPECT_EQ(tally.unmaps.load(), kWorkers * kSharedDomainCycles);
  if (policy == Policy::kParanoid) {
    EXPECT_EQ(tally.after_unmap_stale_old.load(), 0u);
  }
  ExpectQuiescentStats(*iommu, tally, policy);
  std::cout << PolicyName(policy) << (shared_device ? ", one device: " : ", own devices: ")
            << TallyText(tally) << "\n";
}

INSTANTIATE_TEST_SUITE_P(Policies, SharedDomainTest,
                         ::testing::Combine(::testing::Values(Policy::kParanoid, Policy::kFast),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<Policy, bool>>& info) {
                           return absl::StrCat(
                               std::get<0>(info.param) == Policy::kParanoid ? "Paranoid" : "Fast",
                               std::get<1>(info.param) ? "SharedDevice" : "DevicePerThread");
                         });

// ---------------------------------------------------------------- 2. Flush combining

// Paranoid unmaps under an expensive invalidation share batches; each must
// still return only after a batch that covers it.
TEST(IommuConcurrencyTest, ParanoidFlushCombining) {
  IommuOptions options = Options();
  options.invalidation.cost.fixed = absl::Microseconds(200);
  std::unique_ptr<Iommu> iommu = NewIommu(options);
  ASSERT_NE(iommu, nullptr);
  ASSERT_TRUE(iommu->CreateDomain({.id = kDomain, .policy = Policy::kParanoid}).ok());
  std::vector<std::shared_ptr<Device>> devices;
  for (int i = 0; i <= kWorkers; ++i) {
    devices.push_back(AddAttachedDevice(*iommu, absl::StrCat("dev", i), kDomain));
    ASSERT_NE(devices.back(), nullptr);
  }
  Registry registry(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_EQ(PlanAuto(registry, w, kCombiningCycles, /*huge_every=*/8), kCombiningCycles);
  }
  registry.Seal();
  Failures failures;
  Tally tally;
  AutoStress stress(*iommu, registry, failures, tally);
  const PolicyClock clock = FixedPolicy(Policy::kParanoid);
  const InvalidationQueueStats before = iommu->UnitStats(0);  // after the attaches' invalidations

  RunWorkersAndTranslator(stress, devices, kSeed + 200, clock);

  EXPECT_EQ(failures.count(), 0u) << failures.Summary();
  const InvalidationQueueStats after = iommu->UnitStats(0);
  const uint64_t calls = after.calls - before.calls;
  const uint64_t batches = after.batches - before.batches;
  EXPECT_EQ(calls, tally.unmaps.load()) << "one invalidation per paranoid unmap";
  EXPECT_EQ(tally.unmaps.load(), kWorkers * kCombiningCycles);
  EXPECT_GE(batches, 1u);
  EXPECT_LE(batches, calls);  // fewer when combined; how many fewer is timing
  EXPECT_EQ(tally.after_unmap_stale_old.load(), 0u);
  ExpectQuiescentStats(*iommu, tally, Policy::kParanoid);
  std::cout << "invalidation calls " << calls << ", batches " << batches << "; " << TallyText(tally)
            << "\n";
}

// ---------------------------------------------------------------- 3. Policy switch

// Workers cycle on a fast domain (and a translator translates) while a
// controller switches it to paranoid and back. Round r's token (odd:
// paranoid) is published only after its SetPolicy returned, and replaced by
// a switching token before the next SetPolicy starts; a cycle that read the
// same odd token before and after ran wholly under paranoid, so its unmap
// must leave nothing translatable (nor may the ranges it unmapped under fast
// earlier), and the domain's stale count and flush queue must not move while
// a paranoid round lasts.
TEST(IommuConcurrencyTest, PolicySwitchUnderLoad) {
  std::unique_ptr<Iommu> iommu = NewIommu(Options());
  ASSERT_NE(iommu, nullptr);
  ASSERT_TRUE(iommu->CreateDomain({.id = kDomain, .policy = Policy::kFast}).ok());
  std::vector<std::shared_ptr<Device>> devices;
  for (int i = 0; i <= kWorkers; ++i) {
    devices.push_back(AddAttachedDevice(*iommu, absl::StrCat("dev", i), kDomain));
    ASSERT_NE(devices.back(), nullptr);
  }
  // Phase tokens: round r (odd: paranoid) once its SetPolicy returned;
  // kSwitchingBit | r while the controller switches into round r; kStop at
  // the end (the last round is fast).
  static_assert(kPolicyRounds % 2 == 0);
  constexpr uint64_t kStop = uint64_t{1} << 40;
  // A worker runs at most kMaxCyclesPerPhase cycles per token, then waits
  // for the next: enough records whatever the scheduling.
  constexpr int kMaxCyclesPerPhase = 4 * kCyclesPerPhase;
  constexpr size_t kCycles = (2 * kPolicyRounds + 1) * (kMaxCyclesPerPhase + 1);
  Registry registry(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_EQ(PlanAuto(registry, w, kCycles, /*huge_every=*/16), kCycles);
  }
  registry.Seal();
  Failures failures;
  Tally tally;
  AutoStress stress(*iommu, registry, failures, tally);
  std::atomic<uint64_t> phase{0};
  const PolicyClock clock = [&phase] { return phase.load(std::memory_order_seq_cst); };
  // Cycles each worker completed wholly inside each phase.
  std::array<std::array<std::atomic<int>, kWorkers>, kPolicyRounds + 1> completed{};
  std::atomic<int> paranoid_phases_checked{0};

  auto worker = [&](int w) {
    Device& device = *devices[w];
    std::mt19937_64 rng(kSeed * 3 + static_cast<uint64_t>(w));
    // Records unmapped under fast: once paranoid holds, none may reach its PA.
    std::vector<std::pair<uint64_t, const Record*>> unmapped_under_fast;
    uint64_t last_phase = 0;
    int cycles_in_phase = 0;
    size_t next = 0;
    while (true) {
      const uint64_t before = clock();
      if (before == kStop) break;
      if (before != last_phase) {
        last_phase = before;
        cycles_in_phase = 0;
      }
      if (cycles_in_phase >= kMaxCyclesPerPhase || next == registry.size(w)) {
        std::this_thread::yield();
        continue;
      }
      ++cycles_in_phase;
      std::vector<AfterUnmap> old;
      if ((before & kSwitchingBit) == 0 && before % 2 == 1) {
        for (const auto& [iova, record] : unmapped_under_fast) {
          old.push_back(stress.TranslateUnmapped(
              device, absl::StrCat(device.id(), " re-translating an unmap made under fast"), iova,
              *record));
        }
        unmapped_under_fast.clear();
      }
      const size_t i = next++;
      std::optional<AfterUnmap> after = stress.Cycle(device, w, i, rng);
      const uint64_t end = clock();
      const Window window = WindowOf(before, end);
      for (const AfterUnmap& one : old) stress.ExpectAfterUnmap(one, window);
      if (after) stress.ExpectAfterUnmap(*after, window);
      if (window == Window::kSwitching) continue;
      if (before <= kPolicyRounds) completed[before][w].fetch_add(1, std::memory_order_release);
      if (window == Window::kSteady && after) {
        const Record& record = registry.at(w, i);
        unmapped_under_fast.emplace_back(record.iova.load(std::memory_order_relaxed), &record);
        if (unmapped_under_fast.size() > 8) unmapped_under_fast.erase(unmapped_under_fast.begin());
      }
    }
    registry.MarkDone(w);
  };
  auto controller = [&] {
    auto wait_for_workers = [&](int round) {
      for (int w = 0; w < kWorkers; ++w) {
        while (completed[round][w].load(std::memory_order_acquire) < kCyclesPerPhase) {
          std::this_thread::yield();
        }
      }
    };
    auto stale_and_pending = [&]() -> std::pair<uint64_t, uint64_t> {
      absl::StatusOr<DomainStats> stats = iommu->GetDomainStats(kDomain);
      if (!stats.ok()) {
        failures.Add(stats.status().ToString());
        return {0, 0};
      }
      return {stats->stale_translations, stats->flush_queue.pending};
    };
    wait_for_workers(0);  // some fast work first
    for (int round = 1; round <= kPolicyRounds; ++round) {
      const bool paranoid = round % 2 == 1;
      phase.store(kSwitchingBit | static_cast<uint64_t>(round), std::memory_order_seq_cst);
      if (absl::Status status =
              iommu->SetPolicy(kDomain, paranoid ? Policy::kParanoid : Policy::kFast);
          !status.ok()) {
        failures.Add(status.ToString());
      }
      const auto [stale_before, pending_before] = stale_and_pending();
      phase.store(static_cast<uint64_t>(round), std::memory_order_seq_cst);
      wait_for_workers(round);
      if (paranoid) {
        const auto [stale_after, pending_after] = stale_and_pending();
        if (stale_after != stale_before) {
          failures.Add(absl::StrCat("round ", round, ": stale translations went from ",
                                    stale_before, " to ", stale_after, " under paranoid"));
        }
        if (pending_before != 0 || pending_after != 0) {
          failures.Add(absl::StrCat("round ", round, ": flush queue held ", pending_before,
                                    " then ", pending_after, " entries under paranoid"));
        }
        paranoid_phases_checked.fetch_add(1);
      }
    }
    phase.store(kStop, std::memory_order_seq_cst);
  };

  RunTogether(worker, {[&] { stress.Translator(*devices[kWorkers], kWorkers, kSeed + 300, clock); },
                       [&] { controller(); }});

  EXPECT_EQ(failures.count(), 0u) << failures.Summary();
  EXPECT_EQ(paranoid_phases_checked.load(), (kPolicyRounds + 1) / 2);
  absl::StatusOr<DomainStats> stats = iommu->GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->policy, kPolicyRounds % 2 == 1 ? Policy::kParanoid : Policy::kFast);
  ExpectQuiescentStats(*iommu, tally, Policy::kFast);
  std::cout << TallyText(tally) << "\n";
}

// ---------------------------------------------------------------- 4. Control plane

// Workers map, translate and unmap on their devices while a controller moves
// the devices between two domains, detaches them, removes and re-adds them,
// destroys and recreates the domains, flips policies and flushes; the
// maintenance thread runs every millisecond. Every call must return OK or a
// clean error, every translation must match a recorded mapping, and once
// quiet the domains' books must balance.
TEST(IommuConcurrencyTest, ControlPlaneRaces) {
  IommuOptions options = Options();
  options.maintenance_interval = absl::Milliseconds(1);
  std::unique_ptr<Iommu> iommu = NewIommu(options);
  ASSERT_NE(iommu, nullptr);
  const std::array<std::string, 2> domain_ids = {"a", "b"};
  auto config = [&](int d) {
    DomainConfig config;
    config.id = domain_ids[d];
    config.policy = d == 0 ? Policy::kFast : Policy::kParanoid;
    config.flush_queue.capacity = 16;
    return config;
  };
  ASSERT_TRUE(iommu->CreateDomain(config(0)).ok());
  ASSERT_TRUE(iommu->CreateDomain(config(1)).ok());
  std::vector<std::string> device_ids;
  // Where the controller (the only thread that changes it) put each device.
  std::vector<int> attached_to;
  for (int w = 0; w < kWorkers; ++w) {
    device_ids.push_back(absl::StrCat("w", w));
    attached_to.push_back(w % 2);
    ASSERT_NE(AddAttachedDevice(*iommu, device_ids[w], domain_ids[w % 2]), nullptr);
  }
  Registry registry(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_EQ(PlanAuto(registry, w, kControlPlaneCycles, /*huge_every=*/16), kControlPlaneCycles);
  }
  registry.Seal();
  Failures failures;
  std::atomic<uint64_t> attempted{0};
  std::atomic<uint64_t> mapped_ok{0};
  std::atomic<bool> controller_done{false};

  auto expect_status = [&](const std::string& what, const absl::Status& status, bool by_id) {
    if (status.ok() || absl::IsFailedPrecondition(status) || (by_id && absl::IsNotFound(status))) {
      return;
    }
    failures.Add(absl::StrCat(what, ": unexpected ", status.ToString()));
  };
  auto expect_translation = [&](const std::string& what, uint64_t iova,
                                const absl::StatusOr<TranslateResult>& result, bool by_id) {
    if (!result.ok()) {
      if (!by_id || !absl::IsNotFound(result.status())) {
        failures.Add(absl::StrCat(what, ": Translate returned ", result.status().ToString()));
      }
      return;
    }
    if (result->fault.has_value()) {
      if (result->fault->reason != FaultReason::kNotMapped &&
          result->fault->reason != FaultReason::kDeviceNotAttached) {
        failures.Add(absl::StrCat(what, ": ", Describe(*result)));
      }
      return;
    }
    if (std::string wrong = registry.Explain(iova, *result); !wrong.empty()) {
      failures.Add(absl::StrCat(what, ": ", wrong));
    }
  };

  auto worker = [&](int w) {
    std::mt19937_64 rng(kSeed * 5 + static_cast<uint64_t>(w));
    const std::string& id = device_ids[w];
    std::shared_ptr<Device> handle;
    // Until the controller is done (or the plan runs out).
    for (size_t i = 0; i < registry.size(w) && !controller_done.load(std::memory_order_acquire);
         ++i) {
      attempted.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::yield();  // let the controller in between cycles
      if (i % 16 == 0 || handle == nullptr) {
        absl::StatusOr<std::shared_ptr<Device>> found = iommu->FindDevice(id);
        if (found.ok()) {
          handle = *std::move(found);
        } else {
          handle = nullptr;
          expect_status("FindDevice", found.status(), /*by_id=*/true);
        }
      }
      const bool by_id = handle == nullptr || rng() % 8 == 0;
      const Record& record = registry.at(w, i);
      const std::string who = absl::StrCat(id, " mapping PA ", Hex(record.pa));
      absl::StatusOr<MapResult> mapped = by_id
                                             ? iommu->Map(id, Request(record.pa, record.size))
                                             : iommu->Map(*handle, Request(record.pa, record.size));
      if (!mapped.ok()) {
        registry.Publish(w, i, kNever);
        expect_status(who + ": Map", mapped.status(), by_id);
        continue;
      }
      registry.Publish(w, i, mapped->iova);
      mapped_ok.fetch_add(1, std::memory_order_relaxed);
      const uint64_t iova = mapped->iova;
      auto translate = [&](uint64_t at, uint64_t size) {
        return by_id ? iommu->Translate(id, at, size, Access::kRead)
                     : iommu->Translate(*handle, at, size, Access::kRead);
      };
      expect_translation(who + ": translate", iova, translate(iova, record.size), by_id);
      absl::StatusOr<UnmapResult> unmapped =
          by_id ? iommu->Unmap(id, iova, record.size) : iommu->Unmap(*handle, iova, record.size);
      if (!unmapped.ok()) {
        expect_status(who + ": Unmap", unmapped.status(), by_id);
      } else if (unmapped->bytes_unmapped > record.size) {
        failures.Add(absl::StrCat(who, ": Unmap of ", Hex(record.size), " bytes removed ",
                                  Hex(unmapped->bytes_unmapped)));
      }
      expect_translation(who + ": translate after unmap", iova, translate(iova, record.size),
                         by_id);
    }
    registry.MarkDone(w);
  };

  auto controller = [&] {
    std::mt19937_64 rng(kSeed * 11);
    auto devices_in = [&](int d) {
      std::vector<std::string> ids;
      for (int w = 0; w < kWorkers; ++w) {
        if (attached_to[w] == d) ids.push_back(device_ids[w]);
      }
      return ids;  // sorted: device_ids are
    };
    for (int round = 0; round < kControlRounds; ++round) {
      const int w = static_cast<int>(rng() % kWorkers);
      const int d = static_cast<int>(rng() % 2);
      const std::string& device = device_ids[w];
      // Attaches are likelier than what undoes them: devices are mostly attached.
      switch (rng() % 12) {
        case 0:
        case 1:
        case 7:
        case 8:
        case 9: {  // attach or move
          absl::StatusOr<std::optional<DetachResult>> moved = iommu->Attach(device, domain_ids[d]);
          if (!moved.ok()) {
            failures.Add(absl::StrCat("Attach: ", moved.status().ToString()));
            break;
          }
          const bool expect_move = attached_to[w] >= 0 && attached_to[w] != d;
          if (moved->has_value() != expect_move ||
              (expect_move && (*moved)->domain_id != domain_ids[attached_to[w]])) {
            failures.Add(absl::StrCat("Attach ", device, " to ", domain_ids[d], " from domain #",
                                      attached_to[w], " reported a move: ", moved->has_value()));
          }
          attached_to[w] = d;
          break;
        }
        case 2: {  // detach
          absl::StatusOr<DetachResult> detached = iommu->Detach(device);
          if (attached_to[w] < 0) {
            if (!absl::IsFailedPrecondition(detached.status())) {
              failures.Add(
                  absl::StrCat("Detach of a detached device: ", detached.status().ToString()));
            }
          } else if (!detached.ok() || detached->domain_id != domain_ids[attached_to[w]]) {
            failures.Add(absl::StrCat("Detach: ", detached.status().ToString()));
          }
          attached_to[w] = -1;
          break;
        }
        case 3: {  // destroy (forced, or refused while devices are attached) and recreate
          const std::vector<std::string> expected = devices_in(d);
          const bool force = rng() % 4 != 0;
          absl::StatusOr<DestroyResult> destroyed = iommu->DestroyDomain(domain_ids[d], force);
          if (!force && !expected.empty()) {
            if (!absl::IsFailedPrecondition(destroyed.status())) {
              failures.Add(absl::StrCat("DestroyDomain without force, devices attached: ",
                                        destroyed.status().ToString()));
            }
            break;
          }
          if (!destroyed.ok() || destroyed->detached_devices != expected) {
            failures.Add(absl::StrCat(
                "DestroyDomain ", domain_ids[d], ": ", destroyed.status().ToString(),
                destroyed.ok()
                    ? absl::StrCat(" detached [", absl::StrJoin(destroyed->detached_devices, ","),
                                   "], expected [", absl::StrJoin(expected, ","), "]")
                    : ""));
          }
          for (int v = 0; v < kWorkers; ++v) {
            if (attached_to[v] == d) attached_to[v] = -1;
          }
          if (absl::Status created = iommu->CreateDomain(config(d)); !created.ok()) {
            failures.Add(absl::StrCat("CreateDomain: ", created.ToString()));
          }
          break;
        }
        case 4:
        case 5: {  // policy flip
          const Policy policy = rng() % 2 ? Policy::kParanoid : Policy::kFast;
          if (absl::Status status = iommu->SetPolicy(domain_ids[d], policy); !status.ok()) {
            failures.Add(absl::StrCat("SetPolicy: ", status.ToString()));
          }
          break;
        }
        case 6: {  // remove and re-add the device
          absl::StatusOr<std::optional<DetachResult>> removed = iommu->RemoveDevice(device);
          if (!removed.ok() || removed->has_value() != (attached_to[w] >= 0)) {
            failures.Add(absl::StrCat("RemoveDevice: ", removed.status().ToString()));
          }
          attached_to[w] = -1;
          if (absl::Status added = iommu->AddDevice({.id = device}); !added.ok()) {
            failures.Add(absl::StrCat("AddDevice: ", added.ToString()));
          }
          break;
        }
        case 10:
          if (absl::Status status = iommu->Flush(domain_ids[d]); !status.ok()) {
            failures.Add(absl::StrCat("Flush: ", status.ToString()));
          }
          break;
        default: {  // readers
          if (absl::StatusOr<DomainStats> stats = iommu->GetDomainStats(domain_ids[d]);
              !stats.ok()) {
            failures.Add(absl::StrCat("GetDomainStats: ", stats.status().ToString()));
          }
          if (absl::StatusOr<std::vector<Fault>> faults = iommu->RecentFaults(domain_ids[d], 0);
              !faults.ok()) {
            failures.Add(absl::StrCat("RecentFaults: ", faults.status().ToString()));
          }
          if (absl::StatusOr<DmaDebugCounts> counts = iommu->DeviceDebugCounts(device);
              !counts.ok()) {
            failures.Add(absl::StrCat("DeviceDebugCounts: ", counts.status().ToString()));
          }
          if (iommu->DomainIds().size() != 2 || iommu->DeviceIds().size() != size_t{kWorkers}) {
            failures.Add("a domain or device went missing");
          }
          break;
        }
      }
      std::this_thread::yield();
    }
    controller_done.store(true, std::memory_order_release);
  };

  RunTogether(worker, {[&] { controller(); }});
  EXPECT_EQ(failures.count(), 0u) << failures.Summary();

  // Quiet now (but for the maintenance thread). Each domain's live count
  // must match its page table: unmapping the whole aperture removes exactly
  // that many mappings, and then every IOVA comes back.
  for (int d = 0; d < 2; ++d) {
    SCOPED_TRACE(domain_ids[d]);
    ASSERT_TRUE(iommu->Attach(device_ids[0], domain_ids[d]).ok());
    absl::StatusOr<DomainStats> stats = iommu->GetDomainStats(domain_ids[d]);
    ASSERT_TRUE(stats.ok());
    const uint64_t live = stats->live_mappings;
    absl::StatusOr<UnmapResult> everything =
        iommu->Unmap(device_ids[0], kPage4K, (uint64_t{1} << kIovaBits) - kPage4K);
    ASSERT_TRUE(everything.ok()) << everything.status();
    EXPECT_EQ(everything->mappings_removed, live);
    ASSERT_TRUE(iommu->Flush(domain_ids[d]).ok());
    // The maintenance thread may be moving idle cached IOVAs to the arena at
    // this instant, which a snapshot counts as allocated: a leak persists,
    // that does not.
    for (int attempt = 0; attempt < 1000; ++attempt) {
      stats = iommu->GetDomainStats(domain_ids[d]);
      ASSERT_TRUE(stats.ok());
      if (stats->iova.allocated_bytes == 0) break;
      std::this_thread::yield();
    }
    EXPECT_EQ(stats->live_mappings, 0u);
    EXPECT_EQ(stats->flush_queue.pending, 0u);
    EXPECT_EQ(stats->iova.allocated_bytes, 0u);
    absl::StatusOr<DestroyResult> destroyed = iommu->DestroyDomain(domain_ids[d], true);
    ASSERT_TRUE(destroyed.ok()) << destroyed.status();
    EXPECT_EQ(destroyed->leaked.mappings, 0u);
  }
  // And the IOMMU still works for every device.
  ASSERT_TRUE(iommu->CreateDomain({.id = "after", .policy = Policy::kParanoid}).ok());
  for (int w = 0; w < kWorkers; ++w) {
    ASSERT_TRUE(iommu->Attach(device_ids[w], "after").ok());
    const uint64_t phys = kPhysBytes - (w + 1) * 64 * kKiB;
    absl::StatusOr<MapResult> mapped = iommu->Map(device_ids[w], Request(phys, 8 * kKiB));
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    absl::StatusOr<TranslateResult> dma =
        iommu->Translate(device_ids[w], mapped->iova, 8 * kKiB, Access::kWrite);
    ASSERT_TRUE(dma.ok());
    EXPECT_TRUE(IsExactly(*dma, phys, 8 * kKiB)) << Describe(*dma);
    ASSERT_TRUE(iommu->Unmap(device_ids[w], mapped->iova, 8 * kKiB).ok());
  }
  std::cout << "mapped " << mapped_ok.load() << " of " << attempted.load() << " during "
            << kControlRounds << " control rounds\n";
}

// ---------------------------------------------------------------- 5. Fixed IOVAs

// Fixed-IOVA layout (virtio-iommu / VFIO style). Every worker owns windows
// that share page-table pages with the others':
//  - 8 slots of 64 KiB inside one 2 MiB span (one level-0 table for all);
//  - 4 slots of 2 MiB inside one 1 GiB span (one level-1 table for all);
//  - one 1 GiB span of its own (one level-2 table for all).
constexpr uint64_t kFixedBase = 16 * kGiB;
constexpr int kSmallSlots = 8;
constexpr uint64_t kSmallSlot = 64 * kKiB;
constexpr int kHugeSlots = 4;
constexpr uint64_t kFixedPhysBytes = 8 * kGiB;  // 1 GiB leaves need 1 GiB-aligned memory
static_assert(kMaxWorkers * kSmallSlots * kSmallSlot <= 2 * kMiB);

uint64_t SmallSlotIova(int w, int slot) {
  return kFixedBase + static_cast<uint64_t>(w * kSmallSlots + slot) * kSmallSlot;
}
uint64_t HugeSlotIova(int w, int slot) {
  return kFixedBase + 2 * kMiB * static_cast<uint64_t>(1 + w * kHugeSlots + slot);
}
uint64_t GigIova(int w) { return kFixedBase + kGiB * static_cast<uint64_t>(1 + w); }
uint64_t GigPhys(int w) { return 4 * kGiB + kGiB * static_cast<uint64_t>(w); }

class FixedIovaTest : public ::testing::TestWithParam<Policy> {};

TEST_P(FixedIovaTest, DisjointWindowsSharingTablePages) {
  const Policy policy = GetParam();
  std::unique_ptr<Iommu> iommu = NewIommu(Options(kFixedPhysBytes));
  ASSERT_NE(iommu, nullptr);
  DomainConfig config{.id = kDomain, .policy = policy};
  config.flush_queue.capacity = 8;
  ASSERT_TRUE(iommu->CreateDomain(config).ok());
  std::vector<std::shared_ptr<Device>> devices;
  for (int i = 0; i <= kWorkers; ++i) {
    devices.push_back(AddAttachedDevice(*iommu, absl::StrCat("dev", i), kDomain));
    ASSERT_NE(devices.back(), nullptr);
  }
  absl::StatusOr<DomainStats> initial = iommu->GetDomainStats(kDomain);
  ASSERT_TRUE(initial.ok());

  // Per worker: pools of small and 2 MiB physical buffers, and one 1 GiB
  // buffer mapped again and again at the same IOVA (published up front).
  Registry registry(kWorkers);
  struct Pools {
    std::vector<Record*> small;
    std::vector<Record*> huge;
    Record* gig = nullptr;
  };
  std::vector<Pools> pools(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    std::mt19937_64 rng(kSeed + 500 + static_cast<uint64_t>(w));
    uint64_t small = static_cast<uint64_t>(w) * kSlice + 64 * kKiB;
    uint64_t huge = static_cast<uint64_t>(w) * kSlice + kSlice / 2;
    for (int i = 0; i < kFixedOps; ++i) {
      const uint64_t size = kPage4K * (1 + rng() % 16);
      pools[w].small.push_back(&registry.Add(w, small, size));
      small += size + kPage4K;
    }
    for (int i = 0; i < 240; ++i) {  // about one op in 20 maps 2 MiB
      pools[w].huge.push_back(&registry.Add(w, huge, 2 * kMiB));
      huge += 2 * kMiB;
    }
    ASSERT_LE(huge, static_cast<uint64_t>(w + 1) * kSlice);
    pools[w].gig = &registry.Add(w, GigPhys(w), kGiB);
    pools[w].gig->iova.store(GigIova(w));
  }
  registry.Seal();
  Failures failures;
  Tally tally;
  AutoStress checker(*iommu, registry, failures, tally);
  std::atomic<int> workers_done{0};
  std::atomic<uint64_t> range_unmaps{0};
  std::atomic<uint64_t> wrong_size_unmaps{0};

  auto worker = [&](int w) {
    Device& device = *devices[w];
    std::mt19937_64 rng(kSeed * 13 + static_cast<uint64_t>(w));
    size_t next_small = 0;
    size_t next_huge = 0;
    struct Live {
      Record* record = nullptr;
      uint64_t iova = 0;
    };
    std::array<Live, kSmallSlots> small_slots{};
    std::array<Live, kHugeSlots> huge_slots{};
    Live gig;

    auto map = [&](Record* record, uint64_t iova, uint64_t leaves_4k, uint64_t leaves_2m,
                   uint64_t leaves_1g) -> std::optional<Live> {
      const std::string who = absl::StrCat(device.id(), " mapping ", Hex(record->pa), "+",
                                           Hex(record->size), " at iova ", Hex(iova));
      absl::StatusOr<MapResult> mapped =
          iommu->Map(device, FixedRequest(iova, record->pa, record->size));
      if (!mapped.ok()) {
        failures.Add(absl::StrCat(who, ": ", mapped.status().ToString()));
        return std::nullopt;
      }
      record->iova.store(iova, std::memory_order_release);
      tally.maps.fetch_add(1, std::memory_order_relaxed);
      if (mapped->iova != iova || mapped->leaves_4k != leaves_4k ||
          mapped->leaves_2m != leaves_2m || mapped->leaves_1g != leaves_1g) {
        failures.Add(absl::StrCat(who, ": got iova ", Hex(mapped->iova), " with leaves ",
                                  mapped->leaves_4k, "/", mapped->leaves_2m, "/",
                                  mapped->leaves_1g));
      }
      return Live{record, iova};
    };
    // A piece of a live mapping: exactly its own PA.
    auto expect_mapped = [&](const Live& live) {
      const uint64_t size = live.record->size;
      const uint64_t offset =
          size > 16 * kMiB ? (rng() % (size / (2 * kMiB))) * 2 * kMiB : uint64_t{0};
      const uint64_t length = std::min<uint64_t>(size, 2 * kMiB);
      absl::StatusOr<TranslateResult> result =
          iommu->Translate(device, live.iova + offset, length, Access::kWrite);
      if (!result.ok()) {
        failures.Add(result.status().ToString());
        return;
      }
      tally.Count(*result);
      if (!IsExactly(*result, live.record->pa + offset, length) || result->stale) {
        failures.Add(absl::StrCat(device.id(), ": live iova ", Hex(live.iova + offset), "+",
                                  Hex(length), " must give PA ", Hex(live.record->pa + offset),
                                  ", got ", Describe(*result)));
      }
    };
    // After the unmap of a window nobody else maps into: paranoid faults;
    // fast faults or still reaches exactly the old PA, marked stale.
    auto expect_unmapped = [&](const Live& live) {
      const uint64_t length = std::min<uint64_t>(live.record->size, 2 * kMiB);
      absl::StatusOr<TranslateResult> result =
          iommu->Translate(device, live.iova, length, Access::kRead);
      if (!result.ok()) {
        failures.Add(result.status().ToString());
        return;
      }
      tally.Count(*result);
      const bool faulted =
          result->fault.has_value() && result->fault->reason == FaultReason::kNotMapped;
      const bool stale_old =
          policy == Policy::kFast && result->stale && IsExactly(*result, live.record->pa, length);
      if (!faulted && !stale_old) {
        failures.Add(absl::StrCat(device.id(), ": unmapped iova ", Hex(live.iova), " (was PA ",
                                  Hex(live.record->pa), ") under ", PolicyName(policy),
                                  " translated to ", Describe(*result)));
      }
      if (faulted) tally.after_unmap_faulted.fetch_add(1, std::memory_order_relaxed);
      if (stale_old) tally.after_unmap_stale_old.fetch_add(1, std::memory_order_relaxed);
    };
    // After the unmap and a flush of that window: whatever policy, the
    // invalidation has completed, so no IOTLB entry may still reach the old
    // PA (stale or not); the translation walks and faults.
    auto expect_flushed = [&](const Live& live) {
      if (absl::Status status = iommu->Flush(kDomain); !status.ok()) {
        failures.Add(status.ToString());
        return;
      }
      const uint64_t length = std::min<uint64_t>(live.record->size, 2 * kMiB);
      absl::StatusOr<TranslateResult> result =
          iommu->Translate(device, live.iova, length, Access::kRead);
      if (!result.ok()) {
        failures.Add(result.status().ToString());
        return;
      }
      tally.Count(*result);
      if (!result->fault.has_value() || result->fault->reason != FaultReason::kNotMapped) {
        failures.Add(absl::StrCat(device.id(), ": unmapped and flushed iova ", Hex(live.iova),
                                  " (was PA ", Hex(live.record->pa), ") under ", PolicyName(policy),
                                  " translated to ", Describe(*result)));
      }
    };
    auto unmap_exact = [&](Live& live) {
      absl::StatusOr<UnmapResult> unmapped = iommu->Unmap(device, live.iova, live.record->size);
      if (!unmapped.ok() || unmapped->bytes_unmapped != live.record->size ||
          unmapped->mappings_removed != 1) {
        failures.Add(absl::StrCat(
            device.id(), ": unmap of iova ", Hex(live.iova), "+", Hex(live.record->size), ": ",
            unmapped.ok() ? Hex(unmapped->bytes_unmapped) : unmapped.status().ToString()));
      } else {
        tally.unmaps.fetch_add(1, std::memory_order_relaxed);
        expect_unmapped(live);
        if (rng() % 4 == 0) expect_flushed(live);
      }
      live = Live{};
    };

    for (int op = 0; op < kFixedOps; ++op) {
      const uint64_t kind = rng() % 10;
      if (kind == 0) {  // the 1 GiB span
        if (gig.record != nullptr) {
          unmap_exact(gig);
        } else if (std::optional<Live> live = map(pools[w].gig, GigIova(w), 0, 0, 1)) {
          gig = *live;
          expect_mapped(gig);
        }
      } else if (kind <= 2) {  // a 2 MiB slot: one 2 MiB leaf, or a small map leaving a table
        Live& slot = huge_slots[rng() % kHugeSlots];
        const uint64_t iova = HugeSlotIova(w, static_cast<int>(&slot - huge_slots.data()));
        if (slot.record != nullptr) {
          unmap_exact(slot);
        } else if (rng() % 2 == 0 && next_huge < pools[w].huge.size()) {
          if (std::optional<Live> live = map(pools[w].huge[next_huge++], iova, 0, 1, 0)) {
            slot = *live;
            expect_mapped(slot);
          }
        } else if (next_small < pools[w].small.size()) {
          Record* record = pools[w].small[next_small++];
          if (std::optional<Live> live = map(record, iova, record->size / kPage4K, 0, 0)) {
            slot = *live;
            expect_mapped(slot);
          }
        }
      } else {  // a 64 KiB slot inside the shared 2 MiB span
        const int s = static_cast<int>(rng() % kSmallSlots);
        Live& slot = small_slots[s];
        if (slot.record == nullptr) {
          if (next_small == pools[w].small.size()) continue;
          Record* record = pools[w].small[next_small++];
          const uint64_t offset = (rng() % ((kSmallSlot - record->size) / kPage4K + 1)) * kPage4K;
          if (std::optional<Live> live =
                  map(record, SmallSlotIova(w, s) + offset, record->size / kPage4K, 0, 0)) {
            slot = *live;
            expect_mapped(slot);
          }
          continue;
        }
        switch (rng() % 4) {
          case 0:  // an unmap that would split it: refused, mapping intact
            if (slot.record->size > kPage4K) {
              absl::StatusOr<UnmapResult> refused =
                  iommu->Unmap(device, slot.iova, slot.record->size - kPage4K);
              wrong_size_unmaps.fetch_add(1, std::memory_order_relaxed);
              if (!absl::IsFailedPrecondition(refused.status())) {
                failures.Add(absl::StrCat(device.id(), ": a splitting unmap at ", Hex(slot.iova),
                                          " gave ", refused.status().ToString()));
              }
              expect_mapped(slot);
              break;
            }
            unmap_exact(slot);
            break;
          case 1: {  // one unmap over several slots removes every mapping inside
            const int last = std::min(kSmallSlots - 1, s + static_cast<int>(rng() % 3));
            uint64_t bytes = 0;
            uint64_t mappings = 0;
            for (int t = s; t <= last; ++t) {
              if (small_slots[t].record == nullptr) continue;
              bytes += small_slots[t].record->size;
              ++mappings;
            }
            const uint64_t iova = SmallSlotIova(w, s);
            absl::StatusOr<UnmapResult> unmapped =
                iommu->Unmap(device, iova, SmallSlotIova(w, last) + kSmallSlot - iova);
            range_unmaps.fetch_add(1, std::memory_order_relaxed);
            if (!unmapped.ok() || unmapped->bytes_unmapped != bytes ||
                unmapped->mappings_removed != mappings) {
              failures.Add(
                  absl::StrCat(device.id(), ": unmap of slots ", s, "..", last, " expected ",
                               mappings, " mappings / ", Hex(bytes), ", got ",
                               unmapped.ok() ? absl::StrCat(unmapped->mappings_removed, " / ",
                                                            Hex(unmapped->bytes_unmapped))
                                             : unmapped.status().ToString()));
              break;
            }
            tally.unmaps.fetch_add(mappings, std::memory_order_relaxed);
            for (int t = s; t <= last; ++t) {
              if (small_slots[t].record == nullptr) continue;
              expect_unmapped(small_slots[t]);
              small_slots[t] = Live{};
            }
            break;
          }
          default:
            unmap_exact(slot);
            break;
        }
      }
    }
    for (Live& live : small_slots) {
      if (live.record != nullptr) unmap_exact(live);
    }
    for (Live& live : huge_slots) {
      if (live.record != nullptr) unmap_exact(live);
    }
    if (gig.record != nullptr) unmap_exact(gig);
    registry.MarkDone(w);
    workers_done.fetch_add(1, std::memory_order_release);
  };

  // Random pages of every window, whoever owns them.
  auto translator = [&] {
    std::mt19937_64 rng(kSeed + 600);
    const PolicyClock clock = FixedPolicy(policy);
    while (workers_done.load(std::memory_order_acquire) < kWorkers) {
      const int w = static_cast<int>(rng() % kWorkers);
      uint64_t page;
      switch (rng() % 4) {
        case 0:
          page = GigIova(w) + (rng() % (kGiB / kPage4K)) * kPage4K;
          break;
        case 1:
          page = HugeSlotIova(w, static_cast<int>(rng() % kHugeSlots)) +
                 (rng() % (2 * kMiB / kPage4K)) * kPage4K;
          break;
        default:
          page = SmallSlotIova(w, static_cast<int>(rng() % kSmallSlots)) +
                 (rng() % (kSmallSlot / kPage4K)) * kPage4K;
          break;
      }
      const uint64_t iova = page + rng() % kPage4K;
      checker.TranslateAndCheck(*devices[kWorkers], iova, 1 + rng() % (page + kPage4K - iova),
                                Access::kRead, clock);
    }
  };
  // Flushes race with the workers' maps over IOVAs still on the flush queue.
  auto flusher = [&] {
    while (workers_done.load(std::memory_order_acquire) < kWorkers) {
      if (absl::Status status = iommu->Flush(kDomain); !status.ok()) {
        failures.Add(status.ToString());
      }
      std::this_thread::yield();
    }
  };

  RunTogether(worker, {[&] { translator(); }, [&] { flusher(); }});

  EXPECT_EQ(failures.count(), 0u) << failures.Summary();
  EXPECT_GT(range_unmaps.load(), 0u);
  EXPECT_GT(wrong_size_unmaps.load(), 0u);
  absl::StatusOr<DomainStats> stats = iommu->GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->live_mappings, 0u);
  EXPECT_EQ(stats->maps, tally.maps.load());
  EXPECT_EQ(stats->unmaps, tally.unmaps.load());
  EXPECT_EQ(stats->debug.wrong_size_unmaps, wrong_size_unmaps.load());
  EXPECT_EQ(stats->stale_translations, tally.stale.load());
  if (policy == Policy::kParanoid) {
    EXPECT_EQ(stats->stale_translations, 0u);
  }
  ASSERT_TRUE(iommu->Flush(kDomain).ok());
  stats = iommu->GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->iova.reserved_bytes, initial->iova.reserved_bytes)
      << "a fixed IOVA range was not given back";
  EXPECT_EQ(stats->iova.allocated_bytes, 0u);
  std::cout << PolicyName(policy) << ": " << TallyText(tally) << "\n";
}

INSTANTIATE_TEST_SUITE_P(Policies, FixedIovaTest,
                         ::testing::Values(Policy::kParanoid, Policy::kFast),
                         [](const ::testing::TestParamInfo<Policy>& info) {
                           return info.param == Policy::kParanoid ? "Paranoid" : "Fast";
                         });

// ---------------------------------------------------------------- 5b. identity_first

// Threads of a fast identity_first domain map the same physical ranges
// (some overlapping) at once: at any moment at most one holds an identity
// claim on a page (IOVA == PA), the others get allocator IOVAs above physical
// memory, and every translation gives the range's own PA.
TEST(IommuConcurrencyTest, IdentityFirstClaimsRace) {
  std::unique_ptr<Iommu> iommu = NewIommu(Options());
  ASSERT_NE(iommu, nullptr);
  ASSERT_TRUE(
      iommu->CreateDomain({.id = kDomain, .policy = Policy::kFast, .identity_first = true}).ok());
  std::vector<std::shared_ptr<Device>> devices;
  for (int i = 0; i <= kWorkers; ++i) {
    devices.push_back(AddAttachedDevice(*iommu, absl::StrCat("dev", i), kDomain));
    ASSERT_NE(devices.back(), nullptr);
  }
  constexpr uint64_t kRegion = 64 * kMiB;
  constexpr uint64_t kRegionBytes = 4 * kMiB;
  struct Range {
    uint64_t phys;
    uint64_t size;
  };
  const std::vector<Range> ranges = {
      {kRegion, 64 * kKiB},
      {kRegion + 32 * kKiB, 64 * kKiB},
      {kRegion + 96 * kKiB, 32 * kKiB},
      {kRegion + kMiB, kPage4K},
      {kRegion + kMiB, 16 * kKiB},
      {kRegion + 2 * kMiB, 2 * kMiB},  // one 2 MiB leaf
      {kRegion + 2 * kMiB + 512 * kKiB, 64 * kKiB},
      {kRegion + 3 * kMiB + kPage4K, kPage4K},
      {kRegion + kMiB + 512 * kKiB, 128 * kKiB},
      {kRegion + kMiB + 576 * kKiB, 8 * kKiB},
  };
  // Identity holders per page of the region.
  std::array<std::atomic<int>, kRegionBytes / kPage4K> holders{};
  Failures failures;
  std::atomic<uint64_t> identity_maps{0};
  std::atomic<uint64_t> fallback_maps{0};
  std::atomic<uint64_t> translations{0};
  std::atomic<int> workers_done{0};
  // Each worker's current allocator IOVA and range, for the translator.
  std::array<std::atomic<uint64_t>, kWorkers> current_iova{};

  auto in_ranges = [&](uint64_t phys) {
    return std::any_of(ranges.begin(), ranges.end(), [&](const Range& range) {
      return phys >= range.phys && phys < range.phys + range.size;
    });
  };
  // Any answer from the identity region is identity; any other names one of
  // the ranges at the same page offset.
  auto check = [&](const std::string& who, uint64_t iova,
                   const absl::StatusOr<TranslateResult>& result) {
    if (!result.ok()) {
      failures.Add(absl::StrCat(who, ": ", result.status().ToString()));
      return;
    }
    translations.fetch_add(1, std::memory_order_relaxed);
    if (result->fault.has_value()) {
      if (result->fault->reason != FaultReason::kNotMapped) {
        failures.Add(absl::StrCat(who, ": ", Describe(*result)));
      }
      return;
    }
    uint64_t at = iova;
    for (const PhysSegment& segment : result->segments) {
      const bool ok = iova < kPhysBytes
                          ? segment.phys == at
                          : in_ranges(segment.phys) && in_ranges(segment.phys + segment.size - 1) &&
                                segment.phys % kPage4K == at % kPage4K;
      if (!ok) {
        failures.Add(absl::StrCat(who, ": iova ", Hex(iova), " -> ", Describe(*result)));
        return;
      }
      at += segment.size;
    }
  };

  auto worker = [&](int w) {
    Device& device = *devices[w];
    std::mt19937_64 rng(kSeed * 17 + static_cast<uint64_t>(w));
    for (int i = 0; i < kIdentityCycles; ++i) {
      const Range& range = ranges[rng() % ranges.size()];
      const std::string who =
          absl::StrCat(device.id(), " mapping ", Hex(range.phys), "+", Hex(range.size));
      absl::StatusOr<MapResult> mapped = iommu->Map(device, Request(range.phys, range.size));
      if (!mapped.ok()) {
        failures.Add(absl::StrCat(who, ": ", mapped.status().ToString()));
        continue;
      }
      const bool identity = mapped->kind == MappingKind::kIdentity;
      const size_t first_page = (range.phys - kRegion) / kPage4K;
      const size_t pages = range.size / kPage4K;
      if (identity) {
        identity_maps.fetch_add(1, std::memory_order_relaxed);
        if (mapped->iova != range.phys) {
          failures.Add(absl::StrCat(who, ": identity at iova ", Hex(mapped->iova)));
        }
        for (size_t p = first_page; p < first_page + pages; ++p) {
          if (const int before = holders[p].fetch_add(1); before != 0) {
            failures.Add(absl::StrCat(who, ": page ", Hex(kRegion + p * kPage4K), " has ",
                                      before + 1, " identity holders"));
          }
        }
      } else {
        fallback_maps.fetch_add(1, std::memory_order_relaxed);
        if (mapped->kind != MappingKind::kTranslated || mapped->iova < kPhysBytes) {
          failures.Add(absl::StrCat(who, ": fell back to iova ", Hex(mapped->iova), " of kind ",
                                    MappingKindName(mapped->kind)));
        }
        current_iova[w].store(mapped->iova, std::memory_order_release);
      }
      absl::StatusOr<TranslateResult> live =
          iommu->Translate(device, mapped->iova, range.size, Access::kWrite);
      translations.fetch_add(1, std::memory_order_relaxed);
      if (!live.ok() || !IsExactly(*live, range.phys, range.size) || live->stale) {
        failures.Add(absl::StrCat(who, ": live iova ", Hex(mapped->iova), " translated to ",
                                  live.ok() ? Describe(*live) : live.status().ToString()));
      }
      if (identity) {
        for (size_t p = first_page; p < first_page + pages; ++p) holders[p].fetch_sub(1);
      }
      absl::StatusOr<UnmapResult> unmapped = iommu->Unmap(device, mapped->iova, range.size);
      if (!unmapped.ok() || unmapped->bytes_unmapped != range.size) {
        failures.Add(absl::StrCat(
            who, ": unmap: ",
            unmapped.ok() ? Hex(unmapped->bytes_unmapped) : unmapped.status().ToString()));
      }
      absl::StatusOr<TranslateResult> after =
          iommu->Translate(device, mapped->iova, range.size, Access::kRead);
      check(who + " after unmap", mapped->iova, after);
      if (i % 32 == 31) {  // release the claims waiting on the flush queue
        if (absl::Status status = iommu->Flush(kDomain); !status.ok()) {
          failures.Add(status.ToString());
        }
      }
    }
    workers_done.fetch_add(1, std::memory_order_release);
  };
  auto translator = [&] {
    Device& device = *devices[kWorkers];
    std::mt19937_64 rng(kSeed + 700);
    while (workers_done.load(std::memory_order_acquire) < kWorkers) {
      uint64_t iova = kRegion + rng() % kRegionBytes;
      if (rng() % 4 == 0) {
        const uint64_t base = current_iova[rng() % kWorkers].load(std::memory_order_acquire);
        if (base == 0) continue;
        iova = base + rng() % (2 * kPage4K);
      }
      const uint64_t length = 1 + rng() % (kPage4K - iova % kPage4K);
      check(absl::StrCat("translator at ", Hex(iova)), iova,
            iommu->Translate(device, iova, length, Access::kRead));
    }
  };

  RunTogether(worker, {[&] { translator(); }});

  EXPECT_EQ(failures.count(), 0u) << failures.Summary();
  EXPECT_EQ(identity_maps.load() + fallback_maps.load(), kWorkers * kIdentityCycles);
  absl::StatusOr<DomainStats> stats = iommu->GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->live_mappings, 0u);
  EXPECT_EQ(stats->identity_maps, identity_maps.load());
  EXPECT_EQ(stats->translations, translations.load());
  ASSERT_TRUE(iommu->Flush(kDomain).ok());
  stats = iommu->GetDomainStats(kDomain);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->iova.allocated_bytes, 0u);
  // Every claim was released: the whole region can be claimed as identity.
  absl::StatusOr<MapResult> whole = iommu->Map(*devices[0], Request(kRegion, kRegionBytes));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->kind, MappingKind::kIdentity);
  EXPECT_EQ(whole->iova, kRegion);
  std::cout << "identity claims " << identity_maps.load() << ", fallbacks " << fallback_maps.load()
            << "\n";
}

}  // namespace
}  // namespace iommu_broker
