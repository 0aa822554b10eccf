#!/usr/bin/env bash
# Herald's whole test suite, on a fresh machine with nothing pre-started.
#
# It provisions what the suite needs by itself:
#   - Apache Kafka: the release pinned in testkit/kafka/pom.xml, resolved from
#     Maven Central once (cached in ~/.cache/herald/), run as one KRaft broker
#     for the whole run (HERALD_TEST_KAFKA=host:port uses a running cluster
#     instead); tests that kill or restart brokers start their own;
#   - PostgreSQL: Debian's postgresql package when no server binaries exist,
#     and a throwaway cluster in a temp dir on a free port
#     (HERALD_TEST_POSTGRES=postgres://... uses a running server instead);
#   - nginx: Debian's package (installed, not started as a service; the
#     proxy tests run the shipped deploy/nginx/nginx.conf on loopback);
#   - chromium: Debian's package, for the browser tests (playwright-core
#     drives it; no browser download);
#   - cargo-nextest, mdBook (renders docs/), tansu (a Kafka-compatible
#     broker the testkit runs as a child process), and the npm clients the
#     end-to-end tests drive.
# Needs Java 17+ and Maven (for Kafka), Node.js 20+ and npm.
#
#   scripts/test.sh [nextest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
started=$(date +%s)

need() { # command, what to do when it is missing
  command -v "$1" >/dev/null 2>&1 || { echo "error: $1 not found: $2" >&2; exit 1; }
}
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  command -v apt-get >/dev/null 2>&1 || { echo "error: apt-get not found; install $* by hand" >&2; exit 1; }
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "${HERALD_TEST_DOCKER:-}" = 1 ]; then
  # Kafka and PostgreSQL as containers (testcontainers); herald-test-services
  # says clearly when no Docker engine is there.
  echo "==> HERALD_TEST_DOCKER=1: Apache Kafka and PostgreSQL run as containers"
else
  need java "Apache Kafka 4.x needs Java 17+ (Debian: apt-get install -y openjdk-17-jre-headless), or set JAVA_HOME"
  need mvn "Maven resolves Apache Kafka from Maven Central (Debian: apt-get install -y maven)"
fi
need node "Node.js 20+ runs the npm client tests"
need npm "npm installs the npm client tests' packages"
if [ "${HERALD_TEST_DOCKER:-}" != 1 ] && [ -z "${HERALD_TEST_POSTGRES:-}" ] && [ -z "${HERALD_PG_BINDIR:-}" ] \
  && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing Debian's postgresql (server binaries for a throwaway test cluster)"
  apt_install postgresql
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "==> installing Debian's nginx (the proxy tests run the shipped nginx.conf in front of gateways)"
  # Installed only, never started as a service: tests run their own.
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  apt_install nginx || { $sudo rm -f /usr/sbin/policy-rc.d; exit 1; }
  $sudo rm -f /usr/sbin/policy-rc.d
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium (browser end-to-end tests, driven by playwright-core)"
  apt_install chromium
fi
if ! mdbook --version 2>/dev/null | grep -q "v0.5"; then
  echo "==> installing mdBook (renders docs/; once, a few minutes)"
  cargo install mdbook --locked --version 0.5.4
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
if [ -z "${HERALD_TANSU_BIN:-}" ] && ! command -v tansu >/dev/null 2>&1; then
  # The testkit's broker-process test and the benchmarks' `--broker tansu`
  # run it as a child process (a Kafka-compatible broker, in memory).
  echo "==> installing tansu 0.6.0 (once, several minutes)"
  cargo install tansu --locked --version 0.6.0 --features dynostore
fi
echo "==> installing npm clients (tests/js)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

echo "==> deployment files (compose, chart, alert rules, dashboard)"
scripts/validate-deploy.sh
echo "==> documentation (mdBook; links are checked by tests/tests/docs_links.rs)"
mdbook build docs >/dev/null
echo "==> building the binaries (tests run herald-gateway as separate processes)"
cargo build --workspace --bins --tests

# One broker and one database server for the whole run. The services live
# as long as their stdin (a pipe held by this script), however it ends.
services_dir=$(mktemp -d)
services_pid=""
stop_services() {
  if [ -n "$services_pid" ]; then
    exec 9>&- 2>/dev/null || true
    wait "$services_pid" 2>/dev/null || true
  fi
  rm -rf "$services_dir"
}
trap stop_services EXIT
if [ -n "${HERALD_TEST_KAFKA:-}" ] && [ -n "${HERALD_TEST_POSTGRES:-}" ]; then
  echo "==> using Kafka at $HERALD_TEST_KAFKA and PostgreSQL at $HERALD_TEST_POSTGRES"
else
  echo "==> starting the run's services (Apache Kafka $(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' testkit/kafka/pom.xml), PostgreSQL)"
  mkfifo "$services_dir/hold"
  flags=()
  [ -z "${HERALD_TEST_KAFKA:-}" ] || flags+=(--no-kafka)
  [ -z "${HERALD_TEST_POSTGRES:-}" ] || flags+=(--no-postgres)
  target/debug/herald-test-services --env-file "$services_dir/env" "${flags[@]}" \
    <"$services_dir/hold" &
  services_pid=$!
  exec 9>"$services_dir/hold"
  until [ -s "$services_dir/env" ]; do
    kill -0 "$services_pid" 2>/dev/null || { echo "error: the test services did not start" >&2; exit 1; }
    sleep 0.2
  done
  while IFS='=' read -r key value; do
    # An address given by the caller wins over a started service.
    if [ -z "${!key:-}" ]; then export "$key=$value"; fi
  done <"$services_dir/env"
fi
echo "    Kafka:      ${HERALD_TEST_KAFKA} (Apache Kafka ${HERALD_TEST_KAFKA_VERSION:-of the given cluster})"
echo "    PostgreSQL: ${HERALD_TEST_POSTGRES}"

profile=default
[ "${CI:-}" != "true" ] || profile=ci
echo "==> cargo nextest run --workspace (profile $profile)"
cargo nextest run --workspace --no-fail-fast --profile "$profile" "$@"
echo "==> doc tests"
cargo test --workspace --doc --quiet
echo "==> test suite passed in $(( $(date +%s) - started )) s"
