"""`--launcher slurm`: the ranks an `srun` starts join one process group (XTuner's mmengine launcher rule), instead
of training independent copies."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kubetune.errors import UserError
from kubetune.train.distributed import first_host, from_slurm

from .conftest import REPO
from .test_train import alpaca_rows, kubetune, write_job


@pytest.mark.parametrize("nodelist, host", [("gpu07", "gpu07"), ("gpu[07-09,12],cpu01", "gpu07"),
                                            ("node[001-004]", "node001"), ("r[1-2]-n[003-004],x", "r1-n003"),
                                            ("a,b[1-3]", "a")])
def test_the_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_variables_become_torch_distributed_ones():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODELIST": "gpu[03-04]",
           "PORT": "29123"}
    assert from_slurm(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu03",
                               "MASTER_PORT": "29123"}
    kept = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1", "MASTER_ADDR": "10.0.0.9",
            "MASTER_PORT": "1234"}
    assert from_slurm(kept) == {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    with pytest.raises(UserError, match="SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST not set"):
        from_slurm({})


def test_two_srun_tasks_train_as_one_data_parallel_group(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, alpaca_rows(16), checkpoints={"everySteps": 2, "keep": -1})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "work"
    common = {**os.environ, "KUBETUNE_CACHE": str(tmp_path / "c"), "OMP_NUM_THREADS": "1", "SLURM_NTASKS": "2",
              "SLURM_NODELIST": "localhost", "PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-m", "kubetune", "train", str(cfg), "--work-dir", str(work),
                               "--launcher", "slurm", "--cfg-options", "training.maxSteps=2"],
                              env={**common, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "2 data-parallel rank(s)" in outs[0][0]  # rank 0 logs; one group of two, not two runs of one
    assert sorted(p.name for p in work.glob("iter_2/rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]

    # The same two steps under the torchrun re-launch give the same weights.
    ref = tmp_path / "ref"
    out = kubetune("train", str(cfg), "--work-dir", str(ref), "--cfg-options", "training.maxSteps=2",
                   env={"KUBETUNE_CACHE": str(tmp_path / "c"), "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_file(str(work / "iter_2" / "model" / "adapter_model.safetensors"))
    b = load_file(str(ref / "iter_2" / "model" / "adapter_model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key


def test_slurm_outside_srun_is_a_clear_error(tmp_path, tiny_dir):
    cfg = write_job(tmp_path, tiny_dir, alpaca_rows(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([sys.executable, "-m", "kubetune", "train", str(cfg), "--launcher", "slurm"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "--launcher slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST not set" in out.stderr
    assert "Traceback" not in out.stderr
