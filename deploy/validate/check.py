#!/usr/bin/env python3
"""Checks behind scripts/validate-deploy.sh (run it, not this file).

Subcommands, each exiting non-zero with one line per problem:

  compose RESOLVED.yml        docker-compose.yml as `docker-compose config` resolved it
  manifests OUT.json FILE...  rendered Helm output: duplicate keys, Kubernetes
                              schemas (strict, several versions), chart
                              invariants; writes the Prometheus Operator
                              objects to OUT.json for crd-check.mjs
  observability               deploy/prometheus/alerts.yml and
                              deploy/grafana/herald-dashboard.json against
                              deploy/metrics.txt
  dockerfiles                 deploy/docker/*.Dockerfile

Paths are relative to the repository root (the working directory).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path("deploy")
METRICS_FILE = DEPLOY / "metrics.txt"
ALERTS_FILE = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_FILE = DEPLOY / "grafana" / "herald-dashboard.json"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
NGINX_FILE = DEPLOY / "nginx" / "nginx.conf"
TOPICS_SCRIPT = DEPLOY / "kafka" / "create-topics.sh"

# Kubernetes versions the chart is validated against: its minimum
# (Chart.yaml kubeVersion) and the newest the schemas know.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
FAMILIES = [
    "message", "unread-count", "channel", "metadata", "tag", "conversation",
    "contact", "presence", "notification", "account", "client-commands",
]
# Series Prometheus itself creates; allowed in rules without being exported by Herald.
PROMETHEUS_BUILTIN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Problems:
    def __init__(self, what: str):
        self.what = what
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.add(msg)

    def finish(self) -> int:
        if self.items:
            for m in self.items:
                print(f"  FAIL {self.what}: {m}", file=sys.stderr)
            return 1
        return 0


# ---------------------------------------------------------------- YAML


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last
    one silently; the Kubernetes API server refuses or warns)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.load(f, Loader=StrictLoader)


def load_yaml_all(path: Path):
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d]


# ---------------------------------------------------------------- metrics


def known_metrics() -> list[str]:
    names = []
    for line in METRICS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def promql_metric_names(expr) -> set[str]:
    """Metric names of every selector in a parsed PromQL expression."""
    import promql_parser as pp

    found: set[str] = set()

    def walk(node):
        if node is None:
            return
        if isinstance(node, pp.VectorSelector):
            if node.name:
                found.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    found.add(m.value)
            return
        if isinstance(node, pp.MatrixSelector):
            walk(node.vector_selector)
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            if hasattr(node, attr):
                walk(getattr(node, attr))
        if hasattr(node, "args"):
            for a in node.args:
                walk(a)

    walk(expr)
    return found


def unknown_names(names: set[str], known: set[str]) -> list[str]:
    bad = []
    for n in sorted(names):
        if n in known or n in PROMETHEUS_BUILTIN:
            continue
        base = next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), None)
        if base and base in known:
            continue
        bad.append(n)
    return bad


def base_name(n: str, known: set[str]) -> str:
    for s in HISTOGRAM_SUFFIXES:
        if n.endswith(s) and n[: -len(s)] in known:
            return n[: -len(s)]
    return n


# ---------------------------------------------------------------- rules

DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")


def check_rule_groups(groups, p: Problems, known: set[str], where: str) -> set[str]:
    import promql_parser as pp

    used: set[str] = set()
    if not isinstance(groups, list) or not groups:
        p.add(f"{where}: `groups` must be a non-empty list")
        return used
    group_names, alert_names = set(), set()
    for g in groups:
        gname = g.get("name")
        p.check(bool(gname), f"{where}: a group has no name")
        p.check(gname not in group_names, f"{where}: duplicate group {gname}")
        group_names.add(gname)
        p.check(set(g) <= {"name", "interval", "rules", "limit", "labels", "query_offset"},
                f"{where}: group {gname} has unknown keys {sorted(set(g) - {'name', 'interval', 'rules'})}")
        rules = g.get("rules") or []
        p.check(bool(rules), f"{where}: group {gname} has no rules")
        for r in rules:
            name = r.get("alert") or r.get("record")
            ctx = f"{where}: {gname}/{name}"
            p.check(bool(r.get("alert")) != bool(r.get("record")),
                    f"{ctx}: a rule needs exactly one of alert/record")
            allowed = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            p.check(set(r) <= allowed, f"{ctx}: unknown keys {sorted(set(r) - allowed)}")
            if r.get("alert"):
                p.check(re.fullmatch(r"[A-Z][A-Za-z0-9]*", r["alert"]) is not None,
                        f"{ctx}: alert names are CamelCase")
                p.check(r["alert"] not in alert_names, f"{ctx}: duplicate alert name")
                alert_names.add(r["alert"])
                sev = (r.get("labels") or {}).get("severity")
                p.check(sev in {"info", "warning", "critical"},
                        f"{ctx}: labels.severity must be info, warning or critical (got {sev!r})")
                ann = r.get("annotations") or {}
                p.check(bool(ann.get("summary")) and bool(ann.get("description")),
                        f"{ctx}: annotations.summary and annotations.description are required")
                for k, v in ann.items():
                    p.check(str(v).count("{{") == str(v).count("}}"),
                            f"{ctx}: unbalanced template braces in annotation {k}")
            for key in ("for", "keep_firing_for"):
                if key in r:
                    p.check(DURATION.match(str(r[key])) is not None,
                            f"{ctx}: `{key}: {r[key]}` is not a Prometheus duration")
            expr = r.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                p.add(f"{ctx}: expr is missing")
                continue
            try:
                parsed = pp.parse(expr)
            except Exception as e:  # the parser raises ValueError-like errors
                p.add(f"{ctx}: PromQL does not parse: {e}")
                continue
            names = promql_metric_names(parsed)
            used |= names
            for n in unknown_names(names, known):
                p.add(f"{ctx}: metric {n} is not listed in {METRICS_FILE}")
    return used


def check_rules(p: Problems, known: set[str]) -> set[str]:
    try:
        doc = load_yaml(ALERTS_FILE)
    except yaml.YAMLError as e:
        p.add(f"{ALERTS_FILE}: YAML: {e}")
        return set()
    p.check(isinstance(doc, dict) and set(doc) == {"groups"},
            f"{ALERTS_FILE}: top level must be exactly `groups:`")
    used = check_rule_groups((doc or {}).get("groups"), p, known, str(ALERTS_FILE))
    p.check(bool(used), f"{ALERTS_FILE}: no metric is used")
    return used


# ---------------------------------------------------------------- dashboard

GRAFANA_VARS = {
    "$__rate_interval": "5m", "${__rate_interval}": "5m",
    "$__interval": "1m", "${__interval}": "1m",
    "$__range": "1h", "${__range}": "1h",
}


def check_dashboard(p: Problems, known: set[str]) -> set[str]:
    import promql_parser as pp

    try:
        dash = json.loads(DASHBOARD_FILE.read_text())
    except json.JSONDecodeError as e:
        p.add(f"{DASHBOARD_FILE}: invalid JSON: {e}")
        return set()
    for key in ("title", "uid", "panels", "schemaVersion"):
        p.check(key in dash, f"{DASHBOARD_FILE}: missing `{key}`")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    p.check(variables.get("datasource", {}).get("type") == "datasource",
            f"{DASHBOARD_FILE}: needs a `datasource` variable of type datasource (works in any Grafana)")
    used: set[str] = set()
    ids = set()
    panels = list(dash.get("panels", []))
    for panel in list(panels):
        panels.extend(panel.get("panels", []))
    for panel in panels:
        title = f"{DASHBOARD_FILE}: panel {panel.get('title', '?')!r}"
        pid = panel.get("id")
        p.check(pid not in ids, f"{DASHBOARD_FILE}: duplicate panel id {pid}")
        ids.add(pid)
        if panel.get("type") == "row":
            continue
        p.check("gridPos" in panel, f"{title} has no gridPos")
        p.check((panel.get("datasource") or {}).get("uid") == "${datasource}",
                f"{title} must use the ${{datasource}} variable")
        targets = panel.get("targets") or []
        p.check(bool(targets), f"{title} has no query")
        for t in targets:
            expr = t.get("expr", "")
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                p.add(f"{title}: unknown variable in {t.get('expr')!r}")
                continue
            try:
                parsed = pp.parse(expr)
            except Exception as e:
                p.add(f"{title}: PromQL does not parse: {e}: {t.get('expr')!r}")
                continue
            names = promql_metric_names(parsed)
            used |= names
            for n in unknown_names(names, known):
                p.add(f"{title}: metric {n} is not listed in {METRICS_FILE}")
    return used


def cmd_observability() -> int:
    p = Problems("observability")
    known = set(known_metrics())
    p.check(len(known) == len(known_metrics()), f"{METRICS_FILE}: duplicate names")
    for n in known:
        p.check(re.fullmatch(r"herald_[a-z0-9_]+", n) is not None, f"{METRICS_FILE}: odd metric name {n!r}")
    used = check_rules(p, known) | check_dashboard(p, known)
    all_used = {base_name(n, known) for n in used}
    for n in sorted(known - all_used):
        p.add(f"{METRICS_FILE} lists {n}, which neither the dashboard nor the alert rules use")
    return p.finish()


# ---------------------------------------------------------------- compose


def cmd_compose(resolved_path: str) -> int:
    p = Problems("docker-compose.yml")
    cfg = load_yaml(Path(resolved_path))
    services = cfg.get("services", {})
    expected = {"kafka", "kafka-init", "gateway-1", "gateway-2", "lb", "producer",
                "postgres", "prometheus", "grafana"}
    p.check(expected <= set(services), f"missing services {sorted(expected - set(services))}")

    def deps(name):
        d = services.get(name, {}).get("depends_on", {})
        return d if isinstance(d, dict) else {k: {"condition": "service_started"} for k in d}

    for name, svc in services.items():
        if name != "kafka-init":
            p.check("healthcheck" in svc, f"service {name} has no healthcheck")
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            p.check(host_ip == "127.0.0.1", f"service {name} publishes {port} beyond loopback")
    p.check(deps("kafka-init").get("kafka", {}).get("condition") == "service_healthy",
            "kafka-init must wait for a healthy kafka")
    gateways = sorted(n for n, s in services.items() if str(s.get("image", "")).startswith("herald-gateway")
                      or "gateway.Dockerfile" in str((s.get("build") or {}).get("dockerfile", "")))
    p.check(len(gateways) >= 2, f"expected two gateway replicas, found {gateways}")
    herald = gateways + ["producer"]
    for g in herald:
        p.check(deps(g).get("kafka-init", {}).get("condition") == "service_completed_successfully",
                f"{g} must start after kafka-init completed")
        svc = services.get(g, {})
        p.check(svc.get("read_only") is True, f"{g} should run with a read-only root filesystem")
        p.check("ALL" in (svc.get("cap_drop") or []), f"{g} should drop all capabilities")
    p.check(deps("producer").get("postgres", {}).get("condition") == "service_healthy",
            "producer must wait for a healthy postgres")
    penv = services.get("producer", {}).get("environment", {})
    p.check(bool(penv.get("HERALD_API_KEYS") or penv.get("HERALD_API_JWT_SECRET")),
            "producer needs HERALD_API_KEYS or HERALD_API_JWT_SECRET (it refuses every request without)")
    for g in gateways:
        p.check(deps("lb").get(g, {}).get("condition") == "service_healthy",
                f"lb must wait for a healthy {g}")
        env = services[g].get("environment", {})
        drain = int(env.get("HERALD_DRAIN_SECS", 10))
        grace = services[g].get("stop_grace_period", "10s")
        m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(grace))
        grace_s = (int(m.group(1) or 0) * 60 + int(m.group(2) or 0)) if m else 0
        p.check(grace_s > drain, f"{g}: stop_grace_period {grace} must exceed HERALD_DRAIN_SECS {drain}")
        p.check(bool(env.get("HERALD_JWT_SECRET")), f"{g} needs HERALD_JWT_SECRET")

    # Prometheus scrapes every Herald metrics port.
    prom = load_yaml(PROMETHEUS_FILE)
    targets = {}
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                targets[t] = job["job_name"]
    for g in gateways:
        p.check(targets.get(f"{g}:9091") == "herald-gateway",
                f"{PROMETHEUS_FILE}: job herald-gateway must scrape {g}:9091")
    p.check(targets.get("producer:9092") == "herald-producer",
            f"{PROMETHEUS_FILE}: job herald-producer must scrape producer:9092")
    p.check("/etc/prometheus/alerts.yml" in prom.get("rule_files", []),
            f"{PROMETHEUS_FILE}: rule_files must load alerts.yml")

    # nginx: every gateway upstream, WebSocket upgrade, long idle timeouts.
    conf = NGINX_FILE.read_text()
    for g in gateways:
        p.check(re.search(rf"^\s*server\s+{re.escape(g)}:8080\b", conf, re.M) is not None,
                f"{NGINX_FILE}: upstream lacks {g}:8080")
    p.check("proxy_set_header Upgrade $http_upgrade" in conf, f"{NGINX_FILE}: no Upgrade header")
    p.check("proxy_http_version 1.1" in conf, f"{NGINX_FILE}: WebSockets need proxy_http_version 1.1")
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        m = re.search(rf"{directive}\s+(\d+)(s|m|h)?;", conf)
        secs = 0
        if m:
            secs = int(m.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
        p.check(secs >= 60, f"{NGINX_FILE}: {directive} must be at least 60 s (heart-beats), got {secs}")

    # Topic creation covers every family plus the compacted identities topic.
    script = TOPICS_SCRIPT.read_text()
    m = re.search(r"^families=\(([^)]*)\)", script, re.M)
    listed = m.group(1).split() if m else []
    p.check(sorted(listed) == sorted(FAMILIES), f"{TOPICS_SCRIPT}: families {listed} != {FAMILIES}")
    p.check(re.search(r'create "\$\{prefix\}identities" --config cleanup.policy=compact', script)
            is not None, f"{TOPICS_SCRIPT}: identities must be created compacted")
    return p.finish()


# ---------------------------------------------------------------- manifests


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def check_workload(dep, p: Problems, ctx: str, secrets: dict, configmaps: dict,
                   require_drain: bool) -> None:
    spec = dep["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    p.check(psc.get("runAsNonRoot") is True, f"{ctx}: pod securityContext.runAsNonRoot must be true")
    p.check(spec.get("automountServiceAccountToken") is False,
            f"{ctx}: no service account token is needed")
    for c in spec["containers"]:
        cctx = f"{ctx}/{c['name']}"
        sc = c.get("securityContext", {})
        p.check(sc.get("readOnlyRootFilesystem") is True, f"{cctx}: readOnlyRootFilesystem must be true")
        p.check(sc.get("allowPrivilegeEscalation") is False, f"{cctx}: allowPrivilegeEscalation must be false")
        p.check("ALL" in (sc.get("capabilities", {}).get("drop") or []), f"{cctx}: must drop ALL capabilities")
        ports = {pt["name"] for pt in c.get("ports", [])}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                            ("startupProbe", "/healthz")):
            pr = c.get(probe, {}).get("httpGet", {})
            p.check(pr.get("path") == path, f"{cctx}: {probe} must GET {path}")
            p.check(pr.get("port") in ports, f"{cctx}: {probe} port {pr.get('port')} is not a container port")
        p.check("memory" in (c.get("resources", {}).get("limits") or {}), f"{cctx}: needs a memory limit")
        env = env_of(c)
        if require_drain:
            drain = int(env.get("HERALD_DRAIN_SECS", {}).get("value", 10))
            # The gateway's own delay (readyz 503, still serving), default 5 s.
            delay = int(env.get("HERALD_DRAIN_DELAY_SECS", {}).get("value", 5))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
            grace = spec.get("terminationGracePeriodSeconds", 30)
            p.check(grace > drain + delay + sleep,
                    f"{cctx}: terminationGracePeriodSeconds {grace} must exceed preStop sleep {sleep} + "
                    f"drain delay {delay} + drain {drain}")
            if "HERALD_PROXY_PROTOCOL" in env:
                p.check(bool(env.get("HERALD_TRUSTED_PROXIES", {}).get("value")),
                        f"{cctx}: HERALD_PROXY_PROTOCOL needs HERALD_TRUSTED_PROXIES")
    check_references(spec, p, ctx, secrets, configmaps)


def check_references(spec, p: Problems, ctx: str, secrets: dict, configmaps: set) -> None:
    """Mounts have volumes; keys read from the chart's Secrets exist; ConfigMaps exist.
    (Secrets the chart does not render are the user's existingSecrets.)"""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            p.check(m["name"] in vols, f"{ctx}/{c['name']}: volumeMount {m['name']} has no volume")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] in secrets:
                p.check(ref["key"] in secrets[ref["name"]],
                        f"{ctx}/{c['name']}: env {e['name']} reads key {ref['key']} missing from Secret {ref['name']}")
    for v in vols.values():
        sec = v.get("secret")
        if sec and sec["secretName"] in secrets:
            for item in sec.get("items", []):
                p.check(item["key"] in secrets[sec["secretName"]],
                        f"{ctx}: volume {v['name']} reads key {item['key']} missing from Secret {sec['secretName']}")
        cm = v.get("configMap")
        if cm:
            p.check(cm["name"] in configmaps, f"{ctx}: volume {v['name']} names unknown ConfigMap {cm['name']}")


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def selects_expr(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels."""
    if not selects(selector.get("matchLabels"), labels):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": labels.get(key) not in values,
              "Exists": key in labels,
              "DoesNotExist": key not in labels}.get(op)
        if not ok:
            return False
    return True


GROUP_LABEL = "herald.io/partition-group"
GATEWAY_ENDPOINTS = ("/ws.communication", "/cable", "/stream", "/api/v1/stream", "/notifications", "/v1/route")


def pod_labels(d) -> dict:
    return d["spec"]["template"]["metadata"]["labels"]


def ingress_route(ingresses, host: str, path: str):
    """The Service and the path it receives for a request to host+path, the
    way ingress-nginx picks it: regex paths (use-regex or rewrite-target on
    their Ingress) before prefixes, a longer match first. None: unrouted."""
    best = None
    for ing in ingresses:
        ann = ing["metadata"].get("annotations") or {}
        rewrite = ann.get("nginx.ingress.kubernetes.io/rewrite-target")
        regex = rewrite is not None or ann.get("nginx.ingress.kubernetes.io/use-regex") == "true"
        for rule in ing["spec"]["rules"]:
            if rule.get("host") not in (None, host):
                continue
            for pth in rule["http"]["paths"]:
                svc = pth["backend"]["service"]["name"]
                if regex and pth["pathType"] == "ImplementationSpecific":
                    m = re.match(pth["path"], path, re.I)
                    if not m:
                        continue
                    upstream = path
                    if rewrite is not None:
                        upstream = re.sub(r"\$(\d)", lambda g: m.group(int(g.group(1))) or "", rewrite)
                    rank = (1, len(pth["path"]))
                elif path == pth["path"] or path.startswith(pth["path"].rstrip("/") + "/"):
                    upstream, rank = path, (0, len(pth["path"]))
                else:
                    continue
                if best is None or rank > best[0]:
                    best = (rank, svc, upstream)
    return best and (best[1], best[2])


def check_groups(name: str, gateway: list, deployments: dict, services: dict, by_kind: dict,
                 p: Problems) -> None:
    """Partition groups: one gateway Deployment without the group label, or
    G >= 2 of them, group g's pods labelled g with HERALD_PARTITION_GROUP=g;
    a Service, an HPA (when any) and a PDB per group, each selecting exactly
    that group; every group's URL reaches its group through the Ingress."""
    grouped = [d for d in gateway if GROUP_LABEL in pod_labels(d)]
    if not grouped:
        p.check(len(gateway) == 1, f"{name}: expected one gateway Deployment, found {len(gateway)}")
        for d in gateway:
            env = env_of(d["spec"]["template"]["spec"]["containers"][0])
            p.check(int(env.get("HERALD_PARTITION_GROUPS", {}).get("value", 1)) == 1,
                    f"{name}: Deployment/{d['metadata']['name']} sets HERALD_PARTITION_GROUPS without group labels")
        return
    p.check(len(grouped) == len(gateway), f"{name}: some gateway Deployments lack the {GROUP_LABEL} label")
    n = len(grouped)
    p.check(n >= 2, f"{name}: partition groups need at least 2 gateway Deployments, found {n}")
    by_group: dict[int, dict] = {}
    templates = set()
    for d in grouped:
        dname = d["metadata"]["name"]
        label = pod_labels(d)[GROUP_LABEL]
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        groups = env.get("HERALD_PARTITION_GROUPS", {}).get("value")
        group = env.get("HERALD_PARTITION_GROUP", {}).get("value")
        template = env.get("HERALD_GROUP_URL_TEMPLATE", {}).get("value", "")
        p.check(groups == str(n), f"{name}: Deployment/{dname} has HERALD_PARTITION_GROUPS={groups}, not {n}")
        p.check(group == label, f"{name}: Deployment/{dname} is labelled group {label} but has HERALD_PARTITION_GROUP={group}")
        p.check(d["spec"]["selector"]["matchLabels"].get(GROUP_LABEL) == label,
                f"{name}: Deployment/{dname} selector does not pin its group {label}")
        p.check("{group}" in template and re.match(r"wss?://[^/]+", template) is not None,
                f"{name}: Deployment/{dname} needs HERALD_GROUP_URL_TEMPLATE, a ws(s):// URL with {{group}}")
        templates.add(template)
        if label.isdigit():
            p.check(int(label) not in by_group, f"{name}: two gateway Deployments of group {label}")
            by_group[int(label)] = d
        else:
            p.add(f"{name}: Deployment/{dname} group label {label!r} is not a number")
        tsc = d["spec"]["template"]["spec"].get("topologySpreadConstraints") or []
        for c in tsc:
            p.check(c["labelSelector"]["matchLabels"].get(GROUP_LABEL) == label,
                    f"{name}: Deployment/{dname} spreads over pods of other groups")
    p.check(sorted(by_group) == list(range(n)), f"{name}: groups {sorted(by_group)} are not 0..{n - 1}")
    p.check(len(templates) == 1, f"{name}: the gateway Deployments disagree on HERALD_GROUP_URL_TEMPLATE: {templates}")
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in grouped]
    p.check(len(set(selectors)) == len(selectors), f"{name}: gateway Deployments share a selector")
    for d in grouped:
        others = [o for o in grouped if o is not d and selects(d["spec"]["selector"]["matchLabels"], pod_labels(o))]
        p.check(not others, f"{name}: Deployment/{d['metadata']['name']} selects pods of another group")

    def targets_of(selector: dict) -> list:
        return [g for g, d in by_group.items() if selects(selector, pod_labels(d))]

    group_services: dict[int, str] = {}
    for s in services.values():
        sel = s["spec"]["selector"]
        hit = targets_of(sel)
        if not hit:
            continue
        sname = s["metadata"]["name"]
        if GROUP_LABEL in sel:
            p.check(len(hit) == 1, f"{name}: Service/{sname} selects groups {hit}, not exactly one")
            p.check(s["metadata"]["labels"].get(GROUP_LABEL) == sel[GROUP_LABEL],
                    f"{name}: Service/{sname} is not labelled with the group it selects")
            if len(hit) == 1:
                p.check(hit[0] not in group_services, f"{name}: two Services of group {hit[0]}")
                group_services[hit[0]] = sname
        else:
            p.check(len(hit) == n, f"{name}: Service/{sname} selects some groups but not all: {hit}")
            p.check(s["metadata"]["labels"].get(GROUP_LABEL) == "all",
                    f"{name}: Service/{sname} selects every group and must be labelled {GROUP_LABEL}=all")
    for g in range(n):
        p.check(g in group_services, f"{name}: group {g} has no Service of its own")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if any(h["spec"]["scaleTargetRef"]["name"] in {d["metadata"]["name"] for d in grouped} for h in hpas):
        scaled = [h["spec"]["scaleTargetRef"]["name"] for h in hpas]
        for g, d in by_group.items():
            p.check(scaled.count(d["metadata"]["name"]) == 1,
                    f"{name}: group {g}'s Deployment has {scaled.count(d['metadata']['name'])} HPAs, not one")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    covered = []
    for pdb in pdbs:
        hit = targets_of(pdb["spec"]["selector"]["matchLabels"])
        if hit:
            p.check(len(hit) == 1, f"{name}: PDB/{pdb['metadata']['name']} spans groups {hit}")
            covered += hit
    if covered:
        p.check(sorted(covered) == list(range(n)), f"{name}: PDBs cover groups {sorted(covered)}, not each once")

    # Each group's URL, as the gateway hands it out, reaches that group
    # through the Ingress, prefix stripped to a gateway endpoint; the
    # default paths reach the Service of every group.
    ingresses = by_kind.get("Ingress", [])
    if not ingresses or len(templates) != 1:
        return
    template = next(iter(templates))
    for g in range(n):
        m = re.match(r"wss?://([^/:]+)(?::\d+)?(/.*)?$", template.replace("{group}", str(g)))
        if not m:
            p.add(f"{name}: group URL template {template} does not parse")
            return
        host, base = m.group(1), (m.group(2) or "").rstrip("/")
        for endpoint in GATEWAY_ENDPOINTS:
            route = ingress_route(ingresses, host, base + endpoint)
            p.check(route == (group_services.get(g), endpoint),
                    f"{name}: {host}{base}{endpoint} (group {g}'s URL) reaches {route}, "
                    f"not Service {group_services.get(g)} at {endpoint}")
    every = [sname for sname, s in services.items()
             if s["metadata"]["labels"].get(GROUP_LABEL) == "all"]
    for ing in ingresses:
        for rule in ing["spec"]["rules"]:
            for endpoint in GATEWAY_ENDPOINTS:
                route = ingress_route(ingresses, rule["host"], endpoint)
                p.check(route is not None and route[0] in every and route[1] == endpoint,
                        f"{name}: {rule['host']}{endpoint} reaches {route}, not the Service of every group")


def check_otlp(name: str, deployments: dict, p: Problems) -> None:
    """OTLP export: on the gateway and the producer together, to the same
    http(s) collector, with a ratio in 0..1."""
    seen = {}
    for d in deployments.values():
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        comp = pod_labels(d).get("app.kubernetes.io/name")
        endpoint = env.get("HERALD_OTLP_ENDPOINT", {}).get("value")
        ratio = env.get("HERALD_OTLP_SAMPLE_RATIO", {}).get("value")
        seen.setdefault(comp, set()).add((endpoint, ratio))
        dctx = f"{name}: Deployment/{d['metadata']['name']}"
        if endpoint is None:
            p.check(ratio is None and "HERALD_OTLP_SERVICE_NAME" not in env,
                    f"{dctx}: OTLP settings without HERALD_OTLP_ENDPOINT")
            continue
        p.check(re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", endpoint) is not None,
                f"{dctx}: HERALD_OTLP_ENDPOINT {endpoint!r} is no http(s) URL without a query")
        try:
            p.check(0.0 <= float(ratio) <= 1.0, f"{dctx}: HERALD_OTLP_SAMPLE_RATIO {ratio} is outside 0..1")
        except (TypeError, ValueError):
            p.add(f"{dctx}: HERALD_OTLP_SAMPLE_RATIO {ratio!r} is not a number")
    settings = set().union(*seen.values()) if seen else set()
    p.check(len(settings) <= 1, f"{name}: gateway and producer export spans differently: {sorted(map(str, settings))}")


def check_partitioner(name: str, deployments: dict, p: Problems) -> None:
    """One partitioner for the gateway and the producer (partition groups
    compute an account's group with the producers' partitioner)."""
    seen = set()
    for d in deployments.values():
        env = env_of(d["spec"]["template"]["spec"]["containers"][0])
        value = env.get("HERALD_PARTITIONER", {}).get("value")
        p.check(value in ("consistent_random", "murmur2_random"),
                f"{name}: Deployment/{d['metadata']['name']} has HERALD_PARTITIONER={value!r}")
        seen.add(value)
    p.check(len(seen) <= 1, f"{name}: gateway and producer use different partitioners: {sorted(map(str, seen))}")


def cmd_manifests(out_json: str, files: list[str]) -> int:
    import kubernetes_validate

    p = Problems("chart")
    crds = []
    alerts = load_yaml(ALERTS_FILE)
    for f in files:
        name = Path(f).name
        try:
            docs = load_yaml_all(Path(f))
        except yaml.YAMLError as e:
            p.add(f"{name}: invalid YAML: {e}")
            continue
        if not docs:
            p.add(f"{name}: rendered nothing")
            continue
        by_kind: dict[str, list] = {}
        for d in docs:
            for key in ("apiVersion", "kind", "metadata"):
                p.check(key in d, f"{name}: a document lacks {key}")
            by_kind.setdefault(d.get("kind"), []).append(d)
            ident = f"{name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
            if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
                crds.append({"source": ident, "object": d})
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(x) for x in e.path)
                    p.add(f"{ident}: Kubernetes {version} schema: {e.message} at {path or '/'}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    p.add(f"{ident}: no Kubernetes {version} schema for {e}")
        secrets = {s["metadata"]["name"]: set((s.get("data") or {}) | (s.get("stringData") or {}))
                   for s in by_kind.get("Secret", [])}
        configmaps = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
        deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
        gateway = [d for d in deployments.values()
                   if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "herald-gateway"]
        for d in deployments.values():
            comp = d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name")
            check_workload(d, p, f"{name}: Deployment/{d['metadata']['name']}", secrets, configmaps,
                           require_drain=(comp == "herald-gateway"))
            p.check(selects(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]),
                    f"{name}: Deployment/{d['metadata']['name']} selector does not match its pods")
        for j in by_kind.get("Job", []):
            jctx = f"{name}: Job/{j['metadata']['name']}"
            jspec = j["spec"]["template"]["spec"]
            check_references(jspec, p, jctx, secrets, configmaps)
            p.check(jspec.get("securityContext", {}).get("runAsNonRoot") is True, f"{jctx}: must run as non-root")
            for c in jspec["containers"]:
                p.check(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True,
                        f"{jctx}: readOnlyRootFilesystem must be true")
        services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
        check_groups(name, gateway, deployments, services, by_kind, p)
        check_otlp(name, deployments, p)
        check_partitioner(name, deployments, p)
        for s in services.values():
            targets = [d for d in deployments.values()
                       if selects(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
            # One Deployment, or (the Service of every partition group) every gateway Deployment.
            expected = len(gateway) if s["metadata"]["labels"].get(GROUP_LABEL) == "all" else 1
            p.check(len(targets) == expected,
                    f"{name}: Service/{s['metadata']['name']} selects {len(targets)} Deployments, not {expected}")
            for t in targets:
                cports = {pt["name"] for c in t["spec"]["template"]["spec"]["containers"] for pt in c.get("ports", [])}
                for port in s["spec"]["ports"]:
                    p.check(port["targetPort"] in cports,
                            f"{name}: Service/{s['metadata']['name']} targetPort {port['targetPort']} is no container port")
        for h in by_kind.get("HorizontalPodAutoscaler", []):
            ref = h["spec"]["scaleTargetRef"]
            p.check(ref["name"] in deployments, f"{name}: HPA targets unknown Deployment {ref['name']}")
            if ref["name"] in deployments:
                p.check("replicas" not in deployments[ref["name"]]["spec"],
                        f"{name}: Deployment {ref['name']} sets replicas although an HPA scales it")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            sel = pdb["spec"]["selector"]["matchLabels"]
            p.check(any(selects(sel, d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()),
                    f"{name}: PDB/{pdb['metadata']['name']} selects no pods")
        for ing in by_kind.get("Ingress", []):
            for rule in ing["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    svc = path["backend"]["service"]
                    p.check(svc["name"] in services, f"{name}: Ingress backend {svc['name']} is no Service")
                    if svc["name"] in services:
                        names = {pt["name"] for pt in services[svc["name"]]["spec"]["ports"]}
                        p.check(svc["port"].get("name") in names,
                                f"{name}: Ingress backend port {svc['port']} not on Service {svc['name']}")
            ann = ing["metadata"].get("annotations", {})
            for a in ("nginx.ingress.kubernetes.io/proxy-read-timeout",
                      "nginx.ingress.kubernetes.io/proxy-send-timeout"):
                p.check(int(ann.get(a, 60)) >= 60, f"{name}: Ingress {a} below 60 s")
        for sm in by_kind.get("ServiceMonitor", []):
            sel = sm["spec"]["selector"]
            matched = [s for s in services.values() if selects_expr(sel, s["metadata"]["labels"])]
            p.check(len(matched) >= 1, f"{name}: ServiceMonitor selects no Service")
            # Every pod scraped exactly once (twice would double every sum).
            for d in deployments.values():
                via = [s["metadata"]["name"] for s in matched if selects(s["spec"]["selector"], pod_labels(d))]
                p.check(len(via) == 1,
                        f"{name}: ServiceMonitor scrapes Deployment/{d['metadata']['name']} through {via}, not one Service")
            for s in matched:
                p.check(s["metadata"]["labels"].get(sm["spec"].get("jobLabel", "")) in ("herald-gateway", "herald-producer"),
                        f"{name}: ServiceMonitor jobLabel must yield job=herald-gateway/herald-producer")
                p.check(any(pt["name"] == "ops" for pt in s["spec"]["ports"]), f"{name}: Service {s['metadata']['name']} has no ops port")
        for pr in by_kind.get("PrometheusRule", []):
            p.check(pr["spec"].get("groups") == alerts.get("groups"),
                    f"{name}: PrometheusRule groups differ from {ALERTS_FILE}")
        for cm in by_kind.get("ConfigMap", []):
            for key, value in (cm.get("data") or {}).items():
                if key.endswith(".json"):
                    try:
                        json.loads(value)
                    except json.JSONDecodeError as e:
                        p.add(f"{name}: ConfigMap {cm['metadata']['name']} key {key}: invalid JSON: {e}")
        for pod in by_kind.get("Pod", []):
            hook = pod["metadata"].get("annotations", {}).get("helm.sh/hook")
            p.check(hook == "test", f"{name}: bare Pod {pod['metadata']['name']} must be a helm test hook")
    Path(out_json).write_text(json.dumps(crds))
    return p.finish()


# ---------------------------------------------------------------- Dockerfiles

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|make|cmake|clang|cargo|rustc|build-essential|libssl-dev|zlib1g-dev|pkg-config)\b")


def cmd_dockerfiles() -> int:
    import dockerfile

    p = Problems("Dockerfiles")
    files = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
    p.check({f.name for f in files} >= {"gateway.Dockerfile", "producer.Dockerfile"},
            "deploy/docker needs gateway.Dockerfile and producer.Dockerfile")
    for f in files:
        try:
            cmds = dockerfile.parse_file(str(f))
        except dockerfile.GoParseError as e:
            p.add(f"{f}: does not parse: {e}")
            continue
        stages: list[list] = []
        for c in cmds:
            if c.cmd.upper() == "FROM":
                stages.append([c])
            elif stages:
                stages[-1].append(c)
        p.check(len(stages) >= 2, f"{f}: must be multi-stage (build, runtime)")
        if len(stages) < 2:
            continue
        p.check(stages[0][0].value[0].startswith("rust:"), f"{f}: the build stage starts FROM rust:")
        final = stages[-1]
        p.check("slim" in final[0].value[0], f"{f}: the runtime stage should be a slim image")
        users = [c.value[0] for c in final if c.cmd.upper() == "USER"]
        p.check(bool(users) and users[-1].split(":")[0] not in ("0", "root"),
                f"{f}: the runtime stage must switch to a non-root USER")
        for c in final:
            if c.cmd.upper() == "RUN" and BUILD_TOOLS.search(" ".join(c.value)):
                p.add(f"{f}:{c.start_line}: build tools in the runtime stage: {c.original}")
        p.check(any(c.cmd.upper() == "COPY" and any(fl.startswith("--from=") for fl in c.flags) for c in final),
                f"{f}: the runtime stage copies the binary from the build stage")
        p.check(any(c.cmd.upper() == "ENTRYPOINT" for c in final), f"{f}: no ENTRYPOINT")
        builds = [c for c in stages[0] if c.cmd.upper() == "RUN" and "cargo build" in " ".join(c.value)]
        p.check(bool(builds) and all("--locked" in " ".join(c.value) and "--release" in " ".join(c.value) for c in builds),
                f"{f}: cargo build must use --release --locked")
    ignore = Path(".dockerignore")
    p.check(ignore.exists() and "target" in ignore.read_text().split(),
            ".dockerignore must exclude target/")
    return p.finish()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "compose" and len(args) == 1:
        return cmd_compose(args[0])
    if cmd == "manifests" and len(args) >= 2:
        return cmd_manifests(args[0], args[1:])
    if cmd == "observability" and not args:
        return cmd_observability()
    if cmd == "dockerfiles" and not args:
        return cmd_dockerfiles()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
