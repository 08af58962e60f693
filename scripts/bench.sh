#!/usr/bin/env bash
# The engine's and the service's benchmarks (docs/PERFORMANCE.md), each
# product against the baseline built into the same binary: the IOVA
# allocator (1-8 threads), the emulated IOMMU (map/unmap per policy,
# translate, huge pages) and the gRPC service against an empty-handler
# server. Extra arguments go to every benchmark
# (e.g. --benchmark_min_time=0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
benches=(iova_allocator_bench iommu_bench rpc_bench)
cmake --build build-release --parallel "$(nproc)" --target "${benches[@]}"
for bench in "${benches[@]}"; do
  build-release/bench/"$bench" "$@"
done
