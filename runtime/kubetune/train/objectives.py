"""What a micro-batch's loss is: the loop calls `objective(model, batch)` → (loss summed over the batch's units,
metric sums), and weighs every unit of the accumulation window equally across micro-batches and ranks. SFT's unit is
a labelled token; a preference method's is a chosen/rejected pair."""

from __future__ import annotations

from typing import Any, Callable, TYPE_CHECKING

from .lm_head import LogitsHead
from .targets import with_targets
from .preference import dpo_loss, orpo_loss, reward_loss, segment_sums
from .sequence_parallel import group_sum

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.method import MethodSpec

Objective = Callable[[Any, dict], tuple[Any, dict[str, Any]]]


def sft(forward: Callable[[Any, dict], Any], router_aux_coef: float = 0.0, head: LogitsHead = LogitsHead()
        ) -> Objective:
    """Token cross-entropy; for a mixture of experts with its router loss on, plus coef × that loss, which is a mean
    over the batch's tokens and so weighs as many units as the batch has. `head`: how the head and loss are computed
    (lm_head.py)."""

    def objective(model: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
        out = head.run(forward, model, batch)
        loss = head.loss_sum(model, out, batch["loss_targets"])
        aux = getattr(out, "aux_loss", None)
        if not router_aux_coef or aux is None:
            return loss, {}
        weighted = aux * batch["num_units"]
        return loss + router_aux_coef * weighted, {"router_aux_loss": weighted.detach()}

    return objective


def router_aux_coef(model: Any) -> float:
    """The weight of the router load-balancing loss the model's config turns on (0: off)."""
    config = getattr(_unwrapped(model), "config", None)
    if not getattr(config, "output_router_logits", False):
        return 0.0
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)


def prepare_pairs(batch: dict[str, Any], keep_logits: bool) -> dict[str, Any]:
    """A collated batch of packed pairs → targets, the sample of each scored position, and the pair count."""
    import torch

    out = with_targets(batch, keep_logits)
    segments = batch["segment_ids"]
    out["loss_segments"] = segments[out["keep"]] if keep_logits else segments.reshape(-1)
    count = batch["num_segments"]
    flat = segments.reshape(-1)
    # The last position of each sample: where a reward model reads its score (the appended reward token).
    last = torch.full((count + 1,), -1, dtype=torch.long, device=flat.device)
    out["last_positions"] = last.scatter_reduce(0, flat, torch.arange(flat.numel(), device=flat.device),
                                                reduce="amax")[:count]
    out["num_units"] = count // 2
    return out


def _unwrapped(model: Any) -> Any:
    return getattr(model, "module", model)


def preference(method: MethodSpec, forward: Callable[[Any, dict], Any], reference: Any = None,
               head: LogitsHead = LogitsHead()) -> Objective:
    """dpo, orpo or reward. `reference` (dpo, full parameters): a frozen copy of the starting model; with adapters
    the reference is the same model with its adapters disabled, so no second copy is held."""
    import torch

    kind = method.type.value

    def logps(model: Any, batch: dict) -> tuple[Any, Any]:
        count = batch["num_segments"]
        targets = batch["loss_targets"].reshape(-1)
        picked = head.token_logps(model, head.run(forward, model, batch), targets)
        sums, tokens = segment_sums(picked, targets, batch["loss_segments"], count + 1)
        group = batch.get("sequence_group")
        if group is not None:  # sequence parallel: this rank scored its slice of every sample
            sums, tokens = group_sum(sums, group), group_sum(tokens, group)
        return sums[:count], tokens[:count]

    def reference_logps(model: Any, batch: dict) -> Any:
        with torch.no_grad():
            if reference is not None:
                return logps(reference, batch)[0]
            inner = _unwrapped(model)
            with inner.disable_adapter():
                return logps(inner, batch)[0]

    def objective(model: Any, batch: dict) -> tuple[Any, dict[str, Any]]:
        if kind == "reward":
            scores = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).reshape(-1)
            scores = scores[batch["last_positions"]].float()
            r = method.reward
            assert r is not None  # MethodSpec fills the method's own settings
            losses, metrics = reward_loss(scores[0::2], scores[1::2], r.loss_type, r.penalty, r.penalty_weight)
        elif kind == "orpo":
            sums, tokens = logps(model, batch)
            mean = sums / tokens.clamp(min=1)
            assert method.orpo is not None
            losses, metrics = orpo_loss(mean[0::2], mean[1::2], method.orpo.beta)
        else:
            d = method.dpo
            assert d is not None
            sums, tokens = logps(model, batch)
            ref = reference_logps(model, batch)
            if d.loss_type == "ipo":  # IPO compares per-token averages
                sums, ref = sums / tokens.clamp(min=1), ref / tokens.clamp(min=1)
            losses, metrics = dpo_loss(sums[0::2], sums[1::2], ref[0::2], ref[1::2], d.loss_type, d.beta,
                                       d.label_smoothing)
            if d.loss_type == "kto_pair":  # two terms per pair: one loss per pair, their mean
                losses = losses.view(2, -1).mean(0)
        group = batch.get("sequence_group")
        weight = 1.0 if group is None or group.rank == 0 else 0.0  # each pair's loss counted once per group
        return losses.sum() * weight, {k: v.sum() * weight for k, v in metrics.items()}

    return objective
