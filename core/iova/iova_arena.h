// IovaArena is the shared free-space structure behind the IOVA allocator's
// caches: a binary buddy system over granule numbers (IOVA / 4 KiB).
//
// Free space is kept as maximal aligned power-of-two blocks, one ordered set
// per order, fully coalesced: every free, aligned power-of-two range lies
// inside one free block, so power-of-two requests are found exactly and in
// O(orders * log(free blocks)); nothing here ever walks live allocations.
// Ranges of any size and alignment can be released or taken; they are split
// into blocks on the way in.
//
//   IovaArena arena;
//   arena.Release(0, 1 << 20);                        // 4 GiB of free space
//   std::optional<uint64_t> first = arena.Take(3, 2, 1 << 20);  // 3 granules, 2-aligned
//
// Thread-safety: not thread-safe; the allocator guards it with a mutex.
#ifndef IOMMU_BROKER_CORE_IOVA_IOVA_ARENA_H_
#define IOMMU_BROKER_CORE_IOVA_IOVA_ARENA_H_

#include <array>
#include <cstdint>
#include <optional>

#include "absl/container/btree_set.h"

namespace iommu_broker {

class IovaArena final {
 public:
  IovaArena() = default;
  IovaArena(const IovaArena&) = delete;
  IovaArena& operator=(const IovaArena&) = delete;

  // Adds [first, first + count) to the free space. It must not be free
  // already (the caller owns it).
  void Release(uint64_t first, uint64_t count);

  // Takes `count` granules aligned to `alignment` (a power of two <= the
  // next power of two of count) that end at or before `end`, from the
  // smallest block order that has one, placed as high below `end` as that
  // block allows. Returns the first granule, or nullopt if no free block of
  // order >= ceil(log2(count)) fits below `end`.
  std::optional<uint64_t> Take(uint64_t count, uint64_t alignment, uint64_t end);

  // Takes exactly [first, first + count) if every granule of it is free;
  // otherwise changes nothing and returns false.
  bool TakeRange(uint64_t first, uint64_t count);

  uint64_t free_granules() const { return free_granules_; }
  // Size of the largest free block, in granules (0 when nothing is free).
  uint64_t largest_free_block() const;
  // Number of free blocks: memory use is proportional to it.
  uint64_t free_blocks() const;

 private:
  static constexpr int kOrders = 64;

  void ReleaseBlock(uint64_t first, int order);
  void InsertBlock(uint64_t first, int order);
  void EraseBlock(uint64_t first, int order);
  // The free block containing granule `granule`, as (first, order).
  std::optional<std::pair<uint64_t, int>> FindBlockContaining(uint64_t granule) const;

  std::array<absl::btree_set<uint64_t>, kOrders> blocks_;
  uint64_t nonempty_orders_ = 0;  // bit k set <=> blocks_[k] is not empty
  uint64_t free_granules_ = 0;
};

}  // namespace iommu_broker

#endif  // IOMMU_BROKER_CORE_IOVA_IOVA_ARENA_H_
