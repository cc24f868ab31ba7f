"""`TrainConfig`: every knob of :func:`~course_utils.train.train_two_stage` in one JSON-able place.

The case study (§3.5) gives the two stages' hyper-parameters for a *pretrained* LM: stage 1 trains
the projector (and the detection head) at lr 1e-3 with the LM frozen, stage 2 trains projector +
LM at lr 2e-5 (full fine-tuning) or 1e-4 (LoRA adapters). Those are the defaults and the
:meth:`TrainConfig.colab` preset. The ``tiny`` profile's LM is *built from config with random
weights*, so stage 2 there has to teach it language from scratch: :meth:`TrainConfig.tiny` uses a
much larger stage-2 learning rate and a CPU time budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

TARGETS = ("findings", "json", "style")
MIXED_PRECISION = ("no", "fp16", "bf16", "auto")
BALANCE_MODES = ("normal_abnormal", "rarest_label")
ORDERS = ("original", "abnormal_first")
STAGE2_LR_FULL, STAGE2_LR_LORA = 2e-5, 1e-4


@dataclass
class TrainConfig:
    """Hyper-parameters, data options and bookkeeping of a two-stage training run.

    Attributes:
        run_name: sub-folder of :func:`course_utils.config.runs_dir` for checkpoints.
        output_dir: explicit output folder (``None``: ``runs_dir()/run_name``).
        target: what the model learns to write: ``"findings"`` (the findings text),
            ``"json"`` (R2Gen2 model I: structured JSON, one object per sentence) or
            ``"style"`` (R2Gen2 model II: the findings in the style named in the prompt).
        styles: styles drawn (seeded, per study) for ``target="style"``.
        target_order: ``"original"`` sentence order, or ``"abnormal_first"``: sentences with a
            positive/uncertain finding first in findings and narrative targets (see
            :func:`course_utils.train.abnormal_first`; the report's content is unchanged).
        prompt_context: put age, sex and indication into the prompt (case study §2's context c).
        impute_xxxx: fill IU's ``XXXX`` de-identification slots in the targets
            (:func:`course_utils.text.impute_xxxx`; R2Gen2 had a radiologist restore them).
        max_length: cap on text tokens per example (``<bos>`` + prompt + target + ``<eos>``);
            a longer findings/style target is cut, a JSON target keeps whole sentence objects.
        stage1_epochs, stage2_epochs: epochs of each stage (0 skips the stage; a fraction such
            as 0.5 runs that share of an epoch's optimiser steps).
        stage1_lr: projector + head learning rate (case study: 1e-3).
        stage2_lr: stage-2 learning rate; ``None`` = 2e-5 (full) or 1e-4 (LoRA).
        batch_size: examples per micro-batch (per device).
        grad_accum_steps: micro-batches per optimiser step (effective batch = product).
        warmup_ratio: share of each stage's optimiser steps spent in linear warm-up.
        weight_decay: AdamW decay (never applied to biases or normalisation weights: 1-D tensors).
        max_grad_norm: global gradient-norm clip (``None`` or 0 disables clipping).
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (bf16 on a CUDA GPU that
            supports it, else fp16 on CUDA, ``"no"`` on CPU).
        lora: stage 2 trains LoRA adapters on the LM instead of all its weights.
        lora_r, lora_alpha, lora_dropout: adapter rank, scale numerator, dropout.
        lora_target_modules: LM module names to adapt (``None``: the attention projections).
        augment: R2Gen2's image augmentations (colour inversion, small rotation) plus small
            translation and brightness/contrast jitter on training batches.
        augment_p_invert, augment_max_rotation, augment_max_shift, augment_jitter: their strength
            (probability, degrees, fraction of the side, relative gain/bias).
        word_dropout: probability of hiding a target *input* token behind ``<unk>`` while
            training (targets unchanged): the LM cannot lean on the words alone and has to
            look at the image. 0 disables it.
        balanced_sampling: draw training studies with a ``WeightedRandomSampler`` so that
            abnormal studies are not drowned by normal ones (R2Gen2's model favoured normal
            reports); ``balance_mode`` picks the weights (see
            :func:`course_utils.train.balanced_sample_weights`).
        group_by_length: batch studies of similar text length together (shuffled windows of
            50 batches sorted by length): far less padding, same randomness across epochs.
        eval_batch_size: batch size of validation passes and generation.
        eval_every_epoch: run the validation loss and fast metric after every epoch.
        val_generate_studies: validation studies whose greedy reports score the fast CE metric
            (0 disables generation during training).
        max_new_tokens: generation budget for the fast metric.
        save_best: keep the lowest-validation-loss model in ``output_dir/best``.
        checkpoint_every: also write the resumable state every N optimiser steps.
        resume_from: a ``output_dir/last`` folder written by an earlier run: continue it.
        max_train_seconds: stop cleanly (checkpoint written) once the training steps have used
            this much wall time; validation time does not count. ``None``: no budget.
        fit_to_budget: with ``max_train_seconds``, time the first 10 steps of the last stage
            (and again after every epoch) and shorten its cosine schedule to the steps the
            remaining budget affords, so the learning rate reaches 0 when the budget runs out
            instead of training stopping at a high learning rate (the hard stop stays as a
            safety net). Schedules are only ever shortened.
        budget_clock: what ``max_train_seconds`` counts: ``"wall"`` (time.perf_counter) or
            ``"cpu"`` (time.process_time of this process: on a machine shared with other jobs,
            single-threaded CPU seconds are what the same run costs on an idle core).
        max_steps: stop cleanly after this many optimiser steps in all (counted across a
            resumed run too); ``None``: run every epoch.
        seed: seeds shuffling, sampling, augmentation, style choice and dropout.
        num_workers: ``DataLoader`` workers (0 is fastest for in-memory tensors).
        progress: tqdm progress bars.
    """

    run_name: str = "report-model"
    output_dir: str | None = None
    target: str = "findings"
    styles: tuple[str, ...] = ("narrative", "sectioned")
    target_order: str = "original"
    prompt_context: bool = True
    impute_xxxx: bool = True
    max_length: int = 256
    stage1_epochs: float = 5
    stage2_epochs: float = 10
    stage1_lr: float = 1e-3
    stage2_lr: float | None = None
    batch_size: int = 8
    grad_accum_steps: int = 4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | None = None
    augment: bool = False
    augment_p_invert: float = 0.2
    augment_max_rotation: float = 5.0
    augment_max_shift: float = 0.03
    augment_jitter: float = 0.1
    word_dropout: float = 0.0
    balanced_sampling: bool = False
    balance_mode: str = "normal_abnormal"
    group_by_length: bool = False
    eval_batch_size: int = 64
    eval_every_epoch: bool = True
    val_generate_studies: int = 32
    max_new_tokens: int = 120
    save_best: bool = True
    checkpoint_every: int | None = None
    resume_from: str | None = None
    max_train_seconds: float | None = None
    fit_to_budget: bool = False
    budget_clock: str = "wall"
    max_steps: int | None = None
    seed: int = 42
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.styles, list):
            self.styles = tuple(self.styles)
        if isinstance(self.lora_target_modules, list):
            self.lora_target_modules = tuple(self.lora_target_modules)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot work."""
        if self.target not in TARGETS:
            raise ValueError(f"TrainConfig.target={self.target!r}; choose one of {TARGETS}")
        if self.target_order not in ORDERS:
            raise ValueError(
                f"TrainConfig.target_order={self.target_order!r}; choose one of {ORDERS}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"TrainConfig.mixed_precision={self.mixed_precision!r}; choose one of "
                f"{MIXED_PRECISION}"
            )
        if self.balance_mode not in BALANCE_MODES:
            raise ValueError(
                f"TrainConfig.balance_mode={self.balance_mode!r}; choose one of {BALANCE_MODES}"
            )
        from ..text import STYLES

        if not self.styles or any(s not in STYLES for s in self.styles):
            raise ValueError(f"TrainConfig.styles={self.styles!r}; choose from {STYLES}")
        for name in ("batch_size", "grad_accum_steps", "eval_batch_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("stage1_epochs", "stage2_epochs"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("val_generate_studies", "num_workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.stage1_epochs + self.stage2_epochs == 0:
            raise ValueError("TrainConfig: stage1_epochs and stage2_epochs are both 0")
        if self.max_length < 8:
            raise ValueError(f"TrainConfig.max_length must be >= 8, got {self.max_length}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"TrainConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("stage1_lr", "stage2_lr"):
            value = getattr(self, name)
            if value is not None and not float(value) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {value}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.lora_r < 1:
            raise ValueError(f"TrainConfig.lora_r must be >= 1, got {self.lora_r}")
        if not 0.0 <= self.augment_p_invert <= 1.0:
            raise ValueError(
                f"TrainConfig.augment_p_invert must be a probability, got {self.augment_p_invert}"
            )
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"TrainConfig.word_dropout must be in [0, 1), got {self.word_dropout}")
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ValueError(
                f"TrainConfig.max_train_seconds must be > 0, got {self.max_train_seconds}"
            )
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(
                f"TrainConfig.budget_clock={self.budget_clock!r}; choose 'wall' or 'cpu'"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be >= 1, got {self.max_steps}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(
                f"TrainConfig.checkpoint_every must be >= 1, got {self.checkpoint_every}"
            )

    # ------------------------------------------------------------------ derived values
    @property
    def effective_stage2_lr(self) -> float:
        """``stage2_lr``, or the case study's default for full fine-tuning / LoRA."""
        if self.stage2_lr is not None:
            return float(self.stage2_lr)
        return STAGE2_LR_LORA if self.lora else STAGE2_LR_FULL

    def resolved_mixed_precision(self) -> str:
        """``mixed_precision`` with ``"auto"`` resolved for this machine."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        import torch

        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"

    def resolved_output_dir(self) -> Path:
        """``output_dir`` or ``runs_dir()/run_name``."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        from ..config import runs_dir

        return runs_dir() / self.run_name

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """CPU preset for the ``tiny`` profile (random-init LM, 2 cores, 90 s of training).

        Tuned on the embedded dataset's validation split (``benchmarks/bench_train.py``):

        * stage 2 at lr 3e-3: the LM starts from random weights (the case study's 2e-5 is for a
          pretrained LM and would barely move a random one); stage 1 (lr 1e-3) is a quarter
          epoch, because aligning to a *random* frozen LM teaches the projector little and the
          detection head can start from the encoder's classifier
          (:func:`course_utils.train.init_head_from_encoder`);
        * ``balanced_sampling`` + ``target_order="abnormal_first"``: without them the small LM
          writes the normal report for almost every study (R2Gen2's failure mode);
        * batches of 16 grouped by length, no clinical context in the prompt (shorter
          sequences, more steps per second);
        * a 90 s budget with ``fit_to_budget``: the cosine schedule is shortened to the steps
          the machine manages in that time, so the run ends annealed however fast the CPU is.
        """
        base = cls(
            run_name="tiny-report-model",
            stage1_epochs=0.25,
            stage2_epochs=10,
            stage1_lr=1e-3,
            stage2_lr=3e-3,
            batch_size=16,
            grad_accum_steps=1,
            warmup_ratio=0.03,
            weight_decay=0.01,
            max_length=128,
            prompt_context=False,
            target_order="abnormal_first",
            balanced_sampling=True,
            group_by_length=True,
            mixed_precision="no",
            eval_batch_size=128,
            val_generate_studies=32,
            max_new_tokens=100,
            max_train_seconds=90.0,
            fit_to_budget=True,
        )
        return replace(base, **overrides) if overrides else base

    @classmethod
    def colab(cls, **overrides: Any) -> TrainConfig:
        """One-GPU preset (Colab T4): case-study learning rates, fp16/bf16, effective batch 32."""
        base = cls(
            run_name="colab-report-model",
            stage1_epochs=5,
            stage2_epochs=10,
            stage1_lr=1e-3,
            stage2_lr=None,
            batch_size=8,
            grad_accum_steps=4,
            max_length=256,
            mixed_precision="auto",
            eval_batch_size=16,
            val_generate_studies=32,
            max_new_tokens=160,
        )
        return replace(base, **overrides) if overrides else base

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["styles"] = list(self.styles)
        if self.lora_target_modules is not None:
            data["lora_target_modules"] = list(self.lora_target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (the case study passes one); unknown keys raise."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {sorted(unknown)}; known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def coerce(cls, config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
        """A ``TrainConfig`` from a ``TrainConfig``, a dict or ``None`` (defaults)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            config.validate()
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"train config not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
