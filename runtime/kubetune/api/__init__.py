"""kubetune's typed API: the spec and status of FineTuneJob, ConvertJob and ChatEndpoint.

Torch-free and kopf-free: the operator, the CLI and the CRD generator all import it.
"""

from .base import API_VERSION, GROUP, VERSION, Condition, KubeModel, ObjectMeta, Rule, StorageSpec
from .pods import PodResources
from .chat import ChatEndpoint, ChatEndpointSpec, ChatEndpointStatus
from .convert import ConvertJob, ConvertJobSpec, ConvertJobStatus
from .enums import (DatasetFormat, DeepSpeedPreset, DType, FileType, MethodType, OptimizerType, Precision,
                    PromptTemplate, SystemTemplate)
from .finetune import (DatasetSpec, FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, MethodSpec, ModelSpec,
                       TrainingSpec)
from .loader import KINDS, ManifestError, load_manifest, parse_manifest, validate_spec

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "KINDS", "Condition", "KubeModel", "ObjectMeta", "PodResources", "Rule",
    "StorageSpec", "ChatEndpoint", "ChatEndpointSpec", "ChatEndpointStatus", "ConvertJob", "ConvertJobSpec",
    "ConvertJobStatus", "FineTuneJob", "FineTuneJobSpec", "FineTuneJobStatus", "DatasetSpec", "MethodSpec",
    "ModelSpec", "TrainingSpec", "DatasetFormat", "DeepSpeedPreset", "DType", "FileType", "MethodType",
    "OptimizerType", "Precision", "PromptTemplate", "SystemTemplate", "ManifestError", "load_manifest",
    "parse_manifest", "validate_spec",
]
