// Validates deploy/kubernetes against the Kubernetes API schemas (the
// OpenAPI schemas compiled into the kubernetes-models packages), the way
// `kubectl apply --dry-run=server` would without a cluster:
//   - every document of every resource kustomization.yaml lists, the
//     ConfigMap its configMapGenerator makes, and podmonitor.yaml (the
//     Prometheus Operator's schema);
//   - a field the schema does not define is an error (kubectl's strict
//     field validation): the compiled validators ignore unknown fields, so
//     this script records which fields they read and reports the rest;
//   - what kustomize itself would refuse: a listed file or generator input
//     that is missing, a namespaced resource with its own namespace.
//   - the DaemonSet's references: config volume -> generated ConfigMap,
//     serviceAccountName -> ServiceAccount, Service selector -> pod labels,
//     Service targetPorts -> named container ports.
// Usage: node validate_kubernetes.mjs DIR  (exit 0 valid, 1 with the errors)
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { runValidateFunc } from "@kubernetes-models/validate";

const here = path.dirname(fileURLToPath(import.meta.url));
const coreSchemas = path.join(here, "node_modules/kubernetes-models/_schemas");
const operatorSchemas = path.join(
  here, "node_modules/@kubernetes-models/prometheus-operator/_schemas");

// The kinds deploy/kubernetes ships, and the compiled schema of each.
const schemaFiles = {
  "v1/Namespace": path.join(coreSchemas, "IoK8sApiCoreV1Namespace.mjs"),
  "v1/ServiceAccount": path.join(coreSchemas, "IoK8sApiCoreV1ServiceAccount.mjs"),
  "v1/ConfigMap": path.join(coreSchemas, "IoK8sApiCoreV1ConfigMap.mjs"),
  "v1/Service": path.join(coreSchemas, "IoK8sApiCoreV1Service.mjs"),
  "apps/v1/DaemonSet": path.join(coreSchemas, "IoK8sApiAppsV1DaemonSet.mjs"),
  "monitoring.coreos.com/v1/PodMonitor":
    path.join(operatorSchemas, "MonitoringCoreosComV1PodMonitor.mjs"),
};
const clusterScoped = new Set(["v1/Namespace"]);
const kustomizationFields = new Set([
  "apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images"]);

const errors = [];
function fail(where, message) { errors.push(`${where}: ${message}`); }

// `value` behind proxies that add to `read` the path of every field read.
function recordingReads(value, where, read) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      const child = Reflect.get(target, key, receiver);
      if (typeof key !== "string" || !Object.hasOwn(target, key)) return child;
      const childPath = `${where}/${key}`;
      read.add(childPath);
      return recordingReads(child, childPath, read);
    },
  });
}

function unreadFields(value, where, read, found) {
  if (value === null || typeof value !== "object") return;
  for (const [key, child] of Object.entries(value)) {
    const childPath = `${where}/${key}`;
    if (!read.has(childPath)) {
      found.push(childPath);
    } else {
      unreadFields(child, childPath, read, found);
    }
  }
}

async function validateDocument(doc, where) {
  if (doc === null || typeof doc !== "object") {
    fail(where, "not a mapping");
    return;
  }
  const type = `${doc.apiVersion}/${doc.kind}`;
  const schemaFile = schemaFiles[type];
  if (schemaFile === undefined) {
    fail(where, `no schema for apiVersion ${doc.apiVersion} kind ${doc.kind}`);
    return;
  }
  const { validate } = await import(schemaFile);
  const read = new Set();
  try {
    runValidateFunc(validate, recordingReads(doc, "", read));
  } catch (error) {
    fail(where, `${type} ${doc.metadata?.name}: ${error.message}`);
    return;
  }
  const unknown = [];
  unreadFields(doc, "", read, unknown);
  for (const field of unknown) fail(where, `${type} ${doc.metadata?.name}: unknown field ${field}`);
}

function readYamlDocuments(file) {
  const text = fs.readFileSync(file, "utf8");
  return YAML.parseAllDocuments(text).map((document) => {
    for (const error of document.errors) fail(file, error.message);
    return document.toJS();
  });
}

function checkReferences(resources, generatedConfigMaps) {
  const byKind = (kind) => resources.filter((r) => r.doc.kind === kind);
  for (const { doc, where } of byKind("DaemonSet")) {
    const pod = doc.spec?.template;
    const podLabels = pod?.metadata?.labels ?? {};
    const serviceAccounts = byKind("ServiceAccount").map((r) => r.doc.metadata.name);
    if (pod?.spec?.serviceAccountName && !serviceAccounts.includes(pod.spec.serviceAccountName)) {
      fail(where, `serviceAccountName ${pod.spec.serviceAccountName} is not a listed ServiceAccount`);
    }
    for (const volume of pod?.spec?.volumes ?? []) {
      if (volume.configMap && !generatedConfigMaps.includes(volume.configMap.name)) {
        fail(where, `volume ${volume.name}: ConfigMap ${volume.configMap.name} is not generated`);
      }
    }
    const containerPorts = (pod?.spec?.containers ?? []).flatMap((c) => c.ports ?? []);
    for (const { doc: service, where: serviceWhere } of byKind("Service")) {
      const selector = service.spec?.selector ?? {};
      const matches = Object.entries(selector).every(([k, v]) => podLabels[k] === v);
      if (!matches) continue;
      for (const port of service.spec?.ports ?? []) {
        const target = port.targetPort ?? port.port;
        const found = containerPorts.some((p) => p.name === target || p.containerPort === target);
        if (!found) fail(serviceWhere, `port ${port.name}: targetPort ${target} names no container port`);
      }
    }
  }
  for (const { doc, where } of byKind("Service")) {
    const selector = doc.spec?.selector ?? {};
    const selected = byKind("DaemonSet").some(({ doc: ds }) => Object.entries(selector)
      .every(([k, v]) => ds.spec?.template?.metadata?.labels?.[k] === v));
    if (!selected) fail(where, `Service ${doc.metadata?.name} selects no pod of the DaemonSet`);
  }
}

async function main(dir) {
  const kustomizationFile = path.join(dir, "kustomization.yaml");
  const [kustomization] = readYamlDocuments(kustomizationFile);
  for (const key of Object.keys(kustomization ?? {})) {
    if (!kustomizationFields.has(key)) fail(kustomizationFile, `unexpected field ${key}`);
  }
  const resources = [];
  for (const name of kustomization?.resources ?? []) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) {
      fail(kustomizationFile, `resource ${name} does not exist`);
      continue;
    }
    readYamlDocuments(file).forEach((doc, index) => {
      resources.push({ doc, where: `${file}[${index}]` });
    });
  }
  const generatedConfigMaps = [];
  for (const generator of kustomization?.configMapGenerator ?? []) {
    const data = {};
    for (const name of generator.files ?? []) {
      const file = path.join(dir, name);
      if (!fs.existsSync(file)) {
        fail(kustomizationFile, `configMapGenerator ${generator.name}: ${name} does not exist`);
        continue;
      }
      data[path.basename(name)] = fs.readFileSync(file, "utf8");
    }
    generatedConfigMaps.push(generator.name);
    resources.push({
      doc: { apiVersion: "v1", kind: "ConfigMap", metadata: { name: generator.name }, data },
      where: `${kustomizationFile} configMapGenerator ${generator.name}`,
    });
  }
  for (const { doc, where } of resources) {
    await validateDocument(doc, where);
    const type = `${doc?.apiVersion}/${doc?.kind}`;
    if (!clusterScoped.has(type) && doc?.metadata?.namespace !== undefined) {
      fail(where, "sets its own namespace; kustomization.yaml's namespace applies");
    }
  }
  checkReferences(resources, generatedConfigMaps);

  const podMonitor = path.join(dir, "podmonitor.yaml");
  for (const [index, doc] of readYamlDocuments(podMonitor).entries()) {
    await validateDocument(doc, `${podMonitor}[${index}]`);
  }
}

const dir = process.argv[2];
if (!dir) {
  console.error("usage: node validate_kubernetes.mjs DIR");
  process.exit(2);
}
await main(dir);
if (errors.length > 0) {
  for (const error of errors) console.error(error);
  process.exit(1);
}
console.log(`${dir}: valid`);
