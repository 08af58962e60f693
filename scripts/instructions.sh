#!/usr/bin/env bash
# Instructions per item of the emulated IOMMU's main benchmarks, counted by
# callgrind on the Release build of bench/iommu_bench: the same on every run,
# where times on a shared VM move with its clock (docs/PERFORMANCE.md). Each
# benchmark runs under callgrind collecting only inside one function, and the
# count is divided by the calls of a function called once per item.
#
#   bash scripts/instructions.sh               # every row below
#   bash scripts/instructions.sh 'Fast|Parts'  # rows whose benchmark matches
#
# Takes about 15 s a row. Run it on an otherwise idle machine only for speed:
# the counts do not depend on load.
set -euo pipefail
cd "$(dirname "$0")/.."

# benchmark (exact Google Benchmark name) | collect inside | once per item.
# Callgrind flips collection on entering and leaving each function named, so
# a benchmark function's count leaves out the clock reading after its loop.
loop_of() { echo "*$1(*,*MeasureCpuClockGhz*"; }
rows=(
  "BM_MapUnmap_Fast_Cost0/real_time/threads:1|$(loop_of BM_MapUnmap)|Iommu::Unmap("
  "BM_MapUnmap_Paranoid_Cost0/real_time/threads:1|$(loop_of BM_MapUnmap)|Iommu::Unmap("
  "BM_MapUnmap_Pt_Cost0/real_time/threads:1|$(loop_of BM_MapUnmap)|Iommu::Unmap("
  "BM_MapUnmap_Bypass_Cost0/real_time/threads:1|$(loop_of BM_MapUnmap)|Iommu::Unmap("
  "BM_MapUnmapPartsOnly/real_time/threads:1|$(loop_of BM_MapUnmapPartsOnly)|IovaAllocator::Allocate("
  "BM_Translate_IotlbHit_Fast/real_time/threads:1|*Iommu::Translate(*|Iommu::Translate("
  "BM_Translate_IotlbMiss_Paranoid_Random/real_time/threads:1|*Iommu::Translate(*|Iommu::Translate("
)
filter="${1:-.}"

cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release --target iommu_bench >/dev/null
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

printf '%-58s %14s %10s\n' benchmark instructions items
for row in "${rows[@]}"; do
  IFS='|' read -r name collect item <<<"$row"
  [[ "$name" =~ $filter ]] || continue
  toggles=()
  IFS=',' read -ra functions <<<"$collect"
  for function in "${functions[@]}"; do toggles+=(--toggle-collect="$function"); done
  valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$out/cg" \
    "${toggles[@]}" build-release/bench/iommu_bench \
    --benchmark_filter="^${name}\$" --benchmark_min_time=0.05 >"$out/log" 2>&1 ||
    { cat "$out/log" >&2; exit 1; }
  # The total is on the summary line; the items are the calls recorded
  # against `item` (a calls= line follows each cfn= naming a callee).
  awk -v item="$item" -v name="$name" '
    /^summary:/ { total = $2 }
    /^cfn=/ { callee = index($0, item) > 0; next }
    /^calls=/ { if (callee) { split($0, c, "[= ]"); items += c[2] } callee = 0 }
    END {
      if (items == 0) { printf "%-58s %14s %10s\n", name, "no items", 0; exit 1 }
      printf "%-58s %14.1f %10d\n", name, total / items, items
    }' "$out/cg"
done
