#include "core/iommu/iotlb.h"

#include <cstdint>
#include <memory>
#include <thread>

#include "absl/base/config.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/cpu_relax.h"
#include "core/util/hex.h"

namespace iommu_broker {

// Storage. The sets are one array of 64-bit words starting on a 64-byte
// line; set i owns words [i * words_per_set_, (i + 1) * words_per_set_), a
// whole number of lines, so no two sets share a line and a writer holding
// one set never disturbs readers of another. A set's words are
//
//   word 0                      sequence: even = stable, odd = a writer holds it
//   word 1                      round-robin victim (touched only under the lock)
//   words 2 .. 2+ways-1         tags, one per way
//   words 2+ways .. 2+2*ways-1  values, one per way
//
// Tags sit together because a probe compares tags but reads only one
// value: with 8 ways a set is 3 lines (144 of 192 bytes used), a miss reads
// lines 0-1 and a hit at most lines 0-2.
//
// Tag word:   bit 63 valid | bits 62..51 requester | bits 50..45 page shift |
//             bits 44..0 page number (iova >> shift; IOVAs are below 2^48).
// Value word: physical address of the page (page-aligned) | write << 1 | read.
namespace {

constexpr size_t kLineBytes = 64;
constexpr uint32_t kWordsPerLine = kLineBytes / sizeof(std::atomic<uint64_t>);
// The first word of `words` that starts a line. new[] aligns only to 16
// bytes, so the storage holds a line's worth of words more than the sets.
std::atomic<uint64_t>* FirstWholeLine(std::atomic<uint64_t>* words) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(words);
  return words + (kLineBytes - address % kLineBytes) % kLineBytes / sizeof(*words);
}

constexpr uint32_t kSeqWord = 0;
constexpr uint32_t kVictimWord = 1;
constexpr uint32_t kFirstTagWord = 2;

constexpr uint64_t kValid = uint64_t{1} << 63;
constexpr int kRequesterBit = 51;
constexpr uint64_t kRequesterField = uint64_t{0xfff} << kRequesterBit;
constexpr int kShiftBit = 45;
constexpr uint64_t kShiftField = uint64_t{0x3f} << kShiftBit;
constexpr uint64_t kPageNumberField = (uint64_t{1} << kShiftBit) - 1;
static_assert(Iotlb::kMaxRequester <= 0xfff, "requester must fit its 12 tag bits");
static_assert(kIovaBits - 12 <= kShiftBit, "a 4 KiB page number must fit its tag bits");
constexpr uint64_t kLastIova = (uint64_t{1} << kIovaBits) - 1;

constexpr uint64_t kReadBit = 1;
constexpr uint64_t kWriteBit = 2;

// Seqlock tuning: a reader that keeps meeting writers gives up and reports a
// miss (always a correct answer: the caller walks the table); a writer spins,
// then yields so that a preempted lock holder can run.
constexpr int kReadAttempts = 64;
constexpr int kSpinsBeforeYield = 128;

// Readers load the ways with relaxed loads and then issue one acquire fence
// before re-reading the sequence: the fence pairs with the writers' release
// stores of those words, so a reader that saw any word a writer stored also
// sees that writer's odd sequence and retries. GCC's ThreadSanitizer does not
// support atomic_thread_fence (-Wtsan, an error under -Werror), so a TSan
// build loads the ways with acquire instead, which gives the same guarantee
// and which TSan models. On x86 both compile to plain loads.
#ifdef ABSL_HAVE_THREAD_SANITIZER
constexpr std::memory_order kWayLoad = std::memory_order_acquire;
inline void ReadFence() {}
#else
constexpr std::memory_order kWayLoad = std::memory_order_relaxed;
inline void ReadFence() { std::atomic_thread_fence(std::memory_order_acquire); }
#endif

// log2 of a leaf size, or -1 if `page_size` is not one.
inline int ShiftOf(uint64_t page_size) {
  switch (page_size) {
    case kPage4K:
      return 12;
    case kPage2M:
      return 21;
    case kPage1G:
      return 30;
    default:
      return -1;
  }
}

inline bool ValidRequester(uint32_t requester) {
  return requester - 1 < Iotlb::kMaxRequester;  // 0 wraps around and fails
}

inline uint64_t MakeTag(uint32_t requester, unsigned shift, uint64_t page_number) {
  return kValid | uint64_t{requester} << kRequesterBit | uint64_t{shift} << kShiftBit | page_number;
}

// A tag with its requester cleared: what a range invalidation matches.
inline uint64_t AnyRequester(uint64_t tag) { return tag & ~kRequesterField; }

// Mixes a page number and its size (one multiply, after MurmurHash3's
// finalizer) so that every input bit reaches the low bits the set mask keeps.
// The requester is deliberately not hashed: a range invalidation covers
// every requester with one probe per page, so all requesters' entries for a
// page must live in the same set.
inline uint64_t HashPage(uint64_t page_number, unsigned shift) {
  uint64_t x = page_number << 6 | shift;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccd;
  x ^= x >> 33;
  return x;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Iotlb>> Iotlb::Create(IotlbGeometry geometry,
                                                     PageSizeSet page_sizes) {
  if (geometry.sets == 0 || geometry.sets > 65536 || (geometry.sets & (geometry.sets - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("iotlb sets ", geometry.sets, " is not a power of two in [1, 65536]"));
  }
  if (geometry.ways == 0 || geometry.ways > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("iotlb ways ", geometry.ways, " is not in [1, 64]"));
  }
  if ((page_sizes & kPage4K) == 0 || (page_sizes & ~(kPage4K | kPage2M | kPage1G)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("iotlb page_sizes ", Hex(page_sizes),
                     " must include 4 KiB and hold only 4 KiB, 2 MiB and 1 GiB"));
  }
  return std::unique_ptr<Iotlb>(new Iotlb(geometry, page_sizes));
}

Iotlb::Iotlb(IotlbGeometry geometry, PageSizeSet page_sizes)
    : geometry_(geometry),
      page_sizes_(page_sizes),
      words_per_set_((kFirstTagWord + 2 * geometry.ways + kWordsPerLine - 1) / kWordsPerLine *
                     kWordsPerLine),
      storage_(
          std::make_unique<SetWord[]>(size_t{geometry.sets} * words_per_set_ + kWordsPerLine - 1)),
      sets_(FirstWholeLine(storage_.get())) {
  for (uint64_t size : {kPage4K, kPage2M, kPage1G}) {
    if ((page_sizes & size) != 0) probe_shifts_[num_probe_shifts_++] = ShiftOf(size);
  }
}

Iotlb::~Iotlb() = default;

Iotlb::SetWord* Iotlb::SetOf(uint64_t page_number, unsigned shift) const {
  return &sets_[(HashPage(page_number, shift) & (geometry_.sets - 1)) * words_per_set_];
}

int Iotlb::FindWay(SetWord* set, uint64_t tag, std::memory_order order) const {
  const uint32_t ways = geometry_.ways;  // loaded once: atomics stop the compiler hoisting it
  for (uint32_t way = 0; way < ways; ++way) {
    if (set[kFirstTagWord + way].load(order) == tag) return static_cast<int>(way);
  }
  return -1;
}

bool Iotlb::Probe(SetWord* set, uint64_t tag, uint64_t* value) const {
  std::atomic<uint64_t>& seq = set[kSeqWord];
  for (int attempt = 0; attempt < kReadAttempts; ++attempt) {
    const uint64_t before = seq.load(std::memory_order_acquire);
    const int way = FindWay(set, tag, kWayLoad);
    // Not finding the tag needs no validation: a miss, even one caused by a
    // concurrent write, is always a correct answer.
    if (way < 0) return false;
    const uint64_t found = set[kFirstTagWord + geometry_.ways + way].load(kWayLoad);
    ReadFence();
    if ((before & 1) == 0 && seq.load(std::memory_order_relaxed) == before) {
      *value = found;
      return true;
    }
    CpuRelax();
  }
  return false;
}

uint64_t Iotlb::LockSet(SetWord* set) {
  std::atomic<uint64_t>& seq = set[kSeqWord];
  for (int spins = 0;; ++spins) {
    uint64_t current = seq.load(std::memory_order_relaxed);
    // Sequentially consistent: see NothingToInvalidate.
    if ((current & 1) == 0 &&
        seq.compare_exchange_weak(current, current + 1, std::memory_order_seq_cst,
                                  std::memory_order_relaxed)) {
      return current;
    }
    if (spins < kSpinsBeforeYield) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
}

void Iotlb::UnlockSet(SetWord* set, uint64_t locked_at, bool modified) {
  // An unmodified set gets its old sequence back, so readers that overlapped
  // the lock need not retry: nothing they read changed.
  set[kSeqWord].store(modified ? locked_at + 2 : locked_at, std::memory_order_release);
}

bool Iotlb::Lookup(uint32_t requester, uint64_t iova, IotlbEntry& entry) {
  if (ValidRequester(requester) && iova <= kLastIova) {
    const PageSizeSet inserted = sizes_inserted_.load(std::memory_order_relaxed);
    for (int i = 0; i < num_probe_shifts_; ++i) {
      const unsigned shift = probe_shifts_[i];
      if ((inserted & (uint64_t{1} << shift)) == 0) continue;
      const uint64_t page_number = iova >> shift;
      uint64_t value;
      if (Probe(SetOf(page_number, shift), MakeTag(requester, shift, page_number), &value)) {
        AddOwned(counts_.Local().hits, 1);
        const uint64_t page_size = uint64_t{1} << shift;
        entry.iova = page_number << shift;
        entry.phys = value & ~(page_size - 1);
        entry.page_size = page_size;
        entry.perms = {.read = (value & kReadBit) != 0, .write = (value & kWriteBit) != 0};
        return true;
      }
    }
  }
  AddOwned(counts_.Local().misses, 1);
  return false;
}

uint64_t Iotlb::FillToken() const { return invalidations_begun_.load(std::memory_order_seq_cst); }

void Iotlb::Insert(uint64_t token, uint32_t requester, const IotlbEntry& entry) {
  const int shift = ShiftOf(entry.page_size);
  // Entries Lookup could never return are not cached.
  if (!ValidRequester(requester) || shift < 0 || (page_sizes_ & entry.page_size) == 0 ||
      entry.iova > kLastIova) {
    return;
  }
  const uint64_t page_number = entry.iova >> shift;
  const uint64_t tag = MakeTag(requester, shift, page_number);
  const uint64_t value = (entry.phys & ~(entry.page_size - 1)) | (entry.perms.read ? kReadBit : 0) |
                         (entry.perms.write ? kWriteBit : 0);
  SetWord* const set = SetOf(page_number, shift);
  if ((sizes_inserted_.load(std::memory_order_relaxed) & entry.page_size) == 0) {
    sizes_inserted_.fetch_or(entry.page_size, std::memory_order_relaxed);
  }

  const uint64_t locked_at = LockSet(set);
  // Why a walk that raced with an invalidation cannot insert a stale
  // translation. The walk read the page table after `token` was read. An
  // invalidation bumps invalidations_begun_ before it locks any set, and we
  // read the counter while holding this entry's set, where that invalidation
  // must look if it covers this entry (the set depends only on the page, not
  // on the requester). The lock orders the two:
  //  - the invalidation held this set before us: its bump happens-before its
  //    unlock, which happens-before our lock and so our load; we see the bump
  //    and drop the entry;
  //  - it takes this set after we release it: it finds and removes what we
  //    insert here.
  // So an entry survives an invalidation only if its token was read after
  // that invalidation began, i.e. the walk began after the unmap it
  // invalidates had already cleared the page table.
  if (invalidations_begun_.load(std::memory_order_seq_cst) != token) {
    UnlockSet(set, locked_at, /*modified=*/false);
    AddOwned(counts_.Local().dropped_fills, 1);
    return;
  }
  const uint32_t ways = geometry_.ways;
  int way = FindWay(set, tag, std::memory_order_relaxed);  // same tag: update it
  bool evicting = false;
  if (way < 0) {
    for (uint32_t w = 0; w < ways; ++w) {
      if ((set[kFirstTagWord + w].load(std::memory_order_relaxed) & kValid) == 0) {
        way = static_cast<int>(w);
        break;
      }
    }
  }
  if (way < 0) {
    std::atomic<uint64_t>& victim = set[kVictimWord];
    const uint64_t next = victim.load(std::memory_order_relaxed);  // always < ways
    way = static_cast<int>(next);
    victim.store(next + 1 == ways ? 0 : next + 1, std::memory_order_relaxed);
    evicting = true;
  }
  // Release stores: a reader that sees either word also sees our odd sequence.
  set[kFirstTagWord + way].store(tag, std::memory_order_release);
  set[kFirstTagWord + ways + way].store(value, std::memory_order_release);
  UnlockSet(set, locked_at, /*modified=*/true);
  Counts& counts = counts_.Local();
  AddOwned(counts.inserts, 1);
  if (evicting) AddOwned(counts.evictions, 1);
}

template <typename Match>
bool Iotlb::NothingToInvalidate(SetWord* set, const Match& match) const {
  // Why a fill cannot slip past this unlocked look. The invalidation bumped
  // invalidations_begun_ (sequentially consistent) before this load of the
  // set's sequence, and an Insert locks the set (sequentially consistent)
  // before it reads the counter. If this load saw the set unlocked and
  // unchanged since, an Insert that locks it later reads the bump and drops
  // a fill whose walk began before it; one that finished earlier published
  // its entry before the sequence we read, so the ways below show it.
  std::atomic<uint64_t>& seq = set[kSeqWord];
  const uint64_t before = seq.load(std::memory_order_seq_cst);
  if ((before & 1) != 0) return false;
  for (uint32_t way = 0; way < geometry_.ways; ++way) {
    const uint64_t tag = set[kFirstTagWord + way].load(kWayLoad);
    if ((tag & kValid) != 0 && match(tag)) return false;
  }
  ReadFence();
  return seq.load(std::memory_order_relaxed) == before;
}

template <typename Match>
uint64_t Iotlb::InvalidateInSet(SetWord* set, const Match& match) {
  // Looking first leaves a set with nothing to remove unwritten, so its line
  // stays shared by every CPU instead of moving to each invalidating one
  // (a whole-IOTLB sweep of an idle IOTLB then writes nothing).
  if (NothingToInvalidate(set, match)) return 0;
  const uint64_t locked_at = LockSet(set);
  uint64_t removed = 0;
  for (uint32_t way = 0; way < geometry_.ways; ++way) {
    std::atomic<uint64_t>& tag = set[kFirstTagWord + way];
    const uint64_t current = tag.load(std::memory_order_relaxed);
    if ((current & kValid) != 0 && match(current)) {
      tag.store(0, std::memory_order_release);
      ++removed;
    }
  }
  UnlockSet(set, locked_at, /*modified=*/removed != 0);
  return removed;
}

template <typename Match>
void Iotlb::InvalidateEverywhere(const Match& match) {
  uint64_t removed = 0;
  for (uint32_t index = 0; index < geometry_.sets; ++index) {
    removed += InvalidateInSet(&sets_[size_t{index} * words_per_set_], match);
  }
  if (removed != 0) AddOwned(counts_.Local().invalidated_entries, static_cast<int64_t>(removed));
}

void Iotlb::InvalidateRange(uint64_t iova, uint64_t size, uint64_t granule) {
  invalidations_begun_.fetch_add(1, std::memory_order_seq_cst);  // before any set
  const int shift = ShiftOf(granule);
  if (shift < 0) {
    // Not a leaf size: dropping everything is slow but never wrong.
    InvalidateEverywhere([](uint64_t) { return true; });
    return;
  }
  // Nothing of that size is cached, or nothing can be cached in the range.
  if ((page_sizes_ & granule) == 0 || size == 0 || iova > kLastIova) return;
  const uint64_t last_iova = size - 1 > kLastIova - iova ? kLastIova : iova + (size - 1);
  // Whole granules touching [iova, last_iova]: the range rounded outward.
  const uint64_t first_page = iova >> shift;
  const uint64_t last_page = last_iova >> shift;
  const uint64_t size_bits = uint64_t{static_cast<unsigned>(shift)} << kShiftBit;
  if (last_page - first_page >= geometry_.sets) {
    // More pages than sets: probing would look at more ways than one sweep.
    InvalidateEverywhere([=](uint64_t tag) {
      const uint64_t page = tag & kPageNumberField;
      return (tag & kShiftField) == size_bits && page >= first_page && page <= last_page;
    });
    return;
  }
  uint64_t removed = 0;
  for (uint64_t page = first_page; page <= last_page; ++page) {
    const uint64_t target = kValid | size_bits | page;
    removed += InvalidateInSet(SetOf(page, shift),
                               [target](uint64_t tag) { return AnyRequester(tag) == target; });
  }
  if (removed != 0) AddOwned(counts_.Local().invalidated_entries, static_cast<int64_t>(removed));
}

void Iotlb::InvalidateRequester(uint32_t requester) {
  invalidations_begun_.fetch_add(1, std::memory_order_seq_cst);  // before any set
  if (!ValidRequester(requester)) return;                        // never cached
  const uint64_t field = uint64_t{requester} << kRequesterBit;
  InvalidateEverywhere([field](uint64_t tag) { return (tag & kRequesterField) == field; });
}

void Iotlb::InvalidateAll() {
  invalidations_begun_.fetch_add(1, std::memory_order_seq_cst);  // before any set
  InvalidateEverywhere([](uint64_t) { return true; });
}

IotlbStats Iotlb::Stats() const {
  IotlbStats stats;
  counts_.ForEach([&](const Counts& counts) {
    auto add = [](uint64_t& total, const std::atomic<int64_t>& count) {
      total += static_cast<uint64_t>(count.load(std::memory_order_relaxed));
    };
    add(stats.hits, counts.hits);
    add(stats.misses, counts.misses);
    add(stats.inserts, counts.inserts);
    add(stats.dropped_fills, counts.dropped_fills);
    add(stats.invalidated_entries, counts.invalidated_entries);
    add(stats.evictions, counts.evictions);
  });
  return stats;
}

}  // namespace iommu_broker
