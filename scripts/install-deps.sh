#!/usr/bin/env bash
# Installs every Debian 12 package the project needs to build, test and run
# (apt-get), then the npm packages pinned in deploy/tests/package-lock.json
# (npm ci; the Kubernetes schema check). Idempotent: what is already
# installed is skipped, so a second run is quick.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev
  libprotobuf-dev protobuf-compiler
  libgrpc++-dev protobuf-compiler-grpc
  prometheus-cpp-dev
  libgtest-dev libgmock-dev googletest
  libbenchmark-dev
  valgrind  # callgrind: the benchmarks' instruction counts (docs/DEVELOPMENT.md)
  libcli11-dev
  python3-grpcio python3-protobuf
  prometheus  # prometheus + promtool: the dashboards/ tests
  clang libclang-rt-14-dev  # the ASan tree and the libFuzzer targets (tests/fuzz/)
  yamllint docker-compose python3-yaml systemd  # deploy/ checks
  nodejs  # deploy/ checks: Kubernetes schema validation (deploy/tests/)
)

install_debian_packages() {
  local missing=()
  for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$package")
    fi
  done

  # Debian's nodejs comes without npm; other Node.js builds bundle it.
  if ! command -v npm >/dev/null; then missing+=(npm); fi

  if ((${#missing[@]} == 0)); then
    echo "install-deps: all ${#packages[@]} packages already installed"
    return 0
  fi

  local sudo_cmd=()
  if ((EUID != 0)); then sudo_cmd=(sudo); fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The npm packages of deploy/tests (Kubernetes schema validation), exactly as
# package-lock.json pins them; skipped when that lock is already installed.
install_npm_packages() {
  local dir=deploy/tests
  if cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-package-lock.json"; then
    return 0
  fi
  echo "install-deps: npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$dir/package-lock.json" "$dir/node_modules/.installed-package-lock.json"
}

cd "$(dirname "$0")/.."
install_debian_packages
install_npm_packages
