"""`train_two_stage`: alignment, then instruction tuning, on `accelerate` (case study §3.5).

Stage 1 trains the projector and the detection head with the LM frozen (lr 1e-3); stage 2
trains projector + LM (the head keeps its stage-1 weights), fully (lr 2e-5) or through LoRA
adapters (lr 1e-4). Each stage has its own AdamW (no decay on biases/norms), cosine schedule
with linear warm-up, gradient accumulation and clipping; mixed precision comes from
``accelerate``. After every epoch: the validation losses, the detection head's macro AUROC and
a fast CE metric on greedy reports; the lowest validation loss is kept in ``output_dir/best``
(``save_pretrained``, reloadable with ``RadiologyMultimodalModel.from_pretrained``), and
``output_dir/last`` holds everything needed to
resume (``TrainConfig.resume_from``).

The same loop runs on several GPUs under ``accelerate launch``: the data loaders are sharded,
gradients all-reduced once per optimiser step, and only the main process writes checkpoints.
(Validation numbers are then those of each process's shard of the validation split; the
course runs on one device, where they cover the whole split.)
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler

from ..config import seed_everything
from .augment import Augmenter
from .config import TrainConfig
from .data import ReportCollator, ReportDataset, balanced_sample_weights, word_dropout
from .optim import (
    add_lora,
    configure_stage,
    cosine_schedule,
    cosine_with_warmup,
    has_lora,
    merged_lora,
    train_step,
    warmup_steps_for,
)
from .validate import detection_macro_auroc, evaluate_loss, generate_reports, generation_metrics

STATE_NAME = "trainer_state.json"
MODEL_STATE = "model_state.pt"
OPTIM_STATE = "optimizer.pt"
RNG_STATE = "rng_state.pt"
REPLAN_AFTER_STEPS = 10  # steps of the last stage timed before its schedule is fitted to the budget


# ---------------------------------------------------------------------- sampling
class EpochSampler(Sampler[int]):
    """Seeded sampler whose order depends only on ``(seed, epoch)``: a resumed run sees the
    same batches as an uninterrupted one.

    Without ``weights`` it yields a permutation of ``range(n)``; with ``weights`` (N,) it draws
    N indices with replacement in proportion to them (label-balanced sampling).
    """

    def __init__(
        self,
        n: int,
        seed: int = 42,
        weights: torch.Tensor | None = None,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        group_size: int = 50,
    ) -> None:
        if n < 1:
            raise ValueError("EpochSampler needs at least one example")
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} examples")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        if batch_size < 1 or group_size < 1:
            raise ValueError("batch_size and group_size must be >= 1")
        self.n = n
        self.seed = seed
        self.weights = weights
        self.lengths = None if lengths is None else [int(x) for x in lengths]
        self.batch_size = batch_size
        self.group_size = group_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(
                WeightedRandomSampler(self.weights, self.n, replacement=True, generator=generator)
            )
        if self.lengths is not None:
            order = self._group_by_length(order, generator)
        return iter(order)

    def _group_by_length(self, order: list[int], generator: torch.Generator) -> list[int]:
        """Sort windows of ``batch_size * group_size`` drawn indices by length and shuffle the
        resulting batches: batches hold similar lengths (little padding), the order stays random.
        The last, possibly short, batch stays last so that batches keep their boundaries."""
        assert self.lengths is not None
        window = self.batch_size * self.group_size
        ordered: list[int] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            ordered.extend(sorted(chunk, key=lambda i: -self.lengths[i]))
        bs = self.batch_size
        batches = [ordered[i : i + bs] for i in range(0, len(ordered), bs)]
        tail = [batches.pop()] if batches and len(batches[-1]) < bs else []
        perm = torch.randperm(len(batches), generator=generator).tolist()
        return [i for b in [batches[j] for j in perm] + tail for i in b]


def _chunks(loader: DataLoader, size: int) -> Iterator[list[dict[str, Any]]]:
    """Micro-batches grouped ``size`` at a time (the last group may be shorter)."""
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


# ---------------------------------------------------------------------- checkpoints
def save_model(model: nn.Module, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a reloadable model: ``save_pretrained`` (LoRA adapters merged in first).

    ``RadiologyMultimodalModel`` reloads with ``RadiologyMultimodalModel.from_pretrained``;
    a Qwen2-VL wrapper saves its (peft) model. The tokenizer is saved alongside when given.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if callable(getattr(model, "save_pretrained", None)):
        if has_lora(model):
            with merged_lora(model):
                model.save_pretrained(directory)
        else:
            model.save_pretrained(directory)
    elif callable(getattr(getattr(model, "model", None), "save_pretrained", None)):
        model.model.save_pretrained(directory)
    else:
        raise TypeError(f"do not know how to save a {type(model).__name__}")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Everything :func:`train_two_stage` needs to continue exactly where it stopped.

    Files: ``model_state.pt`` (the full ``state_dict``), ``optimizer.pt`` (optimiser and
    scheduler), ``rng_state.pt`` (Python, NumPy, torch and CUDA generators) and
    ``trainer_state.json`` (stage, epoch, step, history). Written to a temporary folder first
    and then renamed, so an interrupted save never leaves a half-written checkpoint.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    torch.save(model.state_dict(), tmp / MODEL_STATE)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / OPTIM_STATE,
    )
    torch.save(_rng_state(), tmp / RNG_STATE)
    (tmp / STATE_NAME).write_text(json.dumps(_jsonable(state), indent=1))
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_training_state(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a folder written by :func:`save_training_state` (tensors stay on the CPU).

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
    """
    directory = Path(directory)
    for name in (STATE_NAME, MODEL_STATE, OPTIM_STATE, RNG_STATE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a training checkpoint: {name} missing")
    return {
        "state": json.loads((directory / STATE_NAME).read_text()),
        "model": torch.load(directory / MODEL_STATE, map_location="cpu", weights_only=True),
        "optim": torch.load(directory / OPTIM_STATE, map_location="cpu", weights_only=False),
        "rng": torch.load(directory / RNG_STATE, map_location="cpu", weights_only=False),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------- helpers
def _as_dataset(data: Any, tokenizer: Any, cfg: TrainConfig, what: str) -> ReportDataset:
    if isinstance(data, ReportDataset):
        if data.target != cfg.target:
            raise ValueError(
                f"{what} was built for target {data.target!r} but config.target is {cfg.target!r}"
            )
        return data
    if isinstance(data, dict):
        if tokenizer is None:
            raise ValueError(
                f"{what} is a raw data dict: pass tokenizer= (e.g. build_tokenizer(train_data))"
            )
        return ReportDataset(
            data,
            tokenizer,
            cfg.target,
            styles=cfg.styles,
            max_length=cfg.max_length,
            prompt_context=cfg.prompt_context,
            impute=cfg.impute_xxxx,
            order=cfg.target_order,
            seed=cfg.seed,
        )
    raise TypeError(
        f"{what} must be a ReportDataset or a load_mimic_cxr_dataset dict, got {type(data).__name__}"
    )


def _launched_by_accelerate() -> bool:
    """True under ``accelerate launch`` / torchrun (the distributed state must be kept)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _peak_memory_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _budget_left(cfg: TrainConfig, session_seconds: float) -> bool:
    return cfg.max_train_seconds is None or session_seconds < cfg.max_train_seconds


def _batch_tokens(batch: dict[str, Any], n_visual: int) -> tuple[int, int]:
    """(LM positions: visual + non-pad text tokens, target tokens) of one batch."""
    text = int(batch["attention_mask"].sum())
    targets = int((batch["labels"][:, 1:] != -100).sum())
    return text + n_visual * int(batch["input_ids"].shape[0]), targets


def _num_visual_tokens(model: nn.Module, dataset: ReportDataset) -> int:
    fn = getattr(model, "num_visual_tokens", None)
    if callable(fn):
        return int(fn(int(dataset.pixels.shape[-1]))) + int(getattr(model, "num_label_tokens", 0))
    return 0


def _fast_metric(model: nn.Module, dataset: ReportDataset, cfg: TrainConfig) -> dict[str, float]:
    k = min(cfg.val_generate_studies, len(dataset))
    if k == 0:
        return {}
    idx = list(range(k))
    generated = generate_reports(
        model, dataset, idx, batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens
    )
    styles = [dataset.styles_used[i] for i in idx] if dataset.target == "style" else None
    refs = [dataset.reports[i] for i in idx]
    scores = generation_metrics(generated, refs, dataset.target, styles)
    return {f"val_{key}": value for key, value in scores.items()}


def _validate(
    model: nn.Module, loader: DataLoader, dataset: ReportDataset, cfg: TrainConfig, device: Any
) -> dict[str, Any]:
    losses = evaluate_loss(model, loader, device)
    row: dict[str, Any] = {
        "val_loss": losses["loss"],
        "val_loss_report": losses["loss_report"],
        "val_loss_detect": losses["loss_detect"],
    }
    if "probs" in losses:
        row["val_macro_auroc"] = detection_macro_auroc(losses["probs"], losses["labels"])[0]
    row.update(_fast_metric(model, dataset, cfg))
    return row


# ---------------------------------------------------------------------- the loop
def train_two_stage(
    model: nn.Module,
    train_dataset: ReportDataset | dict[str, Any],
    val_dataset: ReportDataset | dict[str, Any] | None,
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Two-stage training: alignment (projector + head), then instruction tuning (+ LM).

    Args:
        model: a ``RadiologyMultimodalModel`` (or ``Qwen2VLReportModel``); trained in place.
        train_dataset, val_dataset: :class:`ReportDataset` objects, or the dicts of
            ``load_mimic_cxr_dataset(..., load_pixels=True)`` together with ``tokenizer``.
            ``val_dataset=None`` skips validation (and best-checkpoint selection).
        config: a :class:`TrainConfig` or a plain dict of its fields (the case study's form).
        tokenizer: needed only when the datasets are raw dicts.

    Returns:
        The history: ``epochs`` (one row per epoch: stage, epoch, train/val losses, lr,
        ``val_macro_auroc``, ``val_ce_micro_f1_14`` ...), ``steps`` (loss, lr, grad norm per
        optimiser step), the flat lists ``train_loss`` / ``val_loss``, ``best_val_loss``,
        ``best_checkpoint``, ``last_checkpoint``, ``train_seconds`` (wall time inside
        training steps), ``train_cpu_seconds``, ``eval_seconds``, ``samples_per_second``,
        ``tokens_per_second``, ``peak_memory_mb``, ``stopped_early`` and ``config``. Also
        written to ``output_dir/history.json``.
    """
    from accelerate import Accelerator

    cfg = TrainConfig.coerce(config)
    seed_everything(cfg.seed)
    train_ds = _as_dataset(train_dataset, tokenizer, cfg, "train_dataset")
    val_ds = (
        _as_dataset(val_dataset, tokenizer, cfg, "val_dataset") if val_dataset is not None else None
    )
    tok = train_ds.tokenizer
    out_dir = cfg.resolved_output_dir()
    mixed = cfg.resolved_mixed_precision()
    if mixed == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision='fp16' needs a CUDA GPU; use 'no' (or 'bf16') on CPU")
    if not _launched_by_accelerate():
        # A notebook may call train_two_stage twice with different precisions; accelerate keeps
        # one global state per process and refuses the second unless it is reset first.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=mixed)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "train_config.json")

    if cfg.lora and cfg.stage2_epochs > 0 and not has_lora(model):
        add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)

    weights = (
        balanced_sample_weights(train_ds.finding_targets, cfg.balance_mode)
        if cfg.balanced_sampling
        else None
    )
    sampler = EpochSampler(
        len(train_ds), cfg.seed, weights,
        lengths=train_ds.sequence_lengths().tolist() if cfg.group_by_length else None,
        batch_size=cfg.batch_size,
    )  # fmt: skip
    collate = ReportCollator(tok.pad_token_id if tok.pad_token_id is not None else 0)
    # Loaders get their own generators: iterating one must not move the global RNG (dropout),
    # or a resumed run would not repeat an uninterrupted one.
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
        num_workers=cfg.num_workers, generator=loader_gen,
    )  # fmt: skip
    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(
            val_ds, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate,
            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
        )  # fmt: skip
    if accelerator.num_processes > 1:
        train_loader = accelerator.prepare_data_loader(train_loader)
        if val_loader is not None:
            val_loader = accelerator.prepare_data_loader(val_loader)
    augmenter = (
        Augmenter(cfg.augment_p_invert, cfg.augment_max_rotation, cfg.augment_max_shift,
                  cfg.augment_jitter)
        if cfg.augment else None
    )  # fmt: skip
    n_visual = _num_visual_tokens(model, train_ds)
    unk_id = tok.unk_token_id if tok.unk_token_id is not None else collate.pad_token_id
    device = accelerator.device

    # ---- state (fresh or resumed)
    history: dict[str, Any] = {"epochs": [], "steps": [], "train_loss": [], "val_loss": []}
    counters = {
        "global_step": 0, "train_seconds": 0.0, "train_cpu_seconds": 0.0, "eval_seconds": 0.0,
        "samples": 0, "tokens": 0, "target_tokens": 0,
    }  # fmt: skip
    best = {"val_loss": math.inf, "stage": None, "epoch": None}
    position = {"stage": 1, "epoch": 0, "chunk": 0}
    plans: dict[str, int] = {}  # stage -> optimiser steps after fitting the schedule to the budget
    epoch_acc: dict[str, float] = {}
    resume = None
    if cfg.resume_from:
        resume = load_training_state(cfg.resume_from)
        saved = resume["state"]
        model.load_state_dict(resume["model"])
        history, counters, best = saved["history"], saved["counters"], saved["best"]
        best["val_loss"] = math.inf if best["val_loss"] is None else best["val_loss"]
        position, epoch_acc = saved["position"], saved["epoch_acc"]
        plans = saved.get("plans", {})

    model_p = accelerator.prepare_model(model)
    stages = [
        (1, cfg.stage1_epochs, cfg.stage1_lr),
        (2, cfg.stage2_epochs, cfg.effective_stage2_lr),
    ]
    session_seconds = 0.0
    stop_reason = None
    last_dir = out_dir / "last"
    best_dir = out_dir / "best"
    optimizer = scheduler = None

    def snapshot() -> dict[str, Any]:
        return {
            "history": history, "counters": counters, "best": best, "position": position,
            "epoch_acc": epoch_acc, "plans": plans, "config": cfg.to_dict(),
        }  # fmt: skip

    def checkpoint() -> None:
        if accelerator.is_main_process and optimizer is not None:
            save_training_state(
                last_dir, accelerator.unwrap_model(model_p), optimizer, scheduler, snapshot()
            )
        accelerator.wait_for_everyone()

    for stage, epochs, lr in stages:
        if epochs == 0 or stage < position["stage"] or stop_reason:
            continue
        if stage > position["stage"]:
            position = {"stage": stage, "epoch": 0, "chunk": 0}
            epoch_acc = {}
        if accelerator.num_processes > 1 and stage == 2:  # DDP must see the new trainable set
            model_p = accelerator.prepare_model(accelerator.unwrap_model(model_p))
        groups = configure_stage(
            accelerator.unwrap_model(model_p), stage, cfg.lora, cfg.weight_decay
        )
        optimizer = torch.optim.AdamW(groups, lr=lr)
        steps_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum_steps)
        total = max(1, math.ceil(epochs * steps_per_epoch))  # epochs may be fractional
        n_epochs = math.ceil(epochs)
        warmup = warmup_steps_for(total, cfg.warmup_ratio)
        scheduler = cosine_schedule(optimizer, total, warmup)
        if resume is not None and resume["state"]["position"]["stage"] == stage:
            optimizer.load_state_dict(resume["optim"]["optimizer"])
            scheduler.load_state_dict(resume["optim"]["scheduler"])
        stage_total = plans.get(str(stage), total)
        if stage_total != total:
            _set_schedule_length(scheduler, stage_total, warmup)
        stage_done = int(scheduler.last_epoch)  # optimiser steps already taken in this stage
        stage_cost, stage_session_steps = 0.0, 0
        fit = (
            cfg.fit_to_budget
            and cfg.max_train_seconds is not None
            and stage == max(s for s, e, _ in stages if e > 0)
        )
        optimizer = accelerator.prepare_optimizer(optimizer)
        if resume is not None:
            _set_rng_state(resume["rng"])
            resume = None

        for epoch in range(position["epoch"], n_epochs):
            position["epoch"] = epoch
            sampler.set_epoch(stage * 10_000 + epoch)
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(stage * 10_000 + epoch)
            skip = position["chunk"]
            bar = _progress(
                cfg, steps_per_epoch, f"stage {stage} epoch {epoch + 1}/{n_epochs}", skip
            )
            epoch_cost, epoch_steps = 0.0, 0
            for chunk_idx, chunk in enumerate(_chunks(train_loader, cfg.grad_accum_steps)):
                if chunk_idx < skip:
                    continue
                gen = torch.Generator().manual_seed(
                    cfg.seed * 7919 + stage * 1_000_003 + epoch * 10_007 + chunk_idx
                )
                for batch in chunk:
                    if augmenter is not None:
                        batch["images"] = augmenter(batch["images"], gen)
                    if cfg.word_dropout > 0:
                        batch["input_ids"] = word_dropout(
                            batch["input_ids"], batch["labels"], cfg.word_dropout, unk_id, gen
                        )
                t0, c0 = time.perf_counter(), time.process_time()
                stats = train_step(
                    model_p, chunk, optimizer, scheduler=scheduler,
                    max_grad_norm=cfg.max_grad_norm, accelerator=accelerator,
                )  # fmt: skip
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                cost = dc if cfg.budget_clock == "cpu" else dt
                session_seconds += cost
                stage_cost += cost
                stage_session_steps += 1
                epoch_cost += cost
                epoch_steps += 1
                stage_done += 1
                if fit and stage_session_steps == REPLAN_AFTER_STEPS:
                    stage_total = _refit(
                        cfg, scheduler, warmup, total, stage_done,
                        session_seconds, stage_cost / stage_session_steps,
                    )  # fmt: skip
                    plans[str(stage)] = stage_total
                counters["train_seconds"] += dt
                counters["train_cpu_seconds"] += dc
                counters["global_step"] += 1
                for batch in chunk:
                    tokens, targets = _batch_tokens(batch, n_visual)
                    counters["samples"] += int(batch["input_ids"].shape[0])
                    counters["tokens"] += tokens
                    counters["target_tokens"] += targets
                for key in ("loss", "loss_report", "loss_detect"):
                    if key in stats:
                        epoch_acc[key] = epoch_acc.get(key, 0.0) + stats[key]
                epoch_acc["n"] = epoch_acc.get("n", 0.0) + 1
                history["steps"].append(
                    {"stage": stage, "epoch": epoch, "step": counters["global_step"],
                     "loss": stats["loss"], "lr": stats["lr"], "grad_norm": stats["grad_norm"]}
                )  # fmt: skip
                position["chunk"] = chunk_idx + 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}")
                if cfg.checkpoint_every and counters["global_step"] % cfg.checkpoint_every == 0:
                    checkpoint()
                if not _budget_left(cfg, session_seconds):
                    stop_reason = (
                        f"max_train_seconds={cfg.max_train_seconds} ({cfg.budget_clock}) reached"
                    )
                elif cfg.max_steps is not None and counters["global_step"] >= cfg.max_steps:
                    stop_reason = f"max_steps={cfg.max_steps} reached"
                if stop_reason or stage_done >= stage_total:
                    break
            bar.close()
            if fit and stage_session_steps >= REPLAN_AFTER_STEPS and stage_done < stage_total:
                # re-estimate with a whole epoch of timings (batch lengths vary; on a GPU the
                # first steps pay for kernel warm-up): the schedule may grow back to the plan
                per_step = (
                    epoch_cost / epoch_steps
                    if epoch_steps >= REPLAN_AFTER_STEPS
                    else stage_cost / stage_session_steps
                )
                stage_total = _refit(
                    cfg, scheduler, warmup, total, stage_done, session_seconds, per_step
                )
                plans[str(stage)] = stage_total
            stage_over = stage_done >= stage_total
            _end_epoch(
                history, epoch_acc, stage, epoch,
                partial=position["chunk"] < steps_per_epoch,
                lr=float(optimizer.param_groups[0]["lr"]), counters=counters,
            )  # fmt: skip
            if val_loader is not None and (
                cfg.eval_every_epoch or stop_reason or stage_over or epoch == n_epochs - 1
            ):
                t0 = time.perf_counter()
                row = _validate(accelerator.unwrap_model(model_p), val_loader, val_ds, cfg, device)
                counters["eval_seconds"] += time.perf_counter() - t0
                history["epochs"][-1].update(row)
                history["val_loss"].append(row["val_loss"])
                if cfg.save_best and row["val_loss"] < best["val_loss"]:
                    best.update(val_loss=row["val_loss"], stage=stage, epoch=epoch)
                    if accelerator.is_main_process:
                        save_model(accelerator.unwrap_model(model_p), best_dir, tok)
            epoch_acc = {}
            finished = position["chunk"] >= steps_per_epoch
            if finished:
                position["epoch"], position["chunk"] = epoch + 1, 0
            if stage_over and not stop_reason:
                position["epoch"], position["chunk"] = n_epochs, 0  # the (shortened) stage is done
            checkpoint()  # after a stop, position says where a resumed run picks up
            if stop_reason or stage_over:
                break
        if not stop_reason:
            position = {"stage": stage + 1, "epoch": 0, "chunk": 0}

    accelerator.unwrap_model(model_p, keep_fp32_wrapper=False)
    samples, secs = counters["samples"], max(counters["train_seconds"], 1e-9)
    history.update(
        best_val_loss=None if math.isinf(best["val_loss"]) else best["val_loss"],
        best_epoch={"stage": best["stage"], "epoch": best["epoch"]},
        best_checkpoint=str(best_dir) if best["stage"] is not None else None,
        last_checkpoint=str(last_dir) if last_dir.exists() else None,
        stopped_early=stop_reason is not None,
        stop_reason=stop_reason,
        mixed_precision=mixed,
        device=str(device),
        num_processes=accelerator.num_processes,
        peak_memory_mb=_peak_memory_mb(),
        samples_per_second=samples / secs,
        tokens_per_second=counters["tokens"] / secs,
        target_tokens_per_second=counters["target_tokens"] / secs,
        config=cfg.to_dict(),
        **counters,
    )
    if torch.cuda.is_available():
        history["peak_cuda_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if accelerator.is_main_process:
        (out_dir / "history.json").write_text(json.dumps(_jsonable(history), indent=1))
    return history


def _refit(
    cfg: TrainConfig,
    scheduler: Any,
    warmup: int,
    planned: int,
    stage_done: int,
    spent: float,
    cost_per_step: float,
) -> int:
    """The stage's new length: the steps the remaining budget affords (3 % slack), never more
    than ``planned`` (the stage's epochs) and at least one more step; the scheduler is pointed
    at it."""
    assert cfg.max_train_seconds is not None
    remaining = cfg.max_train_seconds - spent
    affordable = stage_done + int(0.97 * remaining / max(cost_per_step, 1e-9))
    new_total = min(planned, max(stage_done + 1, affordable))
    _set_schedule_length(scheduler, new_total, warmup)
    return new_total


def _set_schedule_length(scheduler: Any, total: int, warmup: int) -> None:
    """Point every group's cosine at a new end step (used when fitting a schedule to a budget)."""
    lam = partial(cosine_with_warmup, total_steps=total, warmup_steps=min(warmup, total))
    scheduler.lr_lambdas = [lam for _ in scheduler.lr_lambdas]


def _end_epoch(
    history: dict[str, Any],
    acc: dict[str, float],
    stage: int,
    epoch: int,
    *,
    partial: bool,
    lr: float,
    counters: dict[str, Any],
) -> None:
    n = max(acc.get("n", 0.0), 1.0)
    row: dict[str, Any] = {
        "stage": stage,
        "epoch": epoch,
        "steps": int(acc.get("n", 0)),
        "train_loss": acc.get("loss", math.nan) / n,
        "lr": lr,
        "partial": partial,
        "train_seconds": counters["train_seconds"],
    }
    for key in ("loss_report", "loss_detect"):
        if key in acc:
            row[f"train_{key}"] = acc[key] / n
    history["epochs"].append(row)
    history["train_loss"].append(row["train_loss"])


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: Any) -> None: ...
    def close(self) -> None: ...


def _progress(cfg: TrainConfig, total: int, desc: str, initial: int) -> Any:
    if not cfg.progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, leave=False)
