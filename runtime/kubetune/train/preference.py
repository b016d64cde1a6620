"""Preference objectives as pure functions of per-sequence log-probabilities or scores: DPO (seven loss types, as
XTuner's `DPO` model names them), ORPO, and the reward model's ranking/focal losses with their penalties. The
training loop gathers the inputs (`segment_logps`) from packed chosen/rejected pairs; tests compare each loss with
TRL's DPOTrainer or with the papers' formulas."""

from __future__ import annotations

from typing import Any

from kubetune.data.encode import IGNORE_INDEX

DPO_LOSSES = ("sigmoid", "robust", "hinge", "ipo", "kto_pair", "sppo_hard", "nca_pair")
# The InternLM2 reward model keeps scores inside (-5, 5) with a log barrier.
BARRIER = 5.0


def segment_logps(logits: Any, targets: Any, segments: Any, count: int) -> tuple[Any, Any]:
    """Sum of log p(target) and the number of labelled tokens of each segment. `logits` [N, V] and `targets`,
    `segments` [N] are aligned (any layout flattened the same way); positions whose target is IGNORE_INDEX count for
    nothing. Returns two [count] tensors."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != IGNORE_INDEX)
    return segment_sums(picked, targets, segments, count)


def segment_sums(picked: Any, targets: Any, segments: Any, count: int) -> tuple[Any, Any]:
    """Per segment: the sum of the tokens' log p(target) (`picked`, 0 where unlabelled) and the labelled tokens."""
    import torch

    labelled = targets != IGNORE_INDEX
    sums = torch.zeros(count, device=picked.device, dtype=torch.float32).index_add(0, segments, picked)
    tokens = torch.zeros(count, device=picked.device, dtype=torch.float32).index_add(0, segments, labelled.float())
    return sums, tokens


def dpo_loss(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, loss_type: str = "sigmoid",
             beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Any, dict[str, Any]]:
    """Per-pair DPO losses (kto_pair: two per pair, averaged by the caller like the rest) and the rewards.

    Inputs are the policy's and the reference's log-probabilities of each chosen and rejected response (summed over
    the response, or averaged per token for ipo: the caller decides, as XTuner does)."""
    import torch
    import torch.nn.functional as F

    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    logits = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":  # with label smoothing: conservative DPO
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  + F.logsigmoid(-beta * logits) * label_smoothing) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "kto_pair":
        # Each side is compared with the other side's KL estimate (the batch mean, clamped at 0, no gradient).
        chosen_kl = chosen_ratio.mean().clamp(min=0).detach()
        rejected_kl = rejected_ratio.mean().clamp(min=0).detach()
        losses = torch.cat((1 - torch.sigmoid(beta * (chosen_ratio - rejected_kl)),
                            1 - torch.sigmoid(beta * (chosen_kl - rejected_ratio))))
    elif loss_type == "sppo_hard":
        losses = (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
    elif loss_type == "nca_pair":
        chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
        losses = -F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards) \
            - 0.5 * F.logsigmoid(-rejected_rewards)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; one of {', '.join(DPO_LOSSES)}")
    chosen_rewards, rejected_rewards = (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    return losses, {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards,
                    "reward_acc": (chosen_rewards > rejected_rewards).float(),
                    "reward_margin": chosen_rewards - rejected_rewards}


def orpo_loss(chosen_mean: Any, rejected_mean: Any, beta: float = 0.1) -> tuple[Any, dict[str, Any]]:
    """ORPO on per-token average log-probabilities: NLL of the chosen response minus beta x log sigmoid of the log
    odds ratio (odds = p / (1 - p))."""
    import torch
    import torch.nn.functional as F

    log_odds = (chosen_mean - rejected_mean) - (torch.log1p(-torch.exp(chosen_mean).clamp(max=1 - 1e-6))
                                                - torch.log1p(-torch.exp(rejected_mean).clamp(max=1 - 1e-6)))
    ratio = F.logsigmoid(log_odds)
    nll = -chosen_mean
    losses = nll - beta * ratio
    return losses, {"log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach(), "nll_loss": nll.detach(),
                    "reward_acc": (chosen_mean > rejected_mean).float().detach()}


def reward_loss(chosen: Any, rejected: Any, loss_type: str = "ranking", penalty: str = "log_barrier",
                penalty_weight: float = 0.01) -> tuple[Any, dict[str, Any]]:
    """Per-pair reward-model losses on scalar scores: ranking (Bradley-Terry) or InternLM2's focal ranking loss,
    plus a log-barrier or L2 penalty on both scores."""
    import torch
    import torch.nn.functional as F

    margin = chosen - rejected
    if loss_type == "ranking":
        losses = -F.logsigmoid(margin)
    elif loss_type == "focal":
        p = torch.sigmoid(margin)
        losses = -((1 - 2 * torch.clamp(p - 0.5, min=0)) ** 2) * F.logsigmoid(margin)
    else:
        raise ValueError(f"unknown reward loss type {loss_type!r}; one of ranking, focal")
    both = torch.stack((chosen, rejected))
    if penalty == "log_barrier":
        inside = both.clamp(-BARRIER + 1e-4, BARRIER - 1e-4)
        losses = losses - penalty_weight * (torch.log(BARRIER + inside) + torch.log(BARRIER - inside)).mean(0)
    elif penalty == "l2":
        losses = losses + penalty_weight * (both ** 2).mean(0)
    elif penalty != "none":
        raise ValueError(f"unknown reward penalty {penalty!r}; one of log_barrier, l2, none")
    return losses, {"chosen_score": chosen.detach(), "rejected_score": rejected.detach(),
                    "reward_acc": (margin > 0).float().detach(), "reward_margin": margin.detach()}
