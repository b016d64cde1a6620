"""Load a manifest or bare spec from YAML/JSON, apply `--cfg-options`, resolve `baseConfig`, validate.

Every problem is reported at once, each with the path of the field it concerns, so a user fixes a file in one
pass instead of one error per run.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import UserError

from . import catalog
from .base import API_VERSION, RULE_ERROR, KubeModel, field_name, get_path, list_submodel, submodel
from .enums import PREFERENCE_METHODS
from .chat import ChatEndpoint
from .convert import ConvertJob
from .finetune import FineTuneJob, FineTuneJobSpec

KINDS: dict[str, type[KubeModel]] = {"FineTuneJob": FineTuneJob, "ConvertJob": ConvertJob, "ChatEndpoint": ChatEndpoint}
Manifest = FineTuneJob | ConvertJob | ChatEndpoint
T = TypeVar("T", bound=KubeModel)

# When a user sets one member of a group, the predefined config's other members must not survive the merge,
# or `baseConfig: x_e3` plus `maxSteps: 100` would carry both maxEpochs and maxSteps.
EXCLUSIVE = (("training", "maxEpochs", "maxSteps"), ("dataset", "system", "systemTemplate"),
             ("checkpoints", "everySteps", "byEpoch"))


class ManifestError(UserError):
    """A manifest that cannot be used; `errors` holds (field path, message) pairs."""

    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        super().__init__(self.render())

    def render(self) -> str:
        if len(self.errors) == 1 and not self.errors[0][0]:
            return f"{self.source}: {self.errors[0][1]}"
        lines = [f"{self.source}: {len(self.errors)} invalid field{'s' if len(self.errors) != 1 else ''}"]
        lines += [f"  {path or '<document>'}: {msg}" for path, msg in self.errors]
        return "\n".join(lines)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float, as YAML 1.2 and kubectl do (PyYAML's YAML 1.1 makes it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9][0-9_]*)?\.?[0-9]+([eE][-+]?[0-9]+)$|^[-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


MAX_MANIFEST_BYTES = 4 << 20  # a manifest is kilobytes; the Kubernetes API refuses objects past 1.5 MiB


def read_document(path: str | Path) -> Any:
    """Parse one YAML or JSON document; ManifestError naming the file on any problem."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ManifestError(source, [("", "no such file")])
    if path.is_dir():
        raise ManifestError(source, [("", "is a directory, not a manifest file")])
    try:
        with path.open("rb") as fh:  # bounded: a link to /dev/zero or a huge file is not a manifest
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(source, [("", f"over {MAX_MANIFEST_BYTES >> 20} MiB: not a manifest")])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(source, [("", f"cannot read: {exc}")]) from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ManifestError(source, [("", f"not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                          f"{' '.join(str(exc).split())}")]) from None
    except RecursionError:
        raise ManifestError(source, [("", "nested too deeply to be a manifest")]) from None
    except ValueError as exc:  # YAML's and JSON's int(): a number of thousands of digits
        raise ManifestError(source, [("", f"a number too long to be a setting ({' '.join(str(exc).split())[:80]})")]) \
            from None
    if len(docs) != 1:
        raise ManifestError(source, [("", f"expected exactly one document, found {len(docs)}")])
    huge = _huge_integer(docs[0])
    if huge is not None:
        raise ManifestError(source, [(huge, "an integer of more than 64 bits: no field takes one")])
    return docs[0]


def _huge_integer(node: Any, path: str = "") -> str | None:
    """The path of the first integer past 64 bits (a 5 000-digit number cannot even be printed in an error)."""
    if isinstance(node, bool):
        return None
    if isinstance(node, int):
        return path if node.bit_length() > 64 else None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _huge_integer(value, f"{path}.{key}".lstrip(".") if isinstance(key, str) else f"{path}[{key}]")
        if found is not None:
            return found
    return None


def load_manifest(path: str | Path, kind: str | None = None, overrides: Iterable[str] = ()) -> Manifest:
    """Load a FineTuneJob, ConvertJob or ChatEndpoint from a file holding a whole manifest or a bare spec.

    A bare spec is taken to be of `kind` (FineTuneJob when not given). `overrides` are `--cfg-options`
    strings (`training.optimizer.lr=1e-4`), applied before validation.
    """
    return parse_manifest(read_document(path), str(path), kind=kind, overrides=overrides)


def load_finetunejob(path: str | Path) -> FineTuneJob:
    job = load_manifest(path, kind="FineTuneJob")
    assert isinstance(job, FineTuneJob)
    return job


def parse_manifest(data: Any, source: str = "<manifest>", kind: str | None = None,
                   overrides: Iterable[str] = ()) -> Manifest:
    """Validate an already parsed document; see `load_manifest`."""
    if not isinstance(data, dict):
        raise ManifestError(source, [("", f"expected a mapping, got {type(data).__name__}")])
    is_manifest = any(k in data for k in ("apiVersion", "kind", "spec"))
    doc: dict[str, Any] = copy.deepcopy(data) if is_manifest else {"apiVersion": API_VERSION, "kind": kind or "FineTuneJob", "spec": data}
    prefix = "" if is_manifest else "spec."

    errors: list[tuple[str, str]] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}"))
    doc_kind = doc.get("kind")
    if doc_kind not in KINDS:
        errors.append(("kind", f"must be one of {', '.join(KINDS)}, got {doc_kind!r}"))
    elif kind and doc_kind != kind:
        errors.append(("kind", f"expected {kind}, got {doc_kind}"))
    if not isinstance(doc.get("spec"), dict):
        errors.append(("spec", "required, and must be a mapping"))
    if errors:
        raise ManifestError(source, _strip(errors, prefix))

    errors += apply_overrides(doc["spec"], overrides)
    if doc_kind == "FineTuneJob" and doc["spec"].get("baseConfig"):
        try:
            doc["spec"] = merge_base_config(doc["spec"])
        except KeyError as exc:
            errors.append(("spec.baseConfig", exc.args[0]))
    if errors:
        raise ManifestError(source, _strip(errors, prefix))

    assert isinstance(doc_kind, str)  # checked against KINDS above
    model = KINDS[doc_kind]
    spec_model = submodel(model.model_fields["spec"].annotation)
    assert spec_model is not None
    try:
        return model.model_validate(doc)  # type: ignore[return-value]  # KINDS' values are the Manifest kinds
    except ValidationError as exc:
        # Rules again on the raw data, so they surface together with field errors that stopped the validators.
        errors = rule_errors(spec_model, doc["spec"], "spec.")
        errors += [e for e in _pydantic_errors(exc) if e not in errors]
        raise ManifestError(source, _strip(errors, prefix)) from None


def validate_spec(model: type[T], data: dict[str, Any], source: str = "<spec>") -> T:
    """Validate a spec-level dict against one of the spec models, with the same error reporting."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = rule_errors(model, data, "")
        errors += [e for e in _pydantic_errors(exc) if e not in errors]
        raise ManifestError(source, errors) from None


def merge_base_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The predefined config named by `spec.baseConfig`, overridden by every field the spec sets."""
    base = catalog.get(spec["baseConfig"])["spec"]
    for section, *group in EXCLUSIVE:
        chosen = spec.get(section) or {}
        if any(k in chosen for k in group) and isinstance(base.get(section), dict):
            for key in group:
                base[section].pop(key, None)
    method = spec.get("method") or {}
    if "type" in method and method["type"] != base.get("method", {}).get("type"):
        base.pop("method", None)  # switching method: the base's lora/quantization blocks no longer apply
    return deep_merge(base, spec)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars from `over` replace those of `base`."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(spec: dict[str, Any], overrides: Iterable[str]) -> list[tuple[str, str]]:
    """Apply `a.b=c` strings in place (values parsed as YAML: `x=[1,2]`, `flag=true`); return problems."""
    errors = []
    overrides = list(overrides)
    keys = {o.partition("=")[0].strip().removeprefix("spec.") for o in overrides}
    for section, *group in EXCLUSIVE:
        chosen = {k for k in group if f"{section}.{k}" in keys}
        if chosen and isinstance(spec.get(section), dict):
            for key in set(group) - chosen:
                spec[section].pop(key, None)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append((f"--cfg-options {item}", "expected KEY=VALUE"))
            continue
        if key.startswith("spec."):
            key = key[len("spec."):]
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
        except (yaml.YAMLError, ValueError):  # ValueError: a number of thousands of digits, kept as text
            value = raw
        node: Any = spec
        parts = key.split(".")
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            elif isinstance(node, dict):
                node[parts[-1]] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError, AttributeError):
            errors.append((f"spec.{key}", "--cfg-options cannot set this path (a parent is not a mapping)"))
    if keys & {"method.type", "method.parameters"} and isinstance(spec.get("method"), dict):
        _drop_blocks_of_other_methods(spec["method"], keys)
    return errors


def _drop_blocks_of_other_methods(method: dict[str, Any], keys: set[str]) -> None:
    """`--cfg-options method.type=full` on a copied LoRA config means full fine-tuning: the config's own lora and
    quantization blocks (and a previous objective's dpo/orpo/reward block) stop applying and go, unless the same
    command line sets them too."""
    kind = method.get("type", "lora")
    scheme = (method.get("parameters") or "lora") if kind in PREFERENCE_METHODS else kind
    keep = {"lora": scheme in ("lora", "qlora"), "quantization": scheme == "qlora",
            "dpo": kind == "dpo", "orpo": kind == "orpo", "reward": kind == "reward"}
    for block, applies in keep.items():
        if not applies and not any(k == f"method.{block}" or k.startswith(f"method.{block}.") for k in keys):
            method.pop(block, None)


def rule_errors(model: type[BaseModel], data: Any, prefix: str) -> list[tuple[str, str]]:
    """Check every cross-field rule on raw data, independently of field errors, so all problems surface together."""
    if not isinstance(data, dict) or not issubclass(model, KubeModel):
        return []
    out = []
    for rule in model.__rules__:
        try:
            ok = rule.check(*(_raw_value(model, data, f) for f in rule.fields))
        except Exception:  # a field of the wrong type: its own error is reported by field validation
            continue
        if not ok:
            out.append((", ".join(prefix + f for f in rule.fields), rule.message))
    for name, info in model.model_fields.items():
        key = info.alias or name
        value = data.get(key)
        item_model = list_submodel(info.annotation)
        if item_model is not None and isinstance(value, list):
            for i, item in enumerate(value):
                out += rule_errors(item_model, item, f"{prefix}{key}[{i}].")
        elif (sub := submodel(info.annotation)) is not None and isinstance(value, dict):
            out += rule_errors(sub, value, f"{prefix}{key}.")
    return out


def _raw_value(model: type[BaseModel], data: Any, path: str) -> Any:
    """Value at `path` in raw data; where a key is absent, the field's default (so rules see what validation will)."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        name = field_name(model, part)
        info = model.model_fields[name]
        key = part if part in data else name
        if isinstance(data, dict) and key in data:
            data = data[key]
            model = submodel(info.annotation) or model
            continue
        default = info.get_default(call_default_factory=True)
        return get_path(default, ".".join(parts[i + 1:])) if i + 1 < len(parts) else default
    return data


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith(("function-", "lax-",
                                                                                            "json-or-python")):
            out += f".{part}" if out else str(part)
    return out


def _pydantic_errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = _loc(err["loc"])
        if err["type"] == RULE_ERROR:
            base = loc + "." if loc else ""
            out += [(", ".join(base + f for f in fields), msg) for fields, msg in err["ctx"]["rules"]]
            continue
        msg = {"extra_forbidden": "unknown field", "missing": "required"}.get(err["type"], err["msg"])
        if err["type"] not in ("extra_forbidden", "missing") and "input" in err and not isinstance(err["input"],
                                                                                                      (dict, list)):
            msg += f" (got {err['input']!r})"
        out.append((loc, msg))
    return out


def _strip(errors: list[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    if not prefix:
        return errors
    return [(", ".join(p.removeprefix(prefix) for p in path.split(", ")), msg) for path, msg in errors]


__all__ = ["ManifestError", "load_manifest", "parse_manifest", "validate_spec", "merge_base_config", "KINDS",
           "FineTuneJobSpec"]
