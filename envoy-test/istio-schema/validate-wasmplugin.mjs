// Validates the documents of wasmplugin/ against Istio's schemas: WasmPlugin
// (extensions.istio.io/v1alpha1), DestinationRule (networking.istio.io/v1),
// AuthorizationPolicy (security.istio.io/v1) and EnvoyFilter
// (networking.istio.io/v1alpha3).
//
// The schemas come from npm's @kubernetes-models/istio (pinned in
// package-lock.json), which generates them from an Istio release's CRDs (its
// package.json: istio/istio 1.29.2, manifests/charts/base/files/
// crd-all.gen.yaml). Istio's WasmPlugin CRD is the same from 1.27 to 1.30.
// The package keeps no JSON copy of a schema: it ships each CRD's
// openAPIV3Schema compiled into an Ajv validator
// (_schemas/ExtensionsIstioIoV1alpha1WasmPlugin.js,
// _schemas/NetworkingIstioIoV1DestinationRule.js,
// _schemas/SecurityIstioIoV1AuthorizationPolicy.js,
// _schemas/NetworkingIstioIoV1alpha3EnvoyFilter.js), which the model's
// validate() runs; it also checks apiVersion, kind and metadata. Like any
// OpenAPI validator it does not run the CRDs' x-kubernetes-validations (CEL)
// rules.
//
// stdin: a JSON array of documents. stdout: a JSON array holding, for each
// document, its list of violations ([] when it is valid; a kind without a
// model here is one). Exits non-zero, with the reason on stderr, when a
// schema cannot be loaded.

import { readFileSync } from "node:fs";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";
import { DestinationRule } from "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule";
import { AuthorizationPolicy } from "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy";
import { EnvoyFilter } from "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter";

const MODELS = { WasmPlugin, DestinationRule, AuthorizationPolicy, EnvoyFilter };

function violations(doc) {
  const Model = MODELS[doc?.kind];
  if (!Model) {
    return [`/kind ${JSON.stringify(doc?.kind)} has no schema here: one of ${Object.keys(MODELS).join(", ")}`];
  }
  try {
    new Model(doc).validate();
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
