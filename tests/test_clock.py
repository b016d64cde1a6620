"""A run's length and due points (train/clock.py) and the schedule's values (train/schedule.py), pure functions
checked against what XTuner (mmengine) does: microseconds each. The side-by-side runs are in
tests/test_xtuner_checkpoints.py."""

from __future__ import annotations

import math

import pytest

from kubetune.train.clock import Clock
from kubetune.train.schedule import lr_factor


def test_iterations_step_every_window_and_the_last_takes_the_rest():
    clock = Clock(accum=4, iterations=18, per_epoch=32, by_iteration=True)
    assert clock.steps == 5 and [clock.window(s) for s in range(5)] == [4, 4, 4, 4, 2]
    assert [clock.count(s) for s in range(6)] == [0, 4, 8, 12, 16, 18]
    # save_steps=6: XTuner writes iter_6 (weights after step 1), iter_12 (after step 3), and the last
    assert [clock.due(s, 6) for s in range(6)] == [[], [6], [], [12], [], [18]]
    assert [clock.lr_position(s) for s in range(5)] == [3, 7, 11, 15, 17]


def test_optimizer_steps_count_windows_and_epochs_are_passes():
    # 10 batches an epoch, 3 epochs, accumulation 4: 30 micro-batches in 8 steps (the last takes 2), not 3 x 2
    clock = Clock(accum=4, iterations=30, per_epoch=10, by_iteration=False)
    assert clock.steps == 8 and clock.total == 8 and clock.window(7) == 2
    assert [s for s in range(1, 9) if clock.epochs_due(s)] == [3, 5, 8]  # the steps whose window ends an epoch
    assert [clock.due(s, 3) for s in range(9)] == [[], [], [], [3], [], [], [6], [], []]


def test_an_epoch_shorter_than_a_window_is_still_one_pass():
    clock = Clock(accum=16, iterations=3 * 1, per_epoch=1, by_iteration=False)  # 3 epochs of one batch
    assert clock.iterations == 3 and clock.steps == 1 and clock.window(0) == 3


def mmengine(position: int, length: int, warmup: int, start: float = 1e-5, eta_min: float = 0.0) -> float:
    """mmengine's LinearLR(begin=0, end=warmup) chained with CosineAnnealingLR(begin=warmup, end=length), stepped
    `position` times, as its recursive formulas compute it (values printed by mmengine 0.10 in XTuner's venv:
    T=16, w=3: 1e-5, 0.500005, 1, 1, 0.985471, ...; w=1: the whole run from 1e-5)."""
    lr = start
    for t in range(1, position + 1):
        if t < warmup:
            total = warmup - 1
            lr *= 1 + (1 - start) / (total * start + (t - 1) * (1 - start))
        elif t > warmup:
            k, span = t - warmup, length - warmup
            lr = (1 + math.cos(math.pi * k / span)) / (1 + math.cos(math.pi * (k - 1) / span)) * (lr - eta_min) \
                + eta_min
    return lr


@pytest.mark.parametrize("length, warmup", [(16, 3), (18, 3), (8, 2), (8, 4), (8, 1), (100, 10)])
def test_the_schedule_is_mmengines(length, warmup):
    for position in range(length):
        assert lr_factor(position, length, warmup, "cosine") == pytest.approx(mmengine(position, length, warmup),
                                                                               rel=1e-9, abs=1e-12), position
    printed = [0.000010, 0.500005, 1.000000, 1.000000, 0.985471, 0.942728, 0.874255]
    assert [round(lr_factor(p, 16, 3, "cosine"), 6) for p in range(7)] == printed
