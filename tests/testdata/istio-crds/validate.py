#!/usr/bin/env python3
"""Validate Istio resources against Istio's CRD OpenAPI schemas, offline.

Usage: validate.py CRD_DIR FILE [FILE...]

Reads every YAML document of every FILE. A document whose apiVersion group
ends in ``istio.io`` is validated against the CRD schema in CRD_DIR for its
group, version and kind; a document without a schema there is an error
(fail closed: an Istio kind this project does not know cannot be checked).
A ConfigMap's ``data`` values are searched too, because the deploy manifests
ship policies as files inside ConfigMaps: every value that parses as a YAML
stream is scanned the same way. Other documents are ignored.

What the Kubernetes API server would also do, and this does:
- structural schemas prune or (with kubectl's default strict field
  validation) reject unknown fields: here every object schema that lists
  ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields;
- ``metadata.name`` must be a DNS-1123 subdomain, ``metadata.namespace`` a
  DNS-1123 label, and only ObjectMeta fields are allowed in ``metadata``.

What it does not do: evaluate ``x-kubernetes-validations`` (CEL rules such
as "portLevelMtls requires selector"); meshgate's own parser checks those
semantics and the deploy tests run it as well.

Output: one line per resource, ``OK KIND NAMESPACE/NAME (ORIGIN)`` or
``ERROR ORIGIN: MESSAGE``, then ``istio-validate: N valid, M invalid``.
Exit 0 when nothing is invalid, 1 otherwise, 2 on a usage error.
"""

import copy
import os
import re
import sys

import jsonschema
import yaml

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
OBJECT_META_FIELDS = {
    "name", "namespace", "labels", "annotations", "creationTimestamp",
    "generateName", "uid", "resourceVersion", "generation", "finalizers",
    "ownerReferences", "managedFields", "deletionTimestamp",
    "deletionGracePeriodSeconds", "selfLink",
}


def strict(schema):
    """Copy of an OpenAPI schema in which objects reject unknown fields."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crds(crd_dir):
    """Map (group, version, kind) -> validator for every CRD in crd_dir."""
    validators = {}
    for entry in sorted(os.listdir(crd_dir)):
        if not entry.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(crd_dir, entry), encoding="utf-8") as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    # The API server itself owns these three; the CRD schema
                    # leaves them out.
                    schema.setdefault("properties", {}).update({
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                    })
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    validators[key] = jsonschema.Draft7Validator(schema)
    return validators


def check_metadata(meta):
    """ObjectMeta checks the API server applies before the CRD schema."""
    errors = []
    if not isinstance(meta, dict):
        return ["metadata: must be a mapping"]
    for field in sorted(set(meta) - OBJECT_META_FIELDS):
        errors.append(f"metadata.{field}: unknown field")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append("metadata.name: required")
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not DNS1123_LABEL.match(namespace)
    ):
        errors.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        values = meta.get(field, {})
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            errors.append(f"metadata.{field}: must map strings to strings")
    return errors


def is_istio(doc):
    api = doc.get("apiVersion")
    return isinstance(api, str) and "/" in api and api.split("/", 1)[0].endswith("istio.io")


def validate_doc(doc, origin, validators, out):
    """Validates one Istio document; appends ("OK"|"ERROR", line) to out."""
    group, version = doc["apiVersion"].split("/", 1)
    kind = doc.get("kind")
    validator = validators.get((group, version, kind))
    if validator is None:
        out.append(("ERROR", f"{origin}: no Istio CRD schema for {doc['apiVersion']} {kind}"))
        return
    meta = doc.get("metadata")
    errors = check_metadata(meta)
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{path}: {err.message}")
    label = f"{kind} {(meta or {}).get('namespace', '')}/{(meta or {}).get('name', '')}"
    if errors:
        for message in errors:
            out.append(("ERROR", f"{origin}: {label}: {message}"))
    else:
        out.append(("OK", f"{label} ({origin})"))


def scan_stream(text, origin, validators, out, inside_configmap):
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        if inside_configmap:
            # A ConfigMap value that is not YAML is not a policy file.
            return
        out.append(("ERROR", f"{origin}: not YAML: {err}"))
        return
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            continue
        where = f"{origin} document {index + 1}"
        if is_istio(doc):
            validate_doc(doc, where, validators, out)
        elif doc.get("kind") == "ConfigMap" and not inside_configmap:
            meta = doc.get("metadata") or {}
            for key, value in sorted((doc.get("data") or {}).items()):
                name = f"{where} ConfigMap {meta.get('namespace', '')}/{meta.get('name', '')} key {key}"
                scan_stream(value, name, validators, out, True)


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    validators = load_crds(argv[1])
    if not validators:
        print(f"no CustomResourceDefinition found in {argv[1]}", file=sys.stderr)
        return 2
    out = []
    for path in argv[2:]:
        with open(path, encoding="utf-8") as f:
            scan_stream(f.read(), path, validators, out, False)
    for status, line in out:
        print(f"{status} {line}")
    valid = sum(1 for status, _ in out if status == "OK")
    invalid = len(out) - valid
    print(f"istio-validate: {valid} valid, {invalid} invalid")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
