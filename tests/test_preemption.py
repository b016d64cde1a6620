"""SIGTERM as a preempted, evicted or drained pod gets it: the run finishes its step, writes (and publishes) a
checkpoint of it and exits PREEMPTED (75); `--resume auto` continues from there to the same weights as a run that
was never stopped. With several ranks (torchrun under the re-launching parent, as in a pod), a signal to the parent
alone reaches every rank and all stop after the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from kubetune.errors import ExitCode

from .conftest import REPO
from .test_train import alpaca_rows, kubetune, write_job


def _weights(work: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(work / f"iter_{step}" / "model" / "adapter_model.safetensors"))


def test_sigterm_saves_the_step_and_exits_preempted_and_the_resume_is_exact(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, alpaca_rows(), training__maxSteps=10, checkpoints={"everySteps": 100, "keep": -1})
    env = {"KUBETUNE_CACHE": str(tmp_path / "c"), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log")}
    (tmp_path / "termination-log").write_text("")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert kubetune("train", str(cfg), "--work-dir", str(straight), env=env).returncode == 0

    # The drill sends SIGTERM right after step 4; the request is seen in step 5's reduction: step 5 is saved.
    first = kubetune("train", str(cfg), "--work-dir", str(stopped), env={**env, "KUBETUNE_SIGTERM_AFTER_STEP": "4"})
    assert first.returncode == ExitCode.PREEMPTED, first.stderr[-2000:]
    assert "stopped by SIGTERM at step 5/10" in first.stderr and "Traceback" not in first.stderr
    assert sorted(p.name for p in stopped.glob("iter_*")) == ["iter_5"]
    assert "stopped by SIGTERM at step 5/10" in (tmp_path / "termination-log").read_text()

    second = kubetune("train", str(cfg), "--work-dir", str(stopped), "--resume", "auto", env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stdout and "at step 5" in second.stdout
    a, b = _weights(straight, 10), _weights(stopped, 10)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_before_the_first_step_exits_preempted_at_once(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, alpaca_rows(), training__maxSteps=10)
    proc = subprocess.Popen([sys.executable, "-m", "kubetune", "train", str(cfg), "--work-dir", str(tmp_path / "w")],
                            env={**os.environ, "KUBETUNE_CACHE": str(tmp_path / "c")}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # importing torch: the handler is in place, no step has run
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.PREEMPTED, err[-2000:]
    assert "before the first training step" in err and "Traceback" not in err
    assert not list((tmp_path / "w").glob("iter_*"))


def test_sigterm_to_the_parent_stops_every_rank_after_the_same_step(tmp_path, tiny_dir):
    """Two ranks under torchrun, as a pod with NPROC_PER_NODE=2 runs them: the kubelet signals PID 1 (the parent)
    only; the parent passes it to the workers, the request spreads through the loss reduction, both ranks stop
    after one step, rank 0 writes the checkpoint of it, and the pod exits 75."""
    cfg = write_job(tmp_path, tiny_dir, alpaca_rows(48), training__maxSteps=40, checkpoints={"everySteps": 100, "keep": -1})
    work = tmp_path / "w"
    env = {**os.environ, "KUBETUNE_CACHE": str(tmp_path / "c"), "NPROC_PER_NODE": "2", "PORT": "0"}
    env["PORT"] = str(_free_port())
    proc = subprocess.Popen([sys.executable, "-m", "kubetune", "train", str(cfg), "--work-dir", str(work)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while _steps(work) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.PREEMPTED, err[-3000:]
    saved = sorted(int(p.name.removeprefix("iter_")) for p in work.glob("iter_*"))
    assert len(saved) == 1 and 2 <= saved[0] < 40, (saved, err[-2000:])
    assert err.count("stopped by SIGTERM at step") == 2, err[-3000:]  # one line per rank: the same step
    assert err.count(f"stopped by SIGTERM at step {saved[0]}/40") == 2
    assert (work / f"iter_{saved[0]}" / "manifest.json").is_file()


def _steps(work: Path) -> int:
    found = list(work.glob("*/vis_data/scalars.json"))
    return len(found[0].read_text().splitlines()) if found else 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_gang_exit_code_names_the_cause():
    from kubetune.train.distributed import outcome

    assert outcome(0, [], stopped=True) == 0
    assert outcome(1, [ExitCode.USER_ERROR], stopped=False) == ExitCode.USER_ERROR
    assert outcome(1, [ExitCode.PREEMPTED, ExitCode.OUT_OF_MEMORY], stopped=True) == ExitCode.OUT_OF_MEMORY
    assert outcome(1, [ExitCode.PREEMPTED, ExitCode.PREEMPTED], stopped=True) == ExitCode.PREEMPTED
    assert outcome(1, [], stopped=True) == ExitCode.PREEMPTED  # workers still starting: torchrun stopped them
    assert outcome(1, [], stopped=False) == ExitCode.ERROR
    assert outcome(-9, [], stopped=False) == ExitCode.ERROR
    json.dumps(list(ExitCode))  # plain ints: they go into a podFailurePolicy as they are
