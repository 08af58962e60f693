#!/usr/bin/env bash
# The main job (README), until the daemon exists: installs dependencies,
# builds in Release and runs the engine's benchmarks, each product against
# the baseline built into the same binary: the IOVA allocator (1-8 threads),
# then the emulated IOMMU (map/unmap per policy, translate, huge pages).
# Extra arguments go to both benchmarks (e.g. --benchmark_min_time=0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release --parallel "$(nproc)" --target iova_allocator_bench iommu_bench
build-release/bench/iova_allocator_bench "$@"
build-release/bench/iommu_bench "$@"
