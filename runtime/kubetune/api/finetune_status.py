"""A FineTuneJob's status: phase, conditions, progress, checkpoints, artifacts and the last failure's cause. Written
by the operator (and, progress only, by rank 0)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from enum import StrEnum

from pydantic import Field

from .base import Condition, KubeModel


class FineTunePhase(StrEnum):
    PENDING = "Pending"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"  # waiting for Kueue to admit it
    PREEMPTED = "Preempted"  # admitted once, evicted by Kueue; queued again, resumes from its newest checkpoint


class FailureCause(StrEnum):
    DISRUPTION = "Disruption"  # preempted, evicted, drained: the gang restarts without using maxRestarts
    USER_ERROR = "UserError"  # the config, data or model: fails at once, retrying cannot help
    OUT_OF_MEMORY = "OutOfMemory"  # fails at once with what to lower
    ERROR = "Error"  # a crash: the gang restarts, up to maxRestarts
    DEADLINE = "DeadlineExceeded"  # runPolicy.activeDeadlineSeconds passed
    REJECTED = "Rejected"  # the apiserver or an admission webhook refused a child the operator made


class Failure(KubeModel):
    """The last attempt's failure, as the operator classified it (docs/operator.md, "Failures and restarts")."""

    cause: FailureCause | None = None
    """Disruption, UserError, OutOfMemory, Error, DeadlineExceeded or Rejected."""
    pod: str | None = None
    """The pod it was read from."""
    exit_code: int | None = None
    """That pod's exit code (kubetune's: 2 user error, 3 out of memory, 75 stopped on SIGTERM)."""
    message: str | None = None
    """Its termination message (the runtime's own error line), condition or the apiserver's words."""
    time: datetime | None = None
    """When the operator saw it."""


class Progress(KubeModel):
    """Training progress, published by rank 0 every log interval."""

    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps in the whole run."""
    step_display: str | None = None
    """`step/totalSteps`, for `kubectl get`."""
    epoch: float | None = None
    """Fractional epoch."""
    loss: float | None = None
    """Mean loss of the last log interval."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Training throughput over the last log interval, all ranks together."""
    eta: str | None = None
    """Estimated time left, e.g. `1h02m`."""


class CheckpointRef(KubeModel):
    """A complete checkpoint."""

    step: int | None = None
    """Optimizer step it was taken at."""
    uri: str | None = None
    """Where it lives."""
    time: datetime | None = None
    """When its upload completed."""


class CacheStatus(KubeModel):
    """The cache volume's download before training (resources.cacheVolume), written by the first pod."""

    state: Literal["Fetching", "Ready"] | None = None
    """Fetching while the model and data are downloaded (the gang waits), Ready once they are all there."""
    bytes: int | None = None
    """Bytes in the cache volume so far."""
    downloaded: bool | None = None
    """Whether this job downloaded anything; false when another job had cached it all."""
    uris: list[str] = Field(default_factory=list)
    """What was fetched."""


class Artifacts(KubeModel):
    """Exported results."""

    adapter: str | None = None
    """URI of the Hugging Face adapter (or full model)."""
    merged: str | None = None
    """URI of the merged model."""


class FineTuneJobStatus(KubeModel):
    """Observed state, written by the operator and (progress only) by rank 0."""

    phase: FineTunePhase | None = None
    """Pending, Queued, Initializing, Running, Restarting, Preempted, Succeeded, Failed or Suspended."""
    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Created, Running, Preempted, SpecApplied, PodsCreated, Succeeded, Failed, Suspended."""
    start_time: datetime | None = None
    """When the first pod started."""
    completion_time: datetime | None = None
    """When the run succeeded or finally failed."""
    restarts: int = 0
    """Whole-gang restarts after failures so far (runPolicy.maxRestarts bounds them)."""
    disruptions: int = 0
    """Whole-gang restarts after disruptions so far (runPolicy.maxDisruptions bounds them)."""
    last_failure: Failure | None = None
    """What ended the last failed attempt, and why."""
    attempt_deadline_seconds: int | None = None
    """The current attempt's share of runPolicy.activeDeadlineSeconds: what the earlier attempts left of it."""
    message: str | None = None
    """Why the job is in its phase, in one line."""
    progress: Progress | None = None
    """Live training progress."""
    latest_checkpoint: CheckpointRef | None = None
    """The newest complete checkpoint."""
    cache: CacheStatus | None = None
    """The cache volume's download, when resources.cacheVolume is set."""
    artifacts: Artifacts | None = None
    """Exported adapter and merged model."""
