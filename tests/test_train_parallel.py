"""DeepSpeed ZeRO and sequence parallel on this CPU (gloo): each equals the plain single-process run, step by step."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .test_train import alpaca_rows, kubetune, write_job

TWO = {"NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"}


def scalars(work):
    path = sorted(Path(work).glob("*/vis_data/scalars.json"))[-1]  # the newest run (a resume adds one)
    return [json.loads(line) for line in path.read_text().splitlines()]


def adapter(work, step):
    return load_file(str(Path(work) / f"iter_{step}" / "model" / "adapter_model.safetensors"))


def assert_same_run(reference, other, steps, atol=1e-5):
    ref, got = scalars(reference), scalars(other)
    assert [s["step"] for s in got][-1] == steps
    for a, b in zip(ref[-len(got):], got):  # a resumed run logs only the steps it ran
        assert abs(a["loss"] - b["loss"]) <= atol, (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) <= atol * 10, (a, b)
    wa, wb = adapter(reference, steps), adapter(other, steps)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6, rtol=0), key


def train_ok(*args, env):
    out = kubetune("train", *args, env=env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    return out


@pytest.fixture
def job(tmp_path, tiny_dir):
    return write_job(tmp_path, tiny_dir, alpaca_rows(32), checkpoints={"everySteps": 3, "keep": -1},
                     evaluation={"inputs": ["sun moon"], "everySteps": 3, "maxNewTokens": 4})


def test_zero2_and_zero3_with_two_processes_match_the_plain_run(tmp_path, job):
    """Two samples per step everywhere: 1 process × 2 micro-batches, or 2 processes × 1. ZeRO-3 is also interrupted
    after step 3 and resumed from its partitioned checkpoint."""
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    steps = ["--cfg-options", "training.maxSteps=6"]
    plain = tmp_path / "plain"
    train_ok(str(job), "--work-dir", str(plain), *steps, "training.accumulativeCounts=2", env=env)

    zero2 = tmp_path / "zero2"
    out = train_ok(str(job), "--work-dir", str(zero2), "--deepspeed", "zero2", *steps, env={**env, **TWO})
    assert "DeepSpeed ZeRO-2" in out.stdout and "2 data-parallel rank(s)" in out.stdout
    assert_same_run(plain, zero2, 6)

    zero3 = tmp_path / "zero3"
    crash = kubetune("train", str(job), "--work-dir", str(zero3), "--deepspeed", "deepspeed_zero3", *steps,
                     env={**env, **TWO, "KUBETUNE_STOP_AFTER_STEP": "3"})
    assert crash.returncode != 0 and (zero3 / "iter_3").is_dir() and not (zero3 / "iter_6").exists()
    parts = sorted(p.name for p in (zero3 / "iter_3" / "deepspeed" / "state").iterdir())
    assert parts == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                     "zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    out = train_ok(str(job), "--work-dir", str(zero3), "--deepspeed", "zero3", "--resume", "auto", *steps,
                   env={**env, **TWO})
    assert "resumed from" in out.stdout and "DeepSpeed ZeRO-3" in out.stdout
    assert_same_run(plain, zero3, 6)
    # Evaluation ran on both ranks in lockstep (ZeRO-3 gathers weights for every forward) and rank 0 wrote it.
    # XTuner's place for them: <timestamp>/vis_data/, beside scalars.json.
    assert next(zero3.glob("*/vis_data/eval_outputs_iter_6.txt")).read_text().startswith("Sample output:")


def test_sequence_parallel_equals_the_non_parallel_run(tmp_path, tiny_dir):
    """Ulysses over 2 processes: each holds half of every packed sequence; losses, gradient norms and weights equal
    the single-process run on the same samples."""
    job = write_job(tmp_path, tiny_dir, alpaca_rows(48), checkpoints={"everySteps": 4, "keep": 1},
                    dataset={"uri": str(tmp_path / "data.jsonl"), "format": "alpaca", "promptTemplate": "default",
                             "maxLength": 192, "packToMaxLength": True},
                    evaluation={"inputs": ["sun moon"], "everySteps": 4, "maxNewTokens": 4})
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    steps = ["--cfg-options", "training.maxSteps=4"]
    plain = tmp_path / "plain"
    out = train_ok(str(job), "--work-dir", str(plain), *steps, env=env)
    assert "(packed)" in out.stdout  # several samples per sequence: the block-diagonal mask matters
    split = tmp_path / "sp"
    out = train_ok(str(job), "--work-dir", str(split), "--deepspeed", "zero2", *steps,
                   "training.sequenceParallelSize=2", env={**env, **TWO})
    assert "sequence parallel x2" in out.stdout and "1 data-parallel rank(s)" in out.stdout
    assert_same_run(plain, split, 4)


def test_one_process_deepspeed_with_a_custom_json_offloads_the_optimizer(tmp_path, job):
    """Without a launcher (DeepSpeed would look for MPI), with a user's JSON file: its explicit micro-batch size is
    replaced by the training config's, with a note."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {
        "stage": 2, "offload_optimizer": {"device": "cpu"}}, "zero_force_ds_cpu_optimizer": False}))
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    plain = tmp_path / "plain"
    train_ok(str(job), "--work-dir", str(plain), "--cfg-options", "training.maxSteps=3", env=env)
    offload = tmp_path / "offload"
    out = train_ok(str(job), "--work-dir", str(offload), "--deepspeed", str(ds), "--cfg-options",
                   "training.maxSteps=3", env=env)
    assert "train_micro_batch_size_per_gpu=4 in the DeepSpeed config is replaced by 1" in out.stdout
    assert_same_run(plain, offload, 3)
    bad = kubetune("train", str(job), "--deepspeed", str(tmp_path / "nope.json"), env=env)
    assert bad.returncode == 2 and "nope.json" in bad.stderr and "Traceback" not in bad.stderr


def test_qlora_under_zero3_with_two_processes_matches_the_plain_run(tmp_path, tiny_dir):
    """XTuner's QLoRA + ZeRO-3 recipe (its 110B config): the 4-bit weights are packed in a float storage dtype,
    DeepSpeed partitions them like any weight and gathers them for each forward; 2 ranks x 1 sample equal 1 process
    x 2 micro-batches. The run then resumes from its partitioned checkpoint."""
    job = write_job(tmp_path, tiny_dir, alpaca_rows(16),
                    method={"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                    checkpoints={"everySteps": 2, "keep": -1})
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    steps = ["--cfg-options", "training.maxSteps=4"]
    plain = tmp_path / "plain"
    train_ok(str(job), "--work-dir", str(plain), *steps, "training.accumulativeCounts=2", env=env)
    zero3 = tmp_path / "zero3"
    crash = kubetune("train", str(job), "--work-dir", str(zero3), "--deepspeed", "zero3", *steps,
                     env={**env, **TWO, "KUBETUNE_STOP_AFTER_STEP": "2"})
    assert crash.returncode != 0 and (zero3 / "iter_2").is_dir(), crash.stderr[-2000:]
    assert "QLoRA under ZeRO-3:" in crash.stdout and "torch.float32 storage" in crash.stdout
    out = train_ok(str(job), "--work-dir", str(zero3), "--deepspeed", "zero3", "--resume", "auto", *steps,
                   env={**env, **TWO})
    assert "resumed from" in out.stdout and "(qlora)" in out.stdout
    assert_same_run(plain, zero3, 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_on_the_cpu(tmp_path, tiny_dir, bits):
    """bitsandbytes >= 0.50 quantizes and trains on the CPU: the base is stored in 4-bit NF4 (or int8), the adapter
    learns (the loss falls on repeated data) and is saved."""
    job = write_job(tmp_path, tiny_dir, alpaca_rows(4),
                    method={"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                            "quantization": {"bits": bits}})
    work = tmp_path / "w"
    out = train_ok(str(job), "--work-dir", str(work), "--cfg-options", "training.maxSteps=12",
                   env={"KUBETUNE_CACHE": str(tmp_path / "c")})
    assert "(qlora)" in out.stdout
    losses = [s["loss"] for s in scalars(work)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < sum(losses[:4])
    weights = adapter(work, 12)
    assert weights and all("lora_" in k for k in weights)


def test_out_of_memory_is_a_clear_message(monkeypatch, capsys, tmp_path, job):
    import kubetune.train.main as engine
    from kubetune.cli.main import main

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "run", oom)
    assert main(["train", str(job), "--work-dir", str(tmp_path / "w")]) == 3  # ExitCode.OUT_OF_MEMORY
    err = capsys.readouterr().err
    assert "out of memory" in err and "training.batchSize" in err and "Traceback" not in err


def test_segment_attention_equals_a_block_diagonal_mask():
    """The packed-sample attention (no mask, samples gathered into their own rows) equals SDPA with the
    block-diagonal causal mask transformers would build, values and gradients, with grouped key/value heads."""
    from kubetune.model.attention import segment_attention

    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 0, 1, 0, 1]])
    q = torch.randn(2, 4, 10, 8, requires_grad=True)
    k = torch.randn(2, 2, 10, 8, requires_grad=True)
    v = torch.randn(2, 2, 10, 8, requires_grad=True)
    sample = torch.cumsum(torch.diff(pos, prepend=pos[:, :1] - 1) != 1, -1)
    mask = (sample[:, :, None] == sample[:, None, :]) & torch.ones(10, 10, dtype=torch.bool).tril()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                                           attn_mask=mask[:, None]).transpose(1, 2)
    got = segment_attention(q, k, v, pos, scaling=None)
    assert torch.allclose(got, ref, atol=1e-6)
    weights = torch.randn_like(ref)
    grads_ref = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    grads_got = torch.autograd.grad((got * weights).sum(), (q, k, v))
    for a, b in zip(grads_ref, grads_got):
        assert torch.allclose(a, b, atol=1e-5)
