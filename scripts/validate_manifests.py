#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, failing on anything it cannot check.

Built-in kinds are validated strictly (unknown fields are errors) against the Kubernetes
OpenAPI schemas that kubernetes-validate bundles. The custom resources infergate ships -- KServe's
ClusterServingRuntime and InferenceService, the Prometheus Operator's ServiceMonitor -- have no
bundled schema, so their fields are checked against schemas transcribed below from those
projects' CRDs (the fields infergate uses, strictly), and the core objects they embed (containers,
resource requirements, label selectors, object metadata) against the Kubernetes schemas.

usage: validate_manifests.py [--kubernetes-version 1.33] FILE.yaml...
"""

import argparse
import sys

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate import utils

CORE = "/api/_definitions.json#/$defs/"


def ref(name):
    return {"$ref": CORE + name}


def obj(properties, required=()):
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


STRING = {"type": "string"}
STRINGS = {"type": "array", "items": STRING}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
META = ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")


def resource(api_version, kind, spec):
    return obj(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": META,
            "spec": spec,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    )


# serving.kserve.io/v1alpha1 ServingRuntimeSpec (kserve/config/crd: servingruntimes).
SERVING_RUNTIME_SPEC = obj(
    {
        "annotations": STRING_MAP,
        "labels": STRING_MAP,
        "supportedModelFormats": {
            "type": "array",
            "items": obj(
                {
                    "name": STRING,
                    "version": STRING,
                    "autoSelect": {"type": "boolean"},
                    "priority": {"type": "integer", "minimum": 1},
                },
                required=("name",),
            ),
        },
        "protocolVersions": {
            "type": "array",
            "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2", "openAI"]},
        },
        "multiModel": {"type": "boolean"},
        "disabled": {"type": "boolean"},
        "grpcEndpoint": STRING,
        "grpcDataEndpoint": STRING,
        "httpDataEndpoint": STRING,
        "replicas": {"type": "integer", "minimum": 0},
        "containers": {
            "type": "array",
            "minItems": 1,
            "items": ref("io.k8s.api.core.v1.Container"),
        },
        "volumes": {"type": "array", "items": ref("io.k8s.api.core.v1.Volume")},
        "nodeSelector": STRING_MAP,
        "tolerations": {"type": "array", "items": ref("io.k8s.api.core.v1.Toleration")},
        "affinity": ref("io.k8s.api.core.v1.Affinity"),
    },
    required=("containers",),
)

# serving.kserve.io/v1beta1 InferenceService: spec.predictor.model (PredictorExtensionSpec).
MODEL_SPEC = obj(
    {
        "modelFormat": obj({"name": STRING, "version": STRING}, required=("name",)),
        "runtime": STRING,
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
        "storageUri": STRING,
        "args": STRINGS,
        "env": {"type": "array", "items": ref("io.k8s.api.core.v1.EnvVar")},
        "resources": ref("io.k8s.api.core.v1.ResourceRequirements"),
    },
    required=("modelFormat",),
)
INFERENCE_SERVICE_SPEC = obj(
    {
        "predictor": obj(
            {
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "serviceAccountName": STRING,
                "model": MODEL_SPEC,
            },
            required=("model",),
        )
    },
    required=("predictor",),
)

# monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator: servicemonitors CRD).
SERVICE_MONITOR_SPEC = obj(
    {
        "selector": ref("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
        "namespaceSelector": obj({"any": {"type": "boolean"}, "matchNames": STRINGS}),
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": obj(
                {
                    "port": STRING,
                    "path": STRING,
                    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)(y|w|d|h|m|s|ms))+)$"},
                    "scheme": {"enum": ["http", "https"]},
                    "authorization": obj(
                        {
                            "type": STRING,
                            "credentials": ref("io.k8s.api.core.v1.SecretKeySelector"),
                        }
                    ),
                }
            ),
        },
    },
    required=("selector", "endpoints"),
)

CUSTOM = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): SERVING_RUNTIME_SPEC,
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): SERVING_RUNTIME_SPEC,
    ("serving.kserve.io/v1beta1", "InferenceService"): INFERENCE_SERVICE_SPEC,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SPEC,
}


def custom_validator(version, api_version, kind):
    schema = resource(api_version, kind, CUSTOM[(api_version, kind)])
    schema["$id"] = "https://kubernetes.io/api/infergate-custom.json"
    full = [v for v in utils.all_versions() if utils.major_minor(v) <= version][-1]
    defs = utils.schema_contents(
        f"kubernetes-json-schema/v{full}-local-strict/_definitions.json", version
    )
    registry = referencing.Resource.from_contents(defs) @ referencing.Registry()
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.33")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failures = checked = 0
    for path in args.files:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        if not documents:
            print(f"ERROR {path}: no manifests")
            failures += 1
        for doc in documents:
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in CUSTOM:
                    errors = sorted(
                        custom_validator(args.kubernetes_version, *key).iter_errors(doc),
                        key=lambda e: list(e.path),
                    )
                    for e in errors:
                        where = ".".join(str(p) for p in e.path)
                        print(f"ERROR {name}: {where}: {e.message}")
                    failures += bool(errors)
                else:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                checked += 1
            except utils.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                print(f"ERROR {name}: {where}: {e.message}")
                failures += 1
            except utils.SchemaNotFoundError:
                print(f"ERROR {name}: no schema for {key[0]} {key[1]}")
                failures += 1
    print(f"{checked} manifests checked against Kubernetes {args.kubernetes_version}, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
