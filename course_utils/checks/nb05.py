"""Graded checks for notebook 05 (two-stage training): stage freezing, the schedule, one step.

Each check runs the student's function on a small fixed problem (seeded) and compares it with
the library's reference in :mod:`course_utils.train.optim`:

* :func:`check_configure_stage` - which parameters train in each stage, and the AdamW groups
  (learning rate per stage, no weight decay on biases / normalisation weights), on a small
  random ``RadiologyMultimodalModel`` (optionally with LoRA-named adapters);
* :func:`check_cosine_with_warmup` - the learning-rate multiplier against the reference formula;
* :func:`check_train_step` - gradient accumulation, clipping, one optimiser/scheduler step per
  call, on a tiny regression model with plain SGD (whose update shows the gradient's scale,
  where Adam's would hide it), then once on the small multimodal model.

Messages name the tolerance and the seed; a crash inside the student's code is a failed check.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model import MultimodalOutput, RadiologyMultimodalModel
from ..train import TrainConfig
from ..train import configure_stage as reference_configure_stage
from ..train import cosine_with_warmup as reference_cosine
from ..train import train_step as reference_train_step
from ..train.config import STAGE2_LR_FULL, STAGE2_LR_LORA
from . import Checker, CheckFailed
from .nb04 import fixture_batch, fixture_model

SCHEDULE_TOL = 1e-6
PARAM_TOL = 1e-6
MODEL_TOL = 1e-5


def _call(check: Checker, func: Callable[..., Any], hint: str, *args: Any, **kwargs: Any) -> Any:
    """``check.call`` with ``hint`` appended when the student's code crashes."""
    try:
        return check.call(func, *args, **kwargs)
    except NotImplementedError:
        raise
    except CheckFailed as err:
        if isinstance(err.__cause__, NotImplementedError | CheckFailed) or not hint:
            raise
        raise CheckFailed(f"{err}\n  hint: {hint}") from err.__cause__


def _close(a: float, b: float, tol: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= tol * max(1.0, abs(b))


# ====================================================================== q1 configure_stage
class _LoraLinear(nn.Module):
    """A linear layer with peft-style adapters (``base_layer``, ``lora_A/B.default``).

    Only the parameter *names and shapes* matter to ``configure_stage``; building adapters by
    hand keeps the check fast (no peft import) while naming them exactly as peft does.
    """

    def __init__(self, base: nn.Linear, r: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})
        nn.init.zeros_(self.lora_B["default"].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x))


def add_fake_lora(model: RadiologyMultimodalModel, targets: Sequence[str] = ("q_proj", "v_proj")):
    """Wrap the LM's attention projections named in ``targets`` with :class:`_LoraLinear`."""
    for name, module in list(model.lm.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if child in targets and isinstance(module, nn.Linear):
            parent = model.lm.get_submodule(parent_name) if parent_name else model.lm
            setattr(parent, child, _LoraLinear(module))
    return model


def _component(name: str) -> str:
    """The part of the model a parameter belongs to (LoRA adapters apart from the LM)."""
    if "lora_" in name:
        return "lora"
    if name.startswith("lm."):
        return "lm"
    return name.split(".", 1)[0]  # vision / projector / detection_head


COMPONENT_HINTS = {
    "vision": "the vision encoder is frozen in BOTH stages: it was pretrained and never trains",
    "projector": "the projector trains in both stages (it is what stage 1 aligns)",
    "detection_head": "the detection head trains in stage 1 only; in stage 2 it stays as "
    "stage 1 left it",
    "lm": "stage 1 keeps the LM frozen; stage 2 trains all its weights without LoRA, and only "
    "its LoRA adapters (names containing 'lora_') when config.lora is True",
    "lora": "LoRA adapters (names containing 'lora_') train in stage 2 when config.lora is True",
}


def _groups_of(check: Checker, groups: Any, where: str) -> list[dict[str, Any]]:
    check.expect(
        isinstance(groups, list | tuple)
        and len(groups) > 0
        and all(
            isinstance(g, Mapping) and {"params", "lr", "weight_decay"} <= set(g) for g in groups
        ),
        f"[{where}] returns a non-empty list of AdamW parameter groups, each a dict with "
        "'params', 'lr' and 'weight_decay'",
        "[{'params': [...], 'lr': ..., 'weight_decay': ...}, ...]",
        type(groups).__name__
        if not isinstance(groups, list | tuple)
        else [sorted(g) if isinstance(g, Mapping) else type(g).__name__ for g in groups],
        "return the groups (not an optimiser, not a bare list of parameters)",
    )
    out = []
    for g in groups:
        group = dict(g)
        group["params"] = list(group["params"])  # a generator would be consumed by AdamW
        out.append(group)
    return out


def _stage2_lr_hint(lr: float, config: TrainConfig) -> str:
    if _close(lr, config.stage1_lr, 1e-9) and not _close(lr, config.effective_stage2_lr, 1e-9):
        return "stage 2 has its own, smaller learning rate; config.stage1_lr is for stage 1"
    if config.stage2_lr is not None and (
        _close(lr, STAGE2_LR_LORA, 1e-9) or _close(lr, STAGE2_LR_FULL, 1e-9)
    ):
        return "config.stage2_lr is set: it overrides the 1e-4 / 2e-5 defaults"
    if config.lora and _close(lr, STAGE2_LR_FULL, 1e-9):
        return "with LoRA the case study's stage-2 lr is 1e-4 (2e-5 is for full fine-tuning)"
    if not config.lora and _close(lr, STAGE2_LR_LORA, 1e-9):
        return "full fine-tuning uses 2e-5 (1e-4 is the LoRA rate)"
    return "stage 2: config.stage2_lr if it is not None, else 1e-4 with LoRA, 2e-5 without"


def _check_one_stage(
    check: Checker,
    configure_stage: Callable[..., Any],
    model: RadiologyMultimodalModel,
    stage: int,
    config: TrainConfig,
    where: str,
) -> None:
    reference = copy.deepcopy(model)
    reference_configure_stage(reference, stage, config.lora, config.weight_decay)
    want = {n: p.requires_grad for n, p in reference.named_parameters()}
    raw = _call(
        check,
        configure_stage,
        "model.requires_grad_(False) freezes everything; then switch on what the stage trains",
        model,
        stage,
        config,
    )
    groups = _groups_of(check, raw, where)

    got = {n: p.requires_grad for n, p in model.named_parameters()}
    wrong: dict[str, list[str]] = {}
    for name, flag in want.items():
        if got.get(name) != flag:
            wrong.setdefault(_component(name), []).append(name)
    first = next(iter(wrong), None)
    check.expect(
        not wrong,
        f"[{where}] requires_grad is True exactly on what the stage trains",
        "trainable: "
        + ", ".join(sorted({_component(n) for n, f in want.items() if f}))
        + (" (LM base weights frozen)" if config.lora and stage == 2 else ""),
        {c: names[:3] + (["…"] if len(names) > 3 else []) for c, names in wrong.items()},
        COMPONENT_HINTS.get(first or "", ""),
    )

    try:
        torch.optim.AdamW(groups, lr=1.0)
    except (ValueError, TypeError) as err:
        raise CheckFailed(
            f"configure_stage: [{where}] torch.optim.AdamW(groups) refuses the groups: {err}\n"
            "  hint: every trainable parameter goes into exactly one group"
        ) from err
    in_groups = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]
    check.expect(
        not missing,
        f"[{where}] every trainable parameter is in a group (else AdamW never updates it)",
        "all trainable parameters",
        f"{len(missing)} missing, e.g. {missing[:3]}",
    )

    expected_lr = config.stage1_lr if stage == 1 else config.effective_stage2_lr
    lrs = sorted({float(g["lr"]) for g in groups})
    bad_lr = next((lr for lr in lrs if not _close(lr, expected_lr, 1e-9)), None)
    check.expect(
        bad_lr is None,
        f"[{where}] every group's lr is the stage's learning rate",
        expected_lr,
        lrs,
        (
            "stage 1 uses config.stage1_lr (case study: 1e-3)"
            if stage == 1
            else _stage2_lr_hint(bad_lr if bad_lr is not None else 0.0, config)
        ),
    )

    decay_of = {id(p): float(g["weight_decay"]) for g in groups for p in g["params"]}
    decayed_1d, undecayed_2d = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = decay_of[id(p)]
        if p.ndim < 2 and wd != 0.0:
            decayed_1d.append(name)
        elif p.ndim >= 2 and "embed" not in name and not _close(wd, config.weight_decay, 1e-9):
            undecayed_2d.append((name, wd))
    check.expect(
        not decayed_1d,
        f"[{where}] biases and normalisation weights (1-D tensors) get weight_decay 0",
        0.0,
        f"decayed: {decayed_1d[:3]}",
        "put parameters with p.ndim < 2 in a group with 'weight_decay': 0.0",
    )
    check.expect(
        not undecayed_2d,
        f"[{where}] weight matrices get weight_decay = config.weight_decay",
        config.weight_decay,
        undecayed_2d[:3],
        "read config.weight_decay rather than a fixed number",
    )


def check_configure_stage(configure_stage: Callable[..., Any]) -> None:
    """The student's ``configure_stage(model, stage, config)`` on a small random model.

    Four situations, each compared with the reference flags and groups:
    stage 1 from a model with *everything* trainable; stage 2 (full fine-tuning) on the same
    model; stage 2 with LoRA from a model with *everything* frozen; and the ``tiny`` preset
    (stage-2 lr 3e-3 from ``config.stage2_lr``, another stage-1 lr and weight decay).
    """
    check = Checker("configure_stage")
    torch.manual_seed(0)
    base = fixture_model(0)

    model = copy.deepcopy(base).requires_grad_(True)
    _check_one_stage(check, configure_stage, model, 1, TrainConfig(), "stage 1, from all trainable")
    _check_one_stage(check, configure_stage, model, 2, TrainConfig(), "stage 2 full, after stage 1")

    lora_model = add_fake_lora(copy.deepcopy(base)).requires_grad_(False)
    _check_one_stage(
        check,
        configure_stage,
        lora_model,
        2,
        TrainConfig(lora=True),
        "stage 2 LoRA, from all frozen",
    )

    tiny = TrainConfig.tiny(stage1_lr=5e-4, weight_decay=0.05)
    model = copy.deepcopy(base).requires_grad_(True)
    _check_one_stage(check, configure_stage, model, 1, tiny, "stage 1, tiny preset")
    _check_one_stage(check, configure_stage, model, 2, tiny, "stage 2, tiny preset")
    check.done()


# ====================================================================== q2 schedule
SCHEDULE_CASES = ((20, 5), (100, 3), (1000, 30), (12, 0))


def _curve(func: Callable[..., Any], check: Checker, total: int, warmup: int) -> list[float]:
    hint = "warmup_steps may be 0 (no warm-up): guard the division" if warmup == 0 else ""
    values = []
    for step in range(total + 1):
        value = _call(check, func, hint, step, total, warmup)
        try:
            values.append(float(value))
        except (TypeError, ValueError) as err:
            raise CheckFailed(
                f"cosine_with_warmup: returns a number (a float multiplier), got "
                f"{type(value).__name__}"
            ) from err
    return values


def _variants(total: int, warmup: int) -> dict[str, list[float]]:
    """Plausible wrong curves, to name the mistake when the student's curve matches one."""

    def progress(s: int, denom: int) -> float:
        return min(1.0, (s - warmup) / max(1, denom))

    out: dict[str, list[float]] = {}
    steps = range(total + 1)
    out[
        "linear decay after warm-up: the decay must follow half a cosine, 0.5·(1 + cos(π·progress))"
    ] = [s / warmup if s < warmup else 1.0 - progress(s, total - warmup) for s in steps]
    out["full cosine period: use half a period, 0.5·(1 + cos(π·progress)), not cos(2π·…)"] = [
        s / warmup
        if s < warmup
        else 0.5 * (1 + math.cos(2 * math.pi * progress(s, total - warmup)))
        for s in steps
    ]
    out[
        "progress divided by total_steps: it must run from 0 at the end of warm-up to 1 at "
        "total_steps, i.e. (step - warmup_steps) / (total_steps - warmup_steps)"
    ] = [
        s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * progress(s, total)))
        for s in steps
    ]
    out["the cosine ignores the warm-up: it starts at step = warmup_steps, not at step 0"] = [
        s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
        for s in steps
    ]
    return out


def check_cosine_with_warmup(cosine_with_warmup: Callable[..., Any]) -> None:
    """The student's ``cosine_with_warmup(step, total_steps, warmup_steps)`` multiplier.

    Compared with the reference at every step ``0..total_steps`` of four schedules (total,
    warm-up) = (20, 5), (100, 3: the case study's 3 %), (1000, 30) and (12, 0), within 1e-6.
    """
    check = Checker("cosine_with_warmup")
    total, warmup = SCHEDULE_CASES[0]
    got = _curve(cosine_with_warmup, check, total, warmup)
    want = [reference_cosine(s, total, warmup) for s in range(total + 1)]

    check.expect(
        abs(got[0]) < SCHEDULE_TOL,
        f"warm-up starts from 0 at step 0 (total={total}, warmup={warmup})",
        0.0,
        round(got[0], 6),
        "no warm-up? the multiplier must rise linearly, step / warmup_steps"
        if got[0] > 0.9
        else "step 0 gives 0: step / warmup_steps (not (step + 1) / warmup_steps)",
    )
    matched = next(
        (name for name, curve in _variants(total, warmup).items()
         if max(abs(a - b) for a, b in zip(got, curve, strict=True)) < SCHEDULE_TOL),
        "",
    )  # fmt: skip
    ramp_ok = all(abs(got[s] - s / warmup) < SCHEDULE_TOL for s in range(warmup + 1))
    ramp_hint = matched
    if abs(got[warmup] - warmup / (warmup + 1)) < SCHEDULE_TOL:
        ramp_hint = (
            "the peak 1 is reached at step == warmup_steps: divide by warmup_steps, not "
            "warmup_steps + 1"
        )
    check.expect(
        ramp_ok,
        f"linear warm-up step / warmup_steps, reaching exactly 1 at step = warmup_steps "
        f"(steps 0..{warmup})",
        [round(w, 4) for w in want[: warmup + 1]],
        [round(g, 4) for g in got[: warmup + 1]],
        ramp_hint,
    )
    check.expect(
        abs(got[-1]) < SCHEDULE_TOL,
        f"the multiplier decays to 0 at step = total_steps ({total})",
        0.0,
        round(got[-1], 6),
        matched
        or "half a cosine over the steps after warm-up: progress = (step - warmup) / "
        "(total - warmup) runs from 0 to 1",
    )
    after = got[warmup:]
    check.expect(
        all(b <= a + SCHEDULE_TOL for a, b in zip(after, after[1:], strict=False)),
        "after warm-up the multiplier never increases",
        "non-increasing",
        [round(v, 3) for v in after],
        matched,
    )
    for case_total, case_warmup in SCHEDULE_CASES:
        if (case_total, case_warmup) == (total, warmup):
            curve = got
        else:
            curve = _curve(cosine_with_warmup, check, case_total, case_warmup)
        ref = [reference_cosine(s, case_total, case_warmup) for s in range(case_total + 1)]
        diffs = [abs(a - b) for a, b in zip(curve, ref, strict=True)]
        worst = max(range(len(diffs)), key=diffs.__getitem__)
        hint = ""
        if case_warmup == 0 and abs(curve[0] - 1.0) > SCHEDULE_TOL:
            hint = "with warmup_steps = 0 the schedule starts at its peak, 1"
        elif (case_total, case_warmup) == (total, warmup):
            hint = matched
        check.expect(
            diffs[worst] < SCHEDULE_TOL,
            f"matches 0.5·(1 + cos(π·progress)) after warm-up at every step (total="
            f"{case_total}, warmup={case_warmup}; |diff| < {SCHEDULE_TOL:g})",
            f"step {worst}: {ref[worst]:.6f}",
            f"step {worst}: {curve[worst]:.6f}",
            hint,
        )
    check.done()


# ====================================================================== q3 train_step
LR = 0.5
CLIP = 0.05
MICRO, MICRO_SIZE = 4, 2


class ToyRegression(nn.Module):
    """A two-layer regression with an MSE loss (mean over the batch): one big batch of 8 and
    four micro-batches of 2 give the same gradient, so accumulation can be checked exactly.

    ``forward`` takes the keys of a course batch it needs (``images``, ``labels``), ignores the
    others, returns a :class:`~course_utils.model.MultimodalOutput` and records
    ``self.training`` at each call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        self.training_seen: list[bool] = []

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None, **_: Any):
        self.training_seen.append(self.training)
        pred = self.fc2(torch.tanh(self.fc1(images.flatten(1))))
        loss = F.mse_loss(pred, labels) if labels is not None else None
        return MultimodalOutput(loss=loss, logits=pred)


def toy_problem(seed: int = 0) -> tuple[ToyRegression, list[dict[str, torch.Tensor]]]:
    """(model, four micro-batches of 2 examples): images (2, 1, 2, 2), labels (2, 3)."""
    torch.manual_seed(seed)
    model = ToyRegression()
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(MICRO * MICRO_SIZE, 1, 2, 2, generator=g)
    labels = 2 * torch.randn(MICRO * MICRO_SIZE, 3, generator=g)
    batches = [
        {"images": images[i : i + MICRO_SIZE], "labels": labels[i : i + MICRO_SIZE]}
        for i in range(0, len(images), MICRO_SIZE)
    ]
    return model, batches


def _big_batch(batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _sgd(model: nn.Module) -> tuple[torch.optim.SGD, list[int]]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    calls: list[int] = []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    return optimizer, calls


def _halving(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)


def _micro_grads(model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]]) -> list:
    params = list(model.parameters())
    return [torch.autograd.grad(model(**b).loss, params) for b in batches]


def _after_sgd(model: nn.Module, grads: Sequence[torch.Tensor], scale: float) -> torch.Tensor:
    return torch.cat(
        [
            (p.detach() - LR * scale * g).flatten()
            for p, g in zip(model.parameters(), grads, strict=True)
        ]
    )


def _loss_value(out: Any) -> float:
    value = out.get("loss") if isinstance(out, Mapping) else None
    return float(value) if value is not None else math.nan


def _returns(check: Checker, out: Any) -> None:
    check.expect(
        isinstance(out, Mapping) and "loss" in out,
        "returns a dict with 'loss' (and 'grad_norm')",
        "{'loss': ..., 'grad_norm': ...}",
        type(out).__name__ if not isinstance(out, Mapping) else sorted(out),
    )


def check_train_step(train_step: Callable[..., Any]) -> None:
    """The student's ``train_step(model, batches, optimizer, scheduler=None, max_grad_norm=1.0)``.

    On the toy regression (seed 0, SGD lr 0.5, a scheduler halving the lr each step):
    one call over 4 micro-batches of 2 must equal one step on the big batch of 8 (parameters
    within 1e-6), with one ``optimizer.step()`` and one ``scheduler.step()`` per call, the model
    in training mode and the mean micro-batch loss returned; a second call must not see the
    first call's gradients; with ``max_grad_norm=0.05`` the accumulated gradient is clipped
    once and its norm before clipping returned. Finally one step of the small multimodal
    model with AdamW equals the reference's (within 1e-5).
    """
    check = Checker("train_step")
    model0, batches = toy_problem(0)
    big = _big_batch(batches)

    # ---- one call, no clipping: must equal one big-batch step
    model = copy.deepcopy(model0).eval()
    optimizer, steps = _sgd(model)
    scheduler = _halving(optimizer)
    out = _call(
        check,
        train_step,
        "model(**batch).loss is the micro-batch loss; call backward() on loss / len(batches)",
        model,
        batches,
        optimizer,
        scheduler=scheduler,
        max_grad_norm=None,
    )
    _returns(check, out)
    check.expect(
        bool(model.training_seen) and all(model.training_seen),
        "the model is in training mode during the forward passes (it arrives in eval mode, "
        "as after a validation pass)",
        "model.training == True",
        model.training_seen[:MICRO],
        "call model.train() at the start of the step (dropout must be on while training)",
    )
    check.expect(
        len(steps) == 1,
        f"one optimizer.step() per call ({MICRO} micro-batches accumulate into one step)",
        1,
        len(steps),
        "optimizer.step() and zero_grad() once, after the loop over micro-batches"
        if len(steps) == MICRO
        else "call optimizer.step() exactly once, after every micro-batch's backward()",
    )
    check.expect(
        scheduler.last_epoch == 1,
        "scheduler.step() once per call, after optimizer.step() (the schedule counts "
        "optimiser steps, not micro-batches)",
        1,
        scheduler.last_epoch,
        "step the scheduler only when it is not None, once, after the optimiser",
    )
    ref_model = copy.deepcopy(model0)
    with torch.no_grad():
        ref_loss = float(ref_model(**big).loss)
        micro_losses = [float(ref_model(**b).loss) for b in batches]
    loss = _loss_value(out)
    loss_hint = ""
    if _close(loss, micro_losses[-1], 1e-6):
        loss_hint = "that is the last micro-batch's loss: average over all micro-batches"
    elif _close(loss, ref_loss / MICRO, 1e-6) or _close(loss, micro_losses[-1] / MICRO, 1e-6):
        loss_hint = "report the undivided loss (mean of the micro-batch losses), not loss / k"
    elif _close(loss, sum(micro_losses), 1e-6):
        loss_hint = "that is the sum: report the mean over micro-batches"
    check.expect(
        _close(loss, ref_loss, 1e-5),
        "'loss' is the mean micro-batch loss before the update (= the big batch's loss; "
        "|diff| < 1e-5 relative)",
        round(ref_loss, 6),
        round(loss, 6),
        loss_hint,
    )
    reference_train_step(ref_model, [big], _sgd(ref_model)[0], max_grad_norm=None)
    got, want = _flat(model), _flat(ref_model)
    diff = float((got - want).abs().max())
    hint = ""
    if diff >= PARAM_TOL:
        grads = _micro_grads(copy.deepcopy(model0), batches)
        summed = [sum(gs) for gs in zip(*grads, strict=True)]
        if float((got - _after_sgd(model0, summed, 1.0)).abs().max()) < PARAM_TOL:
            hint = (
                f"the update is {MICRO}x too large: divide each micro-batch loss by "
                "len(batches) before backward() (gradients add up)"
            )
        elif any(
            float((got - _after_sgd(model0, grads[-1], s)).abs().max()) < PARAM_TOL
            for s in (1.0, 1.0 / MICRO)
        ):
            hint = (
                "only the last micro-batch's gradient survived: zero_grad() inside the loop "
                "erases the others; zero once per optimiser step"
            )
    check.expect(
        diff < PARAM_TOL,
        f"{MICRO} accumulated micro-batches of {MICRO_SIZE} update the parameters exactly as one "
        f"batch of {MICRO * MICRO_SIZE} (SGD, max |diff| < {PARAM_TOL:g}, seed 0)",
        f"< {PARAM_TOL:g}",
        round(diff, 8),
        hint,
    )

    # ---- a second call with the same optimiser: no gradient may leak from the first
    ref_model = copy.deepcopy(model0)
    ref_opt = _sgd(ref_model)[0]
    ref_sched = _halving(ref_opt)
    for _ in range(2):
        reference_train_step(ref_model, batches, ref_opt, scheduler=ref_sched, max_grad_norm=None)
    _call(check, train_step, "", model, batches, optimizer, scheduler=scheduler, max_grad_norm=None)
    diff = float((_flat(model) - _flat(ref_model)).abs().max())
    check.expect(
        diff < PARAM_TOL and len(steps) == 2,
        "a second call starts from zero gradients (parameters after two calls match the "
        f"reference, max |diff| < {PARAM_TOL:g})",
        f"< {PARAM_TOL:g}",
        round(diff, 8),
        "the first call's gradients were still in .grad: call optimizer.zero_grad() once per "
        "step (before the micro-batches, or after optimizer.step())",
    )

    # ---- clipping the accumulated gradient
    model = copy.deepcopy(model0)
    optimizer, _ = _sgd(model)
    out = _call(check, train_step, "", model, batches, optimizer, max_grad_norm=CLIP)
    ref_model = copy.deepcopy(model0)
    ref_out = reference_train_step(ref_model, batches, _sgd(ref_model)[0], max_grad_norm=CLIP)
    got = _flat(model)
    diff = float((got - _flat(ref_model)).abs().max())
    unclipped = copy.deepcopy(model0)
    reference_train_step(unclipped, batches, _sgd(unclipped)[0], max_grad_norm=None)
    hint = (
        "clipping had no effect: call clip_grad_norm_(params, max_grad_norm) after ALL "
        "backward() calls and before optimizer.step()"
        if float((got - _flat(unclipped)).abs().max()) < PARAM_TOL
        else "clip once, the accumulated gradient (not each micro-batch's), before the step"
    )
    check.expect(
        diff < PARAM_TOL,
        f"with max_grad_norm={CLIP} the accumulated gradient (norm "
        f"{ref_out['grad_norm']:.3f}) is clipped to norm {CLIP} before the step "
        f"(max |diff| < {PARAM_TOL:g})",
        f"< {PARAM_TOL:g}",
        round(diff, 8),
        hint,
    )
    _returns(check, out)
    norm = float(out.get("grad_norm", math.nan))
    check.expect(
        _close(norm, ref_out["grad_norm"], 1e-5),
        "'grad_norm' is the global gradient norm before clipping (what clip_grad_norm_ returns)",
        round(ref_out["grad_norm"], 6),
        round(norm, 6),
        "return the value clip_grad_norm_ returns, not max_grad_norm"
        if _close(norm, CLIP, 1e-6)
        else "",
    )

    # ---- the course model: MultimodalOutput, frozen encoder, AdamW
    _check_on_course_model(check, train_step)
    check.done()


def _check_on_course_model(check: Checker, train_step: Callable[..., Any]) -> None:
    base = fixture_model(0)
    batch = fixture_batch(0)
    micro = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(2)]
    results = []
    for func in (train_step, reference_train_step):
        model = copy.deepcopy(base)
        model.requires_grad_(False)
        model.projector.requires_grad_(True)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        torch.manual_seed(0)  # same dropout masks for both
        if func is train_step:
            _call(check, func, "", model, micro, optimizer, max_grad_norm=1.0)
        else:
            func(model, micro, optimizer, max_grad_norm=1.0)
        results.append(_flat(model.projector))
    diff = float((results[0] - results[1]).abs().max())
    check.expect(
        diff < MODEL_TOL,
        "one step of the small RadiologyMultimodalModel (2 micro-batches, AdamW) matches the "
        f"reference (projector max |diff| < {MODEL_TOL:g})",
        f"< {MODEL_TOL:g}",
        round(diff, 8),
        "use model(**train.model_inputs(batch)).loss for each micro-batch",
    )
