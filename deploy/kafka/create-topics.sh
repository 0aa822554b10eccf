#!/usr/bin/env bash
# Create Herald's topics (idempotent): one per event family, keyed by account,
# plus the compacted identities table. Runs in the apache/kafka image as the
# docker-compose `kafka-init` service; works against any cluster:
#
#   KAFKA_BOOTSTRAP=broker:9092 HERALD_TOPIC_PREFIX=herald. \
#   HERALD_TOPIC_PARTITIONS=12 HERALD_TOPIC_REPLICATION=3 \
#   KAFKA_COMMAND_CONFIG=client.properties  deploy/kafka/create-topics.sh
#
# KAFKA_COMMAND_CONFIG names a client properties file for SASL/TLS clusters.
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP:?set KAFKA_BOOTSTRAP to host:port}"
prefix="${HERALD_TOPIC_PREFIX-herald.}"
partitions="${HERALD_TOPIC_PARTITIONS:-6}"
replication="${HERALD_TOPIC_REPLICATION:-1}"
topics_bin="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"

args=(--bootstrap-server "$bootstrap")
if [ -n "${KAFKA_COMMAND_CONFIG:-}" ]; then
  args+=(--command-config "$KAFKA_COMMAND_CONFIG")
fi

families=(message unread-count channel metadata tag conversation contact presence notification account client-commands)

create() {
  local topic="$1"; shift
  echo "topic ${topic}"
  "$topics_bin" "${args[@]}" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor "$replication" "$@"
}

for family in "${families[@]}"; do
  create "${prefix}${family}"
done
# Token hash -> identity; a tombstone revokes. Compaction keeps the latest
# value per key forever, so every gateway can rebuild the table at startup.
create "${prefix}identities" --config cleanup.policy=compact --config min.compaction.lag.ms=0

"$topics_bin" "${args[@]}" --list | grep -F "$prefix" || true
echo "Herald topics are ready."
