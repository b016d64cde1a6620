"""Building blocks shared by the three resources: the model base, cross-field rules, Kubernetes types."""

from __future__ import annotations

import dataclasses
import functools
import typing
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Callable, ClassVar, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION: Final = "kubetune.io/v1alpha1"  # GROUP/VERSION, spelled out so it types as the Literal the kinds use
assert API_VERSION == f"{GROUP}/{VERSION}"

RULE_ERROR = "kubetune_rule"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once for Python (`check`) and once for the apiserver (`cel`).

    `fields` are camelCase paths relative to the model the rule belongs to; `check` receives their values
    (the field default where a value is absent) and returns True when the object is valid. The test suite
    evaluates `cel` with a CEL interpreter on the same inputs, so the two spellings cannot drift apart.
    """

    fields: tuple[str, ...]
    message: str
    cel: str
    check: Callable[..., bool]

    def to_crd(self) -> dict[str, str]:
        # fieldPath makes the apiserver name the first field, as our own loader does.
        return {"rule": self.cel, "message": self.message, "fieldPath": "." + self.fields[0]}


class KubeModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected, descriptions from docstrings."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.__rules__:
            target["x-kubernetes-validations"] = [r.to_crd() for r in cls.__rules__]
        return schema

    @model_validator(mode="after")
    def _check_rules(self):
        broken = [r for r in self.__rules__ if not r.check(*(get_path(self, f) for f in r.fields))]
        if broken:
            raise PydanticCustomError(
                RULE_ERROR,
                "{summary}",
                {"summary": "; ".join(f"{', '.join(r.fields)}: {r.message}" for r in broken),
                 "rules": [(r.fields, r.message) for r in broken]},
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The object as it appears in YAML: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def get_path(obj: Any, path: str) -> Any:
    """Value at a camelCase dotted path of a model instance (None where a parent is None)."""
    for key in path.split("."):
        if obj is None:
            return None
        model: type[BaseModel] = type(obj)
        name = field_name(model, key)
        obj = getattr(obj, name)
    return obj


@functools.cache  # on the operator's hot path: every parse checks each cross-field rule's paths
def field_name(model: type[BaseModel], alias: str) -> str:
    for name, info in model.model_fields.items():
        if alias in (name, info.alias):
            return name
    raise KeyError(f"{model.__name__} has no field {alias!r}")


def submodel(annotation: Any) -> type[KubeModel] | None:
    """The KubeModel inside an annotation such as `X`, `X | None` or `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, KubeModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = submodel(arg)
        if found is not None:
            return found
    return None


def list_submodel(annotation: Any) -> type[KubeModel] | None:
    """The KubeModel X of `list[X]` (possibly optional)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return submodel(typing.get_args(annotation)[0])
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is list:
            return list_submodel(arg)
    return None


def _stringify_number(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[
    str,
    BeforeValidator(_stringify_number),
    Field(pattern=QUANTITY_PATTERN),
    # The apiserver accepts typed anyOf branches only in exactly this int-or-string shape (a structural schema
    # rule); the pattern goes beside it, where it applies to string values.
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "pattern": QUANTITY_PATTERN}),
]
"""A Kubernetes resource quantity such as `4`, `500m` or `16Gi`."""

KubeObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]
KubeObjectList = Annotated[
    list[dict[str, Any]],
    WithJsonSchema({"type": "array",
                    "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}),
]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kueue's names as its labels carry them: a LocalQueue (kueue.x-k8s.io/queue-name), a WorkloadPriorityClass
# (kueue.x-k8s.io/priority-class).
QueueName = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
PriorityClassName = Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=63)]


def unchangeable(why: str) -> dict[str, Any]:
    """A CEL transition rule for a field that cannot change once the resource exists: `kubectl apply` is refused
    up front, with `why`, instead of the operator finding out while the job runs."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": why}]}
URI_PATTERN = r"^((hf|s3|pvc|file)://\S+|[^:\s]+)$"
Uri = Annotated[str, Field(pattern=URI_PATTERN, min_length=1, max_length=2048)]
"""`hf://org/name[@rev]`, `s3://bucket/prefix`, `pvc://claim/path`, `file:///path` or a plain local path (relative
paths in a config file are relative to that file)."""


class ObjectMeta(BaseModel):
    """The subset of Kubernetes object metadata kubetune reads; other keys (uid, resourceVersion...) are kept."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=63)] | None = None
    """Object name; becomes the prefix of every child resource."""
    namespace: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = None
    """Namespace of the object."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels, copied to children."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str
    """Condition type, e.g. Running or Succeeded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = ""
    """CamelCase machine-readable reason for the last transition."""
    message: str = ""
    """Human-readable detail."""
    last_transition_time: datetime | None = None
    """When the status last changed."""
    observed_generation: int | None = None
    """The .metadata.generation this condition was computed from."""


class StorageSpec(KubeModel):
    """Credentials and endpoint for s3:// URIs (hf:// reads HF_TOKEN from the same secret)."""

    secret_ref: Annotated[str, Field(pattern=DNS_SUBDOMAIN)] | None = None
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optionally HF_TOKEN); unset uses the pod's
    service account (IRSA, workload identity) or the environment."""
    endpoint: str | None = None
    """S3 endpoint URL for S3-compatible stores (MinIO, Ceph); unset means AWS."""
    region: str | None = None
    """S3 region."""
    path_style: bool = False
    """Use path-style addressing (needed by most S3-compatible stores)."""
