#include "client/cpp/translation_cache.h"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>

namespace iommu_broker::client {
namespace {

// Past this many pages, a range invalidation scans the entries instead of
// probing page by page.
constexpr uint64_t kMaxProbedPages = 1024;

bool Granted(bool read, bool write, DmaAccess access) {
  return access == DmaAccess::kRead ? read : write;
}

}  // namespace

TranslationCache::TranslationCache(size_t max_pages)
    : max_pages_per_shard_(std::max<size_t>(max_pages / kShards, 1)) {}

std::optional<TranslationCache::CachedPage> TranslationCache::Lookup(uint64_t iova_page,
                                                                     DmaAccess access) {
  Shard& shard = ShardOf(iova_page);
  std::lock_guard<std::mutex> lock(shard.mutex);
  auto it = shard.pages.find(iova_page);
  if (it == shard.pages.end() || !Granted(it->second.read, it->second.write, access)) {
    ++shard.misses;
    return std::nullopt;
  }
  ++shard.hits;
  if (it->second.unmapped) ++shard.stale_hits;
  return CachedPage{.phys_page = it->second.phys_page, .stale = it->second.unmapped};
}

void TranslationCache::Insert(uint64_t token, uint64_t iova_page, uint64_t phys_page,
                              DmaAccess access) {
  Shard& shard = ShardOf(iova_page);
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (invalidations_.load(std::memory_order_seq_cst) != token) {
    ++shard.dropped_fills;
    return;
  }
  auto it = shard.pages.find(iova_page);
  if (it == shard.pages.end()) {
    if (shard.pages.size() >= max_pages_per_shard_) shard.pages.erase(shard.pages.begin());
    it = shard.pages.emplace(iova_page, Entry{phys_page}).first;
  } else if (it->second.phys_page != phys_page) {
    it->second = Entry{phys_page};  // remapped since: the old grants are void
  }
  it->second.unmapped = false;  // the broker has just translated it
  (access == DmaAccess::kRead ? it->second.read : it->second.write) = true;
  ++shard.fills;
}

template <typename Drop>
void TranslationCache::ForEachCachedPage(uint64_t iova, uint64_t size, Drop drop) {
  if (size == 0) return;
  invalidations_.fetch_add(1, std::memory_order_seq_cst);
  const uint64_t first = iova & ~(kPageSize - 1);
  const uint64_t last = (iova + (size - 1)) & ~(kPageSize - 1);  // may wrap only past 2^64
  const uint64_t pages = (last - first) / kPageSize + 1;
  if (last < first || pages > kMaxProbedPages) {
    for (Shard& shard : shards_) {
      std::lock_guard<std::mutex> lock(shard.mutex);
      for (auto it = shard.pages.begin(); it != shard.pages.end();) {
        const bool inside = it->first >= first && (last < first || it->first <= last);
        if (inside && drop(it->second)) {
          shard.pages.erase(it++);
        } else {
          ++it;
        }
      }
    }
  } else {
    for (uint64_t page = first;; page += kPageSize) {
      Shard& shard = ShardOf(page);
      std::lock_guard<std::mutex> lock(shard.mutex);
      if (auto it = shard.pages.find(page); it != shard.pages.end() && drop(it->second)) {
        shard.pages.erase(it);
      }
      if (page == last) break;
    }
  }
  applied_invalidations_.fetch_add(1, std::memory_order_release);
}

void TranslationCache::MarkUnmapped(uint64_t iova, uint64_t size) {
  ForEachCachedPage(iova, size, [](Entry& entry) {
    entry.unmapped = true;
    return false;
  });
}

void TranslationCache::InvalidateRange(uint64_t iova, uint64_t size) {
  ForEachCachedPage(iova, size, [](const Entry&) { return true; });
}

void TranslationCache::InvalidateAll() {
  invalidations_.fetch_add(1, std::memory_order_seq_cst);
  for (Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    shard.pages.clear();
  }
  applied_invalidations_.fetch_add(1, std::memory_order_release);
}

TranslationCacheStats TranslationCache::Stats() const {
  TranslationCacheStats stats;
  stats.invalidations = applied_invalidations_.load(std::memory_order_acquire);
  for (const Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    stats.hits += shard.hits;
    stats.stale_hits += shard.stale_hits;
    stats.misses += shard.misses;
    stats.fills += shard.fills;
    stats.dropped_fills += shard.dropped_fills;
    stats.entries += shard.pages.size();
  }
  return stats;
}

}  // namespace iommu_broker::client
