"""Evaluate the CRDs' CEL rules offline (cel-python), after applying schema defaults as the apiserver does."""

from __future__ import annotations

import copy
from typing import Any

import celpy

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    obj = copy.deepcopy(obj)
    if isinstance(obj, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(obj[key], sub)
    elif isinstance(obj, list) and "items" in schema:
        obj = [apply_defaults(i, schema["items"]) for i in obj]
    return obj


def failures(obj: Any, schema: dict[str, Any], path: str = "") -> set[tuple[str, str]]:
    """(path, message) of every CEL rule that fails anywhere in `obj` (already defaulted)."""
    out: set[tuple[str, str]] = set()
    if isinstance(obj, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"]:  # a transition rule: the apiserver runs it on updates only, never on create
                continue
            prog = _PROGRAMS.get(rule["rule"])
            if prog is None:
                prog = _PROGRAMS[rule["rule"]] = _ENV.program(_ENV.compile(rule["rule"]))
            result = prog.evaluate({"self": celpy.json_to_cel(obj)})
            if isinstance(result, Exception) or not bool(result):
                out.add((path, rule["message"]))
        for key, sub in schema.get("properties", {}).items():
            if key in obj:
                out |= failures(obj[key], sub, f"{path}.{key}" if path else key)
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out |= failures(item, schema["items"], f"{path}[{i}]")
    return out
