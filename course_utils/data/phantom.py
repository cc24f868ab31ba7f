"""Label-conditioned chest X-ray phantoms.

A phantom is a density map built from simple shapes (body, lungs, heart, mediastinum,
diaphragm, ribs, clavicles, spine, trachea, vessels) on which every positive CheXpert finding
of a report is drawn with its own visual signature, where the report puts it:

==========================  ====================================================================
Enlarged Cardiomediastinum  widened upper mediastinum (heart unchanged)
Cardiomegaly                wider heart (cardiothoracic ratio 0.55-0.68 instead of 0.40-0.48)
Lung Lesion                 one sharp round nodule (a larger one for "mass")
Lung Opacity                one soft, ill-defined blob
Edema                       bilateral perihilar ("bat-wing") haze + Kerley B lines at the bases
Consolidation               dense homogeneous lobar wedge, sharp fissure border, air bronchograms
Pneumonia                   cluster of small fluffy patches
Atelectasis                 thin bright linear (plate-like) band(s), tilted
Pneumothorax                avascular dark rim at apex/lateral wall, thin bright pleural line
Pleural Effusion            fluid meniscus blunting the costophrenic angle
Pleural Other               pleural thickening band along the lateral chest wall + plaques
Fracture                    rib gap with a step and a bright callus (spine: collapsed vertebra)
Support Devices             bright tube/line, pacemaker box with lead, sternotomy wires
==========================  ====================================================================

Uncertain findings (label ``-1``) are drawn at :data:`UNCERTAIN_INTENSITY` of full strength;
severity words scale size and density. All geometry is in normalised coordinates
(x right, y down, both in ``[0, 1]``); image left is the patient's right (radiological
convention). Acquisition (exposure, noise, rotation) is applied last; rotation rotates the
sampling grid, so the recorded bounding boxes are exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

UNCERTAIN_INTENSITY = 0.4
SEVERITY_SCALE = {"mild": 0.8, "small": 0.8, "moderate": 1.0, "severe": 1.25, "large": 1.25}
ZONES = ("upper", "mid", "lower")
VIEWS = ("PA", "LATERAL")

Array = np.ndarray


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Anatomy:
    """One patient's normal chest, in normalised image coordinates (seeded per patient)."""

    cx: float  # midline
    body_hw: float  # half-width of the torso
    thorax_hw: float  # half-width of the rib cage (lateral lung border)
    y_top: float  # lung apices
    y_dia_r: float  # right costophrenic level (image left)
    y_dia_l: float  # left costophrenic level (image right, usually lower)
    dome: float  # height of the diaphragm domes
    med_hw: float  # half-width of the upper mediastinum
    ctr: float  # cardiothoracic ratio
    heart_h: float  # vertical semi-axis of the heart
    hilum_y: float
    rib_spacing: float
    rib_curve: float
    rib_thick: float
    vessel_k: int
    vessel_phase: float
    female: bool


@dataclass(frozen=True)
class Acquisition:
    """Per-image acquisition: ``exposure`` is the gamma applied to the density map (>1 darker,
    "over-exposed"), ``noise`` the std of additive Gaussian noise on [0, 1] intensities,
    ``rotation_deg`` the in-plane patient rotation (positive = counter-clockwise)."""

    exposure: float
    noise: float
    rotation_deg: float


@dataclass(frozen=True)
class FindingSpec:
    """A finding resolved to a place and a strength, shared by the frontal and lateral view.

    Attributes:
        label: CheXpert label name.
        status: 1.0 (positive) or -1.0 (uncertain).
        side: ``"left"``, ``"right"`` or ``"bilateral"`` (patient sides).
        laterality: as reported (``None`` when the report gave none and ``side`` is random).
        severity: reported severity word or ``None``.
        zone: ``"upper"``, ``"mid"`` or ``"lower"``.
        u: lateral position as a fraction of the hemithorax width (0 = midline).
        v: vertical position as a fraction of the lung height (0 = apex).
        scale: size/density factor from the severity (with a little seeded jitter).
        detail: variant: devices ``"pacemaker"``, ``"sternotomy"``, ``"line"``, ``"tube"``,
            ``"ng"``, ``"port"`` (``+``-joined); fracture ``"rib"``, ``"spine"``,
            ``"clavicle"``; lesion ``"nodule"``, ``"mass"``.
        seed: seeds the shape details (blob positions, bronchogram branches).
    """

    label: str
    status: float
    side: str
    laterality: str | None
    severity: str | None
    zone: str
    u: float
    v: float
    scale: float
    detail: str
    seed: int

    @property
    def intensity(self) -> float:
        return 1.0 if self.status > 0 else UNCERTAIN_INTENSITY


@dataclass(frozen=True)
class DrawnFinding:
    """One drawn region: its pixel bounding box ``(x0, y0, x1, y1)`` (inclusive) in the image."""

    label: str
    status: float
    laterality: str  # "left" / "right" / "midline": the side this box lies on
    severity: str | None
    x0: int
    y0: int
    x1: int
    y1: int


def sample_anatomy(rng: np.random.Generator, sex: str | None = None) -> Anatomy:
    """Normal anatomical variation (heart size, lung shape, rib spacing, body size)."""
    u = rng.uniform
    thorax = u(0.33, 0.385)
    y_top = u(0.12, 0.16)
    y_dia_r = u(0.74, 0.79)
    return Anatomy(
        cx=0.5 + u(-0.012, 0.012),
        body_hw=min(thorax + u(0.06, 0.1), 0.49),
        thorax_hw=thorax,
        y_top=y_top,
        y_dia_r=y_dia_r,
        y_dia_l=y_dia_r + u(0.01, 0.035),
        dome=u(0.045, 0.065),
        med_hw=u(0.062, 0.074),
        ctr=u(0.40, 0.48),
        heart_h=u(0.13, 0.15),
        hilum_y=y_top + u(0.24, 0.28),
        rib_spacing=(y_dia_r - y_top) / u(10.0, 11.0),
        rib_curve=u(0.9, 1.3),
        rib_thick=u(0.019, 0.024),
        vessel_k=int(rng.integers(9, 14)),
        vessel_phase=u(0, 2 * math.pi),
        female=(sex == "F") if sex is not None else bool(rng.random() < 0.5),
    )


def sample_acquisition(
    rng: np.random.Generator, effects: Mapping[str, float] | None = None
) -> Acquisition:
    """Seeded exposure in [0.8, 1.25], noise std in [0.008, 0.03], rotation in [-4, 4] degrees.

    ``effects`` adds offsets (keys ``exposure``, ``noise``, ``rotation_deg``): the hook a later
    notebook uses to inject a documented acquisition shift for one subgroup.
    """
    acq = Acquisition(
        exposure=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.008, 0.03)),
        rotation_deg=float(rng.uniform(-4.0, 4.0)),
    )
    if effects:
        unknown = set(effects) - {"exposure", "noise", "rotation_deg"}
        if unknown:
            raise ValueError(f"unknown acquisition effect(s) {sorted(unknown)}")
        acq = Acquisition(
            exposure=max(0.3, acq.exposure + float(effects.get("exposure", 0.0))),
            noise=max(0.0, acq.noise + float(effects.get("noise", 0.0))),
            rotation_deg=acq.rotation_deg + float(effects.get("rotation_deg", 0.0)),
        )
    return acq


# --------------------------------------------------------------------------- placement
_ZONE_WORDS = {
    "upper": ("upper", "apex", "apical", "apices", "suprahilar"),
    "lower": ("lower", "base", "basilar", "basal", "bases", "retrocardiac", "costophrenic",
              "infrahilar", "lingula"),
    "mid": ("mid", "middle", "perihilar", "hilar", "central"),
}  # fmt: skip
# Where each finding usually sits when the report does not say (weights for upper/mid/lower).
_ZONE_PRIOR = {
    "Atelectasis": (0.1, 0.3, 0.6),
    "Consolidation": (0.2, 0.3, 0.5),
    "Pneumonia": (0.2, 0.3, 0.5),
    "Lung Opacity": (0.25, 0.35, 0.4),
    "Lung Lesion": (0.4, 0.35, 0.25),
    "Pleural Other": (0.5, 0.4, 0.1),
}
_DEVICE_WORDS = {
    "pacemaker": ("pacemaker", "pacer", "aicd", "defibrillator", "icd", "generator", "pacing"),
    "sternotomy": ("sternotomy", "sternal wire", "cabg", "wires", "median sternotomy"),
    "tube": ("endotracheal", "et tube", "tracheostomy", "ett"),
    "ng": ("nasogastric", "ng tube", "enteric", "feeding tube", "orogastric", "og tube"),
    "port": ("port", "port-a-cath", "portacath", "mediport"),
    "line": ("catheter", "line", "picc", "central venous", "swan", "drain", "chest tube"),
}


def _words_in(text: str, words: Sequence[str]) -> bool:
    return any(w in text for w in words)


def _detail(label: str, text: str) -> str:
    if label == "Support Devices":
        kinds = [k for k, words in _DEVICE_WORDS.items() if _words_in(text, words)]
        if "pacemaker" in kinds and "line" in kinds:
            kinds.remove("line")  # "pacemaker leads" are drawn with the pacemaker
        return "+".join(kinds) or "line"
    if label == "Fracture":
        if _words_in(text, ("vertebr", "spine", "spinal", "compression", "thoracic", "lumbar")):
            return "spine"
        if "clavic" in text:
            return "clavicle"
        return "rib"
    if label == "Lung Lesion":
        return "mass" if "mass" in text else "nodule"
    return ""


def resolve_findings(
    values: Mapping[str, float | None],
    mentions: Sequence = (),
    rng: np.random.Generator | None = None,
) -> list[FindingSpec]:
    """Turn labels (+ the labeler's mentions) into placed findings.

    Args:
        values: CheXpert label -> 1.0 / 0.0 / -1.0 / None (``ReportLabels.values``).
        mentions: ``ReportLabels.mentions``; their laterality, severity and sentence give the
            side, size and zone. Without a laterality the side is random (seeded).
        rng: randomness for unspecified sides/zones/positions.

    Returns:
        One :class:`FindingSpec` per positive or uncertain label except ``No Finding``, in
        CheXpert order (so drawing order is deterministic).
    """
    from ..labels import CHEXPERT_LABELS

    rng = rng if rng is not None else np.random.default_rng(0)
    specs: list[FindingSpec] = []
    for label in CHEXPERT_LABELS[1:]:
        status = values.get(label)
        if status is None or (isinstance(status, float) and math.isnan(status)):
            continue
        if status not in (1.0, -1.0):
            continue
        own = [m for m in mentions if m.label == label and m.status == status]
        sides = {m.laterality for m in own if m.laterality}
        severities = [m.severity for m in own if m.severity]
        text = " ".join(m.sentence.lower() for m in own)
        # Draw every random number whatever the branch so one label's choices never shift
        # another label's (keeps phantoms stable when the labeler changes a little).
        r_side, r_zone, u, v_jit, jitter, seed = (
            rng.random(), rng.random(), rng.uniform(0.45, 0.75), rng.uniform(-0.08, 0.08),
            rng.uniform(0.92, 1.08), int(rng.integers(0, 2**31 - 1)),
        )  # fmt: skip
        if "bilateral" in sides or {"left", "right"} <= sides:
            laterality = "bilateral"
        elif sides:
            laterality = sides.pop()
        else:
            laterality = None
        side = laterality or ("right" if r_side < 0.5 else "left")
        if label == "Edema":
            side = "bilateral"
        zone = next((z for z, words in _ZONE_WORDS.items() if _words_in(text, words)), None)
        if zone is None:
            prior = np.cumsum(_ZONE_PRIOR.get(label, (1 / 3, 1 / 3, 1 / 3)))
            zone = ZONES[int(np.searchsorted(prior, r_zone * prior[-1], side="right"))]
            zone = zone if zone in ZONES else "lower"
        v = {"upper": 0.22, "mid": 0.5, "lower": 0.76}[zone] + v_jit
        severity = severities[0] if severities else None
        scale = SEVERITY_SCALE.get(severity or "", 1.0) * jitter
        specs.append(
            FindingSpec(
                label=label,
                status=float(status),
                side=side,
                laterality=laterality,
                severity=severity,
                zone=zone,
                u=float(u),
                v=float(v),
                scale=float(scale),
                detail=_detail(label, text),
                seed=seed,
            )  # fmt: skip
        )
    return specs


# --------------------------------------------------------------------------- drawing helpers
def _soft(d: Array, width: float) -> Array:
    """Inside (d < 0) -> 1, outside -> 0, with a linear ramp ``width`` wide (antialiasing)."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _ellipse_sdf(x: Array, y: Array, cx: float, cy: float, rx: float, ry: float) -> Array:
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    return (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * min(rx, ry)


def _segment_dist(x: Array, y: Array, p: tuple[float, float], q: tuple[float, float]) -> Array:
    """Distance from every grid point to the segment p-q."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    denom = dx * dx + dy * dy or 1e-12
    t = np.clip(((x - px) * dx + (y - py) * dy) / denom, 0.0, 1.0)
    return np.hypot(x - (px + t * dx), y - (py + t * dy))


def _polyline_dist(x: Array, y: Array, points: Sequence[tuple[float, float]]) -> Array:
    """Distance from every grid point to a polyline (at least two points)."""
    d = _segment_dist(x, y, points[0], points[1])
    for p, q in zip(points[1:-1], points[2:], strict=True):
        d = np.minimum(d, _segment_dist(x, y, p, q))
    return d


def _bezier(points: Sequence[tuple[float, float]], n: int = 12) -> list[tuple[float, float]]:
    """Sample a quadratic/cubic Bezier curve (smooth tubes and leads)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    # de Casteljau, vectorised over t
    layer = np.broadcast_to(np.asarray(points, dtype=np.float64), (n, len(points), 2)).copy()
    while layer.shape[1] > 1:
        layer = (1 - t[..., None]) * layer[:, :-1] + t[..., None] * layer[:, 1:]
    return [(float(a), float(b)) for a, b in layer[:, 0]]


def _gauss(x: Array, y: Array, cx: float, cy: float, sx: float, sy: float, angle: float = 0.0):
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    a = (ca * dx + sa * dy) / sx
    b = (-sa * dx + ca * dy) / sy
    return np.exp(-0.5 * (a * a + b * b))


class _Canvas:
    """Grid, anatomy and density layers for one view; collects normalised boxes."""

    def __init__(self, anatomy: Anatomy, size: int, rotation_deg: float):
        self.a = anatomy
        self.size = size
        self.px = 1.0 / size
        # Rotating the sampling grid (instead of the raster) keeps edges sharp and boxes exact.
        c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        gy, gx = np.meshgrid(c, c, indexing="ij")
        th = math.radians(rotation_deg)
        self.rot = th
        cos, sin = math.cos(th), math.sin(th)
        # image point p = R(th) (anatomical point - c) + c; invert to sample anatomy.
        self.x = (cos * gx + sin * gy + 0.5).astype(np.float32)
        self.y = (-sin * gx + cos * gy + 0.5).astype(np.float32)
        self.boxes: list[tuple[FindingSpec, str, tuple[float, float, float, float]]] = []

    def window(self, box: tuple[float, float, float, float]) -> tuple[slice, slice]:
        """Pixel slices covering an anatomical box (shapes are only evaluated there: speed)."""
        x0, y0, x1, y1 = self.to_pixels(box)
        return slice(y0, y1 + 1), slice(x0, x1 + 1)

    def line(self, points: Sequence[tuple[float, float]], radius: float) -> Array:
        """Soft mask (S, S) of a polyline of half-thickness ``radius``."""
        out = np.zeros_like(self.x)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        m = radius + 2 * self.px
        win = self.window((min(xs) - m, min(ys) - m, max(xs) + m, max(ys) + m))
        d = _polyline_dist(self.x[win], self.y[win], points) - radius
        out[win] = _soft(d, self.px)
        return out

    def record(self, spec: FindingSpec, side: str, box: tuple[float, float, float, float]):
        self.boxes.append((spec, side, box))

    def to_pixels(self, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """Anatomical box -> enclosing pixel box in the (rotated) image, clipped to the frame."""
        x0, y0, x1, y1 = box
        cos, sin = math.cos(self.rot), math.sin(self.rot)
        xs, ys = [], []
        for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
            dx, dy = x - 0.5, y - 0.5
            xs.append(cos * dx - sin * dy + 0.5)
            ys.append(sin * dx + cos * dy + 0.5)
        s = self.size

        def clip(v: float) -> int:
            return int(min(max(v, 0), s - 1))

        return (
            clip(math.floor(min(xs) * s)),
            clip(math.floor(min(ys) * s)),
            clip(math.ceil(max(xs) * s) - 1),
            clip(math.ceil(max(ys) * s) - 1),
        )


def _sign(side: str) -> float:
    """+1 for the patient's left (image right), -1 for the patient's right (image left)."""
    return 1.0 if side == "left" else -1.0


def _sides(spec: FindingSpec) -> tuple[str, ...]:
    return ("right", "left") if spec.side == "bilateral" else (spec.side,)


# --------------------------------------------------------------------------- frontal anatomy
def _y_dia(a: Anatomy, side: str) -> float:
    return a.y_dia_l if side == "left" else a.y_dia_r


def _med_hw(a: Anatomy, y: Array, widen: float) -> Array:
    """Mediastinal half-width at height y; ``widen`` widens the upper mediastinum."""
    bump = np.exp(-0.5 * ((y - (a.y_top + 0.17)) / 0.1) ** 2)
    return a.med_hw + widen * bump


def _lung_sdf(a: Anatomy, x: Array, y: Array, side: str, widen: float = 0.0) -> Array:
    """Approximate signed distance to one lung field (negative inside)."""
    t = _sign(side) * (x - a.cx)
    y_d = _y_dia(a, side)
    height = y_d - a.y_top
    rise = np.clip((y - a.y_top) / (0.38 * height), 0.0, 1.0)
    t_lat = a.thorax_hw * np.sqrt(rise * (2.0 - rise)) * (0.92 + 0.1 * (y - a.y_top) / height)
    d_lat = t - t_lat
    d_top = a.y_top - y
    d_med = (_med_hw(a, y, widen) - 0.012) - t
    t_peak = 0.42 * a.thorax_hw
    ang = np.clip((t - t_peak) / (a.thorax_hw - t_peak), -1.0, 1.0) * (math.pi / 2)
    d_dia = y - (y_d - a.dome * np.cos(ang))
    return np.maximum(np.maximum(d_lat, d_top), np.maximum(d_med, d_dia))


def _lung_point(a: Anatomy, side: str, u: float, v: float) -> tuple[float, float]:
    """Normalised (x, y) of a point ``u`` of the way out and ``v`` of the way down one lung."""
    y_d = _y_dia(a, side)
    y = a.y_top + float(np.clip(v, 0.06, 0.9)) * (y_d - a.y_top - a.dome * 0.5)
    height = y_d - a.y_top
    rise = min(max((y - a.y_top) / (0.38 * height), 0.0), 1.0)
    t_lat = a.thorax_hw * math.sqrt(rise * (2 - rise))
    t_med = a.med_hw + 0.02
    # The heart occupies the medial lower zone: push lower-zone points laterally.
    if v > 0.55:
        t_med = max(t_med, a.ctr * a.thorax_hw * (0.85 if side == "left" else 0.45))
    t = t_med + float(np.clip(u, 0.0, 1.0)) * max(t_lat - t_med - 0.03, 0.02)
    return a.cx + _sign(side) * t, y


def _heart_geometry(a: Anatomy, ctr: float) -> tuple[float, float, float, float]:
    width = ctr * 2.0 * a.thorax_hw
    rx = width / 2.0
    hx = a.cx + 0.17 * width  # two thirds of the heart lie left of the midline
    hy = a.y_dia_l - a.heart_h * 0.9
    return hx, hy, rx, a.heart_h


# --------------------------------------------------------------------------- findings (frontal)
def _draw_frontal_findings(cv: _Canvas, specs: Sequence[FindingSpec], lungs: dict, layers: dict):
    a, x, y, px = cv.a, cv.x, cv.y, cv.px
    add = layers["add"]  # additive density
    for spec in specs:
        w = spec.intensity * spec.scale
        rng = np.random.default_rng(spec.seed)
        label = spec.label
        if label in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
            continue  # drawn through the anatomy (heart width / mediastinal width)
        if label == "Pneumothorax":
            continue  # drawn with the lungs (it removes vessels)
        for side in _sides(spec):
            lung = lungs[side]
            s = _sign(side)
            if label == "Lung Lesion":
                cx_, cy_ = _lung_point(a, side, spec.u, spec.v)
                # >= 4 px radius at 128 px: a nodule must survive the encoder's 16 px patches
                r = (0.055 if spec.detail == "mass" else 0.036) * spec.scale
                blob = _soft(_ellipse_sdf(x, y, cx_, cy_, r, r * 0.92), 0.8 * px)
                add += 0.5 * spec.intensity * blob
                cv.record(spec, side, (cx_ - r, cy_ - r, cx_ + r, cy_ + r))
            elif label == "Lung Opacity":
                cx_, cy_ = _lung_point(a, side, spec.u, spec.v)
                sx, sy = 0.065 * spec.scale, 0.05 * spec.scale
                ang = rng.uniform(-0.6, 0.6)
                add += 0.3 * spec.intensity * _gauss(x, y, cx_, cy_, sx, sy, ang) * lung
                r = 2.0 * max(sx, sy)
                cv.record(spec, side, (cx_ - r, cy_ - r, cx_ + r, cy_ + r))
            elif label == "Edema":
                hx = a.cx + s * (a.med_hw + 0.07)
                haze = _gauss(x, y, hx + s * 0.03, a.hilum_y + 0.05, 0.09, 0.12, 0.0)
                add += 0.2 * w * haze * lung
                # Kerley B lines: short horizontal lines at the lateral lung base.
                y_b = _y_dia(a, side) - 0.09
                t_lat = a.thorax_hw * 0.97
                lines = np.zeros_like(x)
                for k in range(4):
                    yk = y_b + k * 0.018
                    p, q = (a.cx + s * (t_lat - 0.055), yk), (a.cx + s * (t_lat - 0.005), yk)
                    lines = np.maximum(lines, cv.line([p, q], 0.004))
                add += 0.22 * spec.intensity * lines * lung
                x_in, x_out = a.cx + s * (a.med_hw + 0.0), a.cx + s * a.thorax_hw
                cv.record(
                    spec,
                    side,
                    (min(x_in, x_out), a.hilum_y - 0.19, max(x_in, x_out), y_b + 0.07),
                )
            elif label == "Consolidation":
                _consolidation(cv, spec, side, lung, add, rng)
            elif label == "Pneumonia":
                cx_, cy_ = _lung_point(a, side, spec.u, spec.v)
                patches = np.zeros_like(x)
                n = int(rng.integers(6, 10))
                spread = 0.055 * spec.scale
                for _ in range(n):
                    bx, by = cx_ + rng.normal(0, spread), cy_ + rng.normal(0, spread * 0.8)
                    sz = rng.uniform(0.014, 0.024) * spec.scale
                    patches = np.maximum(patches, _gauss(x, y, bx, by, sz, sz * 1.2))
                mottle = 0.75 + 0.25 * np.cos(x * 170 + rng.uniform(0, 6)) * np.cos(y * 150)
                add += 0.4 * spec.intensity * patches * mottle * lung
                r = 2.3 * spread + 0.02
                cv.record(spec, side, (cx_ - r, cy_ - r * 0.8, cx_ + r, cy_ + r * 0.8))
            elif label == "Atelectasis":
                cx_, cy_ = _lung_point(a, side, spec.u, max(spec.v, 0.45))
                half = 0.085 * spec.scale
                tilt = s * rng.uniform(0.25, 0.45)  # rises laterally, against the rib slope
                dx, dy = half * math.cos(tilt), -half * math.sin(tilt)
                n_bands = 2 if spec.scale > 1.1 else 1
                band = np.zeros_like(x)
                for k in range(n_bands):
                    off = k * 0.035
                    p, q = (cx_ - dx, cy_ - dy + off), (cx_ + dx, cy_ + dy + off)
                    band = np.maximum(band, cv.line([p, q], 0.009))
                add += 0.38 * spec.intensity * band * np.clip(lung * 1.5, 0, 1)
                cv.record(
                    spec,
                    side,
                    (cx_ - abs(dx) - 0.01, cy_ - abs(dy) - 0.01,
                     cx_ + abs(dx) + 0.01, cy_ + abs(dy) + 0.01 + (n_bands - 1) * 0.035),
                )  # fmt: skip
            elif label == "Pleural Effusion":
                y_d = _y_dia(a, side)
                level = y_d - (0.06 + 0.14 * max(spec.scale - 0.8, 0.0) / 0.45) * spec.scale
                t = s * (x - a.cx)
                meniscus = level - 0.09 * np.clip(t / a.thorax_hw, 0, 1) ** 3
                region = _soft(meniscus - y, 1.5 * px) * (t > a.med_hw)
                add += 0.42 * spec.intensity * region * lung
                x_lo, x_hi = a.cx + s * a.med_hw, a.cx + s * (a.thorax_hw * 1.04)
                cv.record(spec, side, (min(x_lo, x_hi), level - 0.09, max(x_lo, x_hi), y_d + 0.01))
            elif label == "Pleural Other":
                v0 = 0.15 if spec.zone == "upper" else 0.3
                y0_, y1_ = a.y_top + 0.1 + v0 * 0.2, a.y_top + 0.1 + v0 * 0.2 + 0.28
                inner = _lung_sdf(a, x, y, side)
                thick = 0.026 * spec.scale
                band = (_soft(inner, px) - _soft(inner + thick, px)) * ((y > y0_) & (y < y1_))
                add += 0.4 * spec.intensity * band * (s * (x - a.cx) > a.thorax_hw * 0.5)
                # calcified plaques
                for k in range(2):
                    py_ = y0_ + (0.3 + 0.4 * k) * (y1_ - y0_)
                    px_ = a.cx + s * (a.thorax_hw - 0.012)
                    add += (
                        0.45
                        * spec.intensity
                        * _soft(_ellipse_sdf(x, y, px_, py_, 0.01, 0.02), px)
                        * (lung + 0.5)
                        / 1.5
                    )
                x_lo, x_hi = a.cx + s * (a.thorax_hw * 0.8), a.cx + s * (a.thorax_hw + 0.02)
                cv.record(spec, side, (min(x_lo, x_hi), y0_, max(x_lo, x_hi), y1_))
            elif label == "Fracture":
                pass  # drawn with the ribs / spine / clavicles
            elif label == "Support Devices":
                pass  # drawn last, above everything
    return add


def _consolidation(cv: _Canvas, spec: FindingSpec, side: str, lung: Array, add: Array, rng):
    """Dense homogeneous lobar wedge bounded by a sharp fissure, with air bronchograms."""
    a, x, y, px = cv.a, cv.x, cv.y, cv.px
    s = _sign(side)
    y_d = _y_dia(a, side)
    height = y_d - a.y_top
    extent = 0.75 + 0.25 * min(spec.scale, 1.25)
    if spec.zone == "upper":
        fissure = a.y_top + 0.36 * height  # horizontal fissure: consolidation above
        inside = _soft(y - fissure, 0.6 * px)
        box_y = (a.y_top, fissure)
        core = (a.y_top + 0.2 * height, fissure - 0.03)
    elif spec.zone == "mid":
        fissure = a.y_top + 0.4 * height
        inside = _soft(fissure - y, 0.6 * px) * _soft(y - (fissure + 0.2 * height * extent), 2 * px)
        box_y = (fissure, fissure + 0.2 * height * extent)
        core = (fissure + 0.08 * height, fissure + 0.03)
    else:
        # oblique fissure: runs down and outwards; consolidation below it
        t = s * (x - a.cx)
        fissure = a.y_top + (0.55 - 0.12 * extent) * height + 0.25 * (t - a.thorax_hw * 0.4)
        inside = _soft(fissure - y, 0.6 * px)
        top = a.y_top + (0.55 - 0.12 * extent) * height - 0.1
        box_y = (top, y_d)
        core = (y_d - 0.12, top + 0.08)
    lateral = _soft(0.02 - s * (x - a.cx), 2 * px)  # only this hemithorax
    region = np.clip(inside * lung * lateral, 0, 1)
    dens = 0.4 * spec.intensity * region
    # air bronchograms: thin dark branching lines inside the dense region
    hx = a.cx + s * (a.med_hw + 0.03)
    bronch = np.zeros_like(x)
    for _ in range(3):
        ex = a.cx + s * rng.uniform(0.55, 0.85) * a.thorax_hw
        ey = rng.uniform(min(core), max(core))
        mx, my = (hx + ex) / 2 + rng.normal(0, 0.015), (a.hilum_y + ey) / 2
        bronch = np.maximum(bronch, cv.line([(hx, a.hilum_y), (mx, my), (ex, ey)], 0.0045))
    dens = dens * (1.0 - 0.55 * bronch)
    add += dens
    x_lo, x_hi = a.cx + s * a.med_hw, a.cx + s * a.thorax_hw
    cv.record(spec, side, (min(x_lo, x_hi), box_y[0], max(x_lo, x_hi), box_y[1]))


def _devices(cv: _Canvas, spec: FindingSpec, layer: Array, view: str) -> None:
    """Metal/radio-opaque devices: drawn into ``layer`` (values near 1 = white)."""
    a, x, y, px = cv.a, cv.x, cv.y, cv.px
    k = spec.intensity
    kinds = spec.detail.split("+") if spec.detail else ["line"]
    lateral = view == "LATERAL"
    for kind in kinds:
        if kind == "pacemaker":
            if lateral:
                bx, by = _lateral_geometry(a)["ant"] + 0.07, a.y_top + 0.06
            else:
                bx, by = a.cx + 0.25, a.y_top + 0.05  # patient's left infraclavicular
            # generator: a rounded rectangle (distance to a 0.08 x 0.046 box, radius 0.005)
            dx_, dy_ = np.maximum(np.abs(x - bx) - 0.04, 0), np.maximum(np.abs(y - by) - 0.023, 0)
            box = _soft(np.sqrt(dx_ * dx_ + dy_ * dy_) - 0.005, px)
            hx, hy, rx, ry = _heart_geometry(a, a.ctr)
            lead_end = (hx - 0.2 * rx, hy + 0.4 * ry) if not lateral else (0.34, 0.64)
            pts = _bezier([(bx - 0.03, by + 0.01), (a.cx + 0.02, a.y_top + 0.1), lead_end], 14)
            lead = cv.line(pts, 0.004)
            layer[:] = np.maximum(layer, k * np.maximum(box, 0.85 * lead))
            xs, ys = (
                [p[0] for p in pts] + [bx - 0.05, bx + 0.05],
                [p[1] for p in pts] + [by - 0.035],
            )
            box_ = (min(xs) - 0.006, min(ys) - 0.006, max(xs) + 0.006, max(ys) + 0.006)
            cv.record(spec, "left" if not lateral else "midline", box_)  # generator + lead
        elif kind == "sternotomy":
            wires = np.zeros_like(x)
            sx = _lateral_geometry(a)["ant"] + 0.015 if lateral else a.cx
            for i in range(6):
                wy = a.y_top + 0.12 + i * 0.055
                ring = abs(_ellipse_sdf(x, y, sx, wy, 0.012, 0.009)) - 0.0035
                wires = np.maximum(wires, _soft(ring, px))
            layer[:] = np.maximum(layer, k * wires)
            cv.record(spec, "midline", (sx - 0.016, a.y_top + 0.1, sx + 0.016, a.y_top + 0.41))
        elif kind in ("line", "port"):
            if lateral:
                pts = _bezier([(0.45, 0.05), (0.42, 0.2), (0.45, a.hilum_y)], 12)
            else:
                start = (a.cx - 0.3, a.y_top - 0.02)  # right subclavian / arm
                pts = _bezier([start, (a.cx - 0.12, a.y_top + 0.02), (a.cx - 0.03,
                               a.hilum_y - 0.02)], 14)  # fmt: skip
            line = cv.line(pts, 0.0045)
            layer[:] = np.maximum(layer, k * line)
            if kind == "port":
                port = _soft(_ellipse_sdf(x, y, pts[0][0] + 0.03, pts[0][1] + 0.02, 0.02, 0.02), px)
                layer[:] = np.maximum(layer, k * port)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            cv.record(spec, "right" if not lateral else "midline",
                      (min(xs) - 0.01, min(ys) - 0.01, max(xs) + 0.01, max(ys) + 0.03))  # fmt: skip
        elif kind == "tube":
            tx = 0.5 if lateral else a.cx
            pts = [(tx, 0.0), (tx, a.hilum_y - 0.08)]
            tube = cv.line(pts, 0.006)
            layer[:] = np.maximum(layer, k * 0.9 * tube)
            cv.record(spec, "midline", (tx - 0.01, 0.0, tx + 0.01, a.hilum_y - 0.07))
        elif kind == "ng":
            tx = 0.55 if lateral else a.cx + 0.01
            end = (0.45, a.y_dia_l + 0.08) if lateral else (a.cx + 0.17, a.y_dia_l + 0.07)
            pts = _bezier([(tx, 0.0), (tx, a.y_dia_l - 0.1), end], 14)
            tube = cv.line(pts, 0.005)
            layer[:] = np.maximum(layer, k * 0.9 * tube)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            cv.record(spec, "midline", (min(xs) - 0.01, 0.0, max(xs) + 0.01, max(ys) + 0.01))


# --------------------------------------------------------------------------- frontal render
def _frontal_density(cv: _Canvas, specs: Sequence[FindingSpec], texture: Array) -> Array:
    a, x, y, px = cv.a, cv.x, cv.y, cv.px
    by_label = {s.label: s for s in specs}

    def delta(label: str, full: float) -> float:
        spec = by_label.get(label)
        return 0.0 if spec is None else full * spec.intensity * spec.scale

    ctr = a.ctr + delta("Cardiomegaly", max(0.6 - a.ctr, 0.1))
    widen = delta("Enlarged Cardiomediastinum", 0.055)
    if "Enlarged Cardiomediastinum" in by_label:
        cv.record(
            by_label["Enlarged Cardiomediastinum"],
            "midline",
            (a.cx - a.med_hw - widen - 0.01, a.y_top - 0.02,
             a.cx + a.med_hw + widen + 0.04, a.y_top + 0.35),
        )  # fmt: skip

    # --- body and abdomen
    t_abs = np.abs(x - a.cx)
    shoulder = np.clip((y - (a.y_top - 0.09)) / 0.08, 0.0, 1.0)
    body_hw = 0.1 + (a.body_hw - 0.1) * np.sqrt(shoulder * (2 - shoulder)) - 0.03 * (y - 0.5)
    body = _soft(t_abs - body_hw, 2 * px)
    d = 0.03 + 0.4 * body
    y_d_line = np.where(x < a.cx, a.y_dia_r, a.y_dia_l) - a.dome * 0.6
    d += 0.16 * body * _soft(y_d_line - y, 4 * px)

    # --- lungs with vessels (a pneumothorax rim is avascular and darker)
    lungs = {}
    lung_union = np.zeros_like(x)
    ptx = by_label.get("Pneumothorax")
    rim_all = np.zeros_like(x)
    pleural_line = np.zeros_like(x)
    for side in ("right", "left"):
        sdf = _lung_sdf(a, x, y, side, widen)
        lung = _soft(sdf, px)
        lungs[side] = lung
        lung_union = np.maximum(lung_union, lung)
        if ptx is not None and side in _sides(ptx):
            s = _sign(side)
            k = 1.0 - (0.16 + 0.14 * max(ptx.scale - 0.8, 0.0) / 0.45) * (0.6 + 0.4 * ptx.intensity)
            hx, hy = a.cx + s * (a.med_hw + 0.03), a.hilum_y + 0.12
            sdf_c = _lung_sdf(a, hx + (x - hx) / k, hy + (y - hy) / k, side, widen) * k
            upper = _soft(y - (a.y_top + 0.6 * (_y_dia(a, side) - a.y_top)), 6 * px)
            rim = lung * _soft(-sdf_c, px) * upper
            rim_all = np.maximum(rim_all, rim)
            line = _soft(np.abs(sdf_c) - 0.0035, px) * lung * upper
            pleural_line = np.maximum(pleural_line, line)
            sel = rim > 0.5
            if sel.any():  # box of the rim, in anatomical coordinates (from the grid)
                cv.record(ptx, side, (float(x[sel].min()), float(y[sel].min()),
                                      float(x[sel].max()), float(y[sel].max())))  # fmt: skip
    # vessels: radiating, tapering lines from each hilum
    vessels = np.zeros_like(x)
    for side in ("right", "left"):
        s = _sign(side)
        hx, hy = a.cx + s * (a.med_hw + 0.02), a.hilum_y
        dx, dy = x - hx, y - hy
        r = np.sqrt(dx * dx + dy * dy)
        th = np.arctan2(dy, s * dx)
        wav = np.cos(a.vessel_k * th + a.vessel_phase + 9.0 * r * np.sin(3 * th + s))
        wav2 = np.cos((a.vessel_k + 5) * th - a.vessel_phase + 14.0 * r)
        pattern = np.clip(wav, 0, 1) ** 8 + 0.6 * np.clip(wav2, 0, 1) ** 10
        vessels += pattern * np.exp(-r / 0.2) * lungs[side]
    vessels *= 1.0 - rim_all
    d -= 0.27 * lung_union
    d -= 0.1 * rim_all  # the air rim is blacker than aerated lung
    d += 0.11 * vessels + 0.025 * texture * lung_union * (1.0 - rim_all)
    if a.female:  # faint breast shadows over the lower lung zones
        for side in ("right", "left"):
            s = _sign(side)
            d += 0.05 * _gauss(x, y, a.cx + s * 0.22, a.y_dia_r - 0.05, 0.13, 0.08) * body

    # --- mediastinum, heart, aortic knob, hila
    med_hw = _med_hw(a, y, widen)
    mediast = _soft(t_abs - med_hw, 1.5 * px) * _soft(y - (a.y_dia_l - 0.05), px)
    knob = _soft(_ellipse_sdf(x, y, a.cx + a.med_hw + 0.3 * widen + 0.012,
                              a.y_top + 0.15, 0.03, 0.028), 1.5 * px)  # fmt: skip
    hx, hy, rx, ry = _heart_geometry(a, ctr)
    heart = _soft(_ellipse_sdf(x, y, hx, hy, rx, ry), 1.5 * px)
    soft_tissue = np.maximum(np.maximum(mediast, knob), heart)
    d = d + (0.6 - d) * soft_tissue
    for side in ("right", "left"):
        s = _sign(side)
        d += 0.08 * _gauss(x, y, a.cx + s * (a.med_hw + 0.03), a.hilum_y, 0.025, 0.04) * body
    if "Cardiomegaly" in by_label:
        cv.record(by_label["Cardiomegaly"], "midline", (hx - rx, hy - ry, hx + rx, hy + ry))

    # --- findings in the lungs
    layers = {"add": np.zeros_like(x)}
    # parenchymal/pleural findings only show where lung is not hidden by heart/mediastinum
    d += _draw_frontal_findings(cv, specs, lungs, layers) * (1.0 - soft_tissue)
    if ptx is not None:
        d += 0.3 * ptx.intensity * pleural_line

    # --- airway (dark), bones (bright)
    trachea = _soft(np.abs(x - a.cx) - 0.017, px) * _soft(y - (a.hilum_y - 0.05), px)
    for side in ("right", "left"):
        s = _sign(side)
        p, q = (a.cx, a.hilum_y - 0.05), (a.cx + s * 0.07, a.hilum_y + 0.01)
        trachea = np.maximum(trachea, cv.line([p, q], 0.011))
    d -= 0.17 * trachea * body
    fracture = by_label.get("Fracture")
    d += _bones(cv, fracture, body)

    # --- devices (metal) saturate
    metal = np.zeros_like(x)
    if "Support Devices" in by_label:
        _devices(cv, by_label["Support Devices"], metal, "PA")
    d = d + metal * (1.05 - d)  # metal: toward white, 40 % if uncertain
    return d


def _bones(cv: _Canvas, fracture: FindingSpec | None, body: Array) -> Array:
    """Ribs, clavicles, spine and humeral heads; a fracture breaks one of them."""
    a, x, y, px = cv.a, cv.x, cv.y, cv.px
    out = np.zeros_like(x)
    site = fracture.detail if fracture is not None else ""
    frac_sides = _sides(fracture) if fracture is not None else ()
    t_abs = np.abs(x - a.cx)
    # spine: vertebral bodies with disc spaces
    spine = _soft(t_abs - 0.034, px) * body
    discs = 0.7 + 0.3 * (np.cos(2 * math.pi * (y - a.y_top) / 0.046) > -0.55)
    spine_val = 0.1 * spine * discs
    if fracture is not None and site == "spine":
        vy = a.y_top + (0.35 + 0.4 * fracture.v) * (a.y_dia_r - a.y_top)
        crush = _soft(t_abs - 0.042, px) * _soft(np.abs(y - vy) - 0.012 * fracture.scale, px)
        spine_val = spine_val * (1 - crush) + 0.42 * fracture.intensity * crush
        cv.record(fracture, "midline", (a.cx - 0.05, vy - 0.025, a.cx + 0.05, vy + 0.025))
    out += spine_val
    # ribs: posterior arcs sloping down laterally
    rib_layer = np.zeros_like(x)
    t_sides = {side: _sign(side) * (x - a.cx) for side in ("right", "left")}
    frac_rib = 3 + int(round((fracture.v if fracture else 0.5) * 4))
    for side in ("right", "left"):
        t = t_sides[side]
        inside = _soft(t - (a.thorax_hw + 0.025), 2 * px) * _soft(0.035 - t, px)
        # ribs fade over the abdomen
        inside = inside * (0.35 + 0.65 * _soft(y - (_y_dia(a, side) - a.dome * 0.5), 6 * px))
        t_end = a.thorax_hw + 0.03
        for i in range(11):
            y0 = a.y_top - 0.01 + i * a.rib_spacing
            x_lo, x_hi = sorted((a.cx + _sign(side) * 0.03, a.cx + _sign(side) * t_end))
            win = cv.window((x_lo, y0 - 0.03, x_hi, y0 + a.rib_curve * t_end**2 + 0.05))
            tw, yw, xw, inw = t[win], y[win], x[win], inside[win]
            centre = y0 - 0.08 * tw + a.rib_curve * tw * tw
            broken = fracture is not None and site == "rib" and side in frac_sides
            broken = broken and i in (frac_rib, frac_rib + 1)  # two adjacent ribs
            if broken:
                tf = a.thorax_hw * (0.78 + 0.12 * fracture.u)
                step = 0.022 * fracture.intensity
                centre = centre + step * (tw > tf)
            dist = np.abs(yw - centre) - a.rib_thick / 2
            rib = _soft(dist, px) * inw
            cortex = _soft(np.abs(dist + 0.002) - 0.002, px) * inw
            val = 0.07 * rib + 0.035 * cortex
            if broken:
                gap = _soft(np.abs(tw - tf) - 0.01, px)
                val = val * (1 - gap * fracture.intensity)
                fx = a.cx + _sign(side) * tf
                fy = y0 - 0.08 * tf + a.rib_curve * tf * tf
                slope = -0.08 + 2 * a.rib_curve * tf  # dy/dt along the rib
                angle = math.atan(slope) * _sign(side)
                callus = _gauss(xw, yw, fx, fy + 0.007, 0.04, 0.02, angle)
                val = val + 0.6 * fracture.intensity * callus * (callus > 0.15)
                # the displaced fragment runs to the end of the rib: the box covers it
                far = a.cx + _sign(side) * (t_end + 0.005)
                x_lo, x_hi = sorted((fx - _sign(side) * 0.045, far))
                fy_end = y0 - 0.08 * t_end + a.rib_curve * t_end**2
                cv.record(fracture, side, (x_lo, fy - 0.03, x_hi, max(fy, fy_end) + 0.045))
            rib_layer[win] = np.maximum(rib_layer[win], val)
    out += rib_layer
    # clavicles
    for side in ("right", "left"):
        s = _sign(side)
        pts = _bezier([(a.cx + s * 0.045, a.y_top + 0.035), (a.cx + s * 0.18, a.y_top + 0.02),
                       (a.cx + s * 0.34, a.y_top - 0.04)], 10)  # fmt: skip
        clav = cv.line(pts, 0.012)
        if fracture is not None and site == "clavicle" and side in frac_sides:
            fx, fy = pts[5]
            gap = _soft(np.abs(x - fx) - 0.008, px)
            clav = clav * (1 - gap * fracture.intensity)
            callus = _gauss(x, y, fx, fy + 0.005, 0.018, 0.014)
            clav = clav + 1.3 * fracture.intensity * callus * (callus > 0.2)
            cv.record(fracture, side, (fx - 0.035, fy - 0.03, fx + 0.035, fy + 0.035))
        out += 0.16 * clav
        # humeral heads in the upper corners
        out += 0.14 * _soft(_ellipse_sdf(x, y, a.cx + s * (a.body_hw + 0.01), a.y_top - 0.01,
                                         0.06, 0.07), 2 * px)  # fmt: skip
    return out


# --------------------------------------------------------------------------- lateral render
def _superellipse(u: Array, v: Array) -> Array:
    """(u^4 + v^4)^(1/4): a rounded-square 'radius' (fast form)."""
    u2, v2 = u * u, v * v
    return np.sqrt(np.sqrt(u2 * u2 + v2 * v2))


def _lateral_geometry(a: Anatomy) -> dict[str, float]:
    depth = 0.6 + (a.body_hw - 0.43) * 1.5  # antero-posterior size of the chest
    ant = 0.5 - depth / 2 + 0.02
    post = 0.5 + depth / 2 + 0.02
    return {"ant": ant, "post": post, "spine": post - 0.085, "y_top": a.y_top + 0.01}


def _lateral_density(cv: _Canvas, specs: Sequence[FindingSpec], texture: Array) -> Array:
    """Lateral view: the patient faces image left (anterior left, spine right)."""
    a, x, y, px = cv.a, cv.x, cv.y, cv.px
    by_label = {s.label: s for s in specs}
    g = _lateral_geometry(a)
    ant, post, sx, y_top = g["ant"], g["post"], g["spine"], g["y_top"]
    mid = (ant + post) / 2
    # boxy torso (super-ellipse) with a neck
    bx, by_ = (x - mid) / ((post - ant) / 2 + 0.03), (y - 0.62) / 0.62
    body = _soft(_superellipse(bx, by_) - 1.0, 3 * px)
    neck = _soft(np.abs(x - (mid + 0.05)) - 0.13, 2 * px) * _soft(y - (y_top + 0.02), 4 * px)
    body = np.maximum(body, neck)
    d = 0.03 + 0.42 * body
    # diaphragm: higher anteriorly, deepest at the posterior costophrenic sulcus
    frac = np.clip((x - ant) / (sx - ant), 0.0, 1.0)
    y_dia = a.y_dia_r - 0.07 + 0.1 * frac**2
    lx, ly = (x - (ant + sx) / 2) / ((sx - ant) / 2 - 0.03), (y - (y_top + 0.36)) / 0.4
    # boxy below, rounded apex above
    shape = np.where(ly > 0, _superellipse(lx, ly), np.sqrt(lx * lx + ly * ly))
    lung = _soft(shape - 1.0, 2 * px) * _soft(y - y_dia, 1.5 * px)
    d -= 0.27 * lung
    d += 0.02 * texture * lung
    d += 0.16 * _soft(y_dia - y, 4 * px) * body  # abdomen below the domes
    # heart: anterior and inferior
    ctr = a.ctr + (
        max(0.6 - a.ctr, 0.1) * by_label["Cardiomegaly"].intensity * by_label["Cardiomegaly"].scale
        if "Cardiomegaly" in by_label
        else 0.0
    )
    hrx = 0.13 * ctr / 0.44
    hx, hy, hry = ant + 0.03 + hrx, a.y_dia_r - 0.15, 0.14
    heart = _soft(_ellipse_sdf(x, y, hx, hy, hrx, hry), 1.5 * px)
    if "Cardiomegaly" in by_label:
        cv.record(by_label["Cardiomegaly"], "midline", (hx - hrx, hy - hry, hx + hrx, hy + hry))
    widen = 0.0
    if "Enlarged Cardiomediastinum" in by_label:
        spec = by_label["Enlarged Cardiomediastinum"]
        widen = 0.05 * spec.intensity * spec.scale
        cv.record(spec, "midline", (mid - 0.1 - widen, y_top, mid + 0.1 + widen, y_top + 0.32))
    mediast = _soft(_ellipse_sdf(x, y, mid, y_top + 0.17, 0.07 + widen, 0.16), 2 * px)
    d = d + (0.55 - d) * np.maximum(heart, 0.55 * mediast)
    d -= 0.15 * cv.line([(mid + 0.02, 0.0), (mid + 0.06, a.hilum_y)], 0.017) * body  # trachea
    # spine (vertebral bodies with discs), sternum, a few posterior ribs
    vert = _soft(np.abs(x - sx) - 0.045, px) * body
    discs = 0.65 + 0.35 * (np.cos(2 * math.pi * (y - a.y_top) / 0.05) > -0.5)
    d += 0.2 * vert * discs
    sternum = _soft(np.abs(x - (ant + 0.015)) - 0.011, px)
    d += 0.16 * sternum * _soft(y_top + 0.06 - y, px) * _soft(y - 0.6, px)
    for i in range(8):
        yc = y_top + 0.05 + i * a.rib_spacing * 1.1 + 0.35 * (x - sx) ** 2
        ribs = _soft(np.abs(y - yc) - 0.01, px) * _soft(mid - x, 4 * px) * lung  # posterior half
        d += 0.05 * ribs
    # findings at the same height as on the frontal view, at a random depth
    add = np.zeros_like(x)
    for spec in specs:
        rng = np.random.default_rng(spec.seed + 1)
        k = spec.intensity
        yc = y_top + float(np.clip(spec.v, 0.06, 0.9)) * (a.y_dia_r - 0.06 - y_top)
        xc = ant + 0.1 + rng.uniform(0.2, 0.75) * (sx - ant - 0.2)
        box = None
        if spec.label == "Lung Lesion":
            r = (0.055 if spec.detail == "mass" else 0.036) * spec.scale
            add += 0.45 * k * _soft(_ellipse_sdf(x, y, xc, yc, r, r), px)
            box = (xc - r, yc - r, xc + r, yc + r)
        elif spec.label in ("Lung Opacity", "Pneumonia"):
            sx_, sy_ = 0.06 * spec.scale, 0.045 * spec.scale
            add += 0.25 * k * _gauss(x, y, xc, yc, sx_, sy_) * lung
            box = (xc - 2 * sx_, yc - 2 * sy_, xc + 2 * sx_, yc + 2 * sy_)
        elif spec.label == "Consolidation":
            rx_, ry_ = 0.09 * spec.scale, 0.07 * spec.scale
            region = _soft(_ellipse_sdf(x, y, xc, yc, rx_, ry_), 3 * px) * lung
            add += 0.35 * k * region
            box = (xc - rx_, yc - ry_, xc + rx_, yc + ry_)
        elif spec.label == "Edema":
            add += 0.18 * k * _gauss(x, y, mid, a.hilum_y + 0.05, 0.11, 0.12) * lung
            box = (mid - 0.22, a.hilum_y - 0.19, mid + 0.22, a.hilum_y + 0.29)
        elif spec.label == "Atelectasis":
            p, q = (xc - 0.08, yc + 0.02), (xc + 0.08, yc - 0.02)
            add += 0.3 * k * cv.line([p, q], 0.008) * lung
            box = (xc - 0.09, yc - 0.03, xc + 0.09, yc + 0.03)
        elif spec.label == "Pleural Effusion":
            height = (0.05 + 0.12 * max(spec.scale - 0.8, 0.0) / 0.45) * spec.scale
            level = a.y_dia_r + 0.03 - height
            meniscus = level - 0.06 * np.clip((x - mid) / (sx - mid), 0.0, 1.0) ** 2
            fluid = _soft(meniscus - y, 1.5 * px) * _soft(mid - 0.08 - x, 4 * px) * lung
            add += 0.4 * k * fluid
            box = (mid - 0.08, level - 0.06, sx - 0.03, a.y_dia_r + 0.04)
        if box is not None:
            cv.record(spec, "midline", box)
    d += add * (1.0 - heart)
    metal = np.zeros_like(x)
    if "Support Devices" in by_label:
        _devices(cv, by_label["Support Devices"], metal, "LATERAL")
    return d + metal * (1.05 - d)  # metal: toward white, 40 % if uncertain


# --------------------------------------------------------------------------- public API
@dataclass(frozen=True)
class Phantom:
    """A rendered view: ``image`` float32 (S, S) in [0, 1] and the drawn finding boxes."""

    image: np.ndarray
    findings: tuple[DrawnFinding, ...]
    acquisition: Acquisition
    view: str


def _texture(rng: np.random.Generator, size: int) -> Array:
    """Smooth random lung texture in roughly [-1, 1] (blurred white noise)."""
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal((size, size)).astype(np.float32)
    tex = gaussian_filter(noise, sigma=max(size / 96.0, 0.8), mode="nearest")
    return tex / (float(np.abs(tex).max()) + 1e-6)


def render_phantom(
    specs: Sequence[FindingSpec],
    anatomy: Anatomy,
    acquisition: Acquisition,
    size: int = 128,
    view: str = "PA",
    seed: int = 0,
) -> Phantom:
    """Render one view.

    Args:
        specs: findings from :func:`resolve_findings` (empty = a normal chest).
        anatomy: the patient (:func:`sample_anatomy`).
        acquisition: exposure / noise / rotation (:func:`sample_acquisition`).
        size: output side S in pixels.
        view: ``"PA"`` (frontal) or ``"LATERAL"``.
        seed: seeds the lung texture and the noise; a different ``specs`` with the same seed
            gives an image that differs only where findings were drawn (plus noise clipping).

    Returns:
        :class:`Phantom` with ``image`` float32 (S, S) in [0, 1].
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}; got {view!r}")
    if size < 16:
        raise ValueError(f"phantom size must be >= 16 pixels; got {size}")
    rng = np.random.default_rng([seed, size, VIEWS.index(view)])
    texture = _texture(rng, size)
    noise = rng.standard_normal((size, size)).astype(np.float32)
    cv = _Canvas(anatomy, size, acquisition.rotation_deg)
    if view == "PA":
        density = _frontal_density(cv, specs, texture)
    else:
        density = _lateral_density(cv, specs, texture)
    image = np.clip(density, 0.0, 1.0) ** acquisition.exposure
    image = np.clip(image + acquisition.noise * noise, 0.0, 1.0).astype(np.float32)
    drawn = tuple(
        DrawnFinding(spec.label, spec.status, side, spec.severity, *cv.to_pixels(box))
        for spec, side, box in cv.boxes
    )
    return Phantom(image=image, findings=drawn, acquisition=acquisition, view=view)


def with_status(spec: FindingSpec, status: float) -> FindingSpec:
    """Copy of ``spec`` with another status (handy to compare positive vs uncertain)."""
    return replace(spec, status=status)
