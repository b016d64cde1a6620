"""Look up kinds and fields in the generated OpenAPI schemas (shared by `explain` and the commented YAML writer)."""

from __future__ import annotations

import functools
from typing import Any

from . import crds


@functools.cache
def schemas() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every name a kind answers to (kind, plural, singular, short names; lower case) → (Kind, schema)."""
    out = {}
    for kind in crds.KINDS:
        schema = crds.openapi_schema(kind.model)
        name = kind.model.__name__
        for alias in (name.lower(), kind.plural, kind.singular, *kind.short_names):
            out[alias] = (name, schema)
    return out


def kind_schema(kind: str) -> dict[str, Any]:
    return schemas()[kind.lower()][1]


def child(schema: dict[str, Any] | None, key: str | int) -> dict[str, Any] | None:
    if schema is None:
        return None
    if isinstance(key, int) or schema.get("type") == "array":
        return schema.get("items")
    props = schema.get("properties")
    if props is not None:
        return props.get(key)
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def type_name(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "IntOrString"
    kind = schema.get("type", "Object")
    if kind == "array":
        return f"[]{type_name(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and "properties" not in schema:
        return f"map[string]{type_name(schema['additionalProperties'])}"
    return {"object": "Object"}.get(kind, kind)
