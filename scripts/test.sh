#!/usr/bin/env bash
# The test command (README, .ci/run): installs dependencies, then builds and
# runs every test in four build trees:
#   build/       the normal build (RelWithDebInfo): all tests
#   build-asan/  clang, AddressSanitizer + UndefinedBehaviorSanitizer: all tests
#   build-tsan/  ThreadSanitizer: the tests labelled `concurrency`
#   build-fuzz/  clang, libFuzzer + ASan + UBSan: the fuzz targets (label
#                `fuzz`), for IOMMU_FUZZ_SECONDS (default 30) at once
# Exits non-zero if anything fails. IOMMU_TEST_JOBS sets build parallelism.
# Arguments name the trees to build and test (default: all of them), e.g.
# `bash scripts/test.sh normal` as the container image's build does.
set -euo pipefail
cd "$(dirname "$0")/.."

all_trees=(normal asan tsan fuzz)
trees=("$@")
if ((${#trees[@]} == 0)); then trees=("${all_trees[@]}"); fi
for tree in "${trees[@]}"; do
  if [[ " ${all_trees[*]} " != *" $tree "* ]]; then
    echo "test.sh: unknown tree '$tree' (trees: ${all_trees[*]})" >&2
    exit 2
  fi
done
wants() { [[ " ${trees[*]} " == *" $1 "* ]]; }

bash scripts/install-deps.sh

jobs="${IOMMU_TEST_JOBS:-$(nproc)}"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

# configure_and_build DIR [CMAKE_ARGS...]
configure_and_build() {
  local dir="$1"
  shift
  cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
  cmake --build "$dir" --parallel "$jobs"
}

run_ctest() {
  local dir="$1"
  shift
  ctest --test-dir "$dir" --output-on-failure --parallel "$jobs" --timeout 600 "$@"
}

# Line tables only (-g1) in the test trees: enough for sanitizer and gtest
# reports; full debug info makes the gRPC-heavy objects slow to compile and
# link.
debug_lines=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG")

if wants normal; then
  echo "=== normal build: all tests ==="
  configure_and_build build "${debug_lines[@]}"
  run_ctest build
fi

if wants asan; then
  echo "=== AddressSanitizer + UBSan build (clang): all tests ==="
  # clang at -O1 (ASan's usual level) in unity batches compiles the
  # sanitized tree in about 40% of GCC's time at -O2, and GCC still builds
  # every file on its own in the normal tree (docs/DEVELOPMENT.md).
  configure_and_build build-asan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_UNITY_BUILD=ON \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DIOMMU_SANITIZE=address \
    -DIOMMU_BUILD_BENCHMARKS=OFF
  run_ctest build-asan
fi

if wants tsan; then
  echo "=== ThreadSanitizer build: concurrency tests ==="
  configure_and_build build-tsan "${debug_lines[@]}" -DIOMMU_SANITIZE=thread \
    -DIOMMU_BUILD_BENCHMARKS=OFF -DIOMMU_BUILD_SERVER=OFF
  run_ctest build-tsan -L concurrency
fi

if wants fuzz; then
  echo "=== libFuzzer build (clang): fuzz targets, ${IOMMU_FUZZ_SECONDS:-30} s ==="
  # Only the fuzz targets and what they link, at -O0: the sanitized tree
  # compiles in about 30% less CPU time than at -O1, which in a bounded run
  # matters more than the fuzzers' speed (docs/DEVELOPMENT.md).
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DIOMMU_BUILD_FUZZERS=ON \
    -DIOMMU_BUILD_BENCHMARKS=OFF -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O0 -g1 -DNDEBUG" >/dev/null
  cmake --build build-fuzz --parallel "$jobs" --target fuzzers
  # All four at once: each gets half a core for the whole budget, where two
  # at a time would take twice the wall time.
  ctest --test-dir build-fuzz --output-on-failure --parallel 4 --timeout 600 -L fuzz
fi
