// Size classes of the IOVA allocator, in granules (4 KiB pages).
//
// Four classes per power of two: 1, 2, 3, 4, then 5, 6, 7, 8, then 10, 12, 14,
// 16, then 20, 24, 28, 32 ... up to 2^18 granules (1 GiB). A request of n
// granules is served by the smallest class >= n, so it wastes at most 25% of
// IOVA space, and a class's footprint is aligned to the largest power of two
// <= the class (a power-of-two class to itself). Every function is constexpr
// and branch-light: the allocator calls them on its fast path.
#ifndef IOMMU_BROKER_CORE_IOVA_SIZE_CLASS_H_
#define IOMMU_BROKER_CORE_IOVA_SIZE_CLASS_H_

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "absl/base/optimization.h"

namespace iommu_broker::size_class {

inline constexpr int kMaxGranulesLog2 = 18;  // 1 GiB of 4 KiB granules
inline constexpr uint64_t kMaxGranules = uint64_t{1} << kMaxGranulesLog2;
inline constexpr int kCount = 4 + 4 * (kMaxGranulesLog2 - 2);

// floor(log2(n)) for n >= 1.
constexpr int FloorLog2(uint64_t n) { return 63 - std::countl_zero(n); }

namespace internal {
constexpr int ComputeIndexOf(uint64_t granules) {
  if (granules <= 4) return static_cast<int>(granules) - 1;
  const int octave = FloorLog2(granules - 1);  // granules in (2^octave, 2^(octave+1)]
  const int step_log2 = octave - 2;            // four steps per octave
  const uint64_t above_octave = granules - (uint64_t{1} << octave) - 1;
  const int step = static_cast<int>(above_octave >> step_log2);  // 0..3
  return 4 + 4 * step_log2 + step;
}
// Requests of up to 64 granules (256 KiB) are the common case, and their
// sizes vary from one request to the next: a table spares the mispredicted
// branches of the computation.
inline constexpr uint64_t kTabulatedGranules = 64;
inline constexpr std::array<uint8_t, kTabulatedGranules + 1> kSmallIndex = [] {
  std::array<uint8_t, kTabulatedGranules + 1> index{};
  for (uint64_t granules = 1; granules <= kTabulatedGranules; ++granules) {
    index[granules] = static_cast<uint8_t>(ComputeIndexOf(granules));
  }
  return index;
}();
}  // namespace internal

// The class index serving `granules`, which must be in [1, kMaxGranules].
constexpr int IndexOf(uint64_t granules) {
  if (ABSL_PREDICT_TRUE(granules <= internal::kTabulatedGranules)) {
    return internal::kSmallIndex[granules];
  }
  return internal::ComputeIndexOf(granules);
}

namespace internal {
constexpr uint64_t ComputeGranulesOf(int index) {
  if (index < 4) return static_cast<uint64_t>(index) + 1;
  const int octave = (index - 4) / 4 + 2;
  const uint64_t steps = static_cast<uint64_t>((index - 4) % 4) + 1;
  return (uint64_t{1} << octave) + steps * (uint64_t{1} << (octave - 2));
}
inline constexpr std::array<uint64_t, kCount> kGranules = [] {
  std::array<uint64_t, kCount> granules;
  for (int index = 0; index < kCount; ++index) granules[index] = ComputeGranulesOf(index);
  return granules;
}();
}  // namespace internal

// The footprint, in granules, of class `index`.
constexpr uint64_t GranulesOf(int index) { return internal::kGranules[index]; }

// The alignment, in granules, of class `index`'s footprint.
constexpr uint64_t AlignmentOf(int index) { return std::bit_floor(GranulesOf(index)); }

}  // namespace iommu_broker::size_class

#endif  // IOMMU_BROKER_CORE_IOVA_SIZE_CLASS_H_
