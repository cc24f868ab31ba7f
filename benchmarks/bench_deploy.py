"""Benchmark: deployment bars of issue 7 (notebook 08), measured on the course model.

On the trained ``tiny`` findings model (``course_model(target="findings")``), test split,
``torch.set_num_threads(2)`` and onnxruntime with 2 intra-op threads:

* **INT8 vs fp32 generation** - greedy reports with the same KV-cache loop
  (:func:`course_utils.deploy.backends.greedy_generate`): per-study latency at batch 1 (timed
  interleaved, medians compared) and batched throughput (batch 64); label agreement of the
  INT8 reports with the fp32 ones over the whole test split. Bar: >= 1.5x faster with >= 99 %
  CheXpert-label agreement (study x label pairs). ``int8_amdahl_bound`` profiles the fp32 loop:
  the share of its time in linear layers bounds what *any* INT8 linear kernel can gain (the
  tiny LM spends most of a step in dispatch and small non-linear ops). ``int8_variants`` sets the
  course INT8 beside two others, each against fp32 on its own runtime and against fp32 PyTorch:
  8-bit activations (``full_range``, VNNI / AMX CPUs only) and onnxruntime's INT8 decoder.
* **onnxruntime vs eager PyTorch, encoder path** (encoder + projector + head, batch 1,
  interleaved). Bar: >= 1.5x. Also the full study (probabilities + greedy report) per backend.
* **dynamic batching** - 8 concurrent requests through the FastAPI app: max batch 8 / 100 ms
  window vs one at a time (max batch 1). Bar: >= 2x throughput.
* parity (encoder max |Δlogit|, identical text / label agreement of ONNX and INT8), sizes on
  disk, per-study p50 / p95 and studies/hour for fp32 / INT8 / ONNX, USD per study.

With a CUDA GPU (``--gpu``), the ``colab`` architecture (RAD-DINO ViT-B/14 at 518 px + BioGPT
347 M, built from config with random weights since the device machine cannot download
checkpoints): latency per study with the encoder in fp16 and a fixed 100-token greedy report
(random weights never emit ``<eos>``, so every study generates the full budget: an upper bound
for real reports of up to 100 tokens), P50/P99 against the case study's 5 s / 15 s, and
studies/hour. ``--colab-int8-cpu`` times the colab-size LM's INT8 vs fp32 decoding on 2 CPU
threads.

Run ``python benchmarks/bench_deploy.py`` to print the JSON; ``benchmarks/run.py --only deploy``
stores it in ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

TARGETS = {
    "int8_generation_speedup": 1.5,
    "int8_label_agreement": 0.99,
    "onnx_encoder_speedup": 1.5,
    "batching_speedup": 2.0,
    "gpu_p50_s": 5.0,
    "gpu_p99_s": 15.0,
}


def _course(threads: int) -> Any:
    import torch

    from course_utils.train import course_model

    torch.set_num_threads(threads)
    return course_model(target="findings", progress=False)


def bench_tiny(threads: int = 2, latency_studies: int = 30, encoder_calls: int = 200) -> dict:
    """The CPU bars on the tiny course model (see the module docstring)."""
    import torch

    from course_utils import deploy
    from course_utils.deploy.backends import greedy_generate
    from course_utils.deploy.benchmark import compare_latency

    cm = _course(threads)
    model, tok, ds = cm.model.eval(), cm.tokenizer, cm.datasets["test"]
    max_new = cm.config.max_new_tokens
    out: dict[str, Any] = {"threads": threads, "test_studies": len(ds), "max_new_tokens": max_new}
    int8 = deploy.quantize_language_model(model)
    vnni = deploy.cpu_has_vnni()
    out["cpu_has_vnni"] = vnni
    tmp = tempfile.mkdtemp(prefix="bench-deploy-")
    start = time.perf_counter()
    onnx_dir = deploy.export_onnx(model, tok, os.path.join(tmp, "onnx"), "bench",
                                  prompt_context=cm.config.prompt_context,
                                  max_new_tokens=max_new)  # fmt: skip
    out["onnx_export_seconds"] = time.perf_counter() - start
    deploy.quantize_onnx_decoder(onnx_dir)
    onnx = deploy.OnnxReportModel(onnx_dir, threads=threads)
    onnx_int8 = deploy.OnnxReportModel(onnx_dir, threads=threads, decoder_file="decoder.int8.onnx")
    images, prompts = ds.pixels.float(), list(ds.prompts)

    # parity over the whole test split
    enc = deploy.encoder_parity(model, onnx, images[:32])
    models = {"fp32": model, "int8": int8}
    if vnni:  # 8-bit activations are exact only with int8 dot-product instructions
        models["int8_full_range"] = deploy.quantize_language_model(model, full_range=True)
    backends = {name: deploy.TorchBackend(m, tok) for name, m in models.items()}
    backends |= {"onnx": deploy.OnnxBackend(onnx), "onnx_int8": deploy.OnnxBackend(onnx_int8)}
    gen_seconds = {name: 0.0 for name in backends}
    for backend in backends.values():  # warm-up: first calls allocate and pick kernels
        backend.generate(images[:8], prompts[:8], max_new)
    texts: dict[str, list[str]] = {name: [] for name in backends}
    for start in range(0, len(images), 64):  # interleaved per batch of 64
        chunk = slice(start, start + 64)
        for name, backend in backends.items():
            tick = time.perf_counter()
            texts[name] += backend.generate(images[chunk], prompts[chunk], max_new)
            gen_seconds[name] += time.perf_counter() - tick
    out["parity"] = {"encoder_max_abs_diff": enc["max_abs_diff"]} | {
        name: deploy.generation_parity(texts["fp32"], texts[name])
        for name in backends
        if name != "fp32"
    }
    out["test_split_generation_seconds_batch64"] = gen_seconds
    out["batched_speedup_vs_fp32_batch64"] = {
        k: gen_seconds["fp32"] / v for k, v in gen_seconds.items()
    }

    # generation latency per study (batch 1): INT8 against fp32 on the same runtime
    def gen(m: Any) -> Any:
        return lambda i: greedy_generate(m, tok, images[i : i + 1], [prompts[i]], max_new)

    out["generation_latency_batch1"] = compare_latency(
        {name: gen(m) for name, m in models.items()}, latency_studies, warmup=3
    )
    x = images.numpy()

    def ort_gen(m: Any) -> Any:
        return lambda i: m.generate(x[i : i + 1], [prompts[i]], max_new)

    out["generation_latency_batch1_onnxruntime"] = compare_latency(
        {"onnx": ort_gen(onnx), "onnx_int8": ort_gen(onnx_int8)}, latency_studies, warmup=3
    )
    out["generation_latency_batch1_hf_generate"] = compare_latency(
        {"fp32": lambda i: model.generate(images[i : i + 1], prompt=[prompts[i]], tokenizer=tok,
                                          max_new_tokens=max_new),
         "int8": lambda i: int8.generate(images[i : i + 1], prompt=[prompts[i]], tokenizer=tok,
                                         max_new_tokens=max_new)},
        min(latency_studies, 15), warmup=2,
    )  # fmt: skip

    out["int8_amdahl_bound"] = linear_share_bound(gen(model), latency_studies)
    out["int8_variants"] = int8_summary(out)

    # encoder path, batch 1
    @torch.no_grad()
    def torch_encoder(i: int) -> None:
        patches, h_cls = model.encode_images(images[i : i + 1])
        model.projector(patches)
        model.detection_head(h_cls)

    out["encoder_latency_batch1"] = compare_latency(
        {"pytorch": torch_encoder, "onnxruntime": lambda i: onnx.encode(x[i : i + 1])},
        encoder_calls, warmup=5,
    )  # fmt: skip

    # full study per backend (probabilities + greedy report), batch 1
    def study(backend: Any) -> Any:
        def run(i: int) -> None:
            backend.label_probs(images[i : i + 1])
            backend.generate(images[i : i + 1], [prompts[i]], max_new)

        return run

    out["study_latency_batch1"] = compare_latency(
        {k: study(b) for k, b in backends.items()}, latency_studies, warmup=3
    )
    out["sizes_mb"] = {
        "fp32": deploy.state_dict_bytes(model) / 2**20,
        "int8": deploy.state_dict_bytes(int8) / 2**20,
        "onnx": sum(os.path.getsize(os.path.join(onnx_dir, f)) for f in os.listdir(onnx_dir)
                    if f.endswith(".onnx") and f != "decoder.int8.onnx") / 2**20,
        "onnx_int8": sum(os.path.getsize(os.path.join(onnx_dir, f)) for f in os.listdir(onnx_dir)
                         if f.endswith(".onnx") and f != "decoder.onnx") / 2**20,
    }  # fmt: skip

    # dynamic batching through the API (packaged ONNX service and the PyTorch fp32 service)
    service_kwargs = dict(prompt_context=cm.config.prompt_context, max_new_tokens=max_new)
    out["batching"] = {}
    for name, backend in (("onnx", backends["onnx"]), ("fp32", backends["fp32"])):
        service = deploy.ReportService(backend, **service_kwargs)
        out["batching"][name] = deploy.batching_throughput(service, images[:8].numpy(), rounds=10)

    # cost per study from the measured CPU throughput (illustration: CPU, not an A10G)
    sph = {f"cpu {k} batched": v["batched_studies_per_hour"] for k, v in out["batching"].items()}
    out["cost_usd_per_study"] = deploy.cost_table(sph)["usd_per_study"].to_dict()

    int8_speed = out["generation_latency_batch1"]["int8"]["speedup"]
    out["targets"] = {
        "thresholds": {k: v for k, v in TARGETS.items() if not k.startswith("gpu")},
        "int8_generation_speedup": int8_speed >= TARGETS["int8_generation_speedup"],
        "int8_label_agreement": out["parity"]["int8"]["pair_agreement"]
        >= TARGETS["int8_label_agreement"],
        "onnx_encoder_speedup": out["encoder_latency_batch1"]["onnxruntime"]["speedup"]
        >= TARGETS["onnx_encoder_speedup"],
        "batching_speedup": out["batching"]["onnx"]["speedup"] >= TARGETS["batching_speedup"],
    }
    out["targets"]["met"] = all(v for k, v in out["targets"].items() if k != "thresholds")
    return out


def int8_summary(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each INT8 variant's speed-up at batch 1 against fp32 *on the same runtime* (eager PyTorch
    or onnxruntime), against the fp32 PyTorch model, and its label agreement with fp32 PyTorch."""
    torch_lat = out["generation_latency_batch1"]
    ort_lat = out["generation_latency_batch1_onnxruntime"]
    fp32_ms = torch_lat["fp32"]["p50_ms"]
    rows = {}
    for name, stats in torch_lat.items():
        if name != "fp32":
            rows[name] = {"runtime": "pytorch", "speedup_same_runtime": stats["speedup"],
                          "speedup_vs_fp32_pytorch": stats["speedup"]}  # fmt: skip
    onnx_ms = ort_lat["onnx"]["p50_ms"]
    for name, stats in ort_lat.items():
        rows[name] = {"runtime": "onnxruntime", "speedup_same_runtime": onnx_ms / stats["p50_ms"],
                      "speedup_vs_fp32_pytorch": fp32_ms / stats["p50_ms"]}  # fmt: skip
    for name, row in rows.items():
        if name in out["parity"]:
            row["label_agreement"] = out["parity"][name]["pair_agreement"]
    return rows


def linear_share_bound(run: Any, studies: int) -> dict[str, float]:
    """How much INT8 *could* gain: the share of fp32 generation time spent in ``aten::linear``
    (profiled, so an upper bound) and the speed-up if every linear layer cost nothing
    (Amdahl: 1 / (1 - share)). Dynamic INT8 only replaces the linear layers."""
    from torch.profiler import ProfilerActivity, profile

    for i in range(3):  # warm-up
        run(i)
    tick = time.perf_counter()
    for i in range(studies):
        run(i)
    wall = time.perf_counter() - tick
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(studies):
            run(i)
    linear = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "aten::linear") / 1e6
    share = min(linear / wall, 0.999)
    return {"wall_seconds": wall, "linear_seconds_profiled": linear,
            "linear_share_at_most": share, "max_speedup_if_linears_free": 1.0 / (1.0 - share)}  # fmt: skip


def _colab_model(device: str) -> Any:
    """The colab architecture with random weights (no download), eval mode."""
    import torch

    from course_utils.model import ModelConfig, RadiologyMultimodalModel

    cfg = ModelConfig.colab(vision_checkpoint=None, lm_checkpoint=None)
    torch.manual_seed(0)
    return RadiologyMultimodalModel(cfg, load_weights=False).eval().to(device)


def _fixed_length_generate(model: Any, images: Any, new_tokens: int, visual: Any = None) -> None:
    """Greedy decoding of exactly ``new_tokens`` tokens with the KV cache (no early stop);
    ``visual`` (precomputed visual tokens) skips the encoder."""
    import torch

    with torch.no_grad():
        b = images.shape[0]
        ids = torch.full((b, 24), 5, dtype=torch.long, device=images.device)  # a 24-token prompt
        visual = model.prefix_tokens(images) if visual is None else visual
        inputs, _ = model._lm_inputs(visual, ids, torch.ones_like(ids))
        out = model.lm(**inputs, use_cache=True)
        past, last = out.past_key_values, inputs["position_ids"][:, -1:]
        mask = inputs["attention_mask"]
        for _ in range(new_tokens - 1):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            last = last + 1
            out = model.lm(input_ids=token, attention_mask=mask, position_ids=last,
                           past_key_values=past, use_cache=True)  # fmt: skip
            past = out.past_key_values


def _stats(ms: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean (ms) and one-worker studies/hour, without course_utils.deploy
    (the GPU machine has no FastAPI, which that package imports)."""
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    mean = float(np.mean(ms))
    return {"n": len(ms), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "mean_ms": mean, "studies_per_hour": 3.6e6 / mean}  # fmt: skip


def bench_gpu(studies: int = 30, new_tokens: int = 100, batch: int = 8) -> dict:
    """Colab-profile latency per study on a CUDA GPU (fp16 encoder + fp16 LM)."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU"}
    model = _colab_model("cuda").half()
    size = int(model.vision.config.image_size)
    g = torch.Generator(device="cuda").manual_seed(0)
    images = torch.rand(studies, 1, size, size, device="cuda", generator=g)
    for i in range(3):
        _fixed_length_generate(model, images[i : i + 1], new_tokens)
    ms = []
    for i in range(studies):
        torch.cuda.synchronize()
        start = time.perf_counter()
        _fixed_length_generate(model, images[i : i + 1], new_tokens)
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - start) * 1e3)
    single = _stats(ms)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(0, studies - studies % batch, batch):
        _fixed_length_generate(model, images[s : s + batch], new_tokens)
    torch.cuda.synchronize()
    batched = (studies - studies % batch) / (time.perf_counter() - start) * 3600
    return {
        "device": torch.cuda.get_device_name(0),
        "architecture": "RAD-DINO ViT-B/14 518px (fp16) + BioGPT 347M (fp16), random weights",
        "new_tokens_per_study": new_tokens,
        "per_study_batch1": single,
        "studies_per_hour_batch8": batched,
        "targets": {
            "p50_below_5s": single["p50_ms"] / 1e3 < TARGETS["gpu_p50_s"],
            "p99_below_15s": single["p99_ms"] / 1e3 < TARGETS["gpu_p99_s"],
            "studies_per_hour_at_least_200": single["studies_per_hour"] >= 200,
        },
    }


def bench_colab_int8_cpu(threads: int = 2, new_tokens: int = 16, repeats: int = 2) -> dict:
    """INT8 vs fp32 of the colab-size LM on ``threads`` CPU threads: prefill of 256 visual +
    24 prompt tokens, then ``new_tokens`` greedy steps (batch 1, interleaved; the fp32 encoder
    runs once, outside the timing). Imports only course_utils.model, so it runs on the GPU
    machine too."""
    import copy
    import warnings

    import torch

    torch.set_num_threads(threads)
    model = _colab_model("cpu")
    int8 = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8.lm = torch.ao.quantization.quantize_dynamic(
            int8.lm, {torch.nn.Linear}, dtype=torch.qint8
        )
    size = int(model.vision.config.image_size)
    images = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        visual = model.prefix_tokens(images)  # the encoder is not quantised: time the LM only
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for rep in range(repeats + 1):
        for name, m in (("fp32", model), ("int8", int8)):
            start = time.perf_counter()
            _fixed_length_generate(m, images, new_tokens, visual)
            if rep:  # the first round is a warm-up
                times[name].append((time.perf_counter() - start) * 1e3)
    stats = {k: _stats(v) for k, v in times.items()}

    def mb(m: Any) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.pt")
            torch.save(m.state_dict(), path)
            return os.path.getsize(path) / 2**20

    return {"threads": threads, "new_tokens": new_tokens, "latency": stats,
            "int8_speedup": stats["fp32"]["p50_ms"] / stats["int8"]["p50_ms"],
            "sizes_mb": {"fp32": mb(model), "int8": mb(int8)}}  # fmt: skip


def bench_deploy(gpu: bool = False, colab_int8_cpu: bool = False, threads: int = 2) -> dict:
    """Everything ``make bench`` records for notebook 08 (CPU bars; GPU parts when asked)."""
    out = {"tiny_cpu": bench_tiny(threads)}
    if gpu:
        out["colab_gpu"] = bench_gpu()
    if colab_int8_cpu:
        out["colab_int8_cpu"] = bench_colab_int8_cpu(threads)
    out["targets"] = out["tiny_cpu"]["targets"]
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="also the colab profile on CUDA")
    parser.add_argument("--gpu-only", action="store_true", help="only the colab GPU latency")
    parser.add_argument("--colab-int8-cpu", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.gpu_only:
        result: dict = {"colab_gpu": bench_gpu()}
        if args.colab_int8_cpu:
            result["colab_int8_cpu"] = bench_colab_int8_cpu(args.threads)
    else:
        result = bench_deploy(args.gpu, args.colab_int8_cpu, args.threads)
    text = json.dumps(_jsonable(result), indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
