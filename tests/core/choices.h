// Choices is where a generated operation sequence gets its decisions from:
// a seeded pseudo-random generator in the differential test
// (random_choices.h), the fuzzer's input bytes in the iommu_ops fuzzer
// (tests/fuzz/byte_choices.h). The sequence asks only for numbers in a
// range, so either source drives the same sequences.
//
// Thread-safety: implementations need not be thread-safe.
#ifndef IOMMU_BROKER_TESTS_CORE_CHOICES_H_
#define IOMMU_BROKER_TESTS_CORE_CHOICES_H_

#include <cstdint>

namespace iommu_broker::reference {

class Choices {
 public:
  virtual ~Choices() = default;

  // A number in [low, high], both included; low <= high.
  virtual uint64_t Uniform(uint64_t low, uint64_t high) = 0;
  // True once the source has nothing more to decide (a fuzz input is used
  // up): a sequence then stops adding operations and tears down. Uniform
  // still answers (low).
  virtual bool exhausted() const = 0;
};

}  // namespace iommu_broker::reference

#endif  // IOMMU_BROKER_TESTS_CORE_CHOICES_H_
