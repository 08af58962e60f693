// IovaAllocator hands out I/O virtual address (IOVA) ranges of one IOMMU
// domain: the space inside an aperture, minus reserved ranges, in units of a
// 4 KiB granule.
//
//   IovaAllocatorOptions options;
//   options.aperture_first = 0;
//   options.aperture_last = (uint64_t{1} << 48) - 1;
//   options.reserved = {{0xfee00000, 0x100000}};  // the x86 MSI window
//   absl::StatusOr<std::unique_ptr<IovaAllocator>> space = IovaAllocator::Create(options);
//   absl::StatusOr<uint64_t> iova = (*space)->Allocate(8192, /*limit=*/0xffffffff);
//   ...
//   (*space)->Free(*iova, 8192);
//
// Design (see docs/IOVA_ALLOCATOR.md): every thread that calls Allocate or
// Free owns a private cache of free ranges per size class (two magazines per
// class, Bonwick/Peleg style). The common path touches only that cache, takes
// no lock and writes no cache line another thread writes. Behind the caches a
// depot of full magazines per class, and behind the depot a binary-buddy arena
// over the whole space, each under its own mutex and touched once per
// magazine's worth of operations at most. The arena's operations cost
// O(log(free blocks)) per address-size order, never a walk over live
// allocations.
//
// Sizes are rounded up to a size class (4 classes per power of two, so at most
// 25% extra IOVA space); the class's footprint is what the space gives out and
// takes back, so Free needs no per-allocation metadata.
//
// Thread-safety: thread-safe. A thread's cache is reclaimed by other threads
// (on exhaustion, Reserve conflicts, ShrinkIdleCaches) through an asymmetric
// handshake: the owner pays a compiler barrier, the reclaimer a membarrier(2).
#ifndef IOMMU_BROKER_CORE_IOVA_IOVA_ALLOCATOR_H_
#define IOMMU_BROKER_CORE_IOVA_IOVA_ALLOCATOR_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace iommu_broker {

// Every IOVA, size and limit is a multiple of this (except limits, which are
// the last usable address: a multiple of it minus one).
inline constexpr uint64_t kIovaGranule = 4096;
// The largest single allocation: one 1 GiB leaf.
inline constexpr uint64_t kMaxIovaAllocation = uint64_t{1} << 30;

// A half-open range [start, start + size).
struct IovaRange {
  uint64_t start = 0;
  uint64_t size = 0;
};

// How Free treats its caller.
enum class FreeCheck {
  // The caller guarantees every Free names a live allocation and its exact
  // size (the domain does: it frees what its page table says it mapped).
  // Nothing is looked up; freeing anything else corrupts the space.
  kTrusted,
  // Every live allocation is recorded; a Free of something not allocated, or
  // with the wrong size, is refused with an error and changes nothing. Costs
  // a shared lock per Allocate and Free: for tests and for callers that
  // cannot prove their ranges.
  kChecked,
};

struct IovaAllocatorOptions {
  // The aperture [aperture_first, aperture_last], inclusive; both must be
  // granule-aligned as a range (first % 4096 == 0, (last + 1) % 4096 == 0).
  uint64_t aperture_first = 0;
  uint64_t aperture_last = (uint64_t{1} << 48) - 1;
  // Ranges never handed out and never reservable (e.g. the MSI window).
  // Granule-aligned; may overlap each other or lie partly outside the aperture.
  std::vector<IovaRange> reserved;
  FreeCheck free_check = FreeCheck::kTrusted;
};

// A point-in-time view for metrics. Exact when no other thread is allocating.
// Under concurrency each field is individually current but they may not sum,
// and allocated_bytes (the aperture minus everything else) also counts ranges
// in flight between a thread cache and the arena. Byte counts saturate at
// 2^64 - 1: a full 64-bit aperture is 2^64 bytes.
struct IovaStats {
  uint64_t aperture_bytes = 0;
  uint64_t reserved_bytes = 0;   // fixed reserved ranges and Reserve()d ranges
  uint64_t allocated_bytes = 0;  // held by callers (class footprints)
  uint64_t cached_bytes = 0;     // free, but held by thread caches and the depot
  uint64_t free_bytes = 0;       // free in the shared arena
  // The largest aligned power-of-two block free in the arena: an allocation
  // of this size succeeds without reclaiming caches (fragmentation gauge).
  uint64_t largest_free_block_bytes = 0;
  uint64_t fast_path_allocations = 0;  // served by the thread's own cache
  uint64_t depot_allocations = 0;      // served by a magazine from the depot
  uint64_t slow_path_allocations = 0;  // carved from the arena
  uint64_t failed_allocations = 0;     // answered RESOURCE_EXHAUSTED
  uint64_t cache_reclaims = 0;         // thread caches drained by another thread
  uint64_t thread_caches = 0;          // caches currently bound to a thread
};

class IovaAllocator final {
 public:
  // Validates `options` (INVALID_ARGUMENT naming the field otherwise).
  static absl::StatusOr<std::unique_ptr<IovaAllocator>> Create(const IovaAllocatorOptions& options);

  IovaAllocator(const IovaAllocator&) = delete;
  IovaAllocator& operator=(const IovaAllocator&) = delete;
  ~IovaAllocator();

  // Returns an IOVA for `size` bytes: a granule multiple in [4 KiB, 1 GiB].
  // A power-of-two size comes back aligned to itself; any other size to the
  // largest power of two below it (or better). The whole range lies inside
  // the aperture, at or below `limit` (the device's DMA mask, e.g.
  // 0xffffffff), and touches no reserved range. Before answering
  // RESOURCE_EXHAUSTED every thread's cache is reclaimed and the request
  // retried.
  absl::StatusOr<uint64_t> Allocate(uint64_t size, uint64_t limit);

  // Returns [iova, iova + size), which Allocate gave out with this `size`.
  // See FreeCheck for what happens when that is not true.
  absl::Status Free(uint64_t iova, uint64_t size);
  // Frees every range of `ranges` as Free would, binding the thread's cache
  // and entering it once for all of them: for callers that free in batches
  // (a flush queue). Sizes and alignments are checked first, and with
  // FreeCheck::kChecked every range's allocation too; on an error nothing is
  // freed.
  absl::Status FreeAll(absl::Span<const IovaRange> ranges);

  // Takes the caller-chosen, granule-aligned range [iova, iova + size) out of
  // the space (fixed-IOVA maps). ALREADY_EXISTS if any part is reserved or
  // allocated; OUT_OF_RANGE if it leaves the aperture. Caches are reclaimed
  // before reporting a conflict with allocated space.
  absl::Status Reserve(uint64_t iova, uint64_t size);
  // Gives back a range taken by Reserve with exactly these bounds (NOT_FOUND
  // otherwise; INVALID_ARGUMENT for an unaligned iova).
  absl::Status Unreserve(uint64_t iova, uint64_t size);

  // Returns every cached range (all threads' and the depot's) to the arena.
  void ReclaimAllCaches();
  // Returns to the arena the caches of threads that have not allocated or
  // freed since the previous call, and depot magazines idle as long. Call it
  // periodically (e.g. once a second) so idle threads do not hoard space.
  void ShrinkIdleCaches();

  IovaStats Stats() const;

  // Shared with threads' cache tables, which outlive nothing but may outlive
  // this object by the time they notice (thread exit).
  class Space;

 private:
  explicit IovaAllocator(std::shared_ptr<Space> space);

  const std::shared_ptr<Space> space_;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOVA_IOVA_ALLOCATOR_H_
