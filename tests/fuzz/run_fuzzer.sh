#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time, as a ctest test (label fuzz):
#   run_fuzzer.sh FUZZER SEED_CORPUS_DIR ARTIFACT_DIR
# The seeds are copied to a temporary directory, where libFuzzer adds what it
# finds, so the committed corpus never changes. IOMMU_FUZZ_SECONDS (default
# 30) bounds the run. A crash, leak, sanitizer report, oracle mismatch or an
# input running past 60 s makes libFuzzer exit non-zero, failing the test;
# the input is kept as ARTIFACT_DIR/<fuzzer>-crash-<sha1> (or leak-, timeout-)
# and reproduces with `FUZZER <that file>`.
set -euo pipefail

fuzzer="$1"
seeds="$2"
artifacts="$3"
seconds="${IOMMU_FUZZ_SECONDS:-30}"

corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
cp "$seeds"/* "$corpus"/
mkdir -p "$artifacts"

# -entropic=0: with this many instrumented edges (the generated protobuf
# code included) libFuzzer's entropic schedule costs more than the inputs;
# without it broker_service_fuzzer runs about six times as many.
"$fuzzer" -max_total_time="$seconds" -timeout=60 -entropic=0 -print_final_stats=1 \
  -artifact_prefix="$artifacts/$(basename "$fuzzer")-" "$corpus"
