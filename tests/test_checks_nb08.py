"""Grading validity for notebook 08: plausible wrong answers fail, correct alternatives pass."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import deploy
from course_utils.checks import CheckFailed
from course_utils.checks.nb08 import (
    check_export_encoder_onnx,
    check_prepare_for_deployment,
    check_quantize_language_model,
    check_validate_image,
)
from course_utils.deploy import errors as E
from course_utils.model.components import pool_patch_grid

quantize_dynamic = torch.ao.quantization.quantize_dynamic


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny tensors, 1 thread


# ---------------------------------------------------------------------------- q1 quantise
def make_quantize(mistake: str | None = None):
    def quantize(model):
        if mistake == "in_place":
            quantize_dynamic(model.lm, {nn.Linear}, dtype=torch.qint8, inplace=True)
            return model
        q = copy.deepcopy(model).eval()
        if mistake == "whole_model":
            return quantize_dynamic(q, {nn.Linear}, dtype=torch.qint8)
        if mistake == "float16":
            q.lm = quantize_dynamic(q.lm, {nn.Linear}, dtype=torch.float16)
        elif mistake == "nothing":
            pass
        elif mistake == "head_only":
            q.lm = quantize_dynamic(q.lm, {"output_projection"}, dtype=torch.qint8)
        elif mistake == "naive_cast":
            with torch.no_grad():
                for mod in q.lm.modules():
                    if isinstance(mod, nn.Linear):
                        mod.weight.copy_(mod.weight.to(torch.int8).float())
            q.lm = quantize_dynamic(q.lm, {nn.Linear}, dtype=torch.qint8)
        elif mistake == "train_mode":
            q.lm = quantize_dynamic(q.lm, {nn.Linear}, dtype=torch.qint8)
            q.train()
        elif mistake == "per_channel":  # a correct alternative
            cfg = torch.ao.quantization.per_channel_dynamic_qconfig
            q.lm = quantize_dynamic(q.lm, {nn.Linear: cfg})
        else:
            q.lm = quantize_dynamic(q.lm, {nn.Linear}, dtype=torch.qint8)
        return q

    return quantize


def test_quantize_reference_and_alternatives_pass() -> None:
    check_quantize_language_model(deploy.quantize_language_model)
    check_quantize_language_model(make_quantize())
    check_quantize_language_model(make_quantize("per_channel"))


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("in_place", "left unchanged"),
        ("whole_model", "stay full precision"),
        ("float16", "stored as INT8"),
        ("nothing", "every nn.Linear"),
        ("head_only", "every nn.Linear"),
        ("naive_cast", "agree with fp32"),
        ("train_mode", "eval mode"),
    ],
)
def test_quantize_mistakes_fail(mistake, message) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_quantize_language_model(make_quantize(mistake))


# ---------------------------------------------------------------------------- q2 ONNX
class StudentEncoder(nn.Module):
    """A student's own wrapper (two outputs), with knobs for the usual mistakes."""

    def __init__(self, model, normalise: bool = True, vision_only: bool = False):
        super().__init__()
        self.model, self.normalise, self.vision_only = model, normalise, vision_only

    def forward(self, images):
        m = self.model
        x = (images - m.image_mean) / m.image_std if self.normalise else images
        hidden = m.vision(pixel_values=x).last_hidden_state
        if self.vision_only:
            return hidden, hidden[:, 0]
        patches = pool_patch_grid(hidden[:, 1:], m.config.visual_grid)
        return m.projector(patches), m.detection_head(hidden[:, 0])


def make_export(normalise=True, dynamic=True, names=("visual_tokens", "label_logits"),
                vision_only=False, input_name="images"):  # fmt: skip
    def export(model, path):
        size = model.vision.config.image_size
        axes = {n: {0: "batch"} for n in (input_name, *names)} if dynamic else None
        torch.onnx.export(StudentEncoder(model.eval(), normalise, vision_only),
                          (torch.rand(1, 1, size, size),), str(path), dynamo=False,
                          input_names=[input_name], output_names=list(names),
                          dynamic_axes=axes)  # fmt: skip
        return path

    return export


def test_export_reference_and_alternative_pass() -> None:
    check_export_encoder_onnx(deploy.export_encoder_onnx)
    check_export_encoder_onnx(make_export())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dynamic=False), "runs on a batch of 3"),
        (dict(normalise=False), "matches PyTorch"),
        (dict(names=("label_logits", "visual_tokens")), "has the PyTorch shape"),
        (dict(vision_only=True), "has the PyTorch shape"),
        (dict(input_name="pixel_values"), "one input named 'images'"),
        (dict(names=("tokens", "logits")), "outputs named"),
    ],
)
def test_export_mistakes_fail(kwargs, message) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_export_encoder_onnx(make_export(**kwargs))


def test_export_that_writes_nothing_fails() -> None:
    with pytest.raises(CheckFailed, match="written to the given path"):
        check_export_encoder_onnx(lambda model, path: None)


# ---------------------------------------------------------------------------- q3 validation
def make_validate(mistake: str | None = None):
    """A student's validate_image (own order and wording), one knob per mistake."""
    from course_utils.data import resize_image

    def validate(source, limits):
        if isinstance(source, (bytes, bytearray)):
            if mistake == "no_bytes":
                source = np.frombuffer(source, dtype=np.uint8)
            else:
                source = deploy.decode_image_bytes(source, limits)
        arr = np.asarray(source.numpy() if isinstance(source, torch.Tensor) else source)
        if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] > 4:
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise E.NotAnImageError(f"bad shape {arr.shape}")
        h, w, c = arr.shape
        if c not in (1, 3):
            raise (ValueError if mistake == "generic_errors" else E.ChannelError)(f"{c} channels")
        if (
            min(h, w) < limits.min_side
            or max(h, w) > limits.max_side
            or max(h, w) / min(h, w) > limits.max_aspect
        ):
            raise (ValueError if mistake == "generic_errors" else E.ImageSizeError)(f"{w}x{h}")
        if arr.dtype.kind == "f":
            if mistake == "nan_to_num":
                arr = np.nan_to_num(arr, posinf=1.0)
            bad = np.isnan(arr) if mistake == "isnan_only" else ~np.isfinite(arr)
            if bad.any():
                raise E.NonFiniteError("NaN/inf")
            if mistake == "clip_range":
                arr = np.clip(arr, 0, 1)
            if arr.min() < 0 or arr.max() > 1:
                raise E.IntensityRangeError("range")
            arr = arr.astype(np.float32)
        else:
            arr = arr.astype(np.float32) / np.iinfo(arr.dtype).max
        if c == 3:
            if mistake != "average_colour" and np.ptp(arr, axis=-1).max() > limits.gray_tolerance:
                raise E.ChannelError("colour")
            arr = arr.mean(-1, keepdims=True)
        img = arr[..., 0]
        if img.shape != (limits.target_size,) * 2:
            if mistake == "reject_other_sizes":
                raise E.ImageSizeError("wrong size")
            if mistake != "silent_resize":
                warnings.warn("resized", E.ImageResizedWarning, stacklevel=2)
            img = resize_image(img, limits.target_size)
        return img.astype(np.float32)

    return validate


def test_validate_reference_and_alternative_pass() -> None:
    check_validate_image(deploy.validate_image)
    check_validate_image(make_validate())


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("nan_to_num", r"\[NaN pixel\] is rejected"),
        ("isnan_only", r"\[inf pixel\] raises NonFiniteError"),
        ("average_colour", r"\[colour RGB photo\] is rejected"),
        ("clip_range", r"\[float outside \[0, 1\]\] is rejected"),
        ("generic_errors", r"raises ChannelError"),
        ("silent_resize", "warns about resizing"),
        ("reject_other_sizes", "calling validate raised ImageSizeError"),
        ("no_bytes", "raises NotAnImageError|raises TruncatedImageError|calling validate raised"),
    ],
)
def test_validate_mistakes_fail(mistake, message) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_validate_image(make_validate(mistake))


def test_unfinished_todo_surfaces_not_implemented() -> None:
    def stub(*args):
        raise NotImplementedError("fill in this TODO")

    for check in (check_quantize_language_model, check_validate_image):
        with pytest.raises(NotImplementedError):
            check(stub)


# ---------------------------------------------------------------------------- q4 pipeline
def make_prepare(mistake: str | None = None):
    def prepare(model, config):
        out = config.resolved_output_dir()
        int8 = deploy.quantize_language_model(model)
        exported = int8 if mistake == "export_int8" else model
        if mistake == "export_int8":  # the INT8 LM cannot be traced; export its float twin
            exported = copy.deepcopy(model)
            with torch.no_grad():
                for p in exported.lm.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        onnx_dir = deploy.export_onnx(
            exported, config.tokenizer, out / "onnx", config.model_version
        )
        onnx_model = deploy.OnnxReportModel(onnx_dir)
        reference = int8 if mistake == "self_parity" else model
        parity, texts = deploy.run_parity(reference, int8, onnx_model, config)
        latency = deploy.run_latency(model, int8, onnx_model, config)
        if mistake == "no_onnx_latency":
            latency.pop("onnx")
        measured = model if mistake == "size_copy_paste" else int8
        sizes = {"fp32": deploy.state_dict_bytes(model) / 2**20,
                 "int8": deploy.state_dict_bytes(measured) / 2**20, "onnx": 1.0}  # fmt: skip
        if mistake == "raw_service":

            class Raw:
                def predict(self, image, context=None):
                    return deploy.build_response("", np.full(14, 0.5), thresholds=np.full(14, 0.5),
                                                 confidence_threshold=0.85, model_version="check",
                                                 processing_time_ms=0)  # fmt: skip

            service = Raw()
        else:
            service = deploy.package_service(onnx_model, config)
        return deploy.DeploymentResult(int8, onnx_model, service, {"onnx": onnx_dir}, sizes,
                                       parity, latency, texts)  # fmt: skip

    return prepare


def test_prepare_reference_and_alternative_pass() -> None:
    check_prepare_for_deployment(deploy.prepare_for_deployment)
    check_prepare_for_deployment(make_prepare())


@pytest.mark.parametrize(
    "mistake, message",
    [
        ("size_copy_paste", "int8 < fp32"),
        ("self_parity", "compared with the fp32 model"),
        ("no_onnx_latency", "latency p50"),
        ("raw_service", "rejects a truncated PNG"),
    ],
)
def test_prepare_mistakes_fail(mistake, message) -> None:
    with pytest.raises(CheckFailed, match=message):
        check_prepare_for_deployment(make_prepare(mistake))
