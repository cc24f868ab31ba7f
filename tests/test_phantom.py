"""Phantom renderer: determinism, one visible signature per finding, boxes, laterality, severity."""

from __future__ import annotations

import numpy as np
import pytest

from course_utils.data import (
    Acquisition,
    FindingSpec,
    render_phantom,
    resolve_findings,
    sample_acquisition,
    sample_anatomy,
)
from course_utils.labels import CHEXPERT_LABELS, label_report

SIZE = 128
STRAIGHT = Acquisition(exposure=1.0, noise=0.0, rotation_deg=0.0)
ANATOMY = sample_anatomy(np.random.default_rng(3), "M")
DETAILS = {"Support Devices": "pacemaker", "Fracture": "rib", "Lung Lesion": "nodule"}


def spec(label: str, side: str = "left", status: float = 1.0, scale: float = 1.0,
         zone: str = "mid", severity: str | None = None, u: float = 0.6) -> FindingSpec:  # fmt: skip
    v = {"upper": 0.22, "mid": 0.5, "lower": 0.76}[zone]
    return FindingSpec(label, status, side, side, severity, zone, u, v, scale,
                       DETAILS.get(label, ""), 7)  # fmt: skip


def render(specs, acquisition=STRAIGHT, view="PA", seed=1):
    return render_phantom(specs, ANATOMY, acquisition, SIZE, view, seed)


def test_normal_is_deterministic_and_in_range() -> None:
    a, b = render([]), render([])
    assert a.image.shape == (SIZE, SIZE) and a.image.dtype == np.float32
    assert np.array_equal(a.image, b.image)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0
    assert a.findings == ()
    # lungs are dark, the abdomen below them bright, the outside air black
    lung = a.image[50:60, 30:40].mean()
    abdomen = a.image[115:125, 30:40].mean()
    assert lung < 0.3 < abdomen and a.image[5, 0] < 0.1
    assert not np.array_equal(a.image, render([], seed=2).image)  # seed changes texture/noise


@pytest.mark.parametrize("label", CHEXPERT_LABELS[1:])
def test_every_finding_changes_pixels_inside_its_box(label: str) -> None:
    normal = render([]).image
    drawn = render([spec(label, zone="lower" if label == "Consolidation" else "mid")])
    diff = np.abs(drawn.image - normal)
    assert drawn.findings, f"{label}: no box recorded"
    assert {f.label for f in drawn.findings} == {label}
    inside = np.zeros_like(diff, dtype=bool)
    for f in drawn.findings:
        assert 0 <= f.x0 <= f.x1 < SIZE and 0 <= f.y0 <= f.y1 < SIZE
        inside[f.y0 : f.y1 + 1, f.x0 : f.x1 + 1] = True
    assert diff[inside].sum() > 3.0, f"{label}: too faint ({diff[inside].sum():.2f})"
    # the anatomy-changing findings (heart, mediastinum) also move nearby lung edges
    share = 0.6 if label in ("Cardiomegaly", "Enlarged Cardiomediastinum") else 0.9
    assert diff[inside].sum() >= share * diff.sum(), f"{label}: drawn outside its box"


def test_nodule_box_and_laterality_follow_the_report_side() -> None:
    normal = render([]).image
    for side, expect_right_half in (("left", True), ("right", False)):
        ph = render([spec("Lung Lesion", side=side)])
        (box,) = ph.findings
        assert box.laterality == side
        centre = (box.x0 + box.x1) / 2
        assert (centre > SIZE / 2) == expect_right_half  # patient's left is image right
        diff = np.abs(ph.image - normal)
        assert diff[box.y0 : box.y1 + 1, box.x0 : box.x1 + 1].max() > 0.25
        assert box.x1 - box.x0 <= 12  # ~3.3 px radius nodule at 128 px


def test_bilateral_draws_both_sides() -> None:
    ph = render([spec("Pleural Effusion", side="bilateral")])
    assert sorted(f.laterality for f in ph.findings) == ["left", "right"]


def test_uncertain_is_fainter_than_positive() -> None:
    normal = render([]).image
    pos = np.abs(render([spec("Lung Opacity")]).image - normal).sum()
    unc = np.abs(render([spec("Lung Opacity", status=-1.0)]).image - normal).sum()
    assert 0.25 * pos < unc < 0.55 * pos  # drawn at 40 %


def test_severity_scales_effusion_height() -> None:
    small = render([spec("Pleural Effusion", scale=0.8, severity="small")]).findings[0]
    large = render([spec("Pleural Effusion", scale=1.25, severity="large")]).findings[0]
    assert large.y0 < small.y0 - 5  # a large effusion rises much higher
    assert large.severity == "large"


def test_cardiomegaly_widens_the_heart_box() -> None:
    normal = render([spec("Cardiomegaly", status=-1.0, scale=0.01)]).findings[0]
    big = render([spec("Cardiomegaly")]).findings[0]
    assert (big.x1 - big.x0) > 1.2 * (normal.x1 - normal.x0)


def test_rotation_moves_the_box_with_the_finding() -> None:
    tilted = Acquisition(exposure=1.0, noise=0.0, rotation_deg=4.0)
    normal = render([], tilted).image
    ph = render([spec("Lung Lesion", side="right", zone="upper")], tilted)
    (box,) = ph.findings
    diff = np.abs(ph.image - normal)
    assert diff[box.y0 : box.y1 + 1, box.x0 : box.x1 + 1].sum() >= 0.95 * diff.sum()
    straight = render([spec("Lung Lesion", side="right", zone="upper")]).findings[0]
    assert (box.x0, box.y0) != (straight.x0, straight.y0)


def test_acquisition_exposure_noise_and_effects() -> None:
    base = render([]).image
    dark = render([], Acquisition(1.3, 0.0, 0.0)).image
    assert dark.mean() < base.mean()  # gamma > 1 darkens ("over-exposed")
    noisy = render([], Acquisition(1.0, 0.05, 0.0)).image
    assert 0.03 < float(np.std(noisy - base)) < 0.06
    a = sample_acquisition(np.random.default_rng(0))
    b = sample_acquisition(np.random.default_rng(0), {"noise": 0.02, "exposure": -0.1})
    assert b.noise == pytest.approx(a.noise + 0.02) and b.exposure == pytest.approx(
        a.exposure - 0.1
    )
    assert 0.8 <= a.exposure <= 1.25 and -4 <= a.rotation_deg <= 4
    with pytest.raises(ValueError, match="unknown acquisition effect"):
        sample_acquisition(np.random.default_rng(0), {"gain": 1.0})


def test_lateral_view_and_bad_arguments() -> None:
    lat = render([spec("Pleural Effusion"), spec("Support Devices")], view="LATERAL")
    assert lat.image.shape == (SIZE, SIZE) and lat.view == "LATERAL"
    assert {f.label for f in lat.findings} == {"Pleural Effusion", "Support Devices"}
    with pytest.raises(ValueError, match="view must be one of"):
        render([], view="AP")
    with pytest.raises(ValueError, match=">= 16 pixels"):
        render_phantom([], ANATOMY, STRAIGHT, 8)


def test_resolve_findings_uses_labeler_side_severity_zone() -> None:
    labels = label_report("Small left pleural effusion. Possible right lower lobe pneumonia.")
    specs = resolve_findings(labels.values, labels.mentions, np.random.default_rng(0))
    by = {s.label: s for s in specs}
    assert set(by) == {"Pleural Effusion", "Pneumonia"}
    eff, pna = by["Pleural Effusion"], by["Pneumonia"]
    assert (eff.status, eff.side, eff.laterality, eff.severity) == (1.0, "left", "left", "small")
    assert eff.scale < 0.9
    assert (pna.status, pna.side, pna.zone) == (-1.0, "right", "lower")
    assert pna.intensity == pytest.approx(0.4)


def test_resolve_findings_random_side_is_seeded_and_devices_detailed() -> None:
    labels = label_report("Nodule is seen. Pacemaker and sternotomy wires in place.")
    a = resolve_findings(labels.values, labels.mentions, np.random.default_rng(5))
    b = resolve_findings(labels.values, labels.mentions, np.random.default_rng(5))
    assert a == b
    by = {s.label: s for s in a}
    assert by["Lung Lesion"].laterality is None and by["Lung Lesion"].side in ("left", "right")
    assert set(by["Support Devices"].detail.split("+")) == {"pacemaker", "sternotomy"}
    sides = {resolve_findings(labels.values, labels.mentions, np.random.default_rng(k))[0].side
             for k in range(20)}  # fmt: skip
    assert sides == {"left", "right"}


def test_resolve_findings_skips_negative_and_no_finding() -> None:
    labels = label_report("No pleural effusion. No pneumothorax. Normal heart size.")
    assert resolve_findings(labels.values, labels.mentions) == []
    edema = label_report("Mild pulmonary edema.")
    (s,) = resolve_findings(edema.values, edema.mentions)
    assert s.side == "bilateral"  # edema is always drawn on both sides
