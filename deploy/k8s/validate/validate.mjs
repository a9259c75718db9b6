// Validates rendered Kubernetes manifests offline, three ways:
//  1. schema: each object against the Kubernetes (kubernetes-models) or Istio
//     (@kubernetes-models/istio) JSON schema of its apiVersion and kind
//     (types, enums, formats, required fields); an unknown kind fails;
//  2. strict: each object as a TypeScript literal of the same models' types,
//     so an unknown or misspelled field anywhere fails (the JSON schemas allow
//     extra fields, as the API server's non-strict decoding does);
//  3. references: envFrom ConfigMaps and Secrets, Service and PDB selectors,
//     Service target ports, HPA targets and volume claims point at something
//     in the same render.
// Usage: node validate.mjs <name>=<rendered.yaml> ...   (validate.sh renders)
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const tsc = join(here, "..", "..", "..", "node_modules", ".bin", "tsc");
const problems = [];

/** The module and type that model an apiVersion and kind. */
function modelOf(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group.endsWith(".istio.io")) return `@kubernetes-models/istio/${group}/${version}/${kind}`;
  return group === "" ? `kubernetes-models/${version}/${kind}` : `kubernetes-models/${group}/${version}/${kind}`;
}

const renders = process.argv.slice(2).map((arg) => {
  const [name, file] = arg.split("=");
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const d of docs) if (d.errors.length > 0) problems.push(`${name}: YAML: ${d.errors[0].message}`);
  return { name, objects: docs.map((d) => d.toJS()).filter((o) => o !== null) };
});

// 1. Schemas.
for (const { name, objects } of renders) {
  for (const o of objects) {
    const what = `${name}: ${o.kind}/${o.metadata?.name}`;
    let Model;
    try {
      Model = (await import(modelOf(o.apiVersion, o.kind)))[o.kind];
    } catch {
      problems.push(`${what}: no schema for ${o.apiVersion} ${o.kind}`);
      continue;
    }
    try {
      new Model(o).validate();
    } catch (e) {
      const errors = e.errors ?? [{ instancePath: "", message: String(e) }];
      for (const err of errors)
        problems.push(`${what}: ${err.instancePath || "/"} ${err.message} ${JSON.stringify(err.params ?? {})}`);
    }
  }
}

// 2. Unknown fields, through TypeScript's excess-property checks.
const dir = mkdtempSync(join(here, ".strict-"));
try {
  const lines = [];
  const imports = new Map();
  renders.forEach(({ name, objects }, r) => {
    objects.forEach((o, i) => {
      const type = `I${o.kind}`;
      const alias = `${type}_${imports.size}`;
      const module = modelOf(o.apiVersion, o.kind);
      if (!imports.has(module)) imports.set(module, alias);
      lines.push(`// ${name}: ${o.kind}/${o.metadata?.name}`);
      lines.push(`export const o${r}_${i}: ${imports.get(module)} = ${JSON.stringify(o, null, 2)};`);
    });
  });
  const head = [...imports].map(([m, alias]) => `import type { I${m.split("/").at(-1)} as ${alias} } from "${m}";`);
  writeFileSync(join(dir, "manifests.ts"), [...head, ...lines].join("\n"));
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        module: "nodenext",
        moduleResolution: "nodenext",
        types: [],
      },
      files: ["manifests.ts"],
    }),
  );
  try {
    execFileSync(tsc, ["-p", dir], { encoding: "utf8", stdio: "pipe" });
  } catch (e) {
    const out = `${e.stdout ?? ""}${e.stderr ?? ""}`.trim();
    const source = readFileSync(join(dir, "manifests.ts"), "utf8").split("\n");
    for (const line of out.split("\n").filter((l) => l.includes("error TS"))) {
      // Name the object each error is in: the nearest "// name: Kind/name" above it.
      const at = Number(/\((\d+),/.exec(line)?.[1] ?? 0) - 1;
      let owner = "";
      for (let j = at; j >= 0 && owner === ""; j--) if (source[j]?.startsWith("// ")) owner = source[j].slice(3);
      problems.push(`${owner}: ${line.replace(/^.*error TS\d+: /, "")}`);
    }
    if (!out.includes("error TS")) problems.push(`strict check: ${out || e.message}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

// 3. References within one render.
const matches = (selector, labels) => Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);
for (const { name, objects } of renders) {
  const byKind = (kind) => objects.filter((o) => o.kind === kind);
  const named = (kind, n) => objects.some((o) => o.kind === kind && o.metadata?.name === n);
  const workloads = objects.filter((o) => ["Deployment", "StatefulSet", "DaemonSet"].includes(o.kind));
  for (const w of workloads) {
    const what = `${name}: ${w.kind}/${w.metadata.name}`;
    const pod = w.spec.template.spec;
    if (!matches(w.spec.selector.matchLabels, w.spec.template.metadata?.labels))
      problems.push(`${what}: selector does not match its pods`);
    const claims = new Set((w.spec.volumeClaimTemplates ?? []).map((c) => c.metadata.name));
    for (const v of pod.volumes ?? []) claims.add(v.name);
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      for (const e of c.envFrom ?? []) {
        if (e.configMapRef && !named("ConfigMap", e.configMapRef.name))
          problems.push(`${what}: no ConfigMap ${e.configMapRef.name}`);
        if (e.secretRef && !named("Secret", e.secretRef.name)) problems.push(`${what}: no Secret ${e.secretRef.name}`);
      }
      for (const m of c.volumeMounts ?? []) if (!claims.has(m.name)) problems.push(`${what}: no volume ${m.name}`);
    }
  }
  for (const s of byKind("Service")) {
    const pods = workloads.filter((w) => matches(s.spec.selector, w.spec.template.metadata?.labels));
    if (pods.length === 0) problems.push(`${name}: Service/${s.metadata.name} selects no pods`);
    const portNames = new Set(
      pods
        .flatMap((w) => [...(w.spec.template.spec.initContainers ?? []), ...w.spec.template.spec.containers])
        .flatMap((c) => (c.ports ?? []).map((p) => p.name)),
    );
    for (const p of s.spec.ports) {
      if (typeof p.targetPort === "string" && pods.length > 0 && !portNames.has(p.targetPort)) {
        problems.push(`${name}: Service/${s.metadata.name} targets a port named ${p.targetPort} no pod has`);
      }
    }
  }
  for (const p of byKind("PodDisruptionBudget")) {
    if (!workloads.some((w) => matches(p.spec.selector.matchLabels, w.spec.template.metadata?.labels))) {
      problems.push(`${name}: PodDisruptionBudget/${p.metadata.name} selects no pods`);
    }
  }
  for (const h of byKind("HorizontalPodAutoscaler")) {
    if (!named(h.spec.scaleTargetRef.kind, h.spec.scaleTargetRef.name))
      problems.push(`${name}: HPA/${h.metadata.name} targets nothing`);
  }
  for (const d of byKind("DestinationRule")) {
    if (!named("Service", d.spec.host))
      problems.push(`${name}: DestinationRule/${d.metadata.name} host ${d.spec.host} is no Service`);
  }
  for (const v of byKind("VirtualService")) {
    for (const route of v.spec.http ?? []) {
      for (const r of route.route ?? []) {
        if (!named("Service", r.destination.host))
          problems.push(`${name}: VirtualService/${v.metadata.name} routes to no Service ${r.destination.host}`);
      }
    }
  }
}

const total = renders.reduce((n, r) => n + r.objects.length, 0);
if (problems.length > 0) {
  for (const p of problems) console.error(`INVALID ${p}`);
  console.error(`k8s validate: ${problems.length} problem(s) in ${total} objects`);
  process.exit(1);
}
for (const { name, objects } of renders)
  console.log(`ok ${name}: ${objects.length} objects (${objects.map((o) => o.kind).join(", ")})`);
console.log(`k8s validate: ${total} objects valid (schemas, unknown fields, references)`);
