"""Production monitoring (case study §4): latency, hallucination rate, critical-finding
sensitivity, detection rates against a rolling baseline, queue depth, alerts and cost.

Alert thresholds of §4 (:class:`AlertThresholds`):

* critical-finding sensitivity below 95 % -> page on-call engineering;
* P99 latency above 30 s -> scale up the GPU fleet;
* hallucination rate above 5 % -> pause automated reports, require radiologist co-sign.

The CI/CD validation gates are stricter (:data:`RELEASE_GATES`: sensitivity > 98 %,
hallucination < 3 %).

Definitions used here:

* **hallucination rate** = findings stated in the generated reports (present or possible)
  that the detection head does not confirm (probability below its threshold), divided by all
  stated findings;
* **critical sensitivity** = critical positives of the reference labels (pneumothorax,
  fracture, lung lesion/mass, pleural effusion) that the generated report states as positive,
  divided by all critical positives;
* **detection-rate check** = for each label, a two-proportion z-test of the model's detection
  rate in the current window against the radiologists' rate in the baseline window (e.g. the
  previous 30 days), Bonferroni-corrected over labels.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..labels import CHEXPERT_LABELS
from .benchmark import latency_stats
from .service import CRITICAL_FINDINGS, ReportService, StudyReport


@dataclass(frozen=True)
class AlertThresholds:
    """Case study §4 alerting thresholds."""

    critical_sensitivity_min: float = 0.95
    p99_latency_max_s: float = 30.0
    hallucination_rate_max: float = 0.05


RELEASE_GATES = {"critical_sensitivity_min": 0.98, "hallucination_rate_max": 0.03}


@dataclass(frozen=True)
class Alert:
    metric: str
    value: float
    threshold: float
    action: str


# ---------------------------------------------------------------------- metrics
def hallucination_stats(reports: Sequence[StudyReport]) -> dict[str, float]:
    """``rate`` = unconfirmed stated findings / stated findings (0 when nothing was stated)."""
    stated = [f for r in reports for f in r.findings]
    unconfirmed = sum(not f.confirmed_by_detector for f in stated)
    return {
        "rate": unconfirmed / len(stated) if stated else 0.0,
        "unconfirmed": float(unconfirmed),
        "stated": float(len(stated)),
    }


def critical_sensitivity(
    generated: np.ndarray,
    reference: np.ndarray,
    critical: Sequence[str] = CRITICAL_FINDINGS,
) -> dict[str, Any]:
    """Sensitivity for critical findings.

    Args:
        generated: (N, 14) labeler values of the generated reports (1 = stated positive).
        reference: (N, 14) reference labels (1 positive; 0 / -1 / NaN are not positives).

    Returns:
        ``sensitivity`` (NaN without any critical positive), ``detected``, ``positives`` and
        ``per_label`` (label -> sensitivity or NaN).
    """
    gen, ref = np.asarray(generated, float), np.asarray(reference, float)
    if gen.shape != ref.shape or gen.ndim != 2:
        raise ValueError(f"label arrays must share an (N, 14) shape, got {gen.shape}, {ref.shape}")
    cols = [CHEXPERT_LABELS.index(c) for c in critical]
    truth, hit = ref[:, cols] == 1, gen[:, cols] == 1
    per_label = {
        c: float((hit[:, j] & truth[:, j]).sum() / truth[:, j].sum())
        if truth[:, j].any()
        else np.nan
        for j, c in enumerate(critical)
    }
    positives = int(truth.sum())
    detected = int((hit & truth).sum())
    return {
        "sensitivity": detected / positives if positives else float("nan"),
        "detected": detected,
        "positives": positives,
        "per_label": per_label,
    }


def detection_rate_check(
    current: np.ndarray,
    baseline: np.ndarray,
    alpha: float = 0.01,
    labels: Sequence[str] = CHEXPERT_LABELS,
) -> pd.DataFrame:
    """Per-label two-proportion z-test: current detection rate vs the baseline rate.

    Args:
        current: (n, K) booleans: the model detected label k in study i of the current window.
        baseline: (m, K) booleans: the radiologists' positives in the baseline window.
        alpha: family-wise level; p-values are Bonferroni-corrected over the tested labels.

    Returns:
        one row per label: ``rate``, ``baseline_rate``, ``z``, ``p``, ``p_bonferroni``,
        ``alert`` (corrected p < alpha); labels positive in neither window are not tested.
    """
    from scipy.stats import norm

    cur, base = np.asarray(current, bool), np.asarray(baseline, bool)
    if (
        cur.ndim != 2
        or base.ndim != 2
        or len(labels) not in (cur.shape[1], base.shape[1])
        or cur.shape[1] != base.shape[1]
    ):
        raise ValueError(f"need (n, {len(labels)}) and (m, {len(labels)}) arrays")
    n, m = len(cur), len(base)
    if n == 0 or m == 0:
        raise ValueError("both windows need at least one study")
    rows = []
    for k, label in enumerate(labels):
        x1, x2 = int(cur[:, k].sum()), int(base[:, k].sum())
        p1, p2 = x1 / n, x2 / m
        pooled = (x1 + x2) / (n + m)
        se = np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / m))
        tested = x1 + x2 > 0
        z = (p1 - p2) / se if tested and se > 0 else 0.0
        p = float(2 * norm.sf(abs(z))) if tested else np.nan
        rows.append({"label": label, "rate": p1, "baseline_rate": p2, "z": z, "p": p})
    table = pd.DataFrame(rows).set_index("label")
    n_tests = int(table["p"].notna().sum())
    table["p_bonferroni"] = (table["p"] * max(n_tests, 1)).clip(upper=1.0)
    table["alert"] = table["p_bonferroni"] < alpha
    return table


def evaluate_alerts(
    snapshot: dict[str, float], thresholds: AlertThresholds | None = None
) -> list[Alert]:
    """Compare a snapshot (``critical_sensitivity``, ``p99_latency_ms``, ``hallucination_rate``)
    with the §4 thresholds; metrics missing or NaN raise no alert."""
    t = thresholds or AlertThresholds()
    alerts = []
    sens = snapshot.get("critical_sensitivity", np.nan)
    if np.isfinite(sens) and sens < t.critical_sensitivity_min:
        alerts.append(Alert("critical_sensitivity", sens, t.critical_sensitivity_min,
                            "immediate page to on-call engineering"))  # fmt: skip
    p99 = snapshot.get("p99_latency_ms", np.nan) / 1e3
    if np.isfinite(p99) and p99 > t.p99_latency_max_s:
        alerts.append(Alert("p99_latency_s", p99, t.p99_latency_max_s, "scale up GPU fleet"))
    hall = snapshot.get("hallucination_rate", np.nan)
    if np.isfinite(hall) and hall > t.hallucination_rate_max:
        alerts.append(Alert("hallucination_rate", hall, t.hallucination_rate_max,
                            "pause automated reports, require radiologist co-sign"))  # fmt: skip
    return alerts


# ---------------------------------------------------------------------- the simulated stream
@dataclass
class StreamResult:
    """A simulated stream through the batching API: one row per study, plus the responses."""

    log: pd.DataFrame
    reports: list[StudyReport]
    batcher: dict[str, float]
    wall_seconds: float
    batch_sizes: list[int] = field(default_factory=list)


def run_async(coroutine: Any) -> Any:
    """``asyncio.run(coroutine)``, also inside Jupyter, whose event loop is already running
    (then the coroutine runs on a fresh loop in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _png_b64(image: np.ndarray) -> str:
    from .fixtures import encode_png

    return base64.b64encode(encode_png(image)).decode()


async def _run_stream(app: Any, bodies: list[dict], gaps: np.ndarray) -> tuple[list, list]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:

        async def one(body: dict) -> tuple[float, Any]:
            start = time.perf_counter()
            response = await client.post(f"/api/v1/studies/{body['study_id']}/report", json=body)
            return (time.perf_counter() - start) * 1e3, response

        tasks = []
        for body, gap in zip(bodies, gaps, strict=True):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(body)))
        done = await asyncio.gather(*tasks)
    return [d[0] for d in done], [d[1] for d in done]


def simulate_stream(
    service: ReportService,
    images: Any,
    contexts: Sequence[dict[str, Any] | None],
    *,
    rate_per_s: float = 20.0,
    max_batch: int = 8,
    max_wait_ms: float = 100.0,
    seed: int = 0,
    study_ids: Sequence[str] | None = None,
) -> StreamResult:
    """Send studies to the batching API with Poisson arrivals (``rate_per_s`` studies/s).

    ``contexts`` are clinical contexts or dataset ``metadata`` dicts (only age, sex and
    indication are sent).

    Each request uploads its image as base64 PNG and goes through validation, the dynamic
    batcher and the model, like a real request. Returns per-study client latency, the queue
    depth the request found, the QA flag and finding counts.
    """
    from .api import create_app
    from .validation import context_from_metadata

    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    n = len(images)
    if len(contexts) != n:
        raise ValueError(f"{len(contexts)} clinical contexts for {n} images")
    ids = list(study_ids) if study_ids is not None else [f"study-{i:05d}" for i in range(n)]
    bodies = [
        {"study_id": sid, "images": [{"view": "PA", "data_base64": _png_b64(img)}],
         "clinical_context": context_from_metadata(ctx) or None}
        for sid, img, ctx in zip(ids, images, contexts, strict=True)
    ]  # fmt: skip
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=n)
    gaps[0] = 0.0
    app = create_app(service, None, max_batch=max_batch, max_wait_ms=max_wait_ms)
    start = time.perf_counter()
    latencies, responses = run_async(_run_stream(app, bodies, gaps))
    wall = time.perf_counter() - start
    bad = [r for r in responses if r.status_code != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed, first: {bad[0].status_code} {bad[0].text}")
    reports = [StudyReport.model_validate(r.json()) for r in responses]
    stats = app.state.batcher.stats
    log = pd.DataFrame({
        "study_id": ids,
        "latency_ms": latencies,
        "processing_time_ms": [r.processing_time_ms for r in reports],
        "queue_depth": stats.queue_depths[:n],
        "requires_review": [r.requires_radiologist_review for r in reports],
        "n_findings": [len(r.findings) for r in reports],
        "n_unconfirmed": [sum(not f.confirmed_by_detector for f in r.findings) for r in reports],
    })  # fmt: skip
    return StreamResult(log, reports, stats.summary(), wall, list(stats.batch_sizes))


def batching_throughput(
    service: ReportService,
    images: Any,
    *,
    concurrency: int = 8,
    rounds: int = 3,
    max_batch: int = 8,
    max_wait_ms: float = 100.0,
) -> dict[str, float]:
    """Throughput of ``concurrency`` simultaneous requests: dynamic batching vs one at a time.

    Both servers get the same waves of ``concurrency`` requests (images uploaded as PNG); the
    one-at-a-time server has ``max_batch=1`` and no wait window, so it answers the wave
    sequentially. Waves alternate between the two servers so that a busy moment of the machine
    slows both. Returns studies/hour of each, ``speedup`` and the batched server's mean batch.
    """
    import httpx

    from .api import create_app

    images = np.asarray(images)
    images = images[:, 0] if images.ndim == 4 else images
    if len(images) < concurrency:
        raise ValueError(f"need at least {concurrency} images, got {len(images)}")
    bodies = [
        {"study_id": f"wave-{i}", "images": [{"view": "PA", "data_base64": _png_b64(img)}],
         "clinical_context": {"age": 60, "sex": "F", "indication": "cough"}}
        for i, img in enumerate(images[:concurrency])
    ]  # fmt: skip
    apps = {
        "batched": create_app(service, None, max_batch=max_batch, max_wait_ms=max_wait_ms),
        "one_at_a_time": create_app(service, None, max_batch=1, max_wait_ms=0.0),
    }
    seconds = {name: 0.0 for name in apps}

    async def wave(app: Any) -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            start = time.perf_counter()
            responses = await asyncio.gather(*(
                client.post(f"/api/v1/studies/{b['study_id']}/report", json=b) for b in bodies
            ))  # fmt: skip
            elapsed = time.perf_counter() - start
        if any(r.status_code != 200 for r in responses):
            raise RuntimeError(f"a request failed: {responses[0].text}")
        return elapsed

    async def run() -> None:
        for app in apps.values():  # warm-up wave, not timed
            await wave(app)
            app.state.batcher.stats.batch_sizes.clear()
        for _ in range(rounds):
            for name, app in apps.items():
                seconds[name] += await wave(app)

    run_async(run())
    studies = concurrency * rounds
    per_hour = {name: studies / s * 3600 for name, s in seconds.items()}
    sizes = apps["batched"].state.batcher.stats.batch_sizes
    return {
        "batched_studies_per_hour": per_hour["batched"],
        "one_at_a_time_studies_per_hour": per_hour["one_at_a_time"],
        "speedup": per_hour["batched"] / per_hour["one_at_a_time"],
        "mean_batch_size": float(np.mean(sizes)) if sizes else 0.0,
        "concurrency": float(concurrency),
        "rounds": float(rounds),
    }


def monitoring_snapshot(
    stream: StreamResult, reference_labels: np.ndarray | None = None
) -> dict[str, float]:
    """The §4 dashboard numbers of a stream (critical sensitivity needs reference labels)."""
    from .parity import report_labels

    lat = latency_stats(stream.log["latency_ms"])
    snap = {
        "studies": float(len(stream.reports)),
        "p50_latency_ms": lat.p50_ms,
        "p95_latency_ms": lat.p95_ms,
        "p99_latency_ms": lat.p99_ms,
        "throughput_studies_per_hour": len(stream.reports) / stream.wall_seconds * 3600,
        "hallucination_rate": hallucination_stats(stream.reports)["rate"],
        "review_rate": float(stream.log["requires_review"].mean()),
        "mean_queue_depth": float(stream.log["queue_depth"].mean()),
        "max_queue_depth": float(stream.log["queue_depth"].max()),
        "mean_batch_size": stream.batcher["mean_batch_size"],
    }
    if reference_labels is not None:
        generated = report_labels([r.report_text for r in stream.reports])
        snap["critical_sensitivity"] = critical_sensitivity(generated, reference_labels)[
            "sensitivity"
        ]
    return snap


# ---------------------------------------------------------------------- cost
@dataclass(frozen=True)
class CostModel:
    """Case study §4 cost figures (USD) as parameters.

    ``hours_per_month`` = 720 reproduces the case study's monthly compute: 3.20 x 4 x 720 =
    9,216.
    """

    gpu_hourly_usd: float = 3.20
    instances: int = 4
    hours_per_month: float = 720.0
    storage_monthly_usd: float = 450.0
    retraining_monthly_usd: float = 2800.0
    manual_read_usd: float = 25.0
    ai_assisted_read_usd: float = 8.0

    @property
    def compute_monthly_usd(self) -> float:
        return self.gpu_hourly_usd * self.instances * self.hours_per_month

    def inference_cost_per_study(self, studies_per_hour: float, utilisation: float = 1.0) -> float:
        """GPU cost of one study on one instance serving ``studies_per_hour`` at ``utilisation``."""
        if studies_per_hour <= 0 or not 0 < utilisation <= 1:
            raise ValueError("need studies_per_hour > 0 and utilisation in (0, 1]")
        return self.gpu_hourly_usd / (studies_per_hour * utilisation)

    def monthly_capacity(self, studies_per_hour: float, utilisation: float = 1.0) -> float:
        return studies_per_hour * utilisation * self.instances * self.hours_per_month

    def all_in_cost_per_study(self, monthly_studies: float) -> float:
        """(compute + storage + retraining) per month / studies per month."""
        total = self.compute_monthly_usd + self.storage_monthly_usd + self.retraining_monthly_usd
        return total / monthly_studies


def cost_table(
    throughputs: dict[str, float], cost: CostModel | None = None, utilisation: float = 1.0
) -> pd.DataFrame:
    """Per-study inference cost and monthly fleet capacity for measured throughputs
    (studies/hour per instance); the case study's 200 studies/h target and its USD 0.06 per
    study (= 53 studies/h per instance) are added as reference rows."""
    cost = cost or CostModel()
    rows = dict(throughputs)
    rows["case study target (200/h)"] = 200.0
    rows["case study USD 0.06/study"] = cost.gpu_hourly_usd / 0.06
    table = pd.DataFrame(
        {
            "studies_per_hour": rows,
            "usd_per_study": {
                k: cost.inference_cost_per_study(v, utilisation) for k, v in rows.items()
            },
            "fleet_studies_per_month": {
                k: cost.monthly_capacity(v, utilisation) for k, v in rows.items()
            },
        }
    )
    return table


__all__ = [
    "RELEASE_GATES",
    "Alert",
    "AlertThresholds",
    "CostModel",
    "StreamResult",
    "batching_throughput",
    "cost_table",
    "critical_sensitivity",
    "detection_rate_check",
    "evaluate_alerts",
    "hallucination_stats",
    "monitoring_snapshot",
    "simulate_stream",
]
