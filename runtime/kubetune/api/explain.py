"""`kubetune explain`: field documentation from the models, laid out like `kubectl explain`."""

from __future__ import annotations

import textwrap
from typing import Any

from .base import API_VERSION
from .schema_walk import child, schemas, type_name


def explain(path: str, recursive: bool = False) -> str:
    kind_alias, *fields = path.split(".")
    known = schemas()
    if kind_alias.lower() not in known:
        raise KeyError(f"unknown kind {kind_alias!r}; one of: finetunejob (ftj), convertjob (cvj), chatendpoint (chat)")
    kind, node = known[kind_alias.lower()]
    for i, key in enumerate(fields):
        found = child(node, key)
        if found is None:
            raise KeyError(f"field {'.'.join(fields[:i + 1])!r} does not exist in {kind}")
        node = found
    lines = [f"GROUP:      {API_VERSION.split('/')[0]}", f"KIND:       {kind}", f"VERSION:    {API_VERSION.split('/')[1]}", ""]
    if fields:
        lines += [f"FIELD: {fields[-1]} <{type_name(node)}>", ""]
    lines += ["DESCRIPTION:", *_wrap(node.get("description", "<empty>"), 4), ""]
    if node.get("enum"):
        lines += [f"ENUM: {', '.join(str(v) for v in node['enum'])}", ""]
    for rule in node.get("x-kubernetes-validations", []):
        lines += [f"RULE: {rule['message']}"]
    props = _properties(node)
    if props:
        lines += ["", "FIELDS:"] if node.get("x-kubernetes-validations") else ["FIELDS:"]
        lines += _fields(props, node.get("required", []), 2, recursive)
    return "\n".join(lines).rstrip() + "\n"


def _properties(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") == "array":
        node = node.get("items", {})
    return node.get("properties", {})


def _fields(props: dict[str, Any], required: list[str], indent: int, recursive: bool) -> list[str]:
    out = []
    for key, sub in props.items():
        req = " -required-" if key in required else ""
        out.append(" " * indent + f"{key}\t<{type_name(sub)}>{req}")
        if recursive:
            nested = _properties(sub)
            if nested:
                out += _fields(nested, sub.get("items", sub).get("required", []), indent + 2, True)
            continue
        out += _wrap(sub.get("description", ""), indent + 2)
        out.append("")
    return out


def _wrap(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=" " * indent, subsequent_indent=" " * indent) or [""]
