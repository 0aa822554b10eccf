#!/usr/bin/env bash
# Development mode: a managed Kafka-compatible broker (tansu, in memory), the
# producer and the gateway, all on loopback, with one command.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ -z "${HERALD_KAFKA_BROKERS:-}" ] && ! command -v tansu >/dev/null 2>&1; then
  echo "==> installing the tansu broker into ~/.cargo/bin (once; several minutes)"
  cargo install tansu --locked --features dynostore
fi
exec cargo run --quiet -p herald -- dev "$@"
