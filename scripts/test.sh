#!/usr/bin/env bash
# Herald's whole test suite. Installs what it needs on a fresh machine:
# the tansu Kafka-compatible test broker (unless HERALD_TEST_KAFKA names a
# cluster), cargo-nextest, and the npm clients used by the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

if [ -z "${HERALD_TEST_KAFKA:-}" ] && ! command -v tansu >/dev/null 2>&1; then
  echo "==> installing the tansu test broker into ~/.cargo/bin (once; several minutes)"
  cargo install tansu --locked --features dynostore
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
command -v node >/dev/null 2>&1 || { echo "error: Node.js (20+) is required for the npm client tests" >&2; exit 1; }
echo "==> installing npm clients (tests/js)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

echo "==> deployment files (compose, chart, alert rules, dashboard)"
scripts/validate-deploy.sh
echo "==> building the binaries (tests run herald-gateway as separate processes)"
cargo build --workspace --bins
echo "==> cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast "$@"
echo "==> doc tests"
cargo test --workspace --doc --quiet
