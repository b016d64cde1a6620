"""XTuner's `param_scheduler` (mmengine's chained schedulers) as kubetune's schedule fields: a LinearLR warm-up from
`start_factor`, then CosineAnnealingLR to `eta_min`, a LinearLR decay, or a constant learning rate, covering the run
from its first to its last iteration. A phase list of any other shape, or one that does not cover the run, is a
problem with its line: kubetune would train another schedule."""

from __future__ import annotations

import math
from typing import Any

from .common import Mapper, as_dict
from .reader import Sym

_EPS = 1e-9


def _phase(m: Mapper, raw: Any, line: int, run: dict[str, Any]) -> tuple[str, float, float, dict, float] | None:
    """(type, begin, end, the phase's dict, the run's length), in the phase's unit; None after a problem."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not isinstance(kind, (Sym, str)):  # mmengine's registry also takes the class name as a string
        m.problem(line, f"param_scheduler: `{raw}` is not a dict(type=...) phase")
        return None
    name, by_epoch = kind.name if isinstance(kind, Sym) else kind, raw.get("by_epoch", True)
    if by_epoch and not raw.get("convert_to_iter_based", False):
        m.problem(line, f"param_scheduler: {name} by_epoch=True without convert_to_iter_based=True: mmengine steps "
                        "it once per loop epoch, and XTuner's loop has one, so the learning rate would stay at its "
                        "start value; set convert_to_iter_based=True")
        return None
    unit = "max_epochs" if by_epoch else "max_iters"
    if run.get(unit) is None:
        m.problem(line, f"param_scheduler: phases by_epoch={by_epoch} where train_cfg sets "
                        f"{'max_iters' if by_epoch else 'max_epochs'}: mmengine converts their begin and end by the "
                        "data loader's length, so XTuner's schedule does not span the run (it barely moves); set "
                        f"by_epoch={not by_epoch} and begin/end in {'iterations' if by_epoch else 'epochs'}")
        return None
    begin, end = raw.get("begin", 0), raw.get("end", math.inf)
    if not all(isinstance(v, (int, float)) for v in (begin, end)):
        m.problem(line, f"param_scheduler: {name} begin/end `{begin}`/`{end}` are not numbers")
        return None
    return name, float(begin), min(float(end), float(run[unit])), raw, float(run[unit])


def schedule_fields(m: Mapper, lr: float) -> dict[str, Any]:
    """warmupRatio, warmupStartFactor, lrSchedule and minLrRatio; {} after a problem."""
    line = m.line("param_scheduler")
    raw = m.get("param_scheduler")
    if raw is None:  # mmengine without schedulers: the optimizer's lr throughout
        return {"warmupRatio": 0.0, "lrSchedule": "constant"}
    run = {k: v for k, v in as_dict(m.get("train_cfg")).items() if k in ("max_epochs", "max_iters")}
    parsed = []
    for raw_phase in raw if isinstance(raw, (list, tuple)) else [raw]:
        phase = _phase(m, raw_phase, line, run)
        if phase is None:  # one problem per config: the phases share their cause
            return {}
        parsed.append(phase)
    if not parsed:
        return {"warmupRatio": 0.0, "lrSchedule": "constant"}
    length = parsed[0][4]
    if any(p[4] != length for p in parsed):
        m.problem(line, "param_scheduler: some phases count epochs and others iterations (by_epoch differs)")
        return {}
    out: dict[str, Any] = {"warmupRatio": 0.0}
    decay = parsed
    first = parsed[0]
    if first[0] == "LinearLR" and len(parsed) == 2 or (len(parsed) == 1 and first[0] == "LinearLR"
                                                        and first[3].get("start_factor", 1 / 3) < 1):
        name, begin, end, p, _ = first
        if begin != 0 or abs(p.get("end_factor", 1.0) - 1.0) > _EPS:
            m.problem(line, "param_scheduler: a LinearLR warm-up must start at 0 and end at end_factor=1.0")
            return {}
        out["warmupStartFactor"] = p.get("start_factor", 1 / 3)
        out["warmupRatio"] = _ratio(m, end, length)
        decay = parsed[1:]
    if not decay:
        out["lrSchedule"] = "constant"
        return out
    if len(decay) != 1:
        m.problem(line, f"param_scheduler: {' + '.join(p[0] for p in parsed)} is not a schedule kubetune has "
                        "(a LinearLR warm-up, then CosineAnnealingLR, a LinearLR decay or ConstantLR)")
        return {}
    name, begin, end, p, _ = decay[0]
    start = out["warmupRatio"] * length
    if abs(begin - start) > _EPS or abs(end - length) > _EPS:
        m.problem(line, f"param_scheduler: {name} runs from {begin:g} to {end:g}, not from the warm-up's end "
                        f"({start:g}) to the run's end ({length:g}): kubetune's decay spans the rest of the run")
        return {}
    if name == "CosineAnnealingLR":
        floor = p["eta_min_ratio"] if p.get("eta_min_ratio") is not None else p.get("eta_min", 0.0) / lr
        out |= {"lrSchedule": "cosine", "minLrRatio": floor}
    elif name == "LinearLR" and abs(p.get("start_factor", 1 / 3) - 1.0) < _EPS:
        out |= {"lrSchedule": "linear", "minLrRatio": p.get("end_factor", 1.0)}
    elif name == "ConstantLR" and abs(p.get("factor", 1 / 3) - 1.0) < _EPS:
        out["lrSchedule"] = "constant"
    else:
        m.problem(line, f"param_scheduler: {name}({_args(p)}) is not a decay kubetune has (CosineAnnealingLR, "
                        "LinearLR from start_factor=1.0, ConstantLR with factor=1.0)")
        return {}
    return out


def _ratio(m: Mapper, end: float, length: float) -> float:
    """The warm-up's share of the run: the config's own `warmup_ratio` where it gives this end exactly (XTuner
    writes end=warmup_ratio * max_epochs), so the warm-up's iterations come out as mmengine counts them."""
    given = m.get("warmup_ratio")
    if isinstance(given, (int, float)) and given * length == end:
        return float(given)
    return end / length


def _args(p: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in p.items() if k != "type")
