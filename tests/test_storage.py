"""Storage against a real S3 server (versitygw, started here) behind a fault-injecting proxy: model and data from
s3:// and from an offline Hugging Face cache, checkpoints that survive SIGKILL, retried faults, cut uploads that are
never resumed from, credential errors that fail fast without leaking the secret."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from .s3server import ACCESS, SECRET, Faults, start_proxy, start_versitygw
from .test_train import alpaca_rows, kubetune, write_job

BUCKET = "kubetune-test"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    server, upstream = start_versitygw(root)
    faults = Faults()
    proxy, endpoint = start_proxy(upstream, faults)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1", "KUBETUNE_S3_ATTEMPTS": "4"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from kubetune.storage import s3 as s3mod

    s3mod._CLIENT.clear()
    s3mod.client().create_bucket(Bucket=BUCKET)
    yield {"env": env, "faults": faults, "endpoint": endpoint}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3mod._CLIENT.clear()
    proxy.shutdown()
    server.terminate()
    server.wait(10)


@pytest.fixture(autouse=True)
def clean_faults(request):
    if "s3" in request.fixturenames:
        s3 = request.getfixturevalue("s3")
        s3["faults"].plan.clear()
        s3["faults"].always.clear()
    yield


def upload_tree(local: Path, prefix: str):
    from kubetune.storage import s3

    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.put_file(path, s3.S3Uri(BUCKET, f"{prefix}/{path.relative_to(local)}"))


def adapter(work, step):
    return load_file(str(Path(work) / f"iter_{step}" / "model" / "adapter_model.safetensors"))


def test_model_and_dataset_load_from_s3(s3, tmp_path, tiny_dir):
    upload_tree(tiny_dir, "models/tiny")
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8))
    from kubetune.storage import s3 as s3mod

    s3mod.put_file(tmp_path / "data.jsonl", s3mod.S3Uri(BUCKET, "data/rows.jsonl"))
    env = {**s3["env"], "KUBETUNE_CACHE": str(tmp_path / "cache")}
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                   f"model.uri=s3://{BUCKET}/models/tiny", f"dataset.uri=s3://{BUCKET}/data/rows.jsonl",
                   "training.maxSteps=2", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"from s3://{BUCKET}/models/tiny" in out.stdout
    assert (tmp_path / "cache" / "s3" / BUCKET / "models" / "tiny" / "model.safetensors").is_file()
    missing = kubetune("train", str(job), "--cfg-options", f"model.uri=s3://{BUCKET}/models/nope", env=env)
    assert missing.returncode == 2 and f"s3://{BUCKET}/models/nope" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_model_from_an_offline_hugging_face_cache(tmp_path, tiny_dir):
    """hf://org/name resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1 (no network)."""
    cache = tmp_path / "hub"
    repo = cache / "models--kubetune--tiny-chat"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8))
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "KUBETUNE_CACHE": str(tmp_path / "c")}
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                   "model.uri=hf://kubetune/tiny-chat", "training.maxSteps=2", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    absent = kubetune("train", str(job), "--cfg-options", "model.uri=hf://kubetune/absent", env=env)
    assert absent.returncode == 2 and "hf://kubetune/absent" in absent.stderr and "offline" in absent.stderr.lower()


def test_checkpoints_in_s3_survive_sigkill(s3, tmp_path, tiny_dir):
    """Kill -9 after a checkpoint reached S3; a fresh pod (empty work dir) with --resume auto downloads the newest
    complete one and ends with the weights of an uninterrupted run."""
    from kubetune.storage import s3 as s3mod
    from kubetune.storage import sync

    job = write_job(tmp_path, tiny_dir, alpaca_rows(24), checkpoints={"everySteps": 10, "keep": 2})
    steps = ["--cfg-options", "training.maxSteps=150"]
    env = {**s3["env"], "KUBETUNE_CACHE": str(tmp_path / "c")}
    straight = tmp_path / "straight"
    assert kubetune("train", str(job), "--work-dir", str(straight), *steps, env=env).returncode == 0

    uri = f"s3://{BUCKET}/runs/sigkill"
    remote = ["checkpoints.uri=" + uri]
    proc = subprocess.Popen([sys.executable, "-m", "kubetune", "train", str(job), "--work-dir", str(tmp_path / "pod1"),
                             *steps, *remote], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and not sync.remote_checkpoints(s3mod.S3Uri.parse(uri)):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sync.remote_checkpoints(s3mod.S3Uri.parse(uri))
    assert done and done[-1] < 150, done

    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "pod2"), "--resume", "auto", *steps, *remote,
                   env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fetching checkpoint iter_" in out.stdout and "resumed from" in out.stdout
    a, b = adapter(straight, 150), adapter(tmp_path / "pod2", 150)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # keep: 2 applies remotely too.
    assert sync.remote_checkpoints(s3mod.S3Uri.parse(uri)) == [140, 150]


def test_transient_faults_during_upload_are_retried(s3, tmp_path, tiny_dir):
    from kubetune.storage import s3 as s3mod
    from kubetune.storage import sync

    faults = s3["faults"]
    put = lambda method, path: method == "PUT" and "/runs/faults/" in path  # noqa: E731
    faults.plan = [(put, 503), (put, "drop"), (put, 503), (put, "drop"), (put, 503)]
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8), checkpoints={"everySteps": 2, "keep": -1})
    uri = f"s3://{BUCKET}/runs/faults"
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options", "training.maxSteps=4",
                   "checkpoints.uri=" + uri, env={**s3["env"], "KUBETUNE_CACHE": str(tmp_path / "c")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert not faults.plan, "every injected fault was hit"
    assert sync.remote_checkpoints(s3mod.S3Uri.parse(uri)) == [2, 4]
    assert "upload failed" not in out.stdout


def test_an_upload_cut_before_its_manifest_is_never_resumed_from(s3, tmp_path, tiny_dir):
    from prometheus_client import REGISTRY

    from kubetune.storage import s3 as s3mod
    from kubetune.storage import sync

    uri = f"s3://{BUCKET}/runs/cut"
    s3["faults"].always = [(lambda m, p: m == "PUT" and "/runs/cut/iter_4/manifest.json" in p, 503)]
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8), checkpoints={"everySteps": 2, "keep": -1})
    env = {**s3["env"], "KUBETUNE_CACHE": str(tmp_path / "c"), "KUBETUNE_S3_ATTEMPTS": "2"}
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options", "training.maxSteps=4",
                   "checkpoints.uri=" + uri, env=env)
    # M1: the last checkpoint never reached the bucket, so the run fails (its only copy goes with the pod), without
    # a traceback and with the local copy kept; an outage, not the user's input: exit 1 (a restart may get it through).
    assert out.returncode == 1, out.stderr[-3000:]
    assert "checkpoint iter_4: upload failed, training goes on" in out.stdout
    assert f"the final checkpoint was not saved to {uri}" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "w" / "iter_4" / "model").is_dir()
    listing = s3mod.list_objects(s3mod.S3Uri.parse(uri))
    assert "iter_4/model/adapter_model.safetensors" in listing and "iter_4/manifest.json" not in listing
    assert sync.remote_checkpoints(s3mod.S3Uri.parse(uri)) == [2]
    fault, s3["faults"].always = s3["faults"].always, []
    again = kubetune("train", str(job), "--work-dir", str(tmp_path / "fresh"), "--resume", "auto", "--cfg-options",
                     "training.maxSteps=4", "checkpoints.uri=" + uri, env=env)
    assert again.returncode == 0 and "resumed from" in again.stdout and "iter_2 at step 2" in again.stdout

    # The failure is counted for Prometheus.
    s3["faults"].always = fault
    before = REGISTRY.get_sample_value("kubetune_checkpoint_upload_failures_total") or 0
    uploads = sync.CheckpointSync(uri, keep=-1, log=lambda s: None)
    uploads.submit(tmp_path / "w" / "iter_4")
    uploads.wait()
    assert REGISTRY.get_sample_value("kubetune_checkpoint_upload_failures_total") == before + 1


def test_bad_credentials_fail_fast_without_the_secret(s3, tmp_path, tiny_dir):
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8))
    wrong = "wrong-secret-value-9b7e"
    env = {**s3["env"], "AWS_SECRET_ACCESS_KEY": wrong, "KUBETUNE_CACHE": str(tmp_path / "c")}
    started = time.time()
    out = kubetune("train", str(job), "--cfg-options", f"model.uri=s3://{BUCKET}/models/tiny", env=env)
    assert out.returncode == 2
    assert "access denied" in out.stderr and BUCKET in out.stderr and "s3:ListBucket" in out.stderr
    assert wrong not in out.stderr + out.stdout and SECRET not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert time.time() - started < 60  # no retry storm on a permanent error


def test_convert_reads_a_checkpoint_from_s3_and_exports_there(s3, tmp_path, tiny_dir):
    from kubetune.storage import s3 as s3mod

    uri = f"s3://{BUCKET}/runs/export"
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8), checkpoints={"everySteps": 2, "keep": 1})
    env = {**s3["env"], "KUBETUNE_CACHE": str(tmp_path / "c")}
    out = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), "--cfg-options", "training.maxSteps=2",
                   "checkpoints.uri=" + uri, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    conv = kubetune("convert", "pth_to_hf", str(job), f"{uri}/iter_2", f"{uri}/export/adapter", env=env)
    assert conv.returncode == 0, conv.stderr[-3000:]
    listing = s3mod.list_objects(s3mod.S3Uri.parse(f"{uri}/export/adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors", "kubetune_config.yaml", "manifest.json"} <= set(listing)


def test_llava_reads_encoder_projector_data_and_images_from_s3(s3, tmp_path):
    """Every URI a LLaVA run reads (encoder, stage-1 projector, data, image folder) may be s3://."""
    from . import visionkit

    world = visionkit.build_world(tmp_path / "world", rows=8)
    env = {**s3["env"], "KUBETUNE_CACHE": str(tmp_path / "cache")}
    pre = visionkit.write_job(tmp_path / "pre.yaml", world, "pre", "pretrain", 1)
    out = kubetune("train", str(pre), "--work-dir", str(tmp_path / "pre"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    for local, prefix in ((world["clip"], "llava/clip"), (world["images"], "llava/images"),
                          (tmp_path / "pre" / "iter_1", "llava/pre/iter_1")):
        upload_tree(local, prefix)
    from kubetune.storage import s3 as s3mod

    s3mod.put_file(world["data"], s3mod.S3Uri(BUCKET, "llava/data.json"))
    base = f"s3://{BUCKET}/llava"
    ft = visionkit.write_job(tmp_path / "ft.yaml", world, "ft", "finetune", 1,
                             model={"uri": str(world["llm"]), "vision": {"encoder": f"{base}/clip",
                                                                         "projector": f"{base}/pre/iter_1"}},
                             dataset={"uri": f"{base}/data.json", "imageFolder": f"{base}/images"})
    out = kubetune("train", str(ft), "--work-dir", str(tmp_path / "ft"), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "with_image 8" in out.stdout and (tmp_path / "ft" / "iter_1" / "model" / "llm_adapter").is_dir()


def test_the_specs_storage_block_is_honoured_locally_without_environment_variables(s3, tmp_path, tiny_dir):
    """`spec.storage` (endpoint, path style) is all a local run needs: no AWS_ENDPOINT_URL; the credentials come from
    ~/.aws as boto3 reads them, and the Secret the spec names for the cluster is said to be unread here."""
    upload_tree(tiny_dir, "models/tiny-local")
    job = write_job(tmp_path, tiny_dir, alpaca_rows(8))
    from kubetune.storage import s3 as s3mod

    s3mod.put_file(tmp_path / "data.jsonl", s3mod.S3Uri(BUCKET, "local/rows.jsonl"))
    spec = yaml.safe_load(job.read_text())
    spec["model"]["uri"] = f"s3://{BUCKET}/models/tiny-local"
    spec["dataset"]["uri"] = f"s3://{BUCKET}/local/rows.jsonl"
    spec["training"]["maxSteps"] = 2
    spec["storage"] = {"endpoint": s3["endpoint"], "pathStyle": True, "secretRef": "team-s3"}
    job.write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_access_key_id = {ACCESS}\n"
                                               f"aws_secret_access_key = {SECRET}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBETUNE_S3", "KUBERNETES_"))}
    env.update(HOME=str(home), KUBETUNE_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "kubetune", "train", str(job), "--work-dir", str(tmp_path / "w")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"from s3://{BUCKET}/models/tiny-local" in out.stdout
    assert "storage.secretRef team-s3 is a cluster Secret and is not read here" in out.stderr
    # Without the block, the same run goes to AWS's own endpoint: the spec, not the environment, made it work.
    del spec["storage"]
    job.write_text(yaml.safe_dump(spec))
    env["KUBETUNE_S3_ATTEMPTS"] = "1"
    out = subprocess.run([sys.executable, "-m", "kubetune", "train", str(job), "--work-dir", str(tmp_path / "w2")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_fetch_fills_a_shared_cache_once_for_a_gang_and_for_later_jobs(s3, tmp_path, tiny_dir):
    """`kubetune fetch` (the trainer pods' init container with resources.cacheVolume): two pods of one gang start
    at once on the same cache volume; one downloads under the volume's lock, the other waits and finds it all there;
    a later job of the same model on the same volume downloads nothing; training then reads from the cache."""
    upload_tree(tiny_dir, "models/cached")
    from kubetune.storage import s3 as s3mod

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in alpaca_rows(8)) + "\n")
    s3mod.put_file(rows, s3mod.S3Uri(BUCKET, "data/cached.jsonl"))
    job = tmp_path / "job.yaml"
    spec = ({"model": {"uri": f"s3://{BUCKET}/models/cached"},
                                  "dataset": {"uri": f"s3://{BUCKET}/data/cached.jsonl", "format": "alpaca",
                                              "promptTemplate": "default", "maxLength": 64},
                                  "training": {"maxSteps": 1, "precision": "fp32", "gradientCheckpointing": False}})
    job.write_text(json.dumps({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                               "metadata": {"name": "cached"}, "spec": spec}))
    volume = tmp_path / "cache-volume"
    env = {**os.environ, **s3["env"], "KUBETUNE_CACHE_VOLUME": str(volume), "KUBETUNE_CACHE": str(volume / "kubetune"),
           "HF_HOME": str(volume / "huggingface")}
    pods = [subprocess.Popen([sys.executable, "-m", "kubetune", "fetch", str(job)], env={**env, "NODE_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in pods]
    assert [p.returncode for p in pods] == [0, 0], outputs
    said = sorted("already cached:" if "already cached:" in o else "downloaded" for o in outputs)
    assert said == ["already cached:", "downloaded"], outputs
    assert (volume / "kubetune" / "s3" / BUCKET / "models" / "cached" / "model.safetensors").is_file()
    later = kubetune("fetch", str(job), env={k: env[k] for k in env if k not in os.environ or env[k] != os.environ[k]})
    assert later.returncode == 0 and "already cached:" in later.stdout, later.stdout + later.stderr
    trained = kubetune("train", str(job), "--work-dir", str(tmp_path / "w"), env={
        k: env[k] for k in env if k not in os.environ or env[k] != os.environ[k]})
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "downloading" not in trained.stdout  # everything came from the cache volume
