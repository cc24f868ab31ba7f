"""Monitoring (§4): latency stats, hallucination rate, sensitivity, rolling baseline, alerts,
A/B promotion, cost, MMD drift, and the simulated stream through the batching API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from course_utils.deploy import (
    AlertThresholds,
    CostModel,
    DriftDetector,
    ReportService,
    TorchBackend,
    batching_throughput,
    build_response,
    cost_table,
    critical_sensitivity,
    detection_rate_check,
    evaluate_alerts,
    hallucination_stats,
    latency_stats,
    mmd2,
    mmd_permutation_test,
    monitoring_snapshot,
    paired_ab_test,
    per_study_metrics,
    render_phantom_batch,
    simulate_stream,
    word_edit_distance,
)
from course_utils.deploy.ab_test import study_f1
from course_utils.deploy.benchmark import compare_latency, time_interleaved
from course_utils.deploy.fixtures import tiny_model_and_data
from course_utils.labels import CHEXPERT_LABELS

K = {name: k for k, name in enumerate(CHEXPERT_LABELS)}


def test_latency_stats_by_hand() -> None:
    s = latency_stats([100, 200, 300, 400, 1000])
    assert s.p50_ms == 300 and s.mean_ms == 400 and s.studies_per_hour == 9000
    assert s.p95_ms == pytest.approx(880) and s.p99_ms == pytest.approx(976)  # linear interp.
    assert latency_stats([500, 500], studies_per_call=8).studies_per_hour == 8 * 7200
    with pytest.raises(ValueError, match="no timings"):
        latency_stats([])


def test_interleaved_timing_and_speedup() -> None:
    order = []
    times = time_interleaved({"a": lambda i: order.append(("a", i)),
                              "b": lambda i: order.append(("b", i))}, 3, warmup=1)  # fmt: skip
    assert order == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert len(times["a"]) == 3
    import time

    stats = compare_latency({"slow": lambda i: time.sleep(0.004), "fast": lambda i: None}, 3,
                            warmup=0)  # fmt: skip
    assert stats["slow"]["speedup"] == 1.0 and stats["fast"]["speedup"] > 10


def _report(text: str, **p: float):
    probs = np.full(14, 0.1)
    probs[K["No Finding"]] = 0.9
    for name, value in p.items():
        probs[K[name.replace("_", " ")]] = value
    return build_response(text, probs, thresholds=np.full(14, 0.5), confidence_threshold=0.85,
                          model_version="t", processing_time_ms=1)  # fmt: skip


def test_hallucination_rate_by_hand() -> None:
    reports = [
        _report("Mild cardiomegaly. Small left pleural effusion.", Cardiomegaly=0.9,
                Pleural_Effusion=0.2),  # one of two unconfirmed
        _report("Possible right pneumothorax.", Pneumothorax=0.7),  # confirmed
        _report("The lungs are clear."),  # nothing stated
    ]  # fmt: skip
    assert hallucination_stats(reports) == {"rate": 1 / 3, "unconfirmed": 1.0, "stated": 3.0}
    assert hallucination_stats([])["rate"] == 0.0


def test_critical_sensitivity_by_hand() -> None:
    ref = np.full((3, 14), np.nan)
    gen = np.full((3, 14), np.nan)
    ref[0, K["Pneumothorax"]] = ref[1, K["Pleural Effusion"]] = ref[2, K["Fracture"]] = 1
    ref[2, K["Cardiomegaly"]] = 1  # not critical: ignored
    gen[0, K["Pneumothorax"]] = 1
    gen[1, K["Pleural Effusion"]] = -1  # uncertain is not a detection
    out = critical_sensitivity(gen, ref)
    assert out["sensitivity"] == 1 / 3 and out["positives"] == 3 and out["detected"] == 1
    assert out["per_label"]["Pneumothorax"] == 1.0 and np.isnan(out["per_label"]["Lung Lesion"])


def test_detection_rate_check_flags_a_pneumothorax_surge() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.random((600, 14)) < 0.05
    current = rng.random((200, 14)) < 0.05
    quiet = detection_rate_check(current, baseline)
    assert not quiet["alert"].any()
    current[:, K["Pneumothorax"]] = rng.random(200) < 0.25  # 5 % -> 25 %
    table = detection_rate_check(current, baseline)
    assert list(table.index[table["alert"]]) == ["Pneumothorax"]
    row = table.loc["Pneumothorax"]
    # two-proportion z by hand
    x1, x2 = current[:, K["Pneumothorax"]].sum(), baseline[:, K["Pneumothorax"]].sum()
    p = (x1 + x2) / 800
    z = (x1 / 200 - x2 / 600) / np.sqrt(p * (1 - p) * (1 / 200 + 1 / 600))
    assert row["z"] == pytest.approx(z) and row["p_bonferroni"] == pytest.approx(
        min(1, 14 * row["p"])
    )
    with pytest.raises(ValueError, match="at least one study"):
        detection_rate_check(current[:0], baseline)


def test_alerts_follow_the_case_study_thresholds() -> None:
    calm = {"critical_sensitivity": 0.97, "p99_latency_ms": 12_000, "hallucination_rate": 0.02}
    assert evaluate_alerts(calm) == []
    bad = {"critical_sensitivity": 0.90, "p99_latency_ms": 31_000, "hallucination_rate": 0.06}
    alerts = {a.metric: a for a in evaluate_alerts(bad)}
    assert alerts["critical_sensitivity"].action == "immediate page to on-call engineering"
    assert alerts["p99_latency_s"].value == 31.0 and "scale up" in alerts["p99_latency_s"].action
    assert "co-sign" in alerts["hallucination_rate"].action
    assert evaluate_alerts({"critical_sensitivity": float("nan")}) == []
    assert evaluate_alerts(calm, AlertThresholds(critical_sensitivity_min=0.98))


# ---------------------------------------------------------------------------- A/B
def test_edit_distance_and_study_f1_by_hand() -> None:
    assert word_edit_distance("the lungs are clear", "the lungs are clear") == 0
    assert word_edit_distance("the lungs are clear", "lungs are very clear") == 2
    assert word_edit_distance("", "a b c") == 3
    gen = np.array([[1, 1, np.nan], [np.nan, np.nan, np.nan]])
    ref = np.array([[1, 0, 1], [0, np.nan, np.nan]])
    assert study_f1(gen, ref).tolist() == [0.5, 1.0]  # tp 1, fp 1, fn 1; both empty -> 1


def test_ab_promotion_rules() -> None:
    refs = ["Small left pleural effusion. Mild cardiomegaly."] * 30
    good = per_study_metrics(refs, refs)
    assert good["ce_f1"].eq(1).all() and good["edit_distance"].eq(0).all()
    assert good["critical_sensitivity"].eq(1).all()
    worse = per_study_metrics(refs, ["The lungs are clear."] * 30)
    result = paired_ab_test(good, worse)
    assert not result.promote and "worse" in result.reason
    assert set(result.table.loc[["ce_f1", "edit_distance"], "verdict"]) == {"B worse"}
    assert paired_ab_test(worse, good).promote
    same = paired_ab_test(good, good)
    assert not same.promote and (same.table["p"] == 1.0).all()
    # Noisy small improvement: significant before correction only -> not promoted.
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"ce_f1": rng.random(40), "edit_distance": rng.random(40),
                      "critical_sensitivity": rng.random(40)})  # fmt: skip
    b = a.copy()
    b["ce_f1"] = a["ce_f1"] + 0.05 + rng.normal(0, 0.12, 40)
    r = paired_ab_test(a, b)
    p = r.table.loc["ce_f1", "p"]
    assert r.table.loc["ce_f1", "p_bonferroni"] == pytest.approx(min(1.0, 3 * p))
    assert r.promote == (3 * p < 0.01)


# ---------------------------------------------------------------------------- cost
def test_cost_model_reproduces_the_case_study() -> None:
    cost = CostModel()
    assert cost.compute_monthly_usd == pytest.approx(9216.0)
    assert cost.inference_cost_per_study(200) == pytest.approx(0.016)
    assert cost.gpu_hourly_usd / cost.inference_cost_per_study(3.2 / 0.06) == pytest.approx(
        3.2 / 0.06
    )
    assert cost.all_in_cost_per_study(100_000) == pytest.approx((9216 + 450 + 2800) / 100_000)
    table = cost_table({"measured": 400.0})
    assert table.loc["measured", "usd_per_study"] == pytest.approx(0.008)
    assert table.loc["case study USD 0.06/study", "usd_per_study"] == pytest.approx(0.06)
    with pytest.raises(ValueError, match="utilisation"):
        cost.inference_cost_per_study(100, utilisation=0)


# ---------------------------------------------------------------------------- drift
def test_mmd_by_hand_and_permutation_test() -> None:
    x = np.array([[0.0], [1.0]])
    y = np.array([[0.0], [2.0]])
    k = lambda a, b: np.exp(-((a - b) ** 2) / 2)  # noqa: E731  (bandwidth 1)
    expected = k(0, 1) + k(0, 2) - 0.5 * (k(0, 0) + k(0, 2) + k(1, 0) + k(1, 2))
    assert mmd2(x, y, bandwidth=1.0) == pytest.approx(2 * expected / 2)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    shifted = rng.normal(size=(60, 4)) + np.array([1.0, 0, 0, 0])
    same = mmd_permutation_test(a, b, n_permutations=100)
    moved = mmd_permutation_test(a, shifted, n_permutations=100)
    assert not same.drift and same.p_value > 0.05
    assert moved.drift and moved.p_value < 0.02 and moved.mmd2 > moved.threshold
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(a[:1], b)


def test_drift_detector_calibrated_threshold() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 8))
    det = DriftDetector(ref, batch_size=32, alpha=0.05)
    threshold = det.calibrate(60)
    assert threshold == det.threshold and threshold > 0
    assert not det.check(rng.normal(size=(32, 8)))["drift"]
    assert det.check(rng.normal(size=(32, 8)) * 1.8)["drift"]
    with pytest.raises(ValueError, match="at least 64"):
        DriftDetector(ref[:50], batch_size=32)


def test_shifted_phantoms_are_darker_and_rotated() -> None:
    reports = ["The lungs are clear."] * 4
    base = render_phantom_batch(reports, size=64, seed=0)
    dark = render_phantom_batch(reports, size=64, seed=0, effects={"exposure": 0.6})
    assert base.shape == (4, 1, 64, 64) and base.dtype == np.float32
    assert dark.mean() < base.mean() - 0.03  # a larger gamma darkens
    again = render_phantom_batch(reports, size=64, seed=0)
    assert np.array_equal(base, again)  # seeded


# ---------------------------------------------------------------------------- stream
def test_simulated_stream_through_the_batching_api() -> None:
    torch.set_num_threads(1)
    model, tok, split = tiny_model_and_data(seed=5, n=12)
    service = ReportService(TorchBackend(model, tok), max_new_tokens=3)
    stream = simulate_stream(service, split["pixels"].numpy(), [m for m in split["metadata"]],
                             rate_per_s=200.0, max_wait_ms=40)  # fmt: skip
    assert len(stream.log) == 12 and stream.log["latency_ms"].gt(0).all()
    assert sum(stream.batch_sizes) == 12 and max(stream.batch_sizes) <= 8
    assert stream.batcher["mean_batch_size"] > 1  # 200 studies/s arrive faster than served
    labels = np.asarray(split["labels"])
    snap = monitoring_snapshot(stream, labels)
    assert snap["studies"] == 12 and snap["p99_latency_ms"] >= snap["p50_latency_ms"]
    assert 0 <= snap["hallucination_rate"] <= 1 and "critical_sensitivity" in snap
    with pytest.raises(ValueError, match="clinical contexts"):
        simulate_stream(service, split["pixels"].numpy(), [None])


def test_batching_throughput_compares_both_servers() -> None:
    torch.set_num_threads(1)
    model, tok, split = tiny_model_and_data(seed=6, n=8)
    service = ReportService(TorchBackend(model, tok), max_new_tokens=3)
    out = batching_throughput(service, split["pixels"].numpy(), concurrency=4, rounds=1,
                              max_wait_ms=30)  # fmt: skip
    assert out["batched_studies_per_hour"] > 0 and out["one_at_a_time_studies_per_hour"] > 0
    assert out["speedup"] == pytest.approx(
        out["batched_studies_per_hour"] / out["one_at_a_time_studies_per_hour"]
    )
    assert 1.0 < out["mean_batch_size"] <= 4.0
    with pytest.raises(ValueError, match="at least 4 images"):
        batching_throughput(service, split["pixels"].numpy()[:2], concurrency=4)


def test_run_async_works_inside_a_running_loop() -> None:
    """Jupyter runs an event loop: the stream helpers must still work there."""
    import asyncio

    from course_utils.deploy.monitoring import run_async

    async def inner():
        await asyncio.sleep(0)
        return 7

    async def outer():
        return run_async(inner())

    assert run_async(inner()) == 7 and asyncio.run(outer()) == 7
