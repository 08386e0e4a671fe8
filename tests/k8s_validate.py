"""Validates Kubernetes objects, for tests/k8s.rs.

Reads YAML documents (the output of `kubectl kustomize`) from the files named on the
command line, or from stdin, and checks each object against its schema:
- core kinds (Deployment, Service, ...) with the PyPI package `kubernetes-validate`, in
  strict mode (an unknown field is an error), for the Kubernetes version in --kubernetes;
- custom resources with the PyPI package `jsonschema`, against
  tests/fixtures/crds/{group}/{kind lowercase}_{version}.json. A custom resource without a
  schema there is an error, not a pass.

Prints one line per object (`ok Kind/name` or `error Kind/name: why`) and exits 1 when any
object is invalid, 2 when the tools are missing.
"""

import argparse
import json
import pathlib
import sys

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as missing:  # pragma: no cover - reported to the Rust test
    print(
        f"missing Python package: {missing.name}; install scripts/requirements-test.txt "
        "into ./.venv (scripts/test does)",
        file=sys.stderr,
    )
    sys.exit(2)

CRDS = pathlib.Path(__file__).resolve().parent / "fixtures" / "crds"


def crd_schema(api_version, kind):
    """The schema of a custom resource, or None for a kind of Kubernetes itself."""
    group, _, version = api_version.rpartition("/")
    if group and (CRDS / group).is_dir():
        path = CRDS / group / f"{kind.lower()}_{version}.json"
        if not path.is_file():
            raise LookupError(f"no schema for {api_version} {kind} (expected {path})")
        return json.loads(path.read_text())
    if "." not in group or group.endswith(".k8s.io"):
        return None
    raise LookupError(f"no schema for the custom resource {api_version} {kind} in {CRDS}")


def validate(obj, kubernetes):
    """An error message, or None when the object is valid."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    try:
        schema = crd_schema(api_version, kind)
    except LookupError as error:
        return str(error)
    if schema is not None:
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            return "; ".join(
                f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in errors[:5]
            )
        return None
    try:
        kubernetes_validate.validate(obj, kubernetes, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return f"{path or '(root)'}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"no schema for {api_version} {kind} in Kubernetes {kubernetes}"
    except kubernetes_validate.InvalidSchemaError as error:
        return f"invalid schema: {error}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes", default="1.30.0", help="Kubernetes version")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    streams = [pathlib.Path(f).read_text() for f in args.files] or [sys.stdin.read()]
    failed = 0
    seen = 0
    for text in streams:
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            seen += 1
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            error = validate(obj, args.kubernetes)
            if error:
                failed += 1
                print(f"error {name}: {error}")
            else:
                print(f"ok {name}")
    if seen == 0:
        print("error: no objects to validate")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
