"""The preference losses (runtime/kubetune/train/preference.py) against independent computations: TRL's DPOTrainer
on the same batch for the DPO types TRL has (sigmoid, robust, hinge, ipo, sppo_hard, nca_pair), the papers' formulas
written out with `math` for the rest (kto_pair, label-smoothed sigmoid, ORPO, the reward losses). Our log-probs come
from chosen/rejected pairs packed into one sequence (position ids restart per sample), TRL's from padded rows: equal
values also show that packed samples do not see each other."""

from __future__ import annotations

import math
import tempfile

import pytest
import torch

from kubetune.data.collate import collate
from kubetune.train.targets import with_targets
from kubetune.train.preference import dpo_loss, orpo_loss, reward_loss, segment_logps

PAIRS = [{"prompt": "What is two plus two?", "chosen": " Four.", "rejected": " Five, probably."},
         {"prompt": "Name a colour", "chosen": " Blue", "rejected": " A dog that barks"},
         {"prompt": "Say hello", "chosen": " Hello there, friend!", "rejected": " No."}]
TRL_TYPES = {"sigmoid": 0.0, "robust": 0.1, "hinge": 0.0, "ipo": 0.0, "sppo_hard": 0.0, "nca_pair": 0.0}


@pytest.fixture
def models(tiny_dir):
    """Fresh per test: a DPOTrainer adjusts the models it is given (configs, wrappers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a reference that differs from the policy, so the log-ratios are not zero
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return tokenizer, policy, ref


def trl_loss_and_batch(models, loss_type: str, beta: float, label_smoothing: float):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer, policy, ref = models
    # bf16=False: TRL's configs default to bf16 mixed precision, under which accelerate wraps the *reference* model's
    # forward in bf16 autocast at construction (the policy is wrapped only by train()), so TRL's reference log-probs
    # carry bf16 rounding (~3e-3 nats a sequence) and its loss moves by ~4e-4. Both sides in float32 here.
    args = DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], per_device_train_batch_size=len(PAIRS),
                     loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing, use_cpu=True,
                     bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss = trainer._compute_loss(policy, batch, False)
    return float(loss), batch


def packed_pairs(batch) -> dict:
    """TRL's padded rows [chosen..., rejected...] → one packed sequence [c1, r1, c2, r2, ...], labels on completions."""
    n = batch["input_ids"].shape[0] // 2
    ids, labels, lens = [], [], []
    for i in range(n):
        for row in (i, n + i):
            keep = batch["attention_mask"][row].bool()
            seq = batch["input_ids"][row][keep].tolist()
            done = batch["completion_mask"][row][keep].bool().tolist()
            ids += seq
            labels += [t if c else -100 for t, c in zip(seq, done)]
            lens.append(len(seq))
    return with_targets(collate([{"input_ids": ids, "labels": labels, "seq_lens": lens}]))


def logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    sums, tokens = segment_logps(logits.reshape(-1, logits.size(-1)), batch["targets"].reshape(-1),
                                 batch["segment_ids"].reshape(-1), batch["num_segments"] + 1)
    return sums[:-1], tokens[:-1]  # the last index is padding


@pytest.mark.parametrize("loss_type", sorted(TRL_TYPES))
def test_dpo_loss_equals_trl(models, loss_type):
    beta, smoothing = 0.2, TRL_TYPES[loss_type]
    expected, batch = trl_loss_and_batch(models, loss_type, beta, smoothing)
    packed = packed_pairs(batch)
    (pol, tokens), (ref, _) = logps(models[1], packed), logps(models[2], packed)
    if loss_type == "ipo":  # per-token averages, as XTuner and TRL both do for IPO
        pol, ref = pol / tokens, ref / tokens
    losses, metrics = dpo_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], loss_type, beta, smoothing)
    # 1e-5, relative for losses above 1: TRL sums float32 log-probs over padded rows, we over packed ones.
    assert float(losses.mean()) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert metrics["reward_acc"].shape == (len(PAIRS),)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


C, R, RC, RR = [-3.1, -7.4, -2.2], [-5.0, -6.9, -9.3], [-3.5, -7.0, -2.0], [-4.4, -7.7, -8.1]


def test_dpo_kto_pair_and_smoothed_sigmoid_equal_the_formulas():
    beta, ls = 0.3, 0.15
    t = [torch.tensor(v, dtype=torch.float64) for v in (C, R, RC, RR)]
    losses, _ = dpo_loss(*t, "sigmoid", beta, ls)
    for i in range(3):
        z = beta * ((C[i] - RC[i]) - (R[i] - RR[i]))
        assert float(losses[i]) == pytest.approx(-(1 - ls) * _logsig(z) - ls * _logsig(-z), abs=1e-9)
    losses, _ = dpo_loss(*t, "kto_pair", beta)
    chosen_kl = max(0.0, sum(C[i] - RC[i] for i in range(3)) / 3)
    rejected_kl = max(0.0, sum(R[i] - RR[i] for i in range(3)) / 3)
    want = [1 - _sig(beta * ((C[i] - RC[i]) - rejected_kl)) for i in range(3)] \
        + [1 - _sig(beta * (chosen_kl - (R[i] - RR[i]))) for i in range(3)]
    assert [float(x) for x in losses] == pytest.approx(want, abs=1e-9)


def test_dpo_metrics_and_unknown_type():
    t = [torch.tensor(v, dtype=torch.float64) for v in (C, R, RC, RR)]
    _, m = dpo_loss(*t, "sigmoid", 0.5)
    assert [float(x) for x in m["chosen_rewards"]] == pytest.approx([0.5 * (C[i] - RC[i]) for i in range(3)])
    assert [float(x) for x in m["reward_acc"]] == [float(0.5 * (C[i] - RC[i]) > 0.5 * (R[i] - RR[i]))
                                                   for i in range(3)]
    with pytest.raises(ValueError, match="sigmoid, robust"):
        dpo_loss(*t, "dpop")


def test_orpo_equals_the_formula():
    beta, chosen, rejected = 0.25, [-0.9, -2.3], [-1.4, -0.7]
    losses, m = orpo_loss(torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64),
                          beta)
    for i in range(2):
        log_odds = (chosen[i] - rejected[i]) - (math.log(1 - math.exp(chosen[i])) - math.log(1 - math.exp(rejected[i])))
        assert float(losses[i]) == pytest.approx(-chosen[i] - beta * _logsig(log_odds), abs=1e-9)
        assert float(m["log_odds_chosen"][i]) == pytest.approx(log_odds, abs=1e-9)


@pytest.mark.parametrize("loss_type,penalty", [("ranking", "none"), ("ranking", "log_barrier"), ("focal", "l2"),
                                               ("focal", "log_barrier")])
def test_reward_losses_equal_the_formulas(loss_type, penalty):
    chosen, rejected, w = [1.2, -0.3, 4.0], [0.4, 0.9, -2.5], 0.05
    losses, m = reward_loss(torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64),
                            loss_type, penalty, w)
    for i in range(3):
        d = chosen[i] - rejected[i]
        base = -_logsig(d) if loss_type == "ranking" else -((1 - 2 * max(0.0, _sig(d) - 0.5)) ** 2) * _logsig(d)
        pen = {"none": 0.0,
               "log_barrier": -w * sum(math.log(5 + x) + math.log(5 - x) for x in (chosen[i], rejected[i])) / 2,
               "l2": w * (chosen[i] ** 2 + rejected[i] ** 2) / 2}[penalty]
        assert float(losses[i]) == pytest.approx(base + pen, abs=1e-9)
    assert [float(x) for x in m["reward_acc"]] == [1.0, 0.0, 1.0]
