# syntax=docker/dockerfile:1
#
# herald-producer image. Build from the repository root:
#
#   docker build -f deploy/docker/producer.Dockerfile -t herald-producer:dev .
#
# Stage 1 compiles the binary (librdkafka is built from source by rdkafka-sys
# with its bundled configure script: gcc, make, perl, python3, zlib; OpenSSL
# headers for TLS and SCRAM). Stage 2 is a slim Debian with the binary, CA
# certificates and the shared libraries it links (libssl, zlib), running as
# an unprivileged user: no compiler, no package caches, no sources.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      gcc g++ libc6-dev make perl python3 pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the target directory between
# builds; the binary is copied out because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald-producer --bin herald-producer \
 && install -D -m 0755 target/release/herald-producer /out/herald-producer

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates pulls in OpenSSL's libssl (TLS to Kafka); zlib1g is part of
# the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin herald
COPY --from=build /out/herald-producer /usr/local/bin/herald-producer
# Fails the build if a shared library is missing from the runtime image.
RUN ["/usr/local/bin/herald-producer", "--version"]
USER 10001:10001
ENV HERALD_LOG_FORMAT=json \
    HERALD_PRODUCER_LISTEN=0.0.0.0:8081 \
    HERALD_PRODUCER_OPS_LISTEN=0.0.0.0:9092
# 8081: POST /v1/events; 9092: /healthz, /readyz, /metrics.
EXPOSE 8081 9092
# SIGTERM stops accepting requests and finishes those in flight; give the
# container the produce timeout to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald-producer"]

LABEL org.opencontainers.image.title="herald-producer" \
      org.opencontainers.image.description="Herald producer: HTTP ingest API and outbox relay to Kafka" \
      org.opencontainers.image.source="https://github.com/herald-rt/herald" \
      org.opencontainers.image.licenses="Apache-2.0"
