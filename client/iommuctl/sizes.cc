#include "client/iommuctl/sizes.h"

#include <algorithm>
#include <array>
#include <optional>

#include "absl/numeric/bits.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace iommu_broker::iommuctl {
namespace {

struct Suffix {
  char letter;
  int shift;
};

// Largest first, so that FormatSize picks the shortest form.
constexpr std::array<Suffix, 4> kSuffixes = {{{'T', 40}, {'G', 30}, {'M', 20}, {'K', 10}}};

std::optional<int> SuffixShift(char letter) {
  for (const Suffix& suffix : kSuffixes) {
    if (absl::ascii_toupper(static_cast<unsigned char>(letter)) == suffix.letter) {
      return suffix.shift;
    }
  }
  return std::nullopt;
}

enum class Problem { kNone, kMalformed, kTooLarge };

// A decimal or 0x-hex number, the decimal one optionally with one suffix.
Problem ParseBytes(absl::string_view text, uint64_t* value) {
  const bool hex = absl::StartsWithIgnoreCase(text, "0x");
  if (hex) text.remove_prefix(2);
  int shift = 0;
  if (!hex && !text.empty()) {
    if (std::optional<int> suffix = SuffixShift(text.back())) {
      shift = *suffix;
      text.remove_suffix(1);
    }
  }
  // Checked first: SimpleAtoi would also take a sign, spaces or another 0x.
  const auto is_digit = hex ? absl::ascii_isxdigit : absl::ascii_isdigit;
  if (text.empty() || !std::all_of(text.begin(), text.end(), [is_digit](char c) {
        return is_digit(static_cast<unsigned char>(c));
      })) {
    return Problem::kMalformed;
  }
  const bool fits = hex ? absl::SimpleHexAtoi(text, value) : absl::SimpleAtoi(text, value);
  if (!fits || (shift > 0 && absl::countl_zero(*value) < shift)) return Problem::kTooLarge;
  *value <<= shift;
  return Problem::kNone;
}

absl::StatusOr<uint64_t> ParseQuantity(absl::string_view field, absl::string_view text,
                                       absl::string_view noun, absl::string_view syntax) {
  uint64_t value = 0;
  switch (ParseBytes(text, &value)) {
    case Problem::kNone:
      return value;
    case Problem::kMalformed:
      return absl::InvalidArgumentError(
          absl::StrCat(field, " '", text, "' is not ", noun, ": use ", syntax));
    case Problem::kTooLarge:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, " '", text, "' is too large: the largest is 0xffffffffffffffff"));
}

}  // namespace

absl::StatusOr<uint64_t> ParseSize(absl::string_view field, absl::string_view text) {
  return ParseQuantity(field, text, "a size", "bytes or a K/M/G/T suffix (4096, 0x1000, 4K)");
}

absl::StatusOr<uint64_t> ParseAddress(absl::string_view field, absl::string_view text) {
  return ParseQuantity(field, text, "an address", "hex, decimal or a K/M/G/T suffix (0x40000000, 1G)");
}

std::string FormatSize(uint64_t bytes) {
  if (bytes != 0) {
    for (const Suffix& suffix : kSuffixes) {
      const uint64_t unit = uint64_t{1} << suffix.shift;
      if (bytes % unit == 0) return absl::StrCat(bytes / unit, std::string(1, suffix.letter));
    }
  }
  return absl::StrCat(bytes);
}

std::string FormatAddress(uint64_t address) { return absl::StrCat("0x", absl::Hex(address)); }

}  // namespace iommu_broker::iommuctl
