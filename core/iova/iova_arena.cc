#include "core/iova/iova_arena.h"

#include <algorithm>
#include <bit>

#include "absl/container/inlined_vector.h"

namespace iommu_broker {
namespace {

constexpr uint64_t BlockSize(int order) { return uint64_t{1} << order; }

constexpr int CeilLog2(uint64_t n) { return n <= 1 ? 0 : 64 - std::countl_zero(n - 1); }

// The largest aligned block that starts at `first` and fits in `count`.
constexpr int LargestBlockAt(uint64_t first, uint64_t count) {
  return std::min(std::countr_zero(first), 63 - std::countl_zero(count));
}

}  // namespace

void IovaArena::Release(uint64_t first, uint64_t count) {
  free_granules_ += count;
  while (count > 0) {
    const int order = LargestBlockAt(first, count);
    ReleaseBlock(first, order);
    first += BlockSize(order);
    count -= BlockSize(order);
  }
}

void IovaArena::ReleaseBlock(uint64_t first, int order) {
  // Merge with the buddy while it is free: this keeps every free aligned
  // power-of-two range inside a single block.
  while (order < kOrders - 1) {
    const uint64_t buddy = first ^ BlockSize(order);
    if (!blocks_[order].contains(buddy)) break;
    EraseBlock(buddy, order);
    first &= ~BlockSize(order);
    ++order;
  }
  InsertBlock(first, order);
}

void IovaArena::InsertBlock(uint64_t first, int order) {
  blocks_[order].insert(first);
  nonempty_orders_ |= BlockSize(order);
}

void IovaArena::EraseBlock(uint64_t first, int order) {
  blocks_[order].erase(first);
  if (blocks_[order].empty()) nonempty_orders_ &= ~BlockSize(order);
}

std::optional<uint64_t> IovaArena::Take(uint64_t count, uint64_t alignment, uint64_t end) {
  if (count == 0 || count > end) return std::nullopt;
  const uint64_t last_start = end - count;
  uint64_t orders = nonempty_orders_ & (~uint64_t{0} << CeilLog2(count));
  while (orders != 0) {
    const int order = std::countr_zero(orders);
    orders &= orders - 1;
    const absl::btree_set<uint64_t>& blocks = blocks_[order];
    auto it = blocks.upper_bound(last_start);
    if (it == blocks.begin()) continue;
    const uint64_t block = *--it;
    const uint64_t block_end = block + BlockSize(order);
    // block is aligned to 2^order >= alignment and block + count <= end, so
    // the highest aligned start below min(block_end, end) is >= block.
    const uint64_t first = (std::min(block_end, end) - count) & ~(alignment - 1);
    EraseBlock(block, order);
    free_granules_ -= BlockSize(order);
    Release(block, first - block);
    Release(first + count, block_end - first - count);
    return first;
  }
  return std::nullopt;
}

bool IovaArena::TakeRange(uint64_t first, uint64_t count) {
  absl::InlinedVector<std::pair<uint64_t, int>, 16> covering;
  const uint64_t end = first + count;
  uint64_t cursor = first;
  while (cursor < end) {
    std::optional<std::pair<uint64_t, int>> block = FindBlockContaining(cursor);
    if (!block.has_value()) return false;
    covering.push_back(*block);
    cursor = block->first + BlockSize(block->second);
  }
  for (const auto& [block, order] : covering) {
    EraseBlock(block, order);
    free_granules_ -= BlockSize(order);
  }
  if (!covering.empty()) {
    Release(covering.front().first, first - covering.front().first);
    Release(end, cursor - end);
  }
  return true;
}

std::optional<std::pair<uint64_t, int>> IovaArena::FindBlockContaining(uint64_t granule) const {
  for (uint64_t orders = nonempty_orders_; orders != 0; orders &= orders - 1) {
    const int order = std::countr_zero(orders);
    const uint64_t candidate = granule & ~(BlockSize(order) - 1);
    if (blocks_[order].contains(candidate)) return std::make_pair(candidate, order);
  }
  return std::nullopt;
}

uint64_t IovaArena::largest_free_block() const {
  return nonempty_orders_ == 0 ? 0 : BlockSize(63 - std::countl_zero(nonempty_orders_));
}

uint64_t IovaArena::free_blocks() const {
  uint64_t total = 0;
  for (const absl::btree_set<uint64_t>& blocks : blocks_) total += blocks.size();
  return total;
}

}  // namespace iommu_broker
