#!/usr/bin/env bash
# The main job (README): installs dependencies, builds in Release and runs the
# IOVA allocator benchmark, product against baseline, at 1-8 threads.
# Extra arguments go to the benchmark (e.g. --benchmark_filter=OnePage).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release --parallel "$(nproc)" --target iova_allocator_bench
exec build-release/bench/iova_allocator_bench "$@"
