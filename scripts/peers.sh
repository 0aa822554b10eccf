#!/usr/bin/env bash
# Herald against its peers (README "Herald and its peers"): installs the
# peers on demand and runs every system back to back on the same load.
#
#   scripts/peers.sh install          install the peers (cached under ~/.cache/herald/peers)
#   scripts/peers.sh run [SCENARIO..] run scenarios (idle fanout latency storm jitter;
#                                     default: all), extra herald-loadgen flags in $PEERS_ARGS
#
# `jitter` (resuming clients, sockets reset every ~15 s) runs on Herald and
# the peers that offer recovery: AnyCable (its in-memory broker: reliable
# streams) and Centrifugo (history and recovery on the channel namespace).
#
# Peers: AnyCable (anycable-go, Go module proxy), Centrifugo v6 (Go module
# proxy), RabbitMQ Web-STOMP (Debian rabbitmq-server), Rails ActionCable
# (Debian ruby-actioncable + puma + redis-server). Every peer listens on
# loopback only and runs as a child of this script under a temporary
# directory; a trap stops them all when the script ends. The system
# services of the Debian packages are never started (policy-rc.d).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${HERALD_PEERS_CACHE:-$HOME/.cache/herald/peers}
# Newest anycable-go the Go module proxy serves here: 1.6.x moved to the
# module github.com/anycable/anycable, which the proxy does not serve, so
# the pin is the last release of github.com/anycable/anycable-go.
ANYCABLE_PACKAGE=${ANYCABLE_PACKAGE:-github.com/anycable/anycable-go/cmd/anycable-go}
ANYCABLE_VERSION=${ANYCABLE_VERSION:-v1.5.6}
CENTRIFUGO_PACKAGE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=${CENTRIFUGO_VERSION:-v6.9.1}
DEBIAN_PACKAGES=(rabbitmq-server ruby-actioncable ruby-redis puma redis-server ruby-rack)

log() { echo "peers: $*" >&2; }

install_go_binary() { # name module/cmd/path version
  local name=$1 pkg=$2 version=$3 dir="$CACHE/$1-$3"
  if [[ -x $dir/bin/$name ]]; then return; fi
  # Built from a throwaway module that requires the pinned version:
  # `go install pkg@version` also asks the proxy for the module's version
  # list (deprecation check), which the proxy here does not serve.
  log "building $pkg@$version"
  rm -rf "$dir/src" && mkdir -p "$dir/src" "$dir/bin"
  (cd "$dir/src" && go mod init herald-peers-build >/dev/null 2>&1 &&
    GOFLAGS=-mod=mod go get "$pkg@$version" >/dev/null &&
    CGO_ENABLED=0 nice go build -trimpath -o "$dir/bin/$name" "$pkg")
  rm -rf "$dir/src"
}

install_debian() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    # Installing must not start the packages' system services.
    local rc=/usr/sbin/policy-rc.d had_rc=0
    [[ -e $rc ]] && had_rc=1
    ((had_rc)) || { printf '#!/bin/sh\nexit 101\n' >"$rc"; chmod +x "$rc"; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    ((had_rc)) || rm -f "$rc"
    # Some packages start their service regardless; stop them (we run our own).
    for svc in rabbitmq-server redis-server; do
      service "$svc" stop >/dev/null 2>&1 || true
    done
  fi
}

cmd_install() {
  install_debian
  install_go_binary anycable-go "$ANYCABLE_PACKAGE" "$ANYCABLE_VERSION"
  install_go_binary centrifugo "$CENTRIFUGO_PACKAGE" "$CENTRIFUGO_VERSION"
  log "installed under $CACHE"
}

cmd_run() {
  local scenarios=("$@")
  ((${#scenarios[@]})) || scenarios=(idle fanout latency storm jitter)
  cmd_install
  local bin="$ROOT/target/release/herald-loadgen"
  if [[ ! -x $bin || ! -x $ROOT/target/release/herald-gateway ]]; then
    log "building the release binaries"
    (cd "$ROOT" && CARGO_INCREMENTAL=0 cargo build --release -p herald-gateway -p herald-bench)
  fi
  # (global: the EXIT trap runs after this function returned)
  PIDFILE=$(mktemp /tmp/herald-peers-pids.XXXXXX)
  # Every peer the load generator started is a process group of its own:
  # stop each one, whatever way this script ends.
  trap 'while read -r pg; do kill -TERM -- "-$pg" 2>/dev/null || true; done < "$PIDFILE"; rm -f "$PIDFILE"' EXIT
  trap 'exit 130' INT TERM
  export HERALD_PEERS_PIDFILE=$PIDFILE
  mkdir -p "$ROOT/bench-results"
  local s
  for s in "${scenarios[@]}"; do
    log "scenario $s (load $(cut -d' ' -f1-3 /proc/loadavg))"
    # shellcheck disable=SC2086 # PEERS_ARGS is a list of flags
    (cd "$ROOT" && "$bin" peers --scenarios "$s" --out "bench-results/peers-$s.json" ${PEERS_ARGS:-})
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"]["tables_markdown"])' \
      "$ROOT/bench-results/peers-$s.json" >"$ROOT/bench-results/peers-$s.md"
  done
}

case "${1:-}" in
  install) cmd_install ;;
  run) shift; cmd_run "$@" ;;
  *) echo "usage: $0 install | run [idle|fanout|latency|storm|jitter ..]" >&2; exit 2 ;;
esac
