"""INT8 quantisation, ONNX export and onnxruntime generation, parity, prepare_for_deployment.

A tiny random model (64 px images, 16 visual tokens, 2-layer 32-wide BioGPT) stands in for the
course model: the properties tested here do not depend on training.
"""

from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from course_utils.deploy import (
    DeploymentConfig,
    FullRangeDynamicLinear,
    OnnxBackend,
    OnnxReportModel,
    TorchBackend,
    count_linears,
    cpu_has_vnni,
    encoder_parity,
    export_onnx,
    fp16_encoder,
    generation_parity,
    label_agreement,
    logits_parity,
    prepare_for_deployment,
    quantize_language_model,
    state_dict_bytes,
)
from course_utils.deploy.backends import greedy_generate
from course_utils.deploy.fixtures import tiny_model_and_data
from course_utils.train import ReportCollator, ReportDataset


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


MAX_NEW = 24


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny tensors, 1 thread


@pytest.fixture(scope="module")
def tiny():
    model, tok, split = tiny_model_and_data(seed=0)
    ds = ReportDataset(split, tok, "findings", max_length=64)
    return model, tok, ds


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    model, tok, _ = tiny
    directory = export_onnx(model, tok, tmp_path_factory.mktemp("onnx"), "test-v1",
                            prompt_context=True)  # fmt: skip
    return OnnxReportModel(directory, threads=1)


def test_quantize_copies_and_converts_every_lm_linear(tiny) -> None:
    model, _, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_language_model(model)
    assert count_linears(model.lm) == {"float": 13, "int8": 0}  # original untouched
    assert count_linears(q.lm) == {"float": 0, "int8": 13}  # 2 x (q, k, v, out, fc1, fc2) + head
    assert count_linears(q.vision)["int8"] == 0 and isinstance(q.projector.fc1, nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert state_dict_bytes(q) < state_dict_bytes(model)
    with pytest.raises(TypeError, match="language model"):
        quantize_language_model(nn.Linear(2, 2))


def test_cpu_has_vnni_reads_cpuinfo_flags(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_vnni(info)  # AVX-512 alone multiplies into int16
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni(info)
    info.write_text("flags\t\t: fpu avx2 avx_vnni\n")
    assert cpu_has_vnni(info)
    assert not cpu_has_vnni(tmp_path / "missing")  # unknown -> the safe 7-bit default


def test_full_range_int8_keeps_weights_and_swaps_the_kernel(tiny) -> None:
    model, _, _ = tiny
    seven = quantize_language_model(model)
    with pytest.warns(UserWarning, match="VNNI") if not cpu_has_vnni() else _no_warning():
        eight = quantize_language_model(model, full_range=True)
    layers = [m for m in eight.lm.modules() if isinstance(m, FullRangeDynamicLinear)]
    assert len(layers) == 13 and count_linears(eight.lm) == {"float": 0, "int8": 13}
    assert not any(isinstance(m, FullRangeDynamicLinear) for m in seven.lm.modules())
    a, b = seven.state_dict(), eight.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():  # same packed int8 weights: only the activation range differs
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
    with pytest.raises(ValueError, match="INT8"):
        quantize_language_model(model, dtype=torch.float16, full_range=True)


@pytest.mark.skipif(not cpu_has_vnni(), reason="8-bit activations are exact only with VNNI/AMX")
def test_full_range_int8_halves_the_activation_rounding_error() -> None:
    torch.manual_seed(0)
    lm = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    holder = nn.Module()
    holder.lm = lm
    x = torch.randn(64, 128) * 3
    with torch.no_grad():
        ref = lm(x)
        err = {bits: (quantize_language_model(holder, full_range=bits == 8).lm(x) - ref).norm()
               / ref.norm() for bits in (7, 8)}  # fmt: skip
    assert 0 < err[8] < 0.8 * err[7]  # one more bit: about half the activation step
    assert err[7] < 0.05  # both are rounding, not garbage


def test_int8_logits_close_to_fp32(tiny) -> None:
    model, tok, ds = tiny
    batch = ReportCollator(tok.pad_token_id)([ds[i] for i in range(4)])
    q = quantize_language_model(model)
    same = logits_parity(model, model, batch)
    assert same["max_abs_logit_diff"] == 0.0 and same["top1_agreement"] == 1.0
    close = logits_parity(model, q, batch)
    assert 0.0 < close["max_abs_logit_diff"] < 1.0  # int8 rounding, not garbage
    assert close["mean_abs_logit_diff"] < 0.2
    assert close["max_abs_label_logit_diff"] == 0.0  # the head is not quantised
    assert close["top1_agreement"] >= 0.95


def test_greedy_loop_matches_model_generate(tiny) -> None:
    model, tok, ds = tiny
    images, prompts = ds.pixels[:5].float(), ds.prompts[:5]
    ref = model.generate(images, prompt=prompts, tokenizer=tok, max_new_tokens=MAX_NEW)
    assert greedy_generate(model, tok, images, prompts, MAX_NEW) == ref
    # left padding: prompts of different lengths in one batch give the same texts as alone
    mixed = [
        prompts[0],
        "<findings> write the findings section of the report for this chest x-ray .",
    ]
    together = greedy_generate(model, tok, images[:2], mixed, MAX_NEW)
    alone = [
        greedy_generate(model, tok, images[i : i + 1], [mixed[i]], MAX_NEW)[0] for i in range(2)
    ]
    assert together == alone


def test_finished_reports_leave_the_batch_without_changing_others(tiny, exported) -> None:
    """Reports end at different lengths; batched decoding (rows dropped as they finish) gives
    exactly what each study gets alone, in PyTorch and onnxruntime."""
    model, tok, ds = tiny
    images, prompts = ds.pixels.float(), ds.prompts
    result = model.generate(images, prompt=prompts, tokenizer=tok, max_new_tokens=MAX_NEW,
                            return_scores=True)  # fmt: skip
    lengths = [len(ids) for ids in result.token_ids]
    assert len(set(lengths)) >= 3 and max(lengths) < MAX_NEW  # every report ends with <eos>
    assert result.texts[1] == "there is a small left pleural effusion. no focal consolidation."
    batched = greedy_generate(model, tok, images, prompts, MAX_NEW)
    alone = [greedy_generate(model, tok, images[i : i + 1], [prompts[i]], MAX_NEW)[0]
             for i in range(len(prompts))]  # fmt: skip
    assert batched == alone == result.texts
    assert exported.generate(images, prompts, MAX_NEW) == result.texts


def test_onnx_encoder_matches_pytorch(tiny, exported) -> None:
    model, _, ds = tiny
    for n in (1, 3):  # dynamic batch axis
        result = encoder_parity(model, exported, ds.pixels[:n].float())
        assert result["passed"], result
        assert result["max_abs_logit_diff"] < 1e-5
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        exported.encode(np.zeros((1, 1, 32, 32), np.float32))


def test_onnx_generation_is_identical_to_pytorch(tiny, exported) -> None:
    model, tok, ds = tiny
    images, prompts = ds.pixels[:6].float(), ds.prompts[:6]
    ref = model.generate(images, prompt=prompts, tokenizer=tok, max_new_tokens=MAX_NEW)
    assert exported.generate(images, prompts, MAX_NEW) == ref
    assert exported.meta["model_version"] == "test-v1" and exported.meta["prompt_context"] is True
    probs = OnnxBackend(exported).label_probs(images)
    assert np.allclose(probs, TorchBackend(model, tok).label_probs(images), atol=1e-5)


def test_label_prompt_model_exports_and_generates_identically(tmp_path) -> None:
    """The course models feed the head's probabilities to the LM as K tokens: the ONNX runtime
    rebuilds them from the exported tables and writes exactly PyTorch's reports."""
    model, tok, split = tiny_model_and_data(seed=0, label_prompt=True)
    ds = ReportDataset(split, tok, "findings", max_length=64)
    images, prompts = ds.pixels.float(), ds.prompts
    ref = model.generate(images, prompt=prompts, tokenizer=tok, max_new_tokens=MAX_NEW)
    assert sum(r == t.lower() for r, t in zip(ref, ds.reports, strict=True)) >= 6  # learned
    assert greedy_generate(model, tok, images, prompts, MAX_NEW) == ref
    onnx_model = OnnxReportModel(export_onnx(model, tok, tmp_path / "lp", "lp-v1"), threads=1)
    assert onnx_model.label_prompt is not None
    assert onnx_model.prefix(onnx_model.encode(images[:2])).shape[1] == (
        model.num_visual_tokens() + model.num_label_tokens
    )
    assert onnx_model.generate(images, prompts, MAX_NEW) == ref


def test_export_without_metadata_is_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="onnx_model.json"):
        OnnxReportModel(tmp_path)


def test_label_agreement_by_hand() -> None:
    ref = ["No pneumothorax. Small left pleural effusion.", "The lungs are clear."]
    same = label_agreement(ref, ref)
    assert same == {"pair_agreement": 1.0, "study_agreement": 1.0, "identical_text": 1.0,
                    "n_studies": 2.0}  # fmt: skip
    # Study 0 loses the effusion (1 -> blank) and so becomes No Finding (blank -> 1): 2 of its
    # 14 pairs differ; study 1 is reworded with the same labels.
    other = ["No pneumothorax.", "Lungs are clear."]
    got = label_agreement(ref, other)
    assert got["pair_agreement"] == pytest.approx(26 / 28)
    assert got["study_agreement"] == 0.5 and got["identical_text"] == 0.0
    assert (
        generation_parity(ref, other, 0.92)["passed"]
        and not generation_parity(ref, other)["passed"]
    )
    with pytest.raises(ValueError, match="2 reference reports for 1"):
        label_agreement(ref, other[:1])


def test_fp16_encoder_copy(tiny) -> None:
    model, _, _ = tiny
    half = fp16_encoder(model)
    assert next(half.vision.parameters()).dtype == torch.float16
    assert next(model.vision.parameters()).dtype == torch.float32


def test_prepare_for_deployment_end_to_end(tiny, tmp_path) -> None:
    model, tok, ds = tiny
    config = DeploymentConfig(tok, ds, output_dir=tmp_path, max_new_tokens=MAX_NEW,
                              latency_studies=2, batch_size=4)  # fmt: skip
    result = prepare_for_deployment(model, config)
    assert result.parity["encoder"]["passed"]
    assert result.parity["onnx_generation"]["identical_text"] == 1.0
    assert result.parity["int8_linears"] == {"float": 0, "int8": 13}
    assert result.sizes_mb["int8"] < result.sizes_mb["fp32"]
    assert set(result.latency) == {"fp32", "int8", "onnx"}
    assert result.latency["fp32"]["speedup"] == 1.0 and result.latency["onnx"]["n"] == 2
    table = result.summary()
    assert list(table.index) == ["fp32", "int8", "onnx"] and "p95_ms" in table.columns
    saved = json.loads((tmp_path / "deployment.json").read_text())
    assert saved["parity"]["encoder"]["passed"] is True
    assert len(result.texts["fp32"]) == len(ds)
    report = result.service.predict(ds.pixels[0, 0].numpy(), {"age": 50, "sex": "F"})
    assert report.model_version == "v0.1.0-tiny" and report.report_id.startswith("rpt-")
    with pytest.raises(TypeError, match="DeploymentConfig"):
        prepare_for_deployment(model, {"tokenizer": tok})
