"""The committed CRDs are exactly what the models generate, are structural, and accept what the models accept."""

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from kubetune.api import catalog, crds, docs

from .conftest import REPO

KIND_FILES = {k.model.__name__: REPO / "crds" / crds.filename(k) for k in crds.KINDS}
NO_TYPE_OK = ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")


def test_no_drift_between_models_and_committed_crds():
    for kind in crds.KINDS:
        path = REPO / "crds" / crds.filename(kind)
        assert path.read_text(encoding="utf-8") == crds.render(kind), f"{path.name} is stale: run `kubetune crds`"
    assert (REPO / "docs" / "api-reference.md").read_text(encoding="utf-8") == docs.render(), \
        "docs/api-reference.md is stale: run `kubetune crds --docs docs/api-reference.md`"
    assert sorted(p.name for p in (REPO / "crds").iterdir()) == sorted(p.name for p in KIND_FILES.values())
    chart = crds.chart_files(REPO / "charts" / "kubetune")
    for path, text in chart.items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run `kubetune crds --chart charts/kubetune`"
    assert sorted((REPO / "charts/kubetune/templates/crds").iterdir()) == sorted(chart)


def test_regenerating_changes_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kubetune", "crds", "-o", str(tmp_path)], capture_output=True,
                         text=True, check=True)
    assert out.returncode == 0
    for path in KIND_FILES.values():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()


def _walk(node, path="schema"):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", list(KIND_FILES))
def test_schema_is_structural(kind):
    crd = yaml.safe_load(KIND_FILES[kind].read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    text = KIND_FILES[kind].read_text()
    assert "$ref" not in text and "$defs" not in text and "&id" not in text
    for path, node in _walk(schema):
        if not any(node.get(k) for k in NO_TYPE_OK):
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        for bad in ("oneOf", "allOf", "not", "title", "const", "prefixItems", "discriminator"):
            assert bad not in node, f"{path}: {bad}"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
            assert all(set(o) <= {"type", "pattern"} for o in node["anyOf"]), path
        assert isinstance(node.get("exclusiveMinimum", False), bool), path
        if node.get("type") == "object" or "properties" in node:
            assert "description" in node or path.endswith(("metadata", "[]")) or path == "schema", path
        if "properties" not in node and node.get("type") in ("string", "integer", "number", "boolean"):
            assert node.get("description") or path.endswith(("[]", "}")) or path.split(".")[-1] in (
                "apiVersion", "kind"), f"{path} has no description"
        for rule in node.get("x-kubernetes-validations", []):
            if "fieldPath" not in rule:  # a rule on the field itself: a transition rule (base.unchangeable) or
                assert set(rule) == {"rule", "message"}, (path, rule)  # a map's key pattern (crds._convert)
                assert rule["rule"] == "self == oldSelf" or rule["rule"].startswith("self.all(k, k.matches("), rule
                continue
            assert set(rule) == {"rule", "message", "fieldPath"}
            assert rule["fieldPath"][1:].split(".")[0] in node["properties"], (path, rule)
        if "default" in node:
            jsonschema.Draft4Validator(_draft4(node)).validate(node["default"])


def test_crd_metadata_and_columns():
    ftj = yaml.safe_load(KIND_FILES["FineTuneJob"].read_text())["spec"]
    assert ftj["names"]["shortNames"] == ["ftj", "finetune"]
    assert ftj["names"]["categories"] == ["kubetune", "all"]
    version = ftj["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Phase", "Step", "Loss", "Restarts", "Age"]
    cvj = yaml.safe_load(KIND_FILES["ConvertJob"].read_text())["spec"]
    assert cvj["names"]["shortNames"] == ["cvj"]
    assert [c["name"] for c in cvj["versions"][0]["additionalPrinterColumns"] if "priority" not in c] == [
        "Operation", "Phase", "Age"]
    chat = yaml.safe_load(KIND_FILES["ChatEndpoint"].read_text())["spec"]
    assert chat["names"]["shortNames"] == ["chat"]
    assert chat["versions"][0]["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert [c["name"] for c in chat["versions"][0]["additionalPrinterColumns"] if "priority" not in c] == [
        "Ready", "URL", "Age"]
    # Every printer column points at a field that exists in the schema.
    for path in KIND_FILES.values():
        crd = yaml.safe_load(path.read_text())["spec"]["versions"][0]
        schema = crd["schema"]["openAPIV3Schema"]
        for col in crd["additionalPrinterColumns"]:
            node = schema
            for part in col["jsonPath"].strip(".").split("."):
                node = node["properties"][part] if part != "creationTimestamp" else {}
                if not node:
                    break


def test_recipe_sections_carry_no_defaults_or_required():
    spec = yaml.safe_load(KIND_FILES["FineTuneJob"].read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]
    for section in ("model", "method", "dataset", "training", "checkpoints", "evaluation"):
        for path, node in _walk(spec["properties"][section], section):
            assert "default" not in node and "required" not in node, path
    assert spec["properties"]["runPolicy"]["properties"]["maxRestarts"]["default"] == 3


def test_kubernetes_validate_accepts_the_crds():
    exe = Path(sys.executable).parent / "kubernetes-validate"  # this venv's: .venv, or .venv-newest
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubernetes_validate"]
    out = subprocess.run([*cmd, "--strict", "-k", "1.35.0", *map(str, KIND_FILES.values())], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == 3


def _draft4(node):
    """OpenAPI v3.0 → JSON Schema draft 4 (nullable becomes a null type; the rest is already draft-4 shaped)."""
    if isinstance(node, list):
        return [_draft4(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft4(v) for k, v in node.items() if not k.startswith("x-") and k not in ("nullable", "default")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def test_examples_and_catalogue_validate_against_the_crd_schema():
    validators = {kind: jsonschema.Draft4Validator(_draft4(
        yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
        for kind, path in KIND_FILES.items()}
    docs_ = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples").glob("*.yaml"))]
    docs_ = [d for d in docs_ if "kind" in d] + [catalog.get(n) for n in list(catalog.catalog())[::11]]
    for doc in docs_:
        errors = list(validators[doc["kind"]].iter_errors(doc))
        assert not errors, (doc["metadata"], [e.message for e in errors])
    bad = catalog.get("llama2_7b_lora_alpaca_e3")
    bad["spec"]["training"]["deepspeed"] = "zero9"
    assert list(validators["FineTuneJob"].iter_errors(bad))


def test_no_exclusive_bound_is_fractional():
    """The apiserver checks whole-number values (`0`) against int(bound): an exclusive fractional bound such as
    `< 0.5` would refuse 0 (found by the real apiserver with dpo.labelSmoothing)."""
    def walk(node, path):
        if isinstance(node, dict):
            for key, bound in (("exclusiveMaximum", "maximum"), ("exclusiveMinimum", "minimum")):
                if node.get(key):
                    assert float(node[bound]).is_integer(), f"{path}: exclusive {bound} {node[bound]}"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    for path in KIND_FILES.values():
        walk(yaml.safe_load(path.read_text()), path.name)
