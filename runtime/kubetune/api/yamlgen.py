"""Write a manifest as YAML with each field's description as a comment above it (for `copy-cfg`)."""

from __future__ import annotations

from typing import Any

import yaml

from .schema_walk import child, kind_schema


def commented_manifest(manifest: dict[str, Any], header: str = "") -> str:
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += _mapping(manifest, kind_schema(manifest["kind"]), 0, top=True)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _comment(schema: dict[str, Any] | None, indent: int) -> list[str]:
    if not schema or not schema.get("description"):
        return []
    first = schema["description"].split(". ")[0].rstrip(".")
    return [" " * indent + f"# {first}."]


def _mapping(data: dict[str, Any], schema: dict[str, Any] | None, indent: int, top: bool = False) -> list[str]:
    out = []
    for key, value in data.items():
        sub = child(schema, key)
        if not top:
            out += _comment(sub, indent)
        out += _entry(f"{key}:", value, sub, indent)
    return out


def _entry(prefix: str, value: Any, schema: dict[str, Any] | None, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict) and value:
        return [pad + prefix] + _mapping(value, schema, indent + 2)
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        out = [pad + prefix]
        for item in value:
            body = _mapping(item, child(schema, 0), indent + 4) if isinstance(item, dict) else \
                [" " * (indent + 4) + _scalar(item)]
            body = [line for line in body if not line.lstrip().startswith("#")]
            body[0] = " " * (indent + 2) + "- " + body[0].lstrip()
            out += body
        return out
    if isinstance(value, list) and len(_scalar(value)) > 80:
        return [pad + prefix] + [" " * (indent + 2) + "- " + _scalar(v) for v in value]
    return [pad + f"{prefix} {_scalar(value)}"]
