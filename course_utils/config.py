"""Profiles, paths, seeding and device detection.

Every notebook picks a profile in its parameters cell (``PROFILE = "tiny"``) and calls
:func:`get_profile`. The profiles share all code; they differ only in sizes, in the device and
in where model weights and data come from:

* ``tiny``  - CPU, offline: the embedded dataset (real IU report text + phantom images) at a
  small image size, tiny transformers built from config, the course's own pretrained encoder.
* ``gpu``   - the ``tiny`` models and data on a GPU: same sizes, sources and recipe, but
  ``device="auto"`` (CUDA when torch sees one, else the CPU) and ``mixed_precision="auto"``
  (bf16/fp16 on CUDA); training budgets count wall-clock seconds. For timing the course's
  notebooks on an accelerator without downloading anything.
* ``colab`` - one GPU (a free Colab T4 is enough): 512x512 images, real checkpoints
  loaded with ``from_pretrained``, real MIMIC-CXR-JPG or IU X-ray data when available.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 42


@dataclass(frozen=True)
class Profile:
    """Sizes and sources for one way of running the course.

    Attributes:
        name: ``"tiny"``, ``"gpu"`` or ``"colab"``.
        image_size: side of the square images fed to the encoder (case study: 512).
        device: ``"cpu"`` or ``"cuda"``; ``"auto"`` resolves at :func:`get_profile` time.
        max_train_studies: cap on training studies (``None`` = all).
        max_eval_studies: cap on validation/test studies (``None`` = all).
        offline: True when nothing may be downloaded (weights come from config or the cache).
        vision_checkpoint: encoder to load with ``from_pretrained`` (``None`` = course-pretrained).
        lm_checkpoint: language model to load with ``from_pretrained`` (``None`` = from config).
        vlm_checkpoint: Qwen2-VL checkpoint for the R2Gen2 track (``None`` = tiny config).
        load_in_4bit: QLoRA path (bitsandbytes, CUDA only).
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"auto"`` (bf16 on a CUDA GPU
            that has it, else fp16 on CUDA, ``"no"`` on the CPU; see
            :meth:`course_utils.train.TrainConfig.resolved_mixed_precision`).
    """

    name: str
    image_size: int
    device: str
    max_train_studies: int | None
    max_eval_studies: int | None
    offline: bool
    vision_checkpoint: str | None
    lm_checkpoint: str | None
    vlm_checkpoint: str | None
    load_in_4bit: bool
    mixed_precision: str

    def to_dict(self) -> dict:
        return asdict(self)


_TINY = Profile(
    name="tiny",
    image_size=128,
    device="cpu",
    max_train_studies=None,
    max_eval_studies=None,
    offline=True,
    vision_checkpoint=None,
    lm_checkpoint=None,
    vlm_checkpoint=None,
    load_in_4bit=False,
    mixed_precision="no",
)

PROFILES: dict[str, Profile] = {
    "tiny": _TINY,
    # the tiny models and embedded data on a CUDA GPU (the CPU when there is none)
    "gpu": replace(_TINY, name="gpu", device="auto", mixed_precision="auto"),
    "colab": replace(
        _TINY,
        name="colab",
        image_size=512,
        device="auto",
        offline=False,
        vision_checkpoint="microsoft/rad-dino",
        lm_checkpoint="microsoft/biogpt",
        vlm_checkpoint="Qwen/Qwen2-VL-2B-Instruct",
        load_in_4bit=True,
        mixed_precision="fp16",
    ),
}


def get_profile(name: str = "tiny", **overrides) -> Profile:
    """Return the named profile with ``device="auto"`` resolved and ``overrides`` applied.

    Raises:
        ValueError: unknown profile name or unknown override field.
    """
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown Profile field(s) {sorted(unknown)}")
    profile = replace(profile, **overrides)
    if profile.device == "auto":
        profile = replace(profile, device=detect_device())
    return profile


def pick_profile(
    requested: str = "tiny",
    data_dir: str | os.PathLike | None = None,
    *,
    allowed: Sequence[str] = ("tiny", "gpu", "colab"),
) -> str:
    """The profile a notebook runs under (called right after its parameters cell).

    An explicit choice (anything but the default ``"tiny"``) is kept. On a Colab runtime with a
    GPU the default is upgraded to what the notebook supports (``allowed``): ``"colab"`` when
    ``data_dir`` points at real data, else ``"gpu"`` (the tiny models on the GPU). Everywhere
    else it stays ``"tiny"``. The choice is printed, so a shared notebook says how it ran.

    Raises:
        ValueError: an unknown profile name.
    """
    if requested not in PROFILES:
        raise ValueError(f"unknown profile {requested!r}; choose one of {sorted(PROFILES)}")
    if requested != "tiny" or not in_colab() or detect_device() != "cuda":
        return requested
    wanted = ("colab", "gpu") if data_dir else ("gpu",)
    chosen = next((name for name in wanted if name in allowed), requested)
    print(f"Colab GPU detected: PROFILE = {chosen!r}" + (
        "" if chosen != "tiny" else " (this notebook's models run on the CPU)"))  # fmt: skip
    return chosen


def detect_device() -> str:
    """``"cuda"`` when a CUDA GPU is visible to torch, else ``"cpu"``."""
    try:
        import torch
    except ImportError:  # the labeler and data builder run without torch
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int = DEFAULT_SEED) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run repeats exactly; returns ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:
        return seed
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return seed


def data_cache_dir() -> Path:
    """Where generated data and the course-pretrained encoder live (gitignored).

    Override with the ``COURSE_DATA_DIR`` environment variable (e.g. a Drive folder on Colab).
    """
    return Path(os.environ.get("COURSE_DATA_DIR", REPO_ROOT / "data" / "cache")).resolve()


def runs_dir() -> Path:
    """Where notebooks and runs write their artifacts (gitignored); ``COURSE_RUNS_DIR`` overrides."""
    path = Path(os.environ.get("COURSE_RUNS_DIR", REPO_ROOT / "runs")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(name: str):
    """Hold an exclusive lock ``<data cache>/.locks/<name>.lock`` while building a cached artifact.

    Two notebooks (or a notebook and ``make test``) that find the same artifact missing would
    otherwise both build it; with the lock the second waits and then finds it built.
    """
    locks = data_cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def in_colab() -> bool:
    """True inside Google Colab."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in _loaded_modules()


def _loaded_modules() -> set[str]:
    import sys

    return set(sys.modules)


def versions() -> dict[str, str]:
    """Versions of the libraries a bug report needs (missing ones are reported as such)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "course-utils"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def print_config(
    profile: Profile | str = "tiny", data_dir: str | os.PathLike | None = None
) -> dict:
    """Print (and return) what a maintainer asks for first: versions, device, profile, data."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    info = dict(versions())
    info["device"] = _device_description(profile.device)
    info["profile"] = profile.name
    info["image_size"] = str(profile.image_size)
    info["data_dir"] = str(data_dir if data_dir is not None else data_cache_dir())
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return info


NOTEBOOK_DISPLAY = {
    "display.max_rows": 40,  # longer tables print their first and last 10 rows
    "display.min_rows": 20,
    "display.max_columns": 20,
    "display.width": 120,
    "display.max_colwidth": 120,
}
"""pandas options of :func:`notebook_defaults`."""


def notebook_defaults() -> None:
    """Cap what notebooks print: long tables and arrays are shortened, so an executed notebook
    stays readable and an nbval diff shows the lines that changed, not megabytes of output.

    Called once by every notebook's setup cell; a cell that wants more (notebook 05's report
    table) widens one option itself.
    """
    import numpy as np
    import pandas as pd

    for key, value in NOTEBOOK_DISPLAY.items():
        pd.set_option(key, value)
    np.set_printoptions(threshold=200, edgeitems=5, linewidth=120)


def _device_description(device: str) -> str:
    if device == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"
