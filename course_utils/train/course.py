"""The course's trained report model: train once (notebook 05), reuse everywhere (06-09).

Notebooks 06-09 need *a trained model*, but each must run on its own even when a student never
finished notebook 05. :func:`course_model` gives them one: it loads the checkpoint that notebook
05 (or an earlier call) wrote under ``runs/checkpoints/<profile>-<target>-seed<seed>/``, or trains
it with the notebook's recipe when it is missing (about two minutes on 2 CPU cores). Profile
``"gpu"`` runs the same recipe on a CUDA GPU (wall-clock budget, mixed precision) and keeps its
own checkpoint (``runs/checkpoints/gpu-<target>-seed<seed>/``).

The recipe here is the single definition of "the tiny model": :func:`build_course_model` builds
tokenizer + datasets + model and :func:`train_course_model` runs ``train_two_stage`` with
``TrainConfig.tiny``, so the benchmark, notebook 05 and this cache can never drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import cache_lock, get_profile, runs_dir, seed_everything
from .config import TrainConfig
from .data import ReportDataset, build_tokenizer
from .loop import save_model, train_two_stage
from .optim import init_head_from_encoder

SPLITS = ("train", "val", "test")
COURSE_PROFILES = ("tiny", "gpu")
"""Profiles whose model :func:`course_model` trains (``colab`` trains in notebook 05)."""
CHECKPOINT_STAMP = "course_checkpoint.json"
CHECKPOINT_VERSION = 3
"""Bumped when the recipe changes, so stale checkpoints are retrained instead of reused."""

# Settings on top of ModelConfig.tiny / TrainConfig.tiny, tuned on the validation split with
# benchmarks/bench_train.py: 16 visual tokens (4 x 4 pooled patch grid) train faster than 64
# with no loss in CE F1; no LM dropout (90 s of training never overfits); words seen fewer than
# 3 times become <unk> (rare typos otherwise take a third of the vocabulary).
VISUAL_GRID = 4
LM_DROPOUT = 0.0
TOKENIZER_MIN_FREQUENCY = 3
# Longer targets need more room (JSON keys and sectioned headers cost tokens).
TARGET_OVERRIDES: dict[str, dict[str, Any]] = {
    "findings": {},
    "style": {"max_length": 160, "max_new_tokens": 140},
    "json": {"max_length": 192, "max_new_tokens": 200},
}


@dataclass
class CourseModel:
    """A trained model with everything needed to evaluate it.

    Attributes:
        model: ``RadiologyMultimodalModel`` in eval mode on the profile's device (the CPU for
            ``tiny``; CUDA for ``gpu`` when torch sees a GPU, else the CPU).
        tokenizer: its word-level fast tokenizer.
        splits: ``{"train", "val", "test"}`` -> ``load_mimic_cxr_dataset`` dicts with pixels.
        datasets: the same splits as :class:`ReportDataset` (prompt + target ids).
        config: the :class:`TrainConfig` it was trained with.
        path: checkpoint folder.
        history: ``train_two_stage``'s history (``None`` when the checkpoint was only loaded and
            had none saved).
    """

    model: Any
    tokenizer: Any
    splits: dict[str, dict[str, Any]]
    datasets: dict[str, ReportDataset]
    config: TrainConfig
    path: Path
    history: dict[str, Any] | None = field(default=None, repr=False)


def checkpoint_dir(target: str = "findings", seed: int = 42, profile: str = "tiny") -> Path:
    """``runs/checkpoints/<profile>-<target>-seed<seed>``: where the course model lives."""
    return runs_dir() / "checkpoints" / f"{profile}-{target}-seed{seed}"


def load_splits(
    data_dir: str | os.PathLike | None = None, profile: str = "tiny", seed: int = 42
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The three splits with pixels (the embedded dataset when ``data_dir`` is empty)."""
    from ..data import ensure_embedded_dataset, load_mimic_cxr_dataset

    prof = get_profile(profile)
    root = Path(data_dir) if data_dir else ensure_embedded_dataset(prof.image_size, seed)
    splits = {
        s: load_mimic_cxr_dataset(root, s, image_size=prof.image_size, load_pixels=True)
        for s in SPLITS
    }
    return root, splits


def course_train_config(
    target: str = "findings", seed: int = 42, *, profile: str = "tiny", **overrides: Any
) -> TrainConfig:
    """``TrainConfig.tiny`` for ``target`` (its training state goes to
    ``runs/train-<profile>-...``; the finished model is saved to :func:`checkpoint_dir` by
    :func:`save_course_model`).

    ``profile="gpu"`` is the same recipe with the budget counted in wall-clock seconds and
    ``mixed_precision="auto"`` (bf16/fp16 on CUDA, none on a CPU).
    """
    if target not in TARGET_OVERRIDES:
        raise ValueError(f"unknown target {target!r}; choose one of {tuple(TARGET_OVERRIDES)}")
    _check_course_profile(profile)
    kwargs: dict[str, Any] = dict(
        run_name=f"{profile}-{target}-seed{seed}",
        output_dir=str(runs_dir() / f"train-{profile}-{target}-seed{seed}"),  # best/ + last/
        target=target,
        seed=seed,
        # one thread, budget in CPU seconds: on a busy machine two threads spend most of the
        # budget waiting on each other (53 vs 650 steps measured), so the model would be
        # undertrained; counted in CPU seconds the same model comes out whatever the load
        budget_clock="cpu",
        **TARGET_OVERRIDES[target],
    )
    if profile == "gpu":  # a GPU step's CPU time is mostly kernel launches: count the wall
        kwargs.update(budget_clock="wall", mixed_precision=get_profile("gpu").mixed_precision)
    kwargs.update(overrides)
    return TrainConfig.tiny(**kwargs)


def _check_course_profile(profile: str) -> None:
    """Raise ``ValueError`` unless ``profile`` is one whose model this module trains."""
    if profile == "colab":
        raise ValueError(
            "course_model trains only the 'tiny' and 'gpu' profiles, got 'colab': run notebook "
            "05 with PROFILE='colab' and load its checkpoint with load_course_checkpoint"
        )
    if profile not in COURSE_PROFILES:
        raise ValueError(f"unknown course profile {profile!r}; choose one of {COURSE_PROFILES}")


def _profile_of(config: TrainConfig) -> str:
    """The profile a :func:`course_train_config` config was made for (its ``run_name`` is
    ``<profile>-<target>-seed<seed>``); ``"tiny"`` for any other run name."""
    for profile in COURSE_PROFILES:
        if config.run_name == f"{profile}-{config.target}-seed{config.seed}":
            return profile
    return "tiny"


def build_course_model(
    splits: dict[str, dict[str, Any]], config: TrainConfig, *, label_prompt: bool = True
) -> tuple[Any, Any, dict[str, ReportDataset]]:
    """(untrained model, tokenizer, datasets) for ``config`` - the notebook 05 recipe.

    The tokenizer is trained on the training split only; the detection head starts from the
    encoder's pretraining classifier (:func:`init_head_from_encoder`). ``label_prompt`` feeds the
    head's probabilities to the LM as K tokens (``ModelConfig.label_prompt``); ``False`` builds
    the case study's architecture as notebook 04 wrote it.
    """
    from ..model import ModelConfig, RadiologyMultimodalModel

    seed_everything(config.seed)
    tok = build_tokenizer(splits["train"], (config.target,), min_frequency=TOKENIZER_MIN_FREQUENCY)
    kw = dict(
        max_length=config.max_length,
        prompt_context=config.prompt_context,
        order=config.target_order,
        seed=config.seed,
    )
    datasets = {s: ReportDataset(splits[s], tok, config.target, **kw) for s in SPLITS}
    # the LM reads the head's verdicts (notebook 05, "Saying what the head sees")
    model_cfg = ModelConfig.tiny(len(tok), visual_grid=VISUAL_GRID, label_prompt=label_prompt)
    model_cfg.lm_config.update(
        hidden_dropout_prob=LM_DROPOUT, attention_probs_dropout_prob=LM_DROPOUT
    )
    model = RadiologyMultimodalModel(model_cfg)
    init_head_from_encoder(model)
    return model, tok, datasets


def save_course_model(
    model: Any,
    tokenizer: Any,
    config: TrainConfig,
    history: dict[str, Any] | None,
    directory: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the model, tokenizer, config, history and a version stamp (atomically).

    ``directory`` defaults to :func:`checkpoint_dir` of the config's target, seed and profile
    (``gpu`` for a ``course_train_config(..., profile="gpu")`` config, else ``tiny``).
    """
    from .loop import _jsonable

    final = (
        Path(directory)
        if directory
        else checkpoint_dir(config.target, config.seed, _profile_of(config))
    )
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp / "model", tokenizer)
    config.save(tmp / "train_config.json")
    if history is not None:
        (tmp / "history.json").write_text(json.dumps(_jsonable(history), indent=1))
    stamp = {"version": _version(), "data_dir": str(data_dir) if data_dir else ""}
    (tmp / CHECKPOINT_STAMP).write_text(json.dumps(stamp))
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
    return final


def _is_current(path: Path, data_dir: str | os.PathLike | None) -> bool:
    stamp = path / CHECKPOINT_STAMP
    if not stamp.is_file() or not (path / "model").is_dir():
        return False
    try:
        info = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    want = str(data_dir) if data_dir else ""
    return info.get("version") == _version() and info.get("data_dir", "") == want


def _version() -> str:
    """Recipe, embedded-data and encoder versions: a change in any retrains the model."""
    from ..data.embedded import EMBEDDED_VERSION
    from ..model.encoder import ENCODER_VERSION

    return f"{CHECKPOINT_VERSION}-data{EMBEDDED_VERSION}-encoder{ENCODER_VERSION}"


def load_course_checkpoint(path: str | os.PathLike) -> tuple[Any, Any, TrainConfig, dict | None]:
    """(model in eval mode, tokenizer, config, history or None) from a saved checkpoint."""
    from transformers import PreTrainedTokenizerFast

    from ..model import RadiologyMultimodalModel

    path = Path(path)
    if not (path / "model").is_dir():
        raise FileNotFoundError(f"no course checkpoint at {path} (expected {path / 'model'})")
    model = RadiologyMultimodalModel.from_pretrained(path / "model").eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "model")
    config = TrainConfig.load(path / "train_config.json")
    hist_file = path / "history.json"
    history = json.loads(hist_file.read_text()) if hist_file.is_file() else None
    return model, tokenizer, config, history


def course_model(
    target: str = "findings",
    *,
    seed: int = 42,
    profile: str = "tiny",
    data_dir: str | os.PathLike | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> CourseModel:
    """The trained course model for ``target``: loaded from its checkpoint, trained if missing.

    Args:
        target: ``"findings"`` (default), ``"json"`` (R2Gen2 model I) or ``"style"`` (model II).
        seed: seeds data order, tokenizer-independent choices and initialisation.
        profile: ``"tiny"`` (CPU) or ``"gpu"`` (the same recipe on CUDA, wall-clock budget,
            mixed precision; the CPU when there is no GPU); the model is returned on
            ``get_profile(profile).device``. ``"colab"`` raises: on Colab, train in notebook 05
            and point the later notebooks at its checkpoint.
        data_dir: a MIMIC-CXR-JPG layout folder; empty/None = the embedded dataset.
        retrain: ignore an existing checkpoint.
        progress: tqdm bars while training.

    Raises:
        ValueError: ``profile`` is ``"colab"`` or unknown, or ``target`` is unknown.
    """
    _check_course_profile(profile)
    if target not in TARGET_OVERRIDES:
        raise ValueError(f"unknown target {target!r}; choose one of {tuple(TARGET_OVERRIDES)}")
    path = checkpoint_dir(target, seed, profile)
    with cache_lock(f"course-model-{profile}-{target}-{seed}"):
        return _course_model(target, seed, profile, data_dir, retrain, progress, path)


def _course_model(
    target: str,
    seed: int,
    profile: str,
    data_dir: str | os.PathLike | None,
    retrain: bool,
    progress: bool,
    path: Path,
) -> CourseModel:
    root, splits = load_splits(data_dir, profile, seed)
    device = get_profile(profile).device
    if not retrain and _is_current(path, data_dir):
        model, tok, config, history = load_course_checkpoint(path)
        model.to(device)
        kw = dict(
            max_length=config.max_length,
            prompt_context=config.prompt_context,
            order=config.target_order,
            seed=config.seed,
        )
        datasets = {s: ReportDataset(splits[s], tok, config.target, **kw) for s in SPLITS}
        return CourseModel(model, tok, splits, datasets, config, path, history)
    config = course_train_config(target, seed, profile=profile, progress=progress)
    model, tok, datasets = build_course_model(splits, config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = train_two_stage(model, datasets["train"], datasets["val"], config)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_course_model(model, tok, config, history, path, data_dir)
    model.to(device)  # accelerate trained it on its own device choice
    return CourseModel(model, tok, splits, datasets, config, path, history)
