"""One error path: every layer's user-facing failure is a KubetuneError, and the CLI says each in one line with its
exit code. The known user-error paths are fed in and must never show a traceback."""

from __future__ import annotations

import json

import pytest
import yaml

from .test_train import alpaca_rows, kubetune, write_job


def test_every_layers_error_is_one_family():
    from kubetune.api import ManifestError
    from kubetune.convert.shards import ConvertError
    from kubetune.data.encode import TemplateMismatch
    from kubetune.data.source import DataError
    from kubetune.errors import KubetuneError, UserError
    from kubetune.model.attention import UnsupportedAttention
    from kubetune.model.tokenizer import ModelLoadError
    from kubetune.storage import StorageError
    from kubetune.train.errors import TrainError
    from kubetune.vision.image import ImageError

    from kubetune.errors import ExitCode, OutOfMemory, Preempted, StorageUnavailable

    for kind in (ManifestError, ConvertError, TemplateMismatch, DataError, UnsupportedAttention, ModelLoadError,
                 StorageError, TrainError, ImageError, UserError, OutOfMemory, Preempted):
        assert issubclass(kind, KubetuneError), kind
    # The exit code is what the operator restarts by: an outage may pass, the rest would fail the same way.
    assert issubclass(StorageUnavailable, StorageError) and StorageUnavailable.exit_code == ExitCode.ERROR == 1
    assert {k.exit_code for k in (ManifestError, ConvertError, TemplateMismatch, DataError, UnsupportedAttention,
                                  ModelLoadError, StorageError, TrainError, ImageError, UserError)} == \
        {ExitCode.USER_ERROR}
    assert (OutOfMemory.exit_code, Preempted.exit_code) == (3, 75)
    from kubetune.cli import errors

    assert errors.UserError is UserError  # the CLI raises the family's own


def _cases(tmp_path, tiny_dir):
    job = write_job(tmp_path, tiny_dir, alpaca_rows(4))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    wrong_data = write_job(tmp_path, tiny_dir, alpaca_rows(4))
    spec = yaml.safe_load(wrong_data.read_text())
    spec["dataset"]["uri"] = str(broken)
    bad_data = tmp_path / "bad-data.yaml"
    bad_data.write_text(json.dumps(spec))
    return {
        "no such config": (["train", str(tmp_path / "nope.yaml")], "no such file"),
        "unknown field": (["train", str(job), "--cfg-options", "training.speed=3"], "training.speed"),
        "bad deepspeed": (["train", str(job), "--deepspeed", "zero9"], "--deepspeed zero9"),
        "row that is not JSON": (["check-custom-dataset", str(bad_data)], "broken.jsonl"),
        "index out of range": (["log-dataset", str(job), "--index", "999"], "--index 999"),
        "missing checkpoint": (["convert", "pth_to_hf", str(job), str(tmp_path / "iter_9"), str(tmp_path / "o")],
                               "iter_9"),
        "merge into a non-model": (["convert", "merge", str(tmp_path), str(tmp_path), str(tmp_path / "m")],
                                   "adapter_config.json"),
        "missing model to chat with": (["chat", str(tmp_path / "no-model"), "--prompt", "hi"], "no-model"),
        "arxiv source missing": (["preprocess", "arxiv", str(tmp_path / "none.json"), str(tmp_path / "o.json")],
                                 "none.json"),
    }


CASES = ["no such config", "unknown field", "bad deepspeed", "row that is not JSON", "index out of range",
         "missing checkpoint", "merge into a non-model", "missing model to chat with", "arxiv source missing"]


@pytest.mark.parametrize("case", CASES)
def test_a_user_mistake_is_one_line_and_exit_code_2(tmp_path, tiny_dir, case):
    argv, named = _cases(tmp_path, tiny_dir)[case]
    out = kubetune(*argv, env={"KUBETUNE_CACHE": str(tmp_path / "cache")})
    lines = [line for line in out.stderr.splitlines() if line.startswith("kubetune: error:")]
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1 and named in out.stderr, out.stderr[-2000:]  # a manifest lists its fields below


def test_a_data_mistake_under_two_ranks_is_the_ranks_error_without_a_traceback(tmp_path, tiny_dir):
    """NPROC_PER_NODE=2 re-launches under torchrun: the rank's one-line error and exit code 2 reach the user, not the
    launcher's ChildFailedError traceback."""
    job = write_job(tmp_path, tiny_dir, alpaca_rows(4))
    spec = yaml.safe_load(job.read_text())
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    spec["dataset"]["uri"] = str(broken)
    job.write_text(json.dumps(spec))
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"),
                   env={"KUBETUNE_CACHE": str(tmp_path / "cache"), "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "ChildFailedError" not in out.stderr, out.stderr[-3000:]
    assert "broken.jsonl" in out.stderr, out.stderr[-3000:]
