"""The ``gpu`` profile: the tiny course models on CUDA (CPU fallback), and how course_model uses it.

No training here: fields, device resolution, the training config, checkpoint paths and
``course_model``'s argument handling, with CUDA faked where a GPU is needed.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from course_utils import config as cfg_mod
from course_utils.train import TrainConfig
from course_utils.train import course as course_mod


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs and locks go to tmp_path, never into the repo."""
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


# ---------------------------------------------------------------------- the profile
def test_gpu_profile_is_tiny_except_device_and_precision() -> None:
    tiny, gpu = cfg_mod.PROFILES["tiny"], cfg_mod.PROFILES["gpu"]
    differ = {f.name for f in fields(tiny) if getattr(tiny, f.name) != getattr(gpu, f.name)}
    assert differ == {"name", "device", "mixed_precision"}
    assert (gpu.name, gpu.device, gpu.mixed_precision) == ("gpu", "auto", "auto")
    assert (gpu.image_size, gpu.offline, gpu.vision_checkpoint, gpu.lm_checkpoint) == (
        128, True, None, None,
    )  # fmt: skip
    assert gpu.load_in_4bit is False


@pytest.mark.parametrize(("cuda", "device"), [(True, "cuda"), (False, "cpu")])
def test_gpu_profile_resolves_device(monkeypatch: pytest.MonkeyPatch, cuda: bool, device: str):
    _fake_cuda(monkeypatch, cuda)
    assert cfg_mod.get_profile("gpu").device == device
    assert cfg_mod.get_profile("tiny").device == "cpu"  # tiny stays on the CPU regardless


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'tpu'.*'gpu'"):
        cfg_mod.get_profile("tpu")


# ---------------------------------------------------------------------- the training config
def test_course_train_config_gpu_counts_wall_seconds_in_mixed_precision(tmp_path: Path) -> None:
    gpu = course_mod.course_train_config("findings", 7, profile="gpu")
    tiny = course_mod.course_train_config("findings", 7)
    assert (gpu.run_name, tiny.run_name) == ("gpu-findings-seed7", "tiny-findings-seed7")
    assert Path(gpu.output_dir) == tmp_path / "runs" / "train-gpu-findings-seed7"
    assert Path(tiny.output_dir) == tmp_path / "runs" / "train-tiny-findings-seed7"
    assert (gpu.budget_clock, gpu.mixed_precision) == ("wall", "auto")
    assert (tiny.budget_clock, tiny.mixed_precision) == ("cpu", "no")
    # everything else is the tiny recipe
    same = {"run_name", "output_dir", "budget_clock", "mixed_precision"}
    for f in fields(TrainConfig):
        if f.name not in same:
            assert getattr(gpu, f.name) == getattr(tiny, f.name), f.name
    # overrides still win, and the JSON target keeps its longer budget
    assert (
        course_mod.course_train_config("json", profile="gpu", budget_clock="cpu").budget_clock
        == "cpu"
    )
    assert course_mod.course_train_config("json", profile="gpu").max_new_tokens == 200


@pytest.mark.parametrize(("cuda", "bf16", "want"), [(False, True, "no"), (True, True, "bf16"),
                                                     (True, False, "fp16")])  # fmt: skip
def test_gpu_config_precision_resolves_per_machine(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, bf16: bool, want: str
) -> None:
    _fake_cuda(monkeypatch, cuda, bf16)
    assert course_mod.course_train_config(profile="gpu").resolved_mixed_precision() == want
    assert course_mod.course_train_config(profile="tiny").resolved_mixed_precision() == "no"


def test_course_train_config_rejects_colab_and_unknown_profiles() -> None:
    with pytest.raises(ValueError, match="'tiny' and 'gpu'"):
        course_mod.course_train_config(profile="colab")
    with pytest.raises(ValueError, match="unknown course profile 'big'"):
        course_mod.course_train_config(profile="big")


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_dir_per_profile(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "checkpoints"
    assert course_mod.checkpoint_dir("findings", 42, "gpu") == root / "gpu-findings-seed42"
    assert course_mod.checkpoint_dir("json", 3) == root / "tiny-json-seed3"


@pytest.mark.parametrize(
    ("make", "profile"),
    [
        (lambda: course_mod.course_train_config("style", 5, profile="gpu"), "gpu"),
        (lambda: course_mod.course_train_config("style", 5), "tiny"),
        (lambda: TrainConfig.tiny(target="style", seed=5), "tiny"),  # other run names: tiny
    ],
)
def test_save_course_model_defaults_to_the_configs_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make, profile: str
) -> None:
    """What notebook 05 relies on: save_course_model without a directory writes where
    course_model(profile=...) looks."""
    config = make()
    monkeypatch.setattr(
        course_mod, "save_model", lambda model, directory, tok: Path(directory).mkdir(parents=True)
    )
    path = course_mod.save_course_model(object(), object(), config, {"steps": []})
    assert path == tmp_path / "runs" / "checkpoints" / f"{profile}-style-seed5"
    assert json.loads((path / "history.json").read_text()) == {"steps": []}
    assert TrainConfig.load(path / "train_config.json").run_name == config.run_name


# ---------------------------------------------------------------------- course_model
def test_course_model_colab_still_raises_before_touching_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_data(*args, **kwargs):
        raise AssertionError("course_model loaded data before validating its arguments")

    monkeypatch.setattr(course_mod, "load_splits", no_data)
    with pytest.raises(ValueError, match="load_course_checkpoint"):
        course_mod.course_model(profile="colab")
    with pytest.raises(ValueError, match="unknown course profile 'cuda'"):
        course_mod.course_model(profile="cuda")
    with pytest.raises(ValueError, match="unknown target 'impression'"):
        course_mod.course_model("impression", profile="gpu")


class _Recorder(torch.nn.Module):
    """Stands in for the model: records where it is moved."""

    def __init__(self) -> None:
        super().__init__()
        self.moved_to: list[str] = []

    def to(self, device, *args, **kwargs):  # type: ignore[override]
        self.moved_to.append(str(device))
        return self


@pytest.mark.parametrize(
    ("profile", "cuda", "device"),
    [("gpu", True, "cuda"), ("gpu", False, "cpu"), ("tiny", True, "cpu")],
)
def test_course_model_returns_the_model_on_the_profiles_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, profile: str, cuda: bool, device: str
) -> None:
    """Loading path with the data, checkpoint and datasets faked (no GPU, no training)."""
    _fake_cuda(monkeypatch, cuda)
    model = _Recorder()
    config = course_mod.course_train_config("findings", 42, profile=profile)
    seen: dict[str, object] = {}

    def fake_splits(data_dir, prof, seed):
        seen["load_splits"] = (data_dir, prof, seed)
        return tmp_path, {s: {} for s in course_mod.SPLITS}

    def fake_is_current(path, data_dir):
        seen["path"] = path
        return True

    monkeypatch.setattr(course_mod, "load_splits", fake_splits)
    monkeypatch.setattr(course_mod, "_is_current", fake_is_current)
    monkeypatch.setattr(
        course_mod, "load_course_checkpoint", lambda p: (model, "tok", config, None)
    )
    monkeypatch.setattr(course_mod, "ReportDataset", lambda *a, **k: "dataset")
    cm = course_mod.course_model(profile=profile)
    assert cm.model is model and model.moved_to == [device]
    assert seen["load_splits"] == (None, profile, 42)
    assert (
        seen["path"] == cm.path == tmp_path / "runs" / "checkpoints" / f"{profile}-findings-seed42"
    )
    assert cm.datasets == {s: "dataset" for s in course_mod.SPLITS}


def test_notebook_defaults_cap_printed_tables() -> None:
    import numpy as np
    import pandas as pd

    import course_utils
    from course_utils.config import NOTEBOOK_DISPLAY

    with pd.option_context("display.max_rows", 1000):
        saved = np.get_printoptions()
        try:
            course_utils.notebook_defaults()
            assert pd.get_option("display.max_rows") == NOTEBOOK_DISPLAY["display.max_rows"]
            text = repr(pd.DataFrame({"x": range(500)}))
            assert len(text.splitlines()) < 30 and "..." in text
            assert "..." in np.array2string(np.arange(1000))
        finally:
            np.set_printoptions(**saved)
            for key in NOTEBOOK_DISPLAY:
                pd.reset_option(key)


def test_pick_profile_upgrades_tiny_only_on_a_colab_gpu(monkeypatch, capsys) -> None:
    from course_utils import config
    from course_utils.config import pick_profile

    def where(colab: bool, device: str) -> None:
        monkeypatch.setattr(config, "in_colab", lambda: colab)
        monkeypatch.setattr(config, "detect_device", lambda: device)

    where(colab=False, device="cuda")  # a workstation GPU: the default stays the default
    assert pick_profile("tiny", "") == "tiny"
    where(colab=True, device="cpu")  # Colab without a GPU runtime
    assert pick_profile("tiny", "") == "tiny"
    where(colab=True, device="cuda")
    assert pick_profile("tiny", "") == "gpu"
    assert pick_profile("tiny", "/content/mimic") == "colab"
    assert pick_profile("tiny", "/content/mimic", allowed=("tiny", "gpu")) == "gpu"
    assert pick_profile("tiny", "", allowed=("tiny",)) == "tiny"
    assert "models run on the CPU" in capsys.readouterr().out
    assert pick_profile("gpu", "/content/mimic") == "gpu"  # an explicit choice is kept
    with pytest.raises(ValueError, match="unknown profile 'big'"):
        pick_profile("big")
