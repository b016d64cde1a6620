"""Attacks from the red-team pass (issue 26), each reproduced against the real parts: a bucket that holds `../` keys
and manifests (the real S3 server behind the rewriting proxy), checkpoints that carry a pickle, damaged or NaN
checkpoints, outputs to pvc:// and file://. IDs are the issue's."""

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import yaml

from .test_storage import BUCKET, s3, upload_tree  # noqa: F401  (the session's S3 server)
from .test_train import alpaca_rows, kubetune, write_job


def test_c1_object_keys_that_leave_the_cache_are_refused(s3, tmp_path, monkeypatch):  # noqa: F811
    from kubetune.storage import StorageError, local_path
    from kubetune.storage import s3 as s3mod

    s3mod.put_bytes(b"{}\n", s3mod.S3Uri(BUCKET, "evil/rows.jsonl"))
    # The listing names the object `../../escaped.jsonl` (S3 allows such keys; the proxy plays that bucket).
    s3["faults"].always = [(lambda m, p: m == "GET" and "list-type=2" in p and "evil" in p,
                            lambda body: body.replace(b"evil/rows.jsonl", b"evil/../../escaped.jsonl"))]
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    try:
        with pytest.raises(StorageError, match=r"object '\.\./\.\./escaped\.jsonl'.*refusing"):
            local_path(f"s3://{BUCKET}/evil")
    finally:
        s3["faults"].always.clear()
    assert not list(tmp_path.rglob("escaped.jsonl*"))
    with pytest.raises(StorageError, match="refusing"):
        local_path(f"s3://{BUCKET}/../../etc")


def test_c1_manifest_entries_that_leave_the_work_dir_are_refused(s3, tmp_path):  # noqa: F811
    from kubetune.storage import StorageError, sync
    from kubetune.storage import s3 as s3mod

    remote = s3mod.S3Uri(BUCKET, "runs/traversal")
    s3mod.put_bytes(b"payload", remote.join("iter_1/x"))
    s3mod.put_bytes(json.dumps({"files": {"../../outside.txt": {"size": 7, "sha256": "0"}}}).encode(),
                    remote.join("iter_1/manifest.json"))
    (tmp_path / "work").mkdir()
    with pytest.raises(StorageError, match=r"entry '\.\./\.\./outside\.txt'"):
        sync.download_checkpoint(remote, 1, tmp_path / "work")
    assert not (tmp_path / "outside.txt").exists()


def test_c1_pvc_paths_stay_inside_their_claim(tmp_path, monkeypatch):
    from kubetune.storage import StorageError, local_destination, local_path

    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path))
    (tmp_path / "claim" / "data").mkdir(parents=True)
    assert local_path("pvc://claim/data") == tmp_path / "claim" / "data"
    for bad in ("pvc://claim/../../etc", "pvc:///etc/passwd", "pvc://../x", "pvc://Claim/x"):
        with pytest.raises(StorageError):
            local_destination(bad)


def test_h7_outputs_to_pvc_and_file_uris_land_where_they_name(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"KUBETUNE_PVC_ROOT": str(tmp_path / "mnt")}
    out = kubetune("convert", "split", str(tiny_dir), "pvc://claim/split", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "mnt" / "claim" / "split" / "config.json").is_file()
    assert not (tmp_path / "pvc:").exists()
    out = kubetune("convert", "split", str(tiny_dir), f"file://{tmp_path}/plain", cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "plain" / "config.json").is_file()


def test_h7_checkpoints_uri_on_a_volume_is_honoured_and_resumed_from(tmp_path, tiny_dir):
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8), checkpoints={"everySteps": 2, "keep": 1})
    env = {"KUBETUNE_PVC_ROOT": str(tmp_path / "mnt"), "KUBETUNE_CACHE": str(tmp_path / "c")}
    opts = ["--cfg-options", "training.maxSteps=4", "checkpoints.uri=pvc://ckpt/run"]
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w1"), *opts, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = tmp_path / "mnt" / "ckpt" / "run"
    assert sorted(p.name for p in saved.iterdir()) == ["export", "iter_4"]  # keep: 1 applies there too
    assert (saved / "iter_4" / "manifest.json").is_file()
    again = kubetune("train", str(job), "--work-dir", str(tmp_path / "w2"), "--resume", "auto", *opts, env=env)
    assert again.returncode == 0 and "iter_4 at step 4" in again.stdout, again.stdout[-2000:]


@pytest.fixture
def trained(tmp_path, tiny_dir):
    """A run with checkpoints at steps 2 and 4."""
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8), checkpoints={"everySteps": 2, "keep": -1})
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options", "training.maxSteps=4",
                   env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return job, tmp_path / "w", env


def resume(job, work, env, which="auto", steps=6):
    return kubetune("train", str(job), "--work-dir", str(work), "--resume", which, "--cfg-options",
                    f"training.maxSteps={steps}", env=env)


def rewrite_manifest(checkpoint: Path) -> None:
    """What the owner of the bucket the checkpoint came from can do: a manifest that matches the altered files."""
    from kubetune.storage import sync

    (checkpoint / "manifest.json").unlink()
    (checkpoint / "manifest.json").write_text(json.dumps(sync.manifest(checkpoint)))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_h4_r6_a_checkpoint_that_carries_code_or_a_bomb_is_refused_not_run(trained, tmp_path):
    import torch

    job, work, env = trained
    marker = tmp_path / "code-ran"
    with (work / "iter_4" / "rng_rank0.pt").open("wb") as f:
        pickle.dump({"python": RunsCode(marker)}, f)
    rewrite_manifest(work / "iter_4")
    out = resume(job, work, env)
    assert out.returncode == 2 and "refusing to resume" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists()
    # Issue 42 R6: a compressed entry (32 MiB of zeros in a 32 KiB file) is refused before torch inflates it, on
    # resume and in convert.
    _deflated(work / "iter_4" / "rng_rank0.pt", {"python": torch.zeros(8 << 20)})
    rewrite_manifest(work / "iter_4")
    out = resume(job, work, env)
    assert out.returncode == 2 and "is compressed" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    bomb = tmp_path / "iter_2.pth"
    _deflated(bomb, {"state_dict": {"w": torch.zeros(8 << 20)}})
    assert bomb.stat().st_size < 1 << 20
    out = kubetune("convert", "pth_to_hf", str(job), str(bomb), str(tmp_path / "hf"), env=env)
    assert out.returncode == 2 and "is compressed" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def _deflated(path: Path, obj) -> None:
    """What torch.save writes, with every entry deflated: the archive stays small, its tensors do not."""
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    source = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for name in source.namelist():
            out.writestr(name, source.read(name))


def test_h4_deepspeed_files_are_scanned_against_an_allow_list(tmp_path):
    import torch

    from kubetune.train import ds
    from kubetune.train.errors import TrainError

    (tmp_path / "state").mkdir()
    torch.save({"optimizer": {"state": {}}, "step": torch.tensor(1)}, tmp_path / "state" / "ok_optim_states.pt")
    ds.scan(tmp_path)  # tensors and plain containers pass
    torch.save({"x": RunsCode(tmp_path / "ran")}, tmp_path / "state" / "evil_model_states.pt")
    with pytest.raises(TrainError, match=r"evil_model_states\.pt: names posix\.system"):
        ds.scan(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_m6_r10_a_damaged_or_unvouched_checkpoint_is_refused_and_auto_falls_back(trained):
    job, work, env = trained
    weights = work / "iter_4" / "model" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = resume(job, work, env, which=str(work / "iter_4"))
    assert out.returncode == 2 and "differ from its manifest.json" in out.stderr and "Traceback" not in out.stderr
    # Issue 42 R10: the manifest is written last and vouches for the rest; deleted by whoever altered the files, the
    # checkpoint is refused all the same (it resumed the garbage before).
    (work / "iter_4" / "manifest.json").unlink()
    out = resume(job, work, env, which=str(work / "iter_4"))
    assert out.returncode == 2 and "no manifest.json" in out.stderr and "Traceback" not in out.stderr, \
        out.stderr[-2000:]
    out = resume(job, work, env)
    assert out.returncode == 0 and "iter_2 at step 2" in out.stdout, out.stdout[-2000:]


def test_a_corrupt_checkpoint_with_a_matching_manifest_is_an_error_not_a_traceback(trained):
    job, work, env = trained
    ckpt = work / "iter_4"
    weights = ckpt / "model" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut: the header promises more than the file holds
    (ckpt / "scheduler.pt").write_bytes(b"not a torch file")
    rewrite_manifest(ckpt)
    out = resume(job, work, env, which=str(ckpt))
    assert out.returncode == 2 and f"{ckpt}: cannot resume from it" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_m6_nan_weights_unrelated_adapters_and_bogus_steps_are_refused(trained):
    import torch
    from safetensors.torch import load_file, save_file

    job, work, env = trained
    ckpt = work / "iter_4"
    weights = ckpt / "model" / "adapter_model.safetensors"
    original = load_file(str(weights))
    save_file({k: torch.full_like(v, float("nan")) for k, v in original.items()}, str(weights))
    rewrite_manifest(ckpt)
    out = resume(job, work, env, which=str(ckpt))
    assert out.returncode == 2 and "holds NaN or inf" in out.stderr

    save_file({**original, "base_model.model.unrelated.lora_A.weight": torch.zeros(2, 2)}, str(weights))
    rewrite_manifest(ckpt)
    out = resume(job, work, env, which=str(ckpt))
    assert out.returncode == 2 and "does not" in out.stderr and "unrelated" in out.stderr

    save_file(original, str(weights))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps({**state, "step": 10**9}))
    rewrite_manifest(ckpt)
    out = resume(job, work, env, which=str(ckpt))
    assert out.returncode == 2 and re.search(r"step 1000000000 is outside", out.stderr), out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_nan_loss_stops_training_without_a_checkpoint(tmp_path, tiny_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_dir, model)
    weights = next(model.glob("*.safetensors"))
    tensors = load_file(str(weights))
    tensors["model.norm.weight"][0] = float("nan")  # a diverged (or damaged) base: every loss is NaN
    save_file(tensors, str(weights), metadata={"format": "pt"})
    job = write_job(tmp_path, tiny_dir, alpaca_rows(16), checkpoints={"everySteps": 1, "keep": -1})
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options", "training.maxSteps=4",
                   f"model.uri={model}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert re.search(r"step 1: the loss is nan; training stopped without saving", out.stderr), out.stderr[-2000:]
    assert not list((tmp_path / "w").glob("iter_*"))


def _big_row_job(tmp_path, tiny_dir, array: bool):
    rows = alpaca_rows(4)
    if array == "padded":  # issue 42 R3: 5 000 spaces first, and the 17 MiB row spread over short lines
        rows[2] = {**rows[2], **{f"k{i}": "x" * (16 << 10) for i in range(1088)}}
        text = " " * 5000 + json.dumps(rows, indent=1)
    else:
        rows[2] = {**rows[2], "output": "x" * (17 << 20)}  # 17 MiB, over the 16 MiB row limit
        text = json.dumps(rows) if array else "\n".join(json.dumps(r) for r in rows) + "\n"
    job = write_job(tmp_path, tiny_dir, [])
    data = tmp_path / ("big.json" if array else "big.jsonl")  # not write_job's data.jsonl, which it just wrote
    data.write_text(text)
    spec = yaml.safe_load(job.read_text())
    spec["dataset"]["uri"] = str(data)
    job.write_text(yaml.safe_dump(spec))
    return job, data


@pytest.mark.parametrize("array", [False, True, "padded"], ids=["jsonl", "json-array", "padded-array"])
def test_h3_a_huge_row_is_refused_before_it_is_loaded(tmp_path, tiny_dir, array):
    job, data = _big_row_job(tmp_path, tiny_dir, array)
    where = "row 2 (from line 1)" if array is True else "row 2 (from line 12)" if array else "line 3"
    for command in (["train", str(job), "--work-dir", str(tmp_path / "w")], ["check-custom-dataset", str(job)]):
        out = kubetune(*command, env={**os.environ, "KUBETUNE_CACHE": str(tmp_path / "cache")})
        assert out.returncode == 2, out.stderr[-2000:]
        assert f"{data}: {where} is over 17.0 MiB" in out.stderr and "KUBETUNE_MAX_ROW_BYTES" in out.stderr, \
            out.stderr[-2000:]
        assert "Traceback" not in out.stderr


ORPHAN = """
import os, signal, sys, time
from pathlib import Path
from kubetune.data.pipeline import _build_lock

root = Path(sys.argv[1])
lock = _build_lock(root / "k.lock", print).__enter__()
if os.fork() == 0:  # a tokenizing worker: it inherits the open lock file and outlives its parent
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1), os.dup2(devnull, 2)
    time.sleep(120)
    os._exit(0)
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_m7_a_killed_builder_leaves_no_lock_behind_for_its_orphaned_workers(tmp_path, monkeypatch):
    import subprocess
    import sys
    import time

    from kubetune.data.pipeline import _build_lock

    (tmp_path / "cache").mkdir()
    proc = subprocess.run([sys.executable, "-c", ORPHAN, str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -9 and "locked" in proc.stdout, proc.stderr
    monkeypatch.setenv("KUBETUNE_DATASET_TIMEOUT", "0.1")  # minutes: 6 s, where the orphan holds the file for 120
    started = time.monotonic()
    with _build_lock(tmp_path / "cache" / "k.lock", print):
        pass
    assert time.monotonic() - started < 3
    subprocess.run(["pkill", "-f", "kubetune.data.pipeline import _build_lock"], check=False)


def test_killed_builds_leave_no_temp_dirs_behind(tmp_path, tiny_dir):
    import shutil

    job = write_job(tmp_path, tiny_dir, alpaca_rows(8))
    env = {**os.environ, "KUBETUNE_CACHE": str(tmp_path / "cache")}
    assert kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options", "training.maxSteps=1",
                    env=env).returncode == 0
    built = next((tmp_path / "cache").rglob("report.json")).parent
    datasets_dir, key = built.parent, built.name
    shutil.rmtree(datasets_dir / key)
    (datasets_dir / f"{key}.tmp-999999" / "hf").mkdir(parents=True)  # a build killed halfway
    (datasets_dir / f"{key}.tmp-999999" / "hf" / "part.jsonl").write_bytes(b"x" * 4096)
    assert kubetune("train", str(job), "--work-dir", str(tmp_path / "w2"), "--cfg-options", "training.maxSteps=1",
                    env=env).returncode == 0
    assert not list(datasets_dir.glob("*.tmp-*"))


def test_credentials_in_an_endpoint_url_never_reach_errors(tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://AKIAEXAMPLE:endpoint-secret-31f@127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "id-unused", "AWS_SECRET_ACCESS_KEY": "key-unused", "KUBETUNE_S3_ATTEMPTS": "1",
           "KUBETUNE_CACHE": str(tmp_path / "cache")}
    out = kubetune("convert", "pth_to_hf", "examples/local-next-letter.yaml", "s3://bucket/run/iter_1",
                   str(tmp_path / "out"), env=env)
    assert out.returncode == 1 and "Could not connect" in out.stderr, out.stderr[-2000:]
    assert "endpoint-secret-31f" not in out.stderr + out.stdout and "AKIAEXAMPLE" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_deeply_nested_manifests_are_a_clear_error(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\n"
                    "spec: {model: {uri: hf://a/b}, dataset: {uri: x.jsonl}, x: " + "[" * 100000 + "]" * 100000 + "}\n")
    for command in (["validate", str(deep)], ["train", str(deep)]):
        out = kubetune(*command)
        assert out.returncode == 2 and f"{deep}: nested too deeply to be a manifest" in out.stderr + out.stdout
        assert "Traceback" not in out.stderr


def test_a_full_disk_is_a_clear_error_and_keeps_the_complete_checkpoints(tmp_path, tiny_dir):
    """The work dir on a 400 KiB tmpfs (a private mount namespace: nothing outside sees it) fills mid-run."""
    import shutil
    import subprocess
    import sys

    job = write_job(tmp_path, tiny_dir, alpaca_rows(8), checkpoints={"everySteps": 1, "keep": -1})
    work = tmp_path / "small"
    work.mkdir()
    script = (f"mount -t tmpfs -o size=400k tmpfs {work} && {sys.executable} -m kubetune train {job} --work-dir {work} "
              f"--cfg-options training.maxSteps=40 2>{tmp_path / 'err'}; code=$?; cp -r {work} {tmp_path / 'kept'}; "
              "exit $code")
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed for this test"
    out = subprocess.run([unshare, "--mount", "--map-root-user", "sh", "-c", script], capture_output=True, text=True,
                         env={**os.environ, "KUBETUNE_CACHE": str(tmp_path / "cache")}, timeout=600)
    err = (tmp_path / "err").read_text()
    assert out.returncode == 2, (out.stderr, err[-2000:])
    assert "no space left on device" in err and "Traceback" not in err, err[-2000:]
    from kubetune.storage import sync

    kept = tmp_path / "kept"
    saved = sorted(kept.glob("iter_*"))
    assert saved and not list(kept.glob(".iter_*.tmp"))  # what was saved is whole; the cut one is gone
    for checkpoint in saved:
        assert sync.verify(checkpoint, quick=False), checkpoint


def test_r12_r13_manifests_are_read_within_bounds(tmp_path):
    """Issue 42 R13/R12: a manifest is read at most 4 MiB deep (a link to /dev/zero was read until MemoryError), and
    an integer of thousands of digits (which Python cannot even print) or past 64 bits is one line naming the field,
    in the file and in --cfg-options."""
    from kubetune.api import ManifestError, load_manifest

    endless = tmp_path / "endless.yaml"
    endless.symlink_to("/dev/zero")
    huge = "9" * 5000
    cases = {endless: "over 4 MiB: not a manifest"}
    for name, text in (("digits.yaml", f"spec:\n  training:\n    seed: {huge}\n"),
                       ("digits.json", f'{{"spec": {{"training": {{"seed": {huge}}}}}}}')):
        (tmp_path / name).write_text(text)
        cases[tmp_path / name] = "a number too long to be a setting"
    (tmp_path / "wide.yaml").write_text("spec:\n  training:\n    seed: " + "9" * 40 + "\n")
    cases[tmp_path / "wide.yaml"] = "spec.training.seed: an integer of more than 64 bits"
    for path, message in cases.items():
        with pytest.raises(ManifestError) as caught:
            load_manifest(path)
        assert message in str(caught.value), str(caught.value)[:300]
    example = Path(__file__).resolve().parents[1] / "examples" / "finetune-local-tiny.yaml"
    out = kubetune("train", str(example), "--work-dir", str(tmp_path / "w"), "--cfg-options", f"training.seed={huge}")
    assert out.returncode == 2 and "training.seed" in out.stderr and "Traceback" not in out.stderr, out.stderr[-500:]

