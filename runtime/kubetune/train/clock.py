"""A run's length and its due points, in micro-batches and optimizer steps.

A run is a number of micro-batches per rank (`maxEpochs` passes over the data, or `maxSteps` in the spec's unit);
every `accumulativeCounts` of them make an optimizer step and the last step takes what is left, as mmengine's
OptimWrapper does. `training.stepUnit` says what the spec's step counts (maxSteps, checkpoints.everySteps,
evaluation.everySteps, logEverySteps) and the N of `iter_N` count: optimizer steps, or iterations (micro-batches,
XTuner's unit). A point inside an accumulation window names the weights of the step before it, as XTuner's
`iter_N.pth` saved mid-window holds them; the resume state is always that step's boundary."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJobSpec


@dataclass(frozen=True)
class Clock:
    accum: int
    iterations: int  # micro-batches the whole run consumes, per rank
    per_epoch: int  # micro-batches of one pass over the data, per rank
    by_iteration: bool  # the spec's steps count micro-batches (XTuner's iterations), not optimizer steps

    @classmethod
    def plan(cls, spec: FineTuneJobSpec, per_epoch: int) -> Clock:
        training = spec.training
        by_iteration = training.step_unit.value == "iteration"
        accum = training.accumulative_counts
        if training.max_steps:
            iterations = training.max_steps * (1 if by_iteration else accum)
        else:
            assert training.max_epochs is not None  # TrainingSpec sets 3 when neither is given
            iterations = training.max_epochs * per_epoch
        return cls(accum, iterations, per_epoch, by_iteration)

    @property
    def steps(self) -> int:
        """Optimizer steps in the run."""
        return math.ceil(self.iterations / self.accum)

    @property
    def total(self) -> int:
        """The run's length in the spec's unit."""
        return self.iterations if self.by_iteration else self.steps

    def window(self, step: int) -> int:
        """Micro-batches of optimizer step `step` (0-based)."""
        return min(self.accum, self.iterations - step * self.accum)

    def consumed(self, step: int) -> int:
        """Micro-batches taken after `step` optimizer steps."""
        return min(step * self.accum, self.iterations)

    def count(self, step: int) -> int:
        """Where the run is after `step` optimizer steps, in the spec's unit."""
        return self.consumed(step) if self.by_iteration else step

    def span(self, step: int) -> range:
        """The counts whose weights are those after optimizer step `step` (1-based): up to the next step's end."""
        start = self.count(step)
        end = self.count(step + 1) if step < self.steps else start + 1
        return range(start, max(end, start + 1))

    def due(self, step: int, every: int) -> list[int]:
        """The multiples of `every` that fall to optimizer step `step`."""
        return [n for n in self.span(step) if n % every == 0 and 0 < n <= self.total]

    def epochs_due(self, step: int) -> list[int]:
        """The counts naming the epoch ends that fall to optimizer step `step`: by micro-batches as `due` places
        any point; by optimizer steps, the step whose window ends an epoch."""
        if self.by_iteration:
            return self.due(step, self.per_epoch)
        before, after = self.consumed(step - 1), self.consumed(step)
        return [step] if after // self.per_epoch > before // self.per_epoch else []

    def lr_position(self, step: int) -> int:
        """The schedule position that optimizer step `step` (0-based) uses: mmengine's schedulers step once an
        iteration, so by micro-batches the step uses the value of the last micro-batch of its window."""
        return self.consumed(step + 1) - 1 if self.by_iteration else step
