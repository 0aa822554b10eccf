#!/usr/bin/env bash
# Development mode: an embedded Kafka broker (librdkafka's in-process mock
# cluster, in memory), the producer and the gateway, all on loopback, in one
# `herald` process, with one command. Nothing to install besides the Rust
# toolchain; pass --kafka-brokers host:port (or set HERALD_KAFKA_BROKERS) to
# use an existing cluster instead.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet -p herald -- dev "$@"
