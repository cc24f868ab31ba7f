"""`prepare_for_deployment(model, config)`: the case study's five deployment steps (§3.8).

1. **Quantise** the LM's linear layers to INT8 (dynamic); the vision encoder stays fp32 on CPU
   (on a GPU: fp16, :func:`~course_utils.deploy.quantize.fp16_encoder`);
2. **export** encoder + projector + head and the LM's cached decoding step to ONNX;
3. **validate** that INT8 and ONNX match full precision: max |Δlogit| (encoder graph, INT8
   teacher-forced logits), identical greedy text or >= 99 % CheXpert-label agreement;
4. **benchmark** latency per study (p50 / p95, studies/hour) and size on disk, fp32 / INT8 /
   ONNX;
5. **package** the ONNX model behind a :class:`ReportService` (input validation, QA, the §4
   response) and write a ``deployment.json`` summary.

Each step is a function of its own (:func:`run_parity`, :func:`run_latency`,
:func:`package_service`) so notebook 08 can show them one at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backends import OnnxBackend, TorchBackend, generate_all
from .benchmark import compare_latency
from .onnx_export import OnnxReportModel, export_onnx
from .parity import encoder_parity, generation_parity, logits_parity
from .quantize import count_linears, directory_bytes, quantize_language_model, state_dict_bytes
from .service import ReportService


@dataclass
class DeploymentConfig:
    """What :func:`prepare_for_deployment` needs beyond the model.

    Attributes:
        tokenizer: the model's tokenizer.
        dataset: a :class:`~course_utils.train.ReportDataset` (the test split): parity and
            latency studies come from it, prompts included.
        output_dir: where the ONNX export, INT8 weights and ``deployment.json`` go
            (default ``runs/08_deployment``).
        model_version: written into every response.
        max_new_tokens: generation budget.
        parity_studies: studies for the generation parity (``None``: the whole dataset).
        latency_studies: studies timed one at a time on each backend.
        batch_size: batch size of the parity generation.
        encoder_tolerance: max |Δ| allowed between the ONNX encoder graph and PyTorch.
        min_label_agreement: the generation bar when texts differ (0.99).
        clock: ``"wall"`` or ``"cpu"`` (see :mod:`course_utils.deploy.benchmark`).
        progress: tqdm bars.
    """

    tokenizer: Any
    dataset: Any
    output_dir: str | os.PathLike | None = None
    model_version: str = "v0.1.0-tiny"
    max_new_tokens: int = 100
    parity_studies: int | None = None
    latency_studies: int = 20
    batch_size: int = 64
    encoder_tolerance: float = 1e-4
    min_label_agreement: float = 0.99
    clock: str = "wall"
    progress: bool = False

    def resolved_output_dir(self) -> Path:
        from ..config import runs_dir

        return Path(self.output_dir) if self.output_dir else runs_dir() / "08_deployment"


@dataclass
class DeploymentResult:
    """Everything :func:`prepare_for_deployment` made and measured."""

    int8_model: nn.Module
    onnx_model: OnnxReportModel
    service: ReportService
    paths: dict[str, Path]
    sizes_mb: dict[str, float]
    parity: dict[str, Any]
    latency: dict[str, dict[str, float]]
    texts: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        """Every parity check passed."""
        return bool(
            self.parity["encoder"]["passed"]
            and self.parity["int8_generation"]["passed"]
            and self.parity["onnx_generation"]["passed"]
        )

    def summary(self) -> Any:
        """A table: size (MB), p50 / p95 ms per study, studies/hour, speedup, parity."""
        import pandas as pd

        rows = {}
        parity = {"fp32": "reference", "int8": self.parity["int8_generation"],
                  "onnx": self.parity["onnx_generation"]}  # fmt: skip
        for name in ("fp32", "int8", "onnx"):
            lat = self.latency[name]
            p = parity[name]
            rows[name] = {
                "size_mb": self.sizes_mb[name],
                "p50_ms": lat["p50_ms"],
                "p95_ms": lat["p95_ms"],
                "studies_per_hour": lat["studies_per_hour"],
                "speedup_vs_fp32": lat["speedup"],
                "identical_text": 1.0 if isinstance(p, str) else p["identical_text"],
                "label_agreement": 1.0 if isinstance(p, str) else p["pair_agreement"],
            }
        return pd.DataFrame(rows).T

    def to_json(self) -> dict[str, Any]:
        return {
            "paths": {k: str(v) for k, v in self.paths.items()},
            "sizes_mb": self.sizes_mb,
            "parity": _jsonable(self.parity),
            "latency": self.latency,
            "passed": self.passed,
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def _images(dataset: Any, indices: list[int]) -> torch.Tensor:
    return dataset.pixels[indices].float()


def run_parity(
    model: nn.Module,
    int8_model: nn.Module,
    onnx_model: OnnxReportModel,
    config: DeploymentConfig,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Step 3: encoder max |Δ|, INT8 logits, and generation parity on the dataset.

    Returns (parity dict, generated texts per backend).
    """
    from ..train.data import ReportCollator

    ds, tok = config.dataset, config.tokenizer
    n = len(ds) if config.parity_studies is None else min(config.parity_studies, len(ds))
    idx = list(range(n))
    fixed = _images(ds, idx[:8])
    parity: dict[str, Any] = {
        "encoder": encoder_parity(model, onnx_model, fixed, config.encoder_tolerance)
    }
    batch = ReportCollator(tok.pad_token_id)([ds[i] for i in idx[:16]])
    parity["int8_logits"] = logits_parity(model, int8_model, batch)
    images, prompts = _images(ds, idx), [ds.prompts[i] for i in idx]
    texts = {}
    backends = {"fp32": TorchBackend(model, tok), "int8": TorchBackend(int8_model, tok, "int8"),
                "onnx": OnnxBackend(onnx_model)}  # fmt: skip
    for name, backend in backends.items():
        texts[name] = generate_all(backend, images, prompts, batch_size=config.batch_size,
                                   max_new_tokens=config.max_new_tokens, progress=config.progress)  # fmt: skip
    for name in ("int8", "onnx"):
        parity[f"{name}_generation"] = generation_parity(
            texts["fp32"], texts[name], config.min_label_agreement
        )
    return parity, texts


def run_latency(
    model: nn.Module,
    int8_model: nn.Module,
    onnx_model: OnnxReportModel,
    config: DeploymentConfig,
) -> dict[str, dict[str, float]]:
    """Step 4: per-study latency (detection probabilities + greedy report, batch of 1),
    timed interleaved across the three backends."""
    ds, tok = config.dataset, config.tokenizer
    n = min(config.latency_studies, len(ds))
    backends = {"fp32": TorchBackend(model, tok), "int8": TorchBackend(int8_model, tok, "int8"),
                "onnx": OnnxBackend(onnx_model)}  # fmt: skip

    def study(backend: Any) -> Any:
        def run(i: int) -> None:
            image = _images(ds, [i])
            backend.label_probs(image)
            backend.generate(image, [ds.prompts[i]], config.max_new_tokens)

        return run

    return compare_latency({k: study(b) for k, b in backends.items()}, n, warmup=2,
                           clock=config.clock)  # fmt: skip


def package_service(onnx_model: OnnxReportModel, config: DeploymentConfig) -> ReportService:
    """Step 5: the ONNX model behind validation, QA and the §4 response schema."""
    return ReportService(
        OnnxBackend(onnx_model), model_version=config.model_version,
        target=getattr(config.dataset, "target", "findings"),
        prompt_context=bool(getattr(config.dataset, "prompt_context", True)),
        max_new_tokens=config.max_new_tokens,
    )  # fmt: skip


def prepare_for_deployment(model: nn.Module, config: DeploymentConfig) -> DeploymentResult:
    """Quantise, export, validate, benchmark and package ``model`` (see the module docstring).

    The fp32 model is not modified (INT8 is a copy). Writes under ``config.output_dir``:
    ``onnx/`` (three graphs + tokenizer), ``int8_state_dict.pt``, ``fp32_state_dict.pt`` and
    ``deployment.json``.
    """
    if not isinstance(config, DeploymentConfig):
        raise TypeError(f"config must be a DeploymentConfig, got {type(config).__name__}")
    out = config.resolved_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    int8_model = quantize_language_model(model)  # step 1 (encoder stays fp32 on CPU)
    onnx_dir = export_onnx(
        model,
        config.tokenizer,
        out / "onnx",
        config.model_version,
        target=getattr(config.dataset, "target", "findings"),
        prompt_context=bool(getattr(config.dataset, "prompt_context", True)),
        max_new_tokens=config.max_new_tokens,
    )  # step 2
    onnx_model = OnnxReportModel(onnx_dir)
    parity, texts = run_parity(model, int8_model, onnx_model, config)  # step 3
    latency = run_latency(model, int8_model, onnx_model, config)  # step 4
    paths = {
        "onnx": onnx_dir,
        "int8": out / "int8_state_dict.pt",
        "fp32": out / "fp32_state_dict.pt",
    }
    torch.save(int8_model.state_dict(), paths["int8"])
    torch.save(model.state_dict(), paths["fp32"])
    sizes = {"fp32": state_dict_bytes(model) / 2**20, "int8": state_dict_bytes(int8_model) / 2**20,
             "onnx": sum(directory_bytes(p) for p in onnx_dir.glob("*.onnx")) / 2**20}  # fmt: skip
    parity["int8_linears"] = count_linears(int8_model.lm)
    result = DeploymentResult(
        int8_model,
        onnx_model,
        package_service(onnx_model, config),
        paths,
        sizes,
        parity,
        latency,
        texts,
    )  # step 5
    (out / "deployment.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


__all__ = [
    "DeploymentConfig",
    "DeploymentResult",
    "package_service",
    "prepare_for_deployment",
    "run_latency",
    "run_parity",
]
