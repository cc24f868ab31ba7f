"""Benchmark: the GPU half of notebook 08's bars (issue 7), on a machine with CUDA.

The ``colab`` architecture (RAD-DINO ViT-B/14 at 518 px + BioGPT 347 M, random weights: the
device machine cannot download checkpoints) reporting one study at a time in fp16, against the
case study's P50 < 5 s and P99 < 15 s, plus studies/hour; and the same LM's INT8 vs fp32
decoding on 2 CPU threads of that machine (``colab_int8_cpu``), which shows what dynamic INT8
gains once the matrices are large. Without CUDA it reports ``skipped`` and ``run.py`` keeps the
last measurement.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _bench_deploy() -> Any:
    spec = importlib.util.spec_from_file_location("bench_deploy", HERE / "bench_deploy.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def bench_deploy_gpu(threads: int = 2) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    deploy = _bench_deploy()
    gpu = deploy.bench_gpu()
    return {"colab_gpu": gpu, "colab_int8_cpu": deploy.bench_colab_int8_cpu(threads),
            "targets": gpu["targets"]}  # fmt: skip


if __name__ == "__main__":
    import json

    print(json.dumps(bench_deploy_gpu(), indent=2))
