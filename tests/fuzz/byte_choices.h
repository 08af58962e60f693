// ByteChoices: Choices read from a fuzzer's input, front to back, so that
// the input bytes are the sequence's decisions and libFuzzer's mutations
// change them one by one. A choice among n values reads just enough bytes
// for n (one for up to 256), big-endian, modulo n. Once the input is used
// up every choice is its lowest value and exhausted() is true.
//
// Thread-safety: not thread-safe.
#ifndef IOMMU_BROKER_TESTS_FUZZ_BYTE_CHOICES_H_
#define IOMMU_BROKER_TESTS_FUZZ_BYTE_CHOICES_H_

#include <cstdint>

#include "absl/strings/string_view.h"
#include "tests/core/choices.h"

namespace iommu_broker::reference {

class ByteChoices final : public Choices {
 public:
  // `input` must outlive the choices.
  explicit ByteChoices(absl::string_view input) : input_(input) {}

  uint64_t Uniform(uint64_t low, uint64_t high) override {
    const uint64_t span = high - low;  // values - 1
    uint64_t value = 0;
    for (uint64_t rest = span; rest != 0 && !input_.empty(); rest >>= 8) {
      value = (value << 8) | static_cast<uint8_t>(input_.front());
      input_.remove_prefix(1);
    }
    return span == ~uint64_t{0} ? value : low + value % (span + 1);
  }
  bool exhausted() const override { return input_.empty(); }

 private:
  absl::string_view input_;
};

}  // namespace iommu_broker::reference

#endif  // IOMMU_BROKER_TESTS_FUZZ_BYTE_CHOICES_H_
