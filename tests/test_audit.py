"""Bias audit: hand-computed metrics, flags, fairlearn summaries, the audit dataset, and the
injected-disparity ground truth found across three seeds (and not found on the controls)."""

from __future__ import annotations

import filecmp
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from course_utils import audit
from course_utils.audit import (
    CRITICAL_FINDINGS,
    AuditPreset,
    CriticalDetector,
    PrecomputedDetector,
    age_group,
    audit_calls,
    bias_audit,
    critical_truth,
    detection_probs,
    fairness_metrics,
    flag_status,
    hallucinated_findings,
    is_post_surgical,
    operating_thresholds,
    sensitivity_ci,
    subgroup_table,
)
from course_utils.labels import CHEXPERT_LABELS

matplotlib.use("Agg")
K = {name: CHEXPERT_LABELS.index(name) for name in CHEXPERT_LABELS}


def _labels(rows: list[dict[str, float]]) -> np.ndarray:
    out = np.full((len(rows), len(CHEXPERT_LABELS)), np.nan)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, K[name]] = value
    return out


def _dataset(ages, sexes, races, rows, texts=None) -> dict:
    meta = [
        {"study_id": 100 + i, "age": a, "sex": s, "race": r, "findings": (texts or [""] * len(ages))[i],
         "impression": ""}
        for i, (a, s, r) in enumerate(zip(ages, sexes, races, strict=True))
    ]  # fmt: skip
    n = len(ages)
    return {
        "labels": torch.tensor(_labels(rows), dtype=torch.float32),
        "metadata": meta,
        "reports": [m["findings"] or "Normal." for m in meta],
        "pixels": torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
    }


# --------------------------------------------------------------------------- subgroups
def test_age_group_bins_and_bad_ages() -> None:
    assert [age_group(a) for a in (0, 17, 18, 39.9, 40, 59, 60, 74, 75, 90)] == [
        "0-17", "0-17", "18-39", "18-39", "40-59", "40-59", "60-74", "60-74", "75+", "75+"
    ]  # fmt: skip
    for bad in (float("nan"), -1, 200):
        with pytest.raises(ValueError):
            age_group(bad)


def test_post_surgical_words() -> None:
    assert is_post_surgical("Median sternotomy wires are intact.")
    assert is_post_surgical("Status post CABG.")
    assert is_post_surgical("Postoperative changes of right upper lobectomy.")
    assert not is_post_surgical("The lungs are clear. No pneumothorax.")
    assert not is_post_surgical("")


def test_subgroup_table_columns_and_missing_demographics() -> None:
    data = _dataset([10, 30, 80], ["F", "M", "F"], ["ASIAN", "WHITE", "WHITE"],
                    [{"Support Devices": 1.0}, {"Support Devices": -1.0}, {}],
                    ["Pacemaker in place.", "Sternotomy wires.", "Clear lungs."])  # fmt: skip
    table = subgroup_table(data)
    assert table["age_group"].tolist() == ["0-17", "18-39", "75+"]
    assert table["support_devices"].tolist() == [True, False, False]  # uncertain is not 1
    assert table["post_surgical"].tolist() == [False, True, False]
    assert table["pediatric"].tolist() == [True, False, False]
    del data["metadata"][1]["race"]
    with pytest.raises(ValueError, match="race"):
        subgroup_table(data)
    with pytest.raises(TypeError):
        subgroup_table([1, 2, 3])


# --------------------------------------------------------------------------- truth and calls
def test_critical_truth_uncertain_is_left_out_blank_is_negative() -> None:
    labels = _labels([{"Pneumothorax": 1.0, "Fracture": -1.0}, {"Pleural Effusion": 0.0}])
    truth, known = critical_truth(labels)
    assert truth.tolist() == [[True, False, False, False], [False, False, False, False]]
    assert known.tolist() == [[True, False, True, True], [True, True, True, True]]
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        critical_truth(np.full((1, 14), 2.0))
    with pytest.raises(ValueError, match="shape"):
        critical_truth(np.zeros((2, 5)))


def test_operating_thresholds_hand_computed() -> None:
    probs = np.full((6, 14), 0.5)
    probs[:4, K["Pneumothorax"]] = [0.9, 0.8, 0.3, 0.1]  # the four positives
    probs[4:, K["Pneumothorax"]] = [0.95, 0.05]  # negatives do not matter
    labels = _labels([{"Pneumothorax": 1.0}] * 4 + [{"Pneumothorax": 0.0}, {}])
    one = ("Pneumothorax",)
    got = {
        t: operating_thresholds(probs, labels, t, one, "per_finding")["Pneumothorax"]
        for t in (0.5, 0.75, 0.76, 1.0)
    }
    assert got == {0.5: 0.8, 0.75: 0.3, 0.76: 0.1, 1.0: 0.1}  # ceil(t * 4)-th highest
    with pytest.raises(ValueError, match="no positive 'Fracture'"):
        operating_thresholds(probs, labels, 0.9, ("Fracture",), "per_finding")
    with pytest.raises(ValueError, match="target_sensitivity"):
        operating_thresholds(probs, labels, 0.0, one)
    with pytest.raises(ValueError, match="method"):
        operating_thresholds(probs, labels, 0.9, one, "youden")


def test_equal_fpr_thresholds_hand_computed() -> None:
    # pneumothorax: positives 0.9, 0.2, negatives 0.5, 0.3, 0.1, 0.05; fracture: positive 0.6,
    # negatives 0.8, 0.4. Raising the common FPR a: at a = 3/4 pneumothorax calls both of its
    # positives (threshold 0.1) while fracture may call floor(1.5) = 1 negative (threshold 0.8)
    probs = np.zeros((9, 14))
    ptx, frac = K["Pneumothorax"], K["Fracture"]
    probs[:6, ptx] = [0.9, 0.2, 0.5, 0.3, 0.1, 0.05]
    probs[6:, frac] = [0.6, 0.8, 0.4]
    rows = [{"Pneumothorax": 1.0}] * 2 + [{"Pneumothorax": 0.0}] * 4
    rows += [{"Fracture": 1.0}, {"Fracture": 0.0}, {"Fracture": 0.0}]
    labels = _labels(rows)
    labels[6:, ptx] = -1.0  # uncertain: neither positive nor negative pneumothorax
    labels[:6, frac] = -1.0
    two = ("Pneumothorax", "Fracture")
    assert operating_thresholds(probs, labels, 2 / 3, two) == {"Pneumothorax": 0.1, "Fracture": 0.8}
    assert operating_thresholds(probs, labels, 1.0, two) == {"Pneumothorax": 0.05, "Fracture": 0.4}
    low = operating_thresholds(probs, labels, 1 / 3, two)  # a = 0: above every negative
    assert low["Pneumothorax"] == np.nextafter(0.5, 1) and low["Fracture"] == np.nextafter(0.8, 1)
    with pytest.raises(ValueError, match="no positive"):
        operating_thresholds(probs, _labels([{}] * 9), 0.9, two)


def test_detector_calls_and_probability_sources() -> None:
    data = _dataset([30, 40], ["F", "M"], ["WHITE", "WHITE"], [{}, {}])
    probs = np.zeros((2, 14))
    probs[0, K["Pneumothorax"]], probs[1, K["Fracture"]] = 0.7, 0.2
    thresholds = dict.fromkeys(CRITICAL_FINDINGS, 0.5)
    det = CriticalDetector(probs, thresholds)
    assert det.calls(data).tolist() == [[True, False, False, False], [False, False, False, False]]

    def model(x: torch.Tensor) -> torch.Tensor:  # a callable on (B, 1, S, S) images
        return torch.full((x.shape[0], 14), 0.25)

    assert np.allclose(detection_probs(model, data), 0.25)
    with pytest.raises(ValueError, match="shape"):
        detection_probs(lambda x: torch.zeros(x.shape[0], 3), data)
    with pytest.raises(ValueError, match="cover 3 studies"):
        PrecomputedDetector(np.zeros((3, 14))).predict_findings(data)
    with pytest.raises(ValueError, match="probabilities"):
        PrecomputedDetector(np.full((2, 14), 1.5))
    with pytest.raises(ValueError, match="no threshold"):
        CriticalDetector(probs, {"Pneumothorax": 0.5})


def test_hallucinated_findings_hand_computed() -> None:
    ref = _labels([{"Pleural Effusion": 1.0, "Edema": -1.0}, {"No Finding": 1.0}, {}])
    hyp = _labels([
        {"Pleural Effusion": 1.0, "Edema": 1.0, "Cardiomegaly": 1.0, "No Finding": 1.0},
        {"No Finding": 1.0, "Pneumothorax": -1.0},  # a hedge is not a statement
        {"Fracture": 1.0, "Lung Lesion": 1.0},
    ])  # fmt: skip
    # study 0: edema is hedged in the reference (supported), cardiomegaly is not -> 1
    assert hallucinated_findings(ref, hyp).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="differ"):
        hallucinated_findings(ref, hyp[:2])


# --------------------------------------------------------------------------- statistics
def test_sensitivity_ci_pooled_and_bootstrap_hand_computed() -> None:
    truth = np.array([[1, 1], [1, 0], [0, 0]], bool)
    calls = np.array([[1, 0], [1, 1], [0, 1]], bool)
    ci = sensitivity_ci(truth, calls, n_boot=4000, seed=0)
    # 2 of 3 positives; resampling the 2 positive studies gives 2/4, 1/1 or 2/3
    assert math.isclose(ci.estimate, 2 / 3)
    assert set(np.round(ci.distribution, 6)) == {0.5, round(2 / 3, 6), 1.0}
    assert abs(np.mean(ci.distribution == 0.5) - 0.25) < 0.03
    assert tuple(np.percentile(ci.distribution, [2.5, 97.5])) == (0.5, 1.0)  # the bootstrap
    # ... widened to the Wilson interval of 2 of 3: (0.208, 0.939) -> (0.208, 1.0)
    assert ci.low == pytest.approx(0.2076596, abs=1e-6) and ci.high == 1.0
    assert audit.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775328, abs=1e-6))
    with pytest.raises(ValueError):
        audit.wilson_interval(3, 2)
    known = np.array([[1, 0], [1, 1], [1, 1]], bool)  # the missed finding was uncertain
    assert sensitivity_ci(truth, calls, known, n_boot=50).estimate == 1.0
    assert sensitivity_ci(np.zeros((2, 2), bool), calls[:2], n_boot=50) is None


def test_flag_status() -> None:
    assert flag_status(0.80, 0.93, 0.95) == "below"
    assert flag_status(0.90, 0.99, 0.95) == "inconclusive"
    assert flag_status(0.95, 1.00, 0.95) == "meets"
    assert flag_status(0.0, 0.2, 0.95, n_positive=4, min_positives=10) == "too few positives"


def test_fairness_metrics_hand_computed() -> None:
    # one finding; group A: TPR 1/2, FPR 1/2, call rate 2/4; group B: TPR 1, FPR 0, rate 1/4
    truth = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)[:, None]
    calls = np.array([1, 0, 0, 1, 1, 0, 0, 0], bool)[:, None]
    groups = pd.Series(list("AAAABBBB"), name="g")
    metrics, frame = fairness_metrics(truth, calls, np.ones_like(truth), groups)
    assert metrics["equalized_odds_difference"] == pytest.approx(0.5)
    assert metrics["demographic_parity_difference"] == pytest.approx(0.25)
    assert frame.by_group["sensitivity"].tolist() == [0.5, 1.0]
    assert frame.by_group["fpr"].tolist() == [0.5, 0.0]
    # a perfect model on groups with different prevalence: equalised odds 0, parity gap 0.5
    truth2 = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)[:, None]
    metrics2, _ = fairness_metrics(truth2, truth2, np.ones_like(truth2), groups)
    assert metrics2["equalized_odds_difference"] == 0.0
    assert metrics2["demographic_parity_difference"] == pytest.approx(0.5)


def _audit_fixture() -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """20 studies (one finding each): group "old" misses 8 of 12, "young" misses 0 of 4."""
    truth = np.array([1] * 12 + [1] * 4 + [0] * 4, bool)[:, None]
    calls = np.array([1] * 4 + [0] * 8 + [1] * 4 + [0, 0, 0, 1], bool)[:, None]
    groups = pd.DataFrame({
        "age_group": ["75+"] * 12 + ["18-39"] * 4 + ["75+"] * 2 + ["18-39"] * 2,
        "sex": ["F", "M"] * 10,
        "race": ["WHITE"] * 20,
        "support_devices": [False] * 20,
        "post_surgical": [True] + [False] * 19,
        "pediatric": [False] * 20,
    })  # fmt: skip
    return truth, calls, np.ones_like(truth), groups


def test_audit_calls_table_flags_and_edge_cases() -> None:
    truth, calls, known, groups = _audit_fixture()
    res = audit_calls(truth, calls, known, groups, n_boot=500, seed=1, min_positives=4,
                      findings=("Pneumothorax",))  # fmt: skip
    t = res.table.set_index(["attribute", "subgroup"])
    old, young = t.loc[("age_group", "75+")], t.loc[("age_group", "18-39")]
    assert (old.n_studies, old.n_positive, old.sensitivity) == (14, 12, 4 / 12)
    assert old.ci_high < 0.95 and old.status == "below" and old.flagged
    assert (young.n_positive, young.sensitivity, young.fpr) == (4, 1.0, 0.5)
    # 4/4: the bootstrap alone says [1, 1]; the Wilson floor says 4 findings prove little
    assert young.status == "inconclusive" and young.ci_low == pytest.approx(0.5101, abs=1e-4)
    # the misses of the 75+ drag every group they belong to below the threshold (both sexes,
    # the one race), but only the 75+ are worse than everybody else: only they are flagged
    assert res.flagged_subgroups() == [("age_group", "75+")]
    below = res.table[res.table.status == "below"]
    assert sorted(zip(below.attribute, below.subgroup, strict=True)) == [
        ("age_group", "75+"), ("race", "WHITE"), ("sex", "F"), ("sex", "M")]  # fmt: skip
    assert old.gap == pytest.approx(4 / 12 - 4 / 4) and old.gap_high < 0 and old.worse_than_rest
    assert math.isnan(t.loc[("race", "WHITE"), "gap"])  # nobody else to compare with
    assert "BELOW (no gap to the rest) sex=F" in res.summary()
    assert t.loc[("edge_case", "support devices / implants"), "status"] == "empty"
    assert t.loc[("edge_case", "post-surgical"), "status"] == "too few positives"
    assert t.loc[("sex", "F"), "sensitivity"] == pytest.approx(4 / 8)
    assert res.overall["sensitivity"] == pytest.approx(8 / 16)
    assert res.fairness.loc["race", "groups_compared"] == 1  # one group: no difference
    assert math.isnan(res.fairness.loc["race", "equalized_odds_difference"])
    assert "FLAG age_group=75+" in res.summary()
    with pytest.raises(ValueError, match="threshold"):
        audit_calls(truth, calls, known, groups, threshold=1.5)
    with pytest.raises(ValueError, match="lacks column"):
        audit_calls(truth, calls, known, groups.drop(columns="race"))
    with pytest.raises(ValueError, match="rows"):
        audit_calls(truth, calls, known, groups.iloc[:5])


def test_resolve_overlaps_keeps_the_subgroup_that_carries_the_misses() -> None:
    # 75+: 20 effusions, 2 called (16 black, 4 white patients); the other black patients are
    # all called. Black patients are worse than the rest too, but only through their 75+:
    # without the 75+ they are perfect, while the 75+ stay bad without the black patients.
    blocks = [(16, "75+", "BLACK", 2), (4, "75+", "WHITE", 0), (10, "40-59", "BLACK", 10),
              (60, "40-59", "WHITE", 60)]  # fmt: skip
    age, race, called = [], [], []
    for count, a, r, k in blocks:
        age += [a] * count
        race += [r] * count
        called += [True] * k + [False] * (count - k)
    n = len(age)
    groups = pd.DataFrame({"age_group": age, "sex": ["F", "M"] * (n // 2), "race": race,
                           "support_devices": False, "post_surgical": False, "pediatric": False})  # fmt: skip
    truth = np.ones((n, 1), bool)
    res = audit_calls(truth, np.array(called)[:, None], truth, groups, n_boot=1000,
                      min_positives=4, edge_cases=(), findings=("Pleural Effusion",))  # fmt: skip
    t = res.table.set_index(["attribute", "subgroup"])
    assert t.loc[("race", "BLACK"), "candidate"] and not t.loc[("race", "BLACK"), "flagged"]
    assert t.loc[("race", "BLACK"), "explained_by"] == "age_group=75+"
    assert res.flagged_subgroups() == [("age_group", "75+")]
    assert "explained by age_group=75+" in res.summary()


def test_bias_audit_detection_and_report_sources() -> None:
    ages = [80] * 6 + [30] * 6
    rows = [{"Pleural Effusion": 1.0}] * 4 + [{}] * 2 + [{"Pleural Effusion": 1.0}] * 4 + [{}] * 2
    data = _dataset(ages, ["F", "M"] * 6, ["WHITE"] * 12, rows)
    probs = np.zeros((12, 14))
    probs[[0, 6, 7, 8, 9], K["Pleural Effusion"]] = 0.9  # misses 3 of 4 effusions in the 75+
    det = CriticalDetector(probs, dict.fromkeys(CRITICAL_FINDINGS, 0.5))
    res = bias_audit(det, data, n_boot=200, min_positives=4)
    assert res.flagged_subgroups() == [("age_group", "75+")]
    # everybody is white: 5/8 is below the threshold, but there is no "rest" to be worse than
    assert res.table.set_index("subgroup").loc["WHITE", "status"] == "below"
    res = bias_audit(det, data, n_boot=200, min_positives=4, attributes=("age_group",))
    assert res.flagged_subgroups() == [("age_group", "75+")]
    assert res.thresholds == dict.fromkeys(CRITICAL_FINDINGS, 0.5)
    with pytest.raises(ValueError, match="operating point"):
        bias_audit(probs, data)
    with pytest.raises(ValueError, match="no positive"):
        bias_audit(lambda x: torch.zeros(x.shape[0], 14), data,
                   calibration=_dataset([30], ["F"], ["WHITE"], [{}]))  # fmt: skip
    calibrated = bias_audit(probs, data, calibration=data, target_sensitivity=1.0, n_boot=50,
                            findings=("Pleural Effusion",))  # fmt: skip
    assert calibrated.thresholds == {"Pleural Effusion": 0.0}  # every negative is called too
    assert calibrated.overall["sensitivity"] == 1.0

    reports = ["Small left pleural effusion."] + ["Normal chest."] * 5
    reports += ["Pleural effusion. Right rib fracture."] * 4 + ["Normal chest."] * 2
    rep = bias_audit(None, data, source="report", reports=reports, n_boot=200, min_positives=4,
                     attributes=("age_group", "sex"))  # fmt: skip
    t = rep.table.set_index(["attribute", "subgroup"])
    assert t.loc[("age_group", "75+"), "sensitivity"] == 0.25
    assert t.loc[("age_group", "18-39"), "hallucination_rate"] == pytest.approx(4 / 6)
    assert t.loc[("age_group", "75+"), "hallucination_rate"] == 0.0
    assert rep.flagged_subgroups() == [("age_group", "75+")]
    with pytest.raises(ValueError, match="generated reports"):
        bias_audit(None, data, source="report", reports=reports[:3])


def test_plots_draw_every_subgroup() -> None:
    from course_utils.plots_audit import plot_audit_comparison, plot_subgroup_metric

    truth, calls, known, groups = _audit_fixture()
    res = audit_calls(truth, calls, known, groups, n_boot=100, min_positives=4)
    fig = plot_subgroup_metric(res)
    assert len(fig.axes[0].get_yticklabels()) == len(res.table)
    fig2 = plot_audit_comparison({"a": res, "b": res}, attributes=["age_group"])
    assert len(fig2.axes) == 2
    with pytest.raises(ValueError, match="hallucination"):
        plot_subgroup_metric(res, "hallucination_rate")


# --------------------------------------------------------------------------- audit dataset
def test_preset_effects_spell_out_ages() -> None:
    preset = audit.AUDIT_PRESETS[audit.DEFAULT_PRESET]
    effects = preset.subgroup_effects()
    assert set(effects) == {"age"} and sorted(int(a) for a in effects["age"])[:2] == [75, 76]
    assert all(v == dict(preset.acquisition) for v in effects["age"].values())
    race = AuditPreset("x", "race", "ASIAN", {"noise": 0.1}, "").subgroup_effects()
    assert race == {"race": {"ASIAN": {"noise": 0.1}}}
    assert audit.audit_dataset_dir(None).name == "embedded-128px-seed42-audit-control"
    with pytest.raises(ValueError, match="unknown audit preset"):
        audit.build_audit_dataset("nope", "/tmp/never")


def test_only_splits_is_a_pure_filter_of_the_full_build(tmp_path: Path) -> None:
    from course_utils.data import build_embedded_dataset, read_embedded_info

    kw = dict(seed=3, image_size=32, max_studies=40, workers=1)
    full = build_embedded_dataset(tmp_path / "full", **kw)
    test = build_embedded_dataset(tmp_path / "test", only_splits=("test",), **kw)
    assert "only_splits" not in read_embedded_info(full)  # default marker unchanged
    info = read_embedded_info(test)
    assert info["only_splits"] == ["test"] and set(info["studies_per_split"].values()) != {0}
    split = pd.read_csv(full / "mimic-cxr-2.0.0-split.csv")
    kept = pd.read_csv(test / "mimic-cxr-2.0.0-split.csv")
    assert kept.equals(split[split.split == "test"].reset_index(drop=True))
    for name in ("mimic-cxr-2.0.0-metadata.csv", "phantom_acquisition.csv"):
        a, b = pd.read_csv(full / name), pd.read_csv(test / name)
        assert b.equals(a[a.dicom_id.isin(kept.dicom_id)].reset_index(drop=True)), name
    jpgs = sorted(p.relative_to(test) for p in test.glob("files/**/*.jpg"))
    assert len(jpgs) == len(kept) and all(filecmp.cmp(full / p, test / p, False) for p in jpgs)
    with pytest.raises(ValueError, match="only_splits"):
        build_embedded_dataset(tmp_path / "bad", only_splits=("val",), **kw)


def test_audit_build_changes_only_the_affected_subgroup(tmp_path: Path) -> None:
    preset = AuditPreset("t", "sex", "F", {"noise": 0.2}, "test preset")
    kw = dict(image_size=32, seed=3, max_studies=40, workers=1)
    control = audit.build_audit_dataset(None, tmp_path / "c", **kw)
    effect = audit.build_audit_dataset(preset, tmp_path / "e", **kw)
    patients = pd.read_csv(effect / "patients.csv").set_index("subject_id")["sex"]
    split = pd.read_csv(effect / "mimic-cxr-2.0.0-split.csv")
    acq_c = pd.read_csv(control / "phantom_acquisition.csv").set_index("dicom_id")
    acq_e = pd.read_csv(effect / "phantom_acquisition.csv").set_index("dicom_id")
    female = split.subject_id.map(patients).eq("F").to_numpy()
    diff = (acq_e.loc[split.dicom_id, "noise"] - acq_c.loc[split.dicom_id, "noise"]).to_numpy()
    assert female.any() and (~female).any()
    assert np.allclose(diff[female], 0.2, atol=1e-4) and np.allclose(diff[~female], 0.0)
    assert json.loads((effect / "embedded_dataset.json").read_text())["subgroup_effects"] == {
        "sex": {"F": {"noise": 0.2}}
    }


# --------------------------------------------------------------------------- real-data joins
def test_mimic_iv_demographics_and_ages_at_the_study(tmp_path: Path) -> None:
    pd.DataFrame({
        "subject_id": [1, 2, 3], "gender": ["F", "M", "F"], "anchor_age": [60, 91, 30],
        "anchor_year": [2150, 2160, 2170], "anchor_year_group": ["2008 - 2010"] * 3,
        "dod": [None] * 3,
    }).to_csv(tmp_path / "patients.csv", index=False)  # fmt: skip
    pd.DataFrame({
        "subject_id": [1, 1, 1, 2, 2],
        "hadm_id": [11, 12, 13, 21, 22],
        "race": ["UNKNOWN", "WHITE - RUSSIAN", "WHITE", "ASIAN - CHINESE", "PATIENT DECLINED TO ANSWER"],
    }).to_csv(tmp_path / "admissions.csv", index=False)  # fmt: skip
    demo = audit.mimic_iv_demographics(tmp_path / "patients.csv", tmp_path / "admissions.csv")
    assert demo["race"].tolist() == ["WHITE", "ASIAN", "UNKNOWN"]  # 3 has no admission
    assert demo["sex"].tolist() == ["F", "M", "F"]
    assert [audit.coarse_race(v) for v in ("HISPANIC/LATINO - PUERTO RICAN", "SOUTH AMERICAN",
                                           "AMERICAN INDIAN/ALASKA NATIVE", None)] == [
        "HISPANIC/LATINO", "HISPANIC/LATINO", "OTHER", "UNKNOWN"]  # fmt: skip
    split = {"metadata": [{"subject_id": 1, "study_id": 501}, {"subject_id": 2, "study_id": 502}],
             "labels": np.zeros((2, 14))}  # fmt: skip
    out = audit.attach_demographics(split, demo, {501: 2155, 502: 2160})
    assert [(m["age"], m["sex"], m["race"]) for m in out["metadata"]] == [
        (65.0, "F", "WHITE"), (91.0, "M", "ASIAN")]  # fmt: skip
    assert "age" not in split["metadata"][0]  # the input is not modified
    with pytest.raises(ValueError, match="study year"):
        audit.attach_demographics(split, demo)
    with pytest.raises(ValueError, match="subject 9"):
        audit.attach_demographics({"metadata": [{"subject_id": 9, "study_id": 1}]}, demo, {1: 1})
    with pytest.raises(FileNotFoundError):
        audit.mimic_iv_demographics(tmp_path / "nope.csv", tmp_path / "admissions.csv")
    meta = pd.DataFrame({"dicom_id": ["a", "b"], "study_id": [501, 501],
                         "StudyDate": [21550304, 21550304]})  # fmt: skip
    meta.to_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", index=False)
    assert audit.mimic_cxr_study_years(tmp_path) == {501: 2155}


# --------------------------------------------------------------------------- ground truth
@pytest.fixture(scope="module")
def calibrated_encoder() -> CriticalDetector:
    """The course encoder's classifier at its validation operating point (95 % target)."""
    from course_utils.data import ensure_embedded_dataset, load_mimic_cxr_dataset
    from course_utils.model import ensure_pretrained_encoder, load_pretrained_encoder

    encoder = load_pretrained_encoder(ensure_pretrained_encoder(), with_head=True)
    val = load_mimic_cxr_dataset(ensure_embedded_dataset(), "val", load_pixels=True)
    return CriticalDetector.calibrate(encoder, val, target_sensitivity=0.95)


@pytest.fixture(scope="module")
def critical_reports() -> pd.DataFrame:
    """Every IU report with a critical finding plus 150 without (uid order): small builds whose
    test split holds as many critical findings as the full one (about 70)."""
    from course_utils.data import load_iu_reports
    from course_utils.labels import label_reports

    iu = load_iu_reports()
    iu = iu[iu["findings"].str.strip() != ""].reset_index(drop=True)
    values = label_reports((iu["findings"] + " " + iu["impression"]).tolist())
    critical = (values[list(CRITICAL_FINDINGS)] == 1.0).any(axis=1)
    table = pd.concat([iu[critical], iu[~critical].head(150)])
    return table.sort_values("uid").reset_index(drop=True)


@pytest.mark.slow  # six small builds (about 10 s per seed on 2 cores)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_audit_finds_the_injected_subgroup_and_is_quiet_on_the_control(
    seed: int, tmp_path: Path, calibrated_encoder: CriticalDetector, critical_reports: pd.DataFrame
) -> None:
    from course_utils.data import load_mimic_cxr_dataset

    # seeds other than 42: every image is new to the encoder (it trained on seed 42's renders)
    kw = dict(seed=seed, reports=critical_reports, workers=2)
    preset = audit.AUDIT_PRESETS[audit.DEFAULT_PRESET]
    results = {}
    for name, which in (("control", None), ("effect", preset)):
        path = audit.build_audit_dataset(which, tmp_path / name, **kw)
        split = load_mimic_cxr_dataset(path, "test", load_pixels=True)
        results[name] = bias_audit(calibrated_encoder, split, n_boot=1000, seed=seed)
    assert results["control"].overall["n_positive"] >= 60
    assert results["control"].flagged_subgroups() == []
    assert results["effect"].flagged_subgroups() == [(preset.attribute, preset.subgroup)]
    row = results["effect"].table.set_index(["attribute", "subgroup"]).loc[("age_group", "75+")]
    assert row.ci_high < 0.95 and row.gap_high < 0


def test_ensure_audit_dataset_builds_once_and_rebuilds_when_the_effect_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from course_utils.data.embedded import EMBEDDED_VERSION

    monkeypatch.setattr(audit, "data_cache_dir", lambda: tmp_path)
    monkeypatch.setattr("course_utils.config.data_cache_dir", lambda: tmp_path)
    built = []

    def fake_build(preset, out_dir, *, image_size, seed, progress):  # writes only the marker
        built.append(preset.name if preset else None)
        out_dir.mkdir(parents=True, exist_ok=True)
        info = {"version": EMBEDDED_VERSION, "seed": seed, "image_size": image_size,
                "max_studies": None, "only_splits": ["test"],
                "subgroup_effects": preset.subgroup_effects() if preset else {}}  # fmt: skip
        (out_dir / "embedded_dataset.json").write_text(json.dumps(info))
        return out_dir

    monkeypatch.setattr(audit, "build_audit_dataset", fake_build)
    path = audit.ensure_audit_dataset()
    assert path == tmp_path / "embedded-128px-seed42-audit-portable-elderly"
    assert audit.ensure_audit_dataset() == path and built == ["portable-elderly"]
    audit.ensure_audit_dataset(None)
    assert built == ["portable-elderly", None]
    stronger = AuditPreset("portable-elderly", "age_group", "75+", {"exposure": 4.0}, "")
    monkeypatch.setitem(audit.AUDIT_PRESETS, "portable-elderly", stronger)
    audit.ensure_audit_dataset()  # same folder, other effect: rebuilt
    assert built == ["portable-elderly", None, "portable-elderly"]
