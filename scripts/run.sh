#!/usr/bin/env bash
# The main job (README): installs dependencies, builds in Release and runs
# iommu-brokerd in the foreground with the default configuration
# (deploy/iommu-brokerd.textproto: one domain per policy, devices attached),
# serving gRPC on 127.0.0.1:50051 and Prometheus metrics on 127.0.0.1:9464.
# Ctrl-C (SIGINT) or SIGTERM drains it and exits 0. Extra arguments go to
# the daemon (e.g. --listen=unix:/tmp/iommu-broker.sock); see --help.
# `--build-only` stops after the build (the container image's build stage).
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=false
if [[ "${1:-}" == "--build-only" ]]; then
  build_only=true
  shift
fi

bash scripts/install-deps.sh
cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release --parallel "$(nproc)" --target iommu-brokerd iommuctl
if [[ "$build_only" == true ]]; then exit 0; fi
exec build-release/server/iommu-brokerd --config=deploy/iommu-brokerd.textproto "$@"
