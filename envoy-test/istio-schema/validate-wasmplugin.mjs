// Validates WasmPlugin documents against Istio's WasmPlugin schema.
//
// The schema comes from npm's @kubernetes-models/istio (pinned in
// package-lock.json), which generates it from an Istio release's CRDs (its
// package.json: istio/istio 1.29.2, manifests/charts/base/files/
// crd-all.gen.yaml). Istio's WasmPlugin CRD is the same from 1.27 to 1.30.
// The package keeps no JSON copy of the schema: it ships the CRD's
// openAPIV3Schema compiled into an Ajv validator
// (_schemas/ExtensionsIstioIoV1alpha1WasmPlugin.js), which the WasmPlugin
// model's validate() runs; it also checks apiVersion, kind and metadata.
// Like any OpenAPI validator it does not run the CRD's
// x-kubernetes-validations (CEL) rules.
//
// stdin: a JSON array of documents. stdout: a JSON array holding, for each
// document, its list of violations ([] when it is valid). Exits non-zero,
// with the reason on stderr, when the schema cannot be loaded.

import { readFileSync } from "node:fs";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";

function violations(doc) {
  try {
    new WasmPlugin(doc).validate();
    return [];
  } catch (err) {
    if (!Array.isArray(err.errors)) throw err;
    return err.errors.map((e) => {
      const allowed = e.params?.allowedValues ? `: ${e.params.allowedValues.join(", ")}` : "";
      return `${e.instancePath || "/"} ${e.message}${allowed}`;
    });
  }
}

const docs = JSON.parse(readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(docs.map(violations)) + "\n");
