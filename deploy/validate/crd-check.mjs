// Validates the Prometheus Operator objects the chart renders (ServiceMonitor,
// PrometheusRule) against the operator's CRD schemas, as packaged by
// @kubernetes-models/prometheus-operator. Input: the JSON file written by
// `check.py manifests`. Run by scripts/validate-deploy.sh.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

// The package lives in the tools' npm prefix (HERALD_NODE_TOOLS), not next
// to this file: import its model files by path.
const base = `${process.env.HERALD_NODE_TOOLS}/node_modules/@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/`;
const load = async (kind) => (await import(pathToFileURL(`${base}${kind}.js`).href))[kind];
const models = {
  ServiceMonitor: await load("ServiceMonitor"),
  PrometheusRule: await load("PrometheusRule"),
};

const items = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failures = 0;
for (const { source, object } of items) {
  const Model = models[object.kind];
  if (!Model || object.apiVersion !== "monitoring.coreos.com/v1") {
    console.error(`  FAIL chart: ${source}: no schema for ${object.apiVersion} ${object.kind}`);
    failures++;
    continue;
  }
  try {
    new Model(object).validate();
  } catch (e) {
    console.error(`  FAIL chart: ${source}: Prometheus Operator schema: ${e.message}`);
    failures++;
  }
}
console.log(`  ${items.length} Prometheus Operator object(s) checked`);
process.exit(failures ? 1 : 0);
