"""Graded checks for notebook 08 (deployment): INT8, ONNX export, input validation, and the
``prepare_for_deployment`` pipeline.

Every check runs the student's function on a tiny model
(:func:`course_utils.deploy.fixtures.tiny_model_and_data`: 64 px images, 16 visual tokens, a
2-layer 32-wide BioGPT trained for 2 seconds to write the fixture reports) or on the hand-made inputs of :func:`course_utils.deploy.fixtures.bad_inputs`,
and compares with the library's reference in :mod:`course_utils.deploy`. Tolerances are stated
in the messages.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy import errors as E
from ..deploy.fixtures import (
    bad_inputs,
    dicom_bytes,
    encode_png,
    gradient_image,
    tiny_model_and_data,
)
from ..deploy.parity import torch_encoder_outputs
from ..deploy.quantize import count_linears, is_dynamic_int8, state_dict_bytes
from ..deploy.validation import ImageLimits
from ..deploy.validation import validate_image as reference_validate_image
from . import Checker

INT8_LOGIT_TOLERANCE = 1.0  # max |Δlogit| of the INT8 LM vs fp32 on the fixture batch
INT8_TOP1_AGREEMENT = 0.95
ONNX_TOLERANCE = 1e-4
N_LM_LINEARS = 13  # 2 layers x (q, k, v, out, fc1, fc2) + the output projection


@lru_cache(maxsize=1)
def _fixture() -> tuple[Any, Any, Any]:
    from ..train import ReportDataset

    model, tok, split = tiny_model_and_data(seed=0)
    return model, tok, ReportDataset(split, tok, "findings", max_length=64)


def _fresh_model() -> Any:
    """A fresh copy of the fixture model (the student's code may modify what it is given)."""
    import copy

    return copy.deepcopy(_fixture()[0])


def _batch() -> dict[str, torch.Tensor]:
    from ..train import ReportCollator

    _, tok, ds = _fixture()
    return ReportCollator(tok.pad_token_id)([ds[i] for i in range(4)])


# ---------------------------------------------------------------------- q1
def check_quantize_language_model(quantize_language_model: Callable[[Any], Any]) -> None:
    """``quantize_language_model(model)``: a *copy* whose LM linears are dynamic INT8, encoder,
    projector and head untouched, smaller on disk, logits within tolerance of fp32."""
    from ..deploy.parity import logits_parity

    check = Checker("quantize_language_model")
    model = _fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = check.call(quantize_language_model, model)
    check.expect(q is not None and hasattr(q, "lm"), "returns the quantised model", "a model",
                 type(q).__name__)  # fmt: skip
    untouched = count_linears(model.lm)["int8"] == 0 and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )
    check.expect(untouched, "the fp32 model passed in is left unchanged (quantise a copy)",
                 "model.lm still fp32", count_linears(model.lm),
                 "copy.deepcopy(model) first, or quantize_dynamic(..., inplace=False) on a copy: "
                 "the fp32 model is the reference every parity check needs")  # fmt: skip
    check.expect(not q.training, "the quantised model is in eval mode", False, q.training)
    counts = count_linears(q.lm)
    check.expect(counts == {"float": 0, "int8": N_LM_LINEARS},
                 "every nn.Linear of the language model is dynamically quantised",
                 {"float": 0, "int8": N_LM_LINEARS}, counts,
                 "torch.ao.quantization.quantize_dynamic(lm, {nn.Linear}, dtype=torch.qint8) "
                 "replaces every Linear (attention, MLP and the output projection)")  # fmt: skip
    dtypes = {str(m.weight().dtype) for m in q.lm.modules() if is_dynamic_int8(m)}
    check.expect(dtypes == {"torch.qint8"}, "weights are stored as INT8 (torch.qint8)",
                 {"torch.qint8"}, dtypes, "pass dtype=torch.qint8, not torch.float16")  # fmt: skip
    others = {name: count_linears(getattr(q, name))["int8"]
              for name in ("vision", "projector", "detection_head")}  # fmt: skip
    same = all(torch.equal(before[k], v) for k, v in q.state_dict().items()
               if k.split(".")[0] in ("vision", "projector", "detection_head") and k in before)  # fmt: skip
    check.expect(not any(others.values()) and same,
                 "the vision encoder, projector and detection head stay full precision",
                 "no INT8 layers outside .lm", others,
                 "quantise model.lm only: the encoder runs once per study, the LM once per "
                 "token (case study: keep the encoder at fp16/fp32)")  # fmt: skip
    small, big = state_dict_bytes(q), state_dict_bytes(model)
    check.expect(small < big, "the quantised model is smaller on disk", f"< {big:,} bytes",
                 f"{small:,} bytes")  # fmt: skip
    parity = check.call(logits_parity, model, q, _batch())
    check.expect(parity["max_abs_logit_diff"] <= INT8_LOGIT_TOLERANCE
                 and parity["top1_agreement"] >= INT8_TOP1_AGREEMENT,
                 f"INT8 report logits agree with fp32 (max |Δlogit| <= {INT8_LOGIT_TOLERANCE}, "
                 f"top-1 agreement >= {INT8_TOP1_AGREEMENT:.0%}; seed 0 fixture)",
                 f"<= {INT8_LOGIT_TOLERANCE}", parity,
                 "dynamic quantisation keeps a float scale per tensor; casting weights to "
                 "int8 yourself destroys them")  # fmt: skip
    check.done()


# ---------------------------------------------------------------------- q2
def check_export_encoder_onnx(export_encoder_onnx: Callable[[Any, Any], Any]) -> None:
    """``export_encoder_onnx(model, path)``: ONNX graph with input ``images`` (B, 1, S, S) in
    [0, 1] and outputs ``visual_tokens`` (B, N, d_l) and ``label_logits`` (B, K) equal to
    PyTorch within 1e-4, for batch 1 and batch 3."""
    import onnxruntime as ort

    check = Checker("export_encoder_onnx")
    model = _fresh_model()
    _, _, ds = _fixture()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "encoder.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check.call(export_encoder_onnx, model, path)
        check.expect(path.is_file(), "the ONNX file is written to the given path", str(path),
                     sorted(p.name for p in Path(tmp).iterdir()))  # fmt: skip
        session = check.call(ort.InferenceSession, str(path), providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        check.expect(inputs == ["images"], "one input named 'images'", ["images"], inputs,
                     "torch.onnx.export(..., input_names=['images'])")  # fmt: skip
        check.expect({"visual_tokens", "label_logits"} <= set(outputs),
                     "outputs named 'visual_tokens' and 'label_logits'",
                     ["visual_tokens", "label_logits"], outputs,
                     "output_names=[...] in the order your wrapper returns them")  # fmt: skip
        for n in (1, 3):
            images = ds.pixels[:n].float()
            ref = torch_encoder_outputs(model, images)
            try:
                raw, error = session.run(None, {"images": images.numpy()}), ""
            except Exception as err:  # onnxruntime's shape errors
                raw, error = None, f"{type(err).__name__}: {str(err)[:200]}"
            check.expect(raw is not None, f"the graph runs on a batch of {n}",
                         "a dynamic batch axis", error,
                         "dynamic_axes={'images': {0: 'batch'}, 'visual_tokens': {0: "
                         "'batch'}, 'label_logits': {0: 'batch'}}")  # fmt: skip
            got = dict(zip(outputs, raw, strict=True))
            for name in ("visual_tokens", "label_logits"):
                check.expect(got[name].shape == ref[name].shape,
                             f"[batch {n}] {name} has the PyTorch shape", ref[name].shape,
                             got[name].shape,
                             "visual tokens come from the projector (B, N, d_l), label logits "
                             "from the detection head on the CLS token (B, K)")  # fmt: skip
                diff = float(np.abs(got[name] - ref[name]).max())
                check.expect(diff <= ONNX_TOLERANCE,
                             f"[batch {n}] {name} matches PyTorch (max |Δ| <= {ONNX_TOLERANCE})",
                             f"<= {ONNX_TOLERANCE}", diff,
                             "the graph takes images in [0, 1]: normalise inside it with "
                             "model.image_mean / model.image_std, as model.encode_images does")  # fmt: skip
    check.done()


# ---------------------------------------------------------------------- q3
def _valid_cases(limits: ImageLimits) -> list[tuple[str, Any, bool]]:
    """(name, input, expects a resize warning)."""
    s = limits.target_size
    ok = gradient_image((s, s))
    stored = np.rint(gradient_image((s, s), seed=1) * 4095).astype(np.uint16)
    return [
        ("gray float array, exact size", ok, False),
        ("uint8 array", np.rint(ok * 255).astype(np.uint8), False),
        ("RGB array with three equal channels", np.stack([ok] * 3, axis=-1), False),
        ("8-bit PNG bytes", encode_png(ok), False),
        ("16-bit PNG bytes of another size", encode_png(gradient_image((s + 40, s + 8)), 16), True),
        ("MONOCHROME1 DICOM bytes", dicom_bytes(stored, photometric="MONOCHROME1"), False),
        ("(1, H, W) tensor", torch.from_numpy(ok)[None], False),
    ]


def check_validate_image(validate_image: Callable[[Any, ImageLimits], Any]) -> None:
    """``validate_image(source, limits)``: each bad input raises its own error class
    (:mod:`course_utils.deploy.errors`); valid inputs come back as float32 (S, S) in [0, 1]
    equal to the reference, with an ``ImageResizedWarning`` exactly when resized."""
    check = Checker("validate_image")
    limits = ImageLimits(target_size=128)
    for case in bad_inputs(limits):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = validate_image(case.source, limits)
        except NotImplementedError:
            raise
        except Exception as err:
            right = isinstance(err, case.error)
            check.expect(right, f"[{case.name}] raises {case.error.__name__}", case.error.__name__,
                         f"{type(err).__name__}: {str(err)[:150]}",
                         f"{case.why}: raise deploy.errors.{case.error.__name__} (a plain "
                         "ValueError tells the caller nothing)")  # fmt: skip
            continue
        shape = getattr(out, "shape", type(out).__name__)
        check.expect(False, f"[{case.name}] is rejected", f"{case.error.__name__} ({case.why})",
                     f"accepted, returned {shape}",
                     "check channels, size limits and np.isfinite before converting; never "
                     "repair an input silently (nan_to_num, clip, averaging colour channels)")  # fmt: skip
    for name, source, resized in _valid_cases(limits):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = check.call(validate_image, source, limits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = reference_validate_image(source, limits)
        out = np.asarray(out)
        check.expect(out.shape == ref.shape and out.dtype == np.float32,
                     f"[{name}] returns a float32 ({limits.target_size}, {limits.target_size}) array",
                     (ref.shape, "float32"), (out.shape, str(out.dtype)))  # fmt: skip
        diff = float(np.abs(out - ref).max())
        check.expect(diff <= 1e-4, f"[{name}] pixels equal the reference (max |Δ| <= 1e-4)",
                     "<= 1e-4", diff,
                     "uint8 / 255, equal RGB channels averaged, bytes decoded with "
                     "deploy.validation.decode_image_bytes, resize with data.resize_image")  # fmt: skip
        warned = any(issubclass(w.category, E.ImageResizedWarning) for w in caught)
        check.expect(warned == resized,
                     f"[{name}] {'warns' if resized else 'does not warn'} about resizing",
                     "ImageResizedWarning" if resized else "no warning",
                     [w.category.__name__ for w in caught],
                     "warnings.warn(..., ImageResizedWarning) only when the size changes")  # fmt: skip
    check.done()


# ---------------------------------------------------------------------- q4
def check_prepare_for_deployment(prepare_for_deployment: Callable[[Any, Any], Any]) -> None:
    """``prepare_for_deployment(model, config)`` on the tiny fixture: a DeploymentResult whose
    INT8 model, ONNX export, parity texts, latency table, sizes and packaged service are real."""
    from ..deploy import DeploymentConfig, DeploymentResult, TorchBackend
    from ..deploy.quantize import quantize_language_model

    check = Checker("prepare_for_deployment")
    model = _fresh_model()
    _, tok, ds = _fixture()
    with tempfile.TemporaryDirectory() as tmp:
        config = DeploymentConfig(tok, ds, output_dir=tmp, max_new_tokens=24, latency_studies=2,
                                  batch_size=8, model_version="check")  # fmt: skip
        result = check.call(prepare_for_deployment, model, config)
        check.expect(isinstance(result, DeploymentResult), "returns a deploy.DeploymentResult",
                     "DeploymentResult", type(result).__name__)  # fmt: skip
        counts = count_linears(result.int8_model.lm)
        check.expect(counts["int8"] == N_LM_LINEARS and count_linears(model.lm)["int8"] == 0,
                     "step 1: int8_model is a quantised copy (the fp32 model is unchanged)",
                     N_LM_LINEARS, counts)  # fmt: skip
        images, prompts = ds.pixels[:3].float(), ds.prompts[:3]
        fp32_texts = TorchBackend(model, tok).generate(images, prompts, 24)
        onnx_texts = check.call(result.onnx_model.generate, images, prompts, 24)
        check.expect(onnx_texts == fp32_texts, "step 2: the ONNX export writes the fp32 reports",
                     fp32_texts, onnx_texts, "export the fp32 model, not the INT8 copy")  # fmt: skip
        need = {"encoder", "int8_generation", "onnx_generation"}
        check.expect(need <= set(result.parity), "step 3: parity has encoder, int8_generation "
                     "and onnx_generation", sorted(need), sorted(result.parity))  # fmt: skip
        ref_fp32 = TorchBackend(model, tok).generate(ds.pixels.float(), ds.prompts, 24)
        int8_ref = quantize_language_model(model)
        ref_int8 = TorchBackend(int8_ref, tok).generate(ds.pixels.float(), ds.prompts, 24)
        check.expect(result.texts.get("fp32") == ref_fp32 and result.texts.get("int8") == ref_int8,
                     "step 3: parity compares INT8 and ONNX reports against the fp32 model's",
                     "texts of the fp32 and the INT8 model", sorted(result.texts),
                     "pass the original model as the reference to deploy.run_parity")  # fmt: skip
        diff = result.parity.get("int8_logits", {}).get("max_abs_logit_diff", 0.0)
        check.expect(0.0 < diff <= INT8_LOGIT_TOLERANCE,
                     "step 3: the INT8 logits are compared with the fp32 model's (a small, "
                     "non-zero max |Δlogit|)", f"0 < max |Δlogit| <= {INT8_LOGIT_TOLERANCE}", diff,
                     "0 means INT8 was compared with itself: pass the original model as the "
                     "reference to deploy.run_parity")  # fmt: skip
        rows = {k: sorted(v) for k, v in result.latency.items()}
        check.expect(set(rows) == {"fp32", "int8", "onnx"}
                     and all({"p50_ms", "p95_ms", "studies_per_hour"} <= set(v) for v in rows.values()),
                     "step 4: latency p50 / p95 / studies per hour for fp32, int8 and onnx",
                     ["fp32", "int8", "onnx"], rows)  # fmt: skip
        sizes = result.sizes_mb
        check.expect(set(sizes) >= {"fp32", "int8", "onnx"} and sizes["int8"] < sizes["fp32"],
                     "step 4: sizes on disk (MB) with int8 < fp32", "fp32, int8, onnx", sizes)  # fmt: skip
        service = result.service
        broken = check.call(encode_png, gradient_image((64, 64)))[:-20]
        try:
            service.predict(broken, {"age": 50})
        except E.TruncatedImageError:
            rejected = True
        except Exception:  # noqa: BLE001 - any other outcome is the failure reported below
            rejected = False
        else:
            rejected = False
        check.expect(rejected, "step 5: the packaged service rejects a truncated PNG",
                     "TruncatedImageError", "accepted or another error",
                     "package with deploy.package_service (validation included)")  # fmt: skip
        report = check.call(service.predict, gradient_image((64, 64)), {"age": 50, "sex": "F"})
        check.expect(report.model_version == "check", "step 5: responses carry the model version",
                     "check", report.model_version)  # fmt: skip
    check.done()


__all__ = [
    "check_export_encoder_onnx",
    "check_prepare_for_deployment",
    "check_quantize_language_model",
    "check_validate_image",
]
