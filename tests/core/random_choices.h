// RandomChoices: Choices from a seeded std::mt19937_64, so that a seed
// names a sequence (the differential test prints it on a difference).
//
// Thread-safety: not thread-safe.
#ifndef IOMMU_BROKER_TESTS_CORE_RANDOM_CHOICES_H_
#define IOMMU_BROKER_TESTS_CORE_RANDOM_CHOICES_H_

#include <cstdint>
#include <random>

#include "tests/core/choices.h"

namespace iommu_broker::reference {

class RandomChoices final : public Choices {
 public:
  explicit RandomChoices(uint64_t seed) : rng_(seed) {}

  uint64_t Uniform(uint64_t low, uint64_t high) override {
    return std::uniform_int_distribution<uint64_t>(low, high)(rng_);
  }
  bool exhausted() const override { return false; }

 private:
  std::mt19937_64 rng_;
};

}  // namespace iommu_broker::reference

#endif  // IOMMU_BROKER_TESTS_CORE_RANDOM_CHOICES_H_
