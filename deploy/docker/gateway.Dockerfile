# syntax=docker/dockerfile:1
#
# herald-gateway image. Build from the repository root:
#
#   docker build -f deploy/docker/gateway.Dockerfile -t herald-gateway:dev .
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
    cargo build --release --locked -p herald-gateway -p herald \
 && install -D -m 0755 target/release/herald-gateway /out/herald-gateway \
 && install -D -m 0755 target/release/herald /out/herald

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates pulls in OpenSSL's libssl (TLS to Kafka); zlib1g is part of
# the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin herald
# The operator CLI (`herald token`, `herald tail`, ...) comes along, so
# `kubectl exec` / `docker compose exec` can use it next to a live gateway.
COPY --from=build /out/herald-gateway /out/herald /usr/local/bin/
# Fails the build if a shared library is missing from the runtime image.
RUN ["/usr/local/bin/herald-gateway", "--version"]
RUN ["/usr/local/bin/herald", "--version"]
USER 10001:10001
ENV HERALD_LOG_FORMAT=json \
    HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_OPS_LISTEN=0.0.0.0:9091
# 8080: WebSocket endpoints; 9091: /healthz, /readyz, /metrics.
EXPOSE 8080 9091
# SIGTERM starts the drain (HERALD_DRAIN_SECS); give the container at least
# that long to stop (`docker stop -t`, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald-gateway"]

LABEL org.opencontainers.image.title="herald-gateway" \
      org.opencontainers.image.description="Herald realtime event gateway: Kafka to WebSocket (STOMP, ActionCable, TypeID JSON)" \
      org.opencontainers.image.source="https://github.com/herald-rt/herald" \
      org.opencontainers.image.licenses="Apache-2.0"
