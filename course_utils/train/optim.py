"""The small pieces of the training loop that notebook 05 asks students to write.

* :func:`configure_stage` - stage-wise freezing and AdamW parameter groups;
* :func:`cosine_with_warmup` / :func:`cosine_schedule` - the learning-rate multiplier;
* :func:`train_step` - one optimiser step over accumulated micro-batches, with clipping.

Plus LoRA for the LLaVA-style model (:func:`add_lora`, :func:`merged_lora`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

STAGES = (1, 2)
MODEL_INPUTS = ("images", "input_ids", "attention_mask", "labels", "finding_targets")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj", "c_attn")


# ---------------------------------------------------------------------- model parts
def stage_parts(model: nn.Module) -> dict[str, nn.Module | None]:
    """The parts stage-wise training talks about: ``vision``, ``projector``, ``head``, ``lm``.

    * :class:`~course_utils.model.RadiologyMultimodalModel`: ``vision``, ``projector`` (with the
      label prompt when the model has one), ``detection_head``, ``lm``.
    * :class:`~course_utils.model.Qwen2VLReportModel`: the projector is Qwen2-VL's patch
      merger (the dense layers that turn vision features into LM embeddings, tuned in R2Gen2);
      there is no detection head; ``lm`` is the language model with its output layer.

    Raises:
        TypeError: a model with neither layout.
    """
    if all(hasattr(model, n) for n in ("vision", "projector", "lm")):
        label_prompt = getattr(model, "label_prompt", None)
        return {
            "vision": model.vision,
            # the label prompt maps head verdicts into the LM's space: it trains with the projector
            "projector": model.projector
            if label_prompt is None
            else nn.ModuleList([model.projector, label_prompt]),
            "head": getattr(model, "detection_head", None),
            "lm": model.lm,
        }
    if callable(getattr(model, "components", None)) and hasattr(model, "image_processor"):
        parts = model.components()
        visual = parts["vision"]
        lm = nn.ModuleList([parts["language_model"], parts["lm_head"]])
        return {"vision": visual, "projector": visual.merger, "head": None, "lm": lm}
    raise TypeError(
        f"{type(model).__name__} is neither a RadiologyMultimodalModel (vision/projector/lm) "
        "nor a Qwen2VLReportModel"
    )


def init_head_from_encoder(model: nn.Module, checkpoint: str | os.PathLike | None = None) -> bool:
    """Start the detection head from the pretrained encoder's own CheXpert classifier.

    The course encoder is pretrained as a ``ViTForImageClassification`` whose ``classifier``
    reads the same (layer-normed) CLS token as :class:`~course_utils.model.DetectionHead`; its
    weights are saved with the encoder but not loaded into the bare ``ViTModel``. Copying them
    makes the head as good as the encoder from step 0 (stage 1 then only fine-tunes it).

    Args:
        model: a ``RadiologyMultimodalModel``.
        checkpoint: the encoder folder (default: the model's ``vision_checkpoint``; the course
            encoder is found with :func:`course_utils.model.ensure_pretrained_encoder`).

    Returns:
        True when weights were copied, False when the checkpoint has no matching classifier.
    """
    from safetensors.torch import load_file

    from ..model import COURSE_ENCODER, ensure_pretrained_encoder

    head = getattr(model, "detection_head", None)
    if head is None:
        return False
    if checkpoint is None:
        checkpoint = model.config.vision_checkpoint
        if checkpoint == COURSE_ENCODER:
            size = int(model.config.vision_config.get("image_size", 128))
            checkpoint = ensure_pretrained_encoder(size, model.config.encoder_seed)
    if checkpoint is None:
        return False
    weights = Path(checkpoint) / "model.safetensors"
    if not weights.is_file():
        return False
    state = load_file(str(weights))
    w, b = state.get("classifier.weight"), state.get("classifier.bias")
    if w is None or b is None or tuple(w.shape) != tuple(head.linear.weight.shape):
        return False
    with torch.no_grad():
        head.linear.weight.copy_(w)
        head.linear.bias.copy_(b)
    return True


def is_lora_parameter(name: str) -> bool:
    """peft adapter weights (``lora_A``/``lora_B``...) and peft's fully trained copies."""
    return "lora_" in name or "modules_to_save" in name


def has_lora(model: nn.Module) -> bool:
    """True when LoRA adapters were added to the model (by :func:`add_lora` or peft)."""
    return any(is_lora_parameter(n) for n, _ in model.named_parameters())


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation weights (1-D tensors) are not decayed."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered


def configure_stage(
    model: nn.Module,
    stage: int,
    use_lora: bool = False,
    weight_decay: float = 0.01,
) -> list[dict[str, Any]]:
    """Freeze what a stage does not train and return AdamW parameter groups for the rest.

    * stage 1 (alignment): projector + detection head train; LM and encoder frozen.
    * stage 2 (instruction tuning): projector + LM (``use_lora=False``) or projector + the LM's
      LoRA adapters only (``use_lora=True``; the LM's own weights stay frozen). The detection
      head was fitted in stage 1 and stays as it is (its loss is still reported).
    * The vision encoder is frozen in both stages.

    Args:
        model: a ``RadiologyMultimodalModel`` or ``Qwen2VLReportModel``.
        stage: 1 or 2.
        use_lora: stage 2 trains adapters (add them first with :func:`add_lora`).
        weight_decay: decay of the ``"decay"`` group; the ``"no_decay"`` group (biases and
            normalisation weights) gets 0.

    Returns:
        ``[{"name": "decay", "params": [...], "weight_decay": wd},
        {"name": "no_decay", "params": [...], "weight_decay": 0.0}]`` (an empty group is left
        out), parameters in ``named_parameters`` order, each once.

    Raises:
        ValueError: bad stage, ``use_lora`` without adapters, or nothing to train.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    parts = stage_parts(model)
    if use_lora and stage == 2 and not has_lora(parts["lm"]):
        raise ValueError(
            "use_lora=True but the LM has no LoRA adapters: call add_lora(model) first"
        )
    model.requires_grad_(False)  # the encoder stays frozen: nothing below re-enables it
    trainable = [parts["projector"]]
    if stage == 1 and parts["head"] is not None:
        trainable.append(parts["head"])
    for module in trainable:
        for param in module.parameters():
            param.requires_grad_(param.is_floating_point())  # 4-bit weights cannot train
    if stage == 2:
        for name, param in parts["lm"].named_parameters():
            wanted = is_lora_parameter(name) if use_lora else True
            param.requires_grad_(wanted and param.is_floating_point())
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if _no_decay(name, param) else decay).append(param)
    if not decay and not no_decay:
        raise ValueError(f"stage {stage} leaves nothing to train")
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


# ---------------------------------------------------------------------- LoRA
def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> list[str]:
    """Inject LoRA adapters into the LM of a ``RadiologyMultimodalModel`` (in place).

    ``W x`` becomes ``W x + (alpha / r) · B A x`` with A (r × d_in) random, B (d_out × r) zero,
    so the model's outputs do not change until B trains. The module keeps its class and
    ``forward``/``generate`` work as before (peft's ``inject_adapter_in_model``).

    Args:
        target_modules: LM module names to adapt (default: the attention projections present,
            among ``q_proj k_proj v_proj out_proj o_proj c_attn``).

    Returns:
        the names of the adapted modules.

    Raises:
        ValueError: bad rank, adapters already present, or no target module found.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    lm = stage_parts(model)["lm"]
    if has_lora(lm):
        raise ValueError("the LM already has LoRA adapters")
    suffixes = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    if target_modules is None:
        targets = [t for t in DEFAULT_LORA_TARGETS if t in suffixes]
    else:
        targets = [t for t in target_modules if t in suffixes]
        missing = sorted(set(target_modules) - suffixes)
        if missing:
            raise ValueError(f"LoRA target module(s) {missing} not found in the LM")
    if not targets:
        raise ValueError("no LoRA target module found in the LM (pass target_modules)")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    inject_adapter_in_model(config, lm)
    return sorted({n.rsplit(".lora_", 1)[0] for n, _ in lm.named_parameters() if "lora_" in n})


@contextmanager
def merged_lora(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily fold LoRA adapters into plain layers (``W + (alpha/r)·BA``), e.g. to save a
    checkpoint that :meth:`RadiologyMultimodalModel.from_pretrained` can load; restored after.
    """
    from peft.tuners.lora import LoraLayer

    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            module.merge()
            setattr(parent, child, module.get_base_layer())
            swapped.append((parent, child, module))
    try:
        yield model
    finally:
        for parent, child, module in reversed(swapped):
            setattr(parent, child, module)
            module.unmerge()


# ---------------------------------------------------------------------- schedule
def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up, then half a cosine down to 0.

    ``step / warmup_steps`` for ``step < warmup_steps``, then
    ``0.5 · (1 + cos(π · (step - warmup_steps) / (total_steps - warmup_steps)))``, and 0 from
    ``total_steps`` on. Same values as ``transformers.get_cosine_schedule_with_warmup``.

    Args:
        step: optimiser steps taken so far (0 for the first step).
        total_steps: optimiser steps of the whole schedule (>= 1).
        warmup_steps: steps of linear warm-up (0 <= warmup_steps <= total_steps).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying :func:`cosine_with_warmup` to every parameter group's base lr."""
    cosine_with_warmup(0, total_steps, warmup_steps)  # validate the arguments now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(cosine_with_warmup, total_steps=total_steps, warmup_steps=warmup_steps),
    )


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """``ceil(warmup_ratio · total_steps)`` (0 when the ratio is 0)."""
    return min(total_steps, math.ceil(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0


# ---------------------------------------------------------------------- one step
def model_inputs(batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """The keys of a collated batch that ``model.forward`` takes, moved to ``device``."""
    out = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if device is not None:
        out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return out


def _grad_norm(params: Sequence[torch.Tensor]) -> float:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def train_step(
    model: nn.Module,
    batches: Sequence[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    max_grad_norm: float | None = 1.0,
    accelerator: Any = None,
) -> dict[str, float]:
    """One optimiser step from ``len(batches)`` accumulated micro-batches.

    For each micro-batch: forward, ``loss / len(batches)``, backward (gradients add up). Then
    clip the global gradient norm to ``max_grad_norm``, take one optimiser step, step the
    scheduler. Gradients are zeroed at the *start*, so after the call they are still there to
    inspect. Dividing by the number of micro-batches makes the accumulated gradient the
    gradient of the mean micro-batch loss: the same as one big batch when the micro-batches
    have equally many target tokens (e.g. equal-length examples); with unequal lengths each
    micro-batch's tokens weigh a little differently, as in every framework that averages
    per-micro-batch losses.

    Args:
        model: returns an object with ``.loss`` from ``model(**model_inputs(batch))``.
        batches: the micro-batches (collated dicts); at least one.
        optimizer: any torch optimiser (or accelerate's wrapper).
        scheduler: stepped once after the optimiser (skipped when fp16 skipped the step).
        max_grad_norm: clip threshold; ``None`` or 0 disables clipping (the norm is still
            reported).
        accelerator: an ``accelerate.Accelerator``: its ``backward`` (loss scaling),
            ``clip_grad_norm_`` and ``no_sync`` (no all-reduce before the last micro-batch)
            are used; ``None`` runs plain PyTorch.

    Returns:
        ``loss`` (mean over micro-batches of ``.loss``), ``loss_report`` and ``loss_detect``
        when the model returns them, ``grad_norm`` (before clipping), ``lr`` (first group's lr
        used for this step).
    """
    if not batches:
        raise ValueError("train_step needs at least one micro-batch")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n = len(batches)
    sums: dict[str, float] = {}
    device = accelerator.device if accelerator is not None else None
    for i, batch in enumerate(batches):
        last = i == n - 1
        sync = nullcontext() if accelerator is None or last else accelerator.no_sync(model)
        with sync:
            out = model(**model_inputs(batch, device))
            if out.loss is None:
                raise ValueError("the model returned no loss: does the batch carry labels?")
            loss = out.loss / n
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
        for key in ("loss", "loss_report", "loss_detect"):
            value = getattr(out, key, None)
            if value is not None:
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / n
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if max_grad_norm:
        if accelerator is not None:
            norm = accelerator.clip_grad_norm_(params, max_grad_norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        grad_norm = float(norm)
    else:
        grad_norm = _grad_norm(params)
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if scheduler is not None and not getattr(optimizer, "step_was_skipped", False):
        scheduler.step()
    return {**sums, "grad_norm": grad_norm, "lr": lr}
