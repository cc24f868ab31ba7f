"""Benchmark: the CUDA paths (colab profile) - AMP step time, QLoRA memory, GPU generation latency.

Runs only where CUDA is present (``{"skipped": ...}`` otherwise), with models built from config
(random weights: the real checkpoints cannot be downloaded offline, and step time and memory
depend on the architecture, not on the weight values):

* ``colab_step``: one training step of the colab ``RadiologyMultimodalModel`` (RAD-DINO-sized
  DINOv2 at 518 px -> projector 768 -> 2048 -> 1024 -> BioGPT-sized LM), batch 8, 128 text
  tokens, stage 2 (projector + LM + head trainable), in fp32, fp16 (GradScaler) and bf16 autocast;
  median of 10 steps after 3 warm-ups, and the peak GPU memory of each.
* ``qlora``: Qwen2-VL-2B (real sizes) loaded in 4-bit NF4 through bitsandbytes with LoRA on the
  decoder attention, one forward/backward step at batch 2, 448 x 448 images, 128 tokens: weight
  memory, peak memory, step time, trainable fraction; and the same model in bf16 for contrast.
* ``tiny_generation``: greedy and beam-4 latency of the tiny model on the GPU (ms per report).

``python benchmarks/bench_gpu.py`` prints the JSON.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from typing import Any

import torch


def _sync_time(fn, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall-clock ms of ``fn()`` with CUDA synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _colab_one(precision: str, batch: int, tokens: int) -> dict[str, Any]:
    from course_utils.model import ModelConfig, RadiologyMultimodalModel

    torch.manual_seed(0)
    cfg = ModelConfig.colab(vision_checkpoint=None, lm_checkpoint=None)
    model = RadiologyMultimodalModel(cfg, load_weights=False).cuda().train()
    model.set_trainable(projector=True, lm=True, head=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    size = int(cfg.vision_config["image_size"])
    images = torch.rand(batch, 1, size, size, device="cuda")
    ids = torch.randint(3, int(cfg.lm_config["vocab_size"]), (batch, tokens), device="cuda")
    labels = ids.clone()
    labels[:, :16] = -100  # the prompt
    targets = torch.randint(0, 2, (batch, 14), device="cuda").float()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(images, ids, labels=labels, finding_targets=targets).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    ms = _sync_time(step)
    return {
        "step_ms": ms,
        "samples_per_second": batch / (ms / 1000),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "trainable_parameters": sum(p.numel() for p in params),
    }


def colab_step(batch: int = 8, tokens: int = 128) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": batch, "text_tokens": tokens}
    for precision in ("fp32", "fp16", "bf16"):
        out[precision] = _colab_one(precision, batch, tokens)
        torch.cuda.empty_cache()
    return out


def _qlora_one(path: str, mode: str, batch: int, tokens: int, side: int) -> dict[str, Any]:
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from course_utils.model.qwen2vl import (
        Qwen2VLReportModel,
        _load_pretrained_qwen,
        apply_lora,
        trainable_fraction,
    )

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    if mode == "qlora_4bit":
        base = _load_pretrained_qwen(path, True, torch.bfloat16, True)
    else:
        base = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).cuda()
        base.gradient_checkpointing_enable()
        base.enable_input_require_grads()
    weights_gb = torch.cuda.memory_allocated() / 2**30
    proc = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side)
    model = Qwen2VLReportModel(apply_lora(base, 8, 16, 0.05), proc).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    images = torch.rand(batch, 1, side, side)
    ids = torch.randint(3, 150000, (batch, tokens), device="cuda")
    labels = ids.clone()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(images, ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = _sync_time(step, repeats=5, warmup=2)
    return {
        "weights_gb": weights_gb,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "step_ms": ms,
        "trainable_fraction": trainable_fraction(model),
    }


def qlora(batch: int = 2, tokens: int = 128, side: int = 448) -> dict[str, Any]:
    from transformers import Qwen2VLForConditionalGeneration

    from course_utils.model.qwen2vl import qwen2vl_config

    out: dict[str, Any] = {"batch": batch, "text_tokens": tokens, "image_side": side}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        with torch.device("cuda"):  # random init of 2B parameters is minutes on a CPU
            base = Qwen2VLForConditionalGeneration._from_config(
                qwen2vl_config("2b"), dtype=torch.bfloat16
            )
        base.save_pretrained(tmp)
        del base
        for mode in ("qlora_4bit", "lora_bf16"):
            try:
                out[mode] = _qlora_one(tmp, mode, batch, tokens, side)
            except Exception as err:  # noqa: BLE001 - record it, keep measuring the other mode
                out[mode] = {"error": f"{type(err).__name__}: {err}"}
    return out


def tiny_generation(studies: int = 64) -> dict[str, Any]:
    from course_utils.baseline import FIXED_NORMAL_REPORT
    from course_utils.model import ModelConfig, RadiologyMultimodalModel, build_prompt
    from course_utils.text import train_word_tokenizer

    torch.manual_seed(0)
    tok = train_word_tokenizer([FIXED_NORMAL_REPORT, build_prompt("findings")] * 4, min_frequency=1)
    model = RadiologyMultimodalModel(
        ModelConfig.tiny(len(tok), visual_grid=4, vision_checkpoint=None)
    ).cuda()
    model.eval()
    images = torch.rand(studies, 1, 128, 128, device="cuda")
    out: dict[str, Any] = {"studies": studies, "max_new_tokens": 60}
    for beams in (1, 4):
        gen = functools.partial(model.generate, images, None, tok, 60, beams)
        ms = _sync_time(gen, repeats=3, warmup=1)
        out[f"beam{beams}_ms_per_report"] = ms / studies
    return out


def tiny_amp_training(mixed_precision: str = "bf16", studies: int = 256, seconds: float = 15.0):
    """``train_two_stage`` end to end on the GPU with accelerate's mixed precision."""
    from course_utils.baseline import FIXED_NORMAL_REPORT
    from course_utils.model import ModelConfig, RadiologyMultimodalModel
    from course_utils.text import train_word_tokenizer
    from course_utils.train import ReportDataset, TrainConfig, train_two_stage
    from course_utils.train.data import tokenizer_corpus

    torch.manual_seed(0)
    data = {
        "pixels": torch.rand(studies, 1, 128, 128),
        "reports": [FIXED_NORMAL_REPORT] * studies,
        "labels": torch.zeros(studies, 14),
        "metadata": [
            {"dicom_id": f"d{i}", "age": 60, "sex": "F", "indication": ""} for i in range(studies)
        ],
    }
    tok = train_word_tokenizer(tokenizer_corpus(data, ("findings",)), min_frequency=1)
    model = RadiologyMultimodalModel(
        ModelConfig.tiny(len(tok), visual_grid=4, vision_checkpoint=None)
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.tiny(
            mixed_precision=mixed_precision,
            max_train_seconds=seconds,
            output_dir=tmp,
            progress=False,
            stage2_epochs=2,
        )
        ds = ReportDataset(data, tok, max_length=cfg.max_length)
        hist = train_two_stage(model, ds, ds, cfg)
    return {
        "mixed_precision": mixed_precision,
        "device": str(next(model.parameters()).device),
        "samples_per_second": hist["samples_per_second"],
        "tokens_per_second": hist["tokens_per_second"],
        "train_loss_first_last": [hist["train_loss"][0], hist["train_loss"][-1]],
        "peak_memory_mb": hist["peak_memory_mb"],
    }


def bench_gpu() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    for name, fn in (
        ("tiny_amp_bf16", tiny_amp_training),
        ("tiny_amp_fp16", functools.partial(tiny_amp_training, "fp16")),
        ("colab_step", colab_step),
        ("qlora", qlora),
        ("tiny_generation", tiny_generation),
    ):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as err:  # record and go on: one failing path must not hide the others
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        result[name]["bench_seconds"] = time.perf_counter() - t0
    return result


if __name__ == "__main__":
    print(json.dumps(bench_gpu(), indent=1))
