"""MIMIC-CXR-JPG v2.0.0 loader (also reads the course's embedded dataset, which copies its layout).

Layout under ``data_dir`` (PhysioNet's ``mimic-cxr-jpg/2.0.0``)::

    mimic-cxr-2.0.0-split.csv[.gz]     dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv[.gz]  subject_id, study_id, 14 labels (1 / 0 / -1 / blank)
    mimic-cxr-2.0.0-metadata.csv[.gz]  dicom_id, subject_id, study_id, ..., ViewPosition, ...
    files/p10/p10000032/s50414267/<dicom_id>.jpg
    files/p10/p10000032/s50414267.txt  free-text report (from MIMIC-CXR's mimic-cxr-reports.zip)
    patients.csv                       optional: subject_id, age, sex, race

Reports are not part of MIMIC-CXR-JPG: unzip ``mimic-cxr-reports.zip`` from MIMIC-CXR into
the same folder (or pass ``reports_dir``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

PathLike = str | os.PathLike

SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
PATIENTS_CSV = "patients.csv"
FRONTAL_VIEWS = ("PA", "AP")  # preference order when a study has several frontal images
SPLIT_NAMES = {"train": "train", "val": "validate", "validate": "validate", "test": "test"}
METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip


# --------------------------------------------------------------------------- paths and CSVs
def study_dir(root: PathLike, subject_id: int, study_id: int) -> Path:
    """``root/files/pXX/pSUBJECT/sSTUDY`` (XX = first two digits of the subject id)."""
    sid = str(int(subject_id))
    return Path(root) / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{int(study_id)}"


def image_path(root: PathLike, subject_id: int, study_id: int, dicom_id: str) -> Path:
    """Path of one JPG in the MIMIC-CXR-JPG tree."""
    return study_dir(root, subject_id, study_id) / f"{dicom_id}.jpg"


def report_path(root: PathLike, subject_id: int, study_id: int) -> Path:
    """Path of one free-text report (``sSTUDY.txt`` beside the study folder)."""
    folder = study_dir(root, subject_id, study_id)
    return folder.parent / f"{folder.name}.txt"


def find_csv(data_dir: PathLike, name: str) -> Path:
    """``data_dir/name`` or ``data_dir/name.gz``.

    Raises:
        FileNotFoundError: neither exists (message names both).
    """
    data_dir = Path(data_dir)
    for candidate in (data_dir / name, data_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"missing MIMIC-CXR-JPG table: {data_dir / name} (or {name}.gz) not found"
    )


def read_csv_checked(path: PathLike, required: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Read a CSV (plain or .gz) and check that ``required`` columns are present.

    Raises:
        ValueError: unreadable/empty CSV or missing columns (names the file and columns).
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"dicom_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: cannot parse CSV ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table


# --------------------------------------------------------------------------- report sections
_CANONICAL = {
    "FINDINGS": ("findings",),
    "FINDING": ("findings",),
    "FINDINGS AND IMPRESSION": ("findings", "impression"),
    "FINDINGS/IMPRESSION": ("findings", "impression"),
    "IMPRESSION AND FINDINGS": ("findings", "impression"),
    "IMPRESSION": ("impression",),
    "IMPRESSIONS": ("impression",),
    "CONCLUSION": ("impression",),
    "INDICATION": ("indication",),
    "INDICATIONS": ("indication",),
    "CLINICAL INDICATION": ("indication",),
    "HISTORY": ("indication",),
    "CLINICAL HISTORY": ("indication",),
    "REASON FOR EXAM": ("indication",),
    "REASON FOR EXAMINATION": ("indication",),
    "COMPARISON": ("comparison",),
    "COMPARISONS": ("comparison",),
    "EXAMINATION": ("examination",),
    "EXAM": ("examination",),
    "TECHNIQUE": ("technique",),
}
_ONE_PARAGRAPH = ("indication", "comparison", "examination", "technique")
SECTION_KEYS = ("findings", "impression", "indication", "comparison", "examination", "technique")
# A header is a line that starts with an upper-case phrase and a colon, e.g. " FINDINGS: ".
_HEADER = re.compile(r"(?m)^[ \t]*([A-Za-z][A-Za-z ,/&()\-]{1,60}?)[ \t]*:")


def _squash(text: str) -> str:
    """Undo hard line wraps: collapse all whitespace runs into single spaces."""
    return " ".join(text.split())


def extract_report_sections(text: str) -> dict[str, str]:
    """Split a MIMIC-style free-text report into sections.

    Handles hard line wraps, header variants (``FINDINGS:``, ``FINDINGS AND IMPRESSION:``,
    ``IMPRESSION:``, ``CONCLUSION:``, ``HISTORY:`` ...) and missing sections. An unknown
    upper-case header (``NOTIFICATION:``, ``RECOMMENDATION(S):``) ends the previous section.
    When there is neither a findings nor an impression section, the last paragraph of the
    report becomes the impression (the fallback of MIMIC-CXR's own section parser) and
    ``"source"`` says so.

    Returns:
        dict with :data:`SECTION_KEYS` (``""`` when absent) plus ``"source"``: ``"sections"``,
        ``"last_paragraph"`` or ``"empty"``.
    """
    out = dict.fromkeys(SECTION_KEYS, "")
    matches = []
    for m in _HEADER.finditer(text):
        name = " ".join(m.group(1).split()).upper()
        if name in _CANONICAL or m.group(1).strip().isupper():
            matches.append((m, _CANONICAL.get(name, ())))
    for i, (m, keys) in enumerate(matches):
        end = matches[i + 1][0].start() if i + 1 < len(matches) else len(text)
        body = text[m.end() : end]
        if keys and keys[0] in _ONE_PARAGRAPH:  # history/comparison end at the first blank line
            body = re.split(r"\n[ \t]*\n", body.lstrip(" \t\n"), maxsplit=1)[0]
        body = _squash(body)
        for key in keys:
            if body and not out[key]:
                out[key] = body
    if out["findings"] or out["impression"]:
        out["source"] = "sections"
        return out
    # Fallback: the last paragraph that is not a recognised header section or the title.
    header_starts = {m.start(1) for m, _ in matches}
    paragraphs = []
    for block in re.finditer(r"\S(?:.|\n(?![ \t]*\n))*", text):
        if any(block.start() <= s < block.end() for s in header_starts):
            continue
        body = _squash(block.group(0))
        if body and body.upper() != "FINAL REPORT":
            paragraphs.append(body)
    out["impression"] = paragraphs[-1] if paragraphs else ""
    out["source"] = "last_paragraph" if paragraphs else "empty"
    return out


# --------------------------------------------------------------------------- the loader
def _normalise_split(split: str) -> str:
    key = split.strip().lower() if isinstance(split, str) else None
    if key not in SPLIT_NAMES:
        raise ValueError(f"split must be one of 'train', 'val', 'test'; got {split!r}")
    return SPLIT_NAMES[key]


def _course_split(mimic_split: str) -> str:
    return "val" if mimic_split == "validate" else mimic_split


def _chexpert_labels(data_dir: Path, studies: pd.DataFrame) -> np.ndarray:
    """(N, 14) float32 labels for ``studies`` rows, NaN where blank or the study is unlabelled."""
    from ..labels import CHEXPERT_LABELS

    path = find_csv(data_dir, CHEXPERT_CSV)
    table = read_csv_checked(path, ["subject_id", "study_id", *CHEXPERT_LABELS])
    values = table[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce")
    for col in CHEXPERT_LABELS:
        raw, num = table[col], values[col]
        bad = raw[raw.notna() & (num.isna() | ~num.isin([1.0, 0.0, -1.0]))]
        if len(bad):
            raise ValueError(
                f"{path}: column {col!r} has value {bad.iloc[0]!r}; expected 1, 0, -1 or blank"
            )
    values.index = pd.MultiIndex.from_arrays([table["subject_id"], table["study_id"]])
    if values.index.duplicated().any():
        dup = values.index[values.index.duplicated()][0]
        raise ValueError(f"{path}: study {dup[1]} (subject {dup[0]}) is listed twice")
    keys = pd.MultiIndex.from_arrays([studies["subject_id"], studies["study_id"]])
    labels = values.reindex(keys).to_numpy(dtype=np.float32)
    unlabelled = int(np.isnan(labels).all(axis=1).sum())
    if unlabelled:
        warnings.warn(
            f"{unlabelled} of {len(studies)} studies have no row in {path.name}; "
            "their labels are NaN (not mentioned)",
            stacklevel=3,
        )
    return labels


def _patients(data_dir: Path) -> dict[int, dict]:
    path = data_dir / PATIENTS_CSV
    if not path.is_file():
        return {}
    table = read_csv_checked(path, ["subject_id", "age", "sex", "race"])
    return {
        int(r.subject_id): {"age": int(r.age), "sex": str(r.sex), "race": str(r.race)}
        for r in table.itertuples(index=False)
    }


def select_frontal_studies(
    data_dir: PathLike, split: str = "train", max_studies: int | None = None
) -> pd.DataFrame:
    """One frontal image per study of ``split``: the table behind :func:`load_mimic_cxr_dataset`.

    Keeps ``ViewPosition`` PA or AP; a study with several frontal images keeps a PA one if any,
    else AP, and among equals the smallest ``dicom_id`` (deterministic). Studies with only
    lateral (or other) views are dropped. Rows are sorted by ``study_id``; ``max_studies``
    keeps the first N.

    Returns:
        DataFrame with ``subject_id, study_id, dicom_id, view`` (one row per study).
    """
    data_dir = Path(data_dir)
    mimic_split = _normalise_split(split)
    if max_studies is not None and max_studies < 0:
        raise ValueError(f"max_studies must be >= 0 or None; got {max_studies}")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG folder not found: {data_dir}")
    splits = read_csv_checked(
        find_csv(data_dir, SPLIT_CSV), ["dicom_id", "study_id", "subject_id", "split"]
    )
    bad = sorted(set(splits["split"].astype(str)) - {"train", "validate", "test"})
    if bad:
        raise ValueError(f"{data_dir / SPLIT_CSV}: unknown value(s) {bad} in column 'split'")
    meta = read_csv_checked(find_csv(data_dir, METADATA_CSV), ["dicom_id", "ViewPosition"])
    rows = splits[splits["split"] == mimic_split][["dicom_id", "subject_id", "study_id"]]
    rows = rows.merge(meta[["dicom_id", "ViewPosition"]], on="dicom_id", how="left")
    rows = rows[rows["ViewPosition"].isin(FRONTAL_VIEWS)].copy()
    rows["rank"] = rows["ViewPosition"].map({v: i for i, v in enumerate(FRONTAL_VIEWS)})
    rows = rows.sort_values(["study_id", "rank", "dicom_id"], kind="mergesort")
    rows = rows.drop_duplicates("study_id", keep="first")
    if max_studies is not None:
        rows = rows.head(max_studies)
    rows = rows.rename(columns={"ViewPosition": "view"})
    return rows[["subject_id", "study_id", "dicom_id", "view"]].reset_index(drop=True)


def load_mimic_cxr_dataset(
    data_dir: PathLike,
    split: str = "train",
    image_size: int | None = None,
    load_pixels: bool = False,
    max_studies: int | None = None,
    reports_dir: PathLike | None = None,
    skip_invalid: bool = False,
) -> dict:
    """Load MIMIC-CXR-JPG (or the embedded dataset) for one split, frontal views only.

    Args:
        data_dir: the ``mimic-cxr-jpg/2.0.0`` folder (CSV tables + ``files/``).
        split: ``"train"``, ``"val"`` (MIMIC's ``validate``) or ``"test"``.
        image_size: side S of the resized square pixels (the case study uses 512, the tiny
            profile 128); ``None`` keeps native size (then all images must share it).
        load_pixels: also decode the images into ``pixels``.
        max_studies: keep the first N studies after sorting by ``study_id``.
        reports_dir: where ``files/pXX/pSUBJECT/sSTUDY.txt`` live (default ``data_dir``).
        skip_invalid: drop (with a warning) studies whose image or report is missing, empty
            or corrupt, instead of raising.

    Returns:
        dict with ``images`` (list[str] frontal JPG paths), ``reports`` (list[str]: FINDINGS,
        else IMPRESSION), ``labels`` (FloatTensor (N, 14), CheXpert order, 1 / 0 / -1 / NaN),
        ``metadata`` (list of dicts: subject_id, study_id, dicom_id, view, split, findings,
        impression, indication, comparison, report_source ("findings", "impression" or
        "last_paragraph"), image_path, report_path, and
        age / sex / race when ``patients.csv`` exists) and, with ``load_pixels``, ``pixels``
        (FloatTensor (N, 1, S, S) in [0, 1]).

    Raises:
        ValueError: bad split name, malformed CSV, empty report, corrupt JPG.
        FileNotFoundError: missing folder/CSV, a study's JPG or report file.
    """
    import torch

    from .images import load_image

    data_dir = Path(data_dir)
    reports_root = Path(reports_dir) if reports_dir is not None else data_dir
    studies = select_frontal_studies(data_dir, split, max_studies)
    labels = _chexpert_labels(data_dir, studies)
    patients = _patients(data_dir)
    course_split = _course_split(_normalise_split(split))

    images, reports, metadata, pixels, keep = [], [], [], [], []
    skipped: list[str] = []
    for i, row in enumerate(studies.itertuples(index=False)):
        subject, study, dicom = int(row.subject_id), int(row.study_id), str(row.dicom_id)
        img = image_path(data_dir, subject, study, dicom)
        txt = report_path(reports_root, subject, study)
        try:
            if not img.is_file():
                raise FileNotFoundError(
                    f"study s{study} (subject p{subject}) has no image file: {img}"
                )
            if not txt.is_file():
                raise FileNotFoundError(f"study s{study} has no report file: {txt}")
            sections = extract_report_sections(txt.read_text(encoding="utf-8", errors="replace"))
            report = sections["findings"] or sections["impression"]
            if not report:
                raise ValueError(f"empty report (no FINDINGS or IMPRESSION text): {txt}")
            if load_pixels:
                pixels.append(load_image(img, image_size))
        except (FileNotFoundError, ValueError) as exc:
            if not skip_invalid:
                raise
            skipped.append(str(exc))
            continue
        keep.append(i)
        images.append(str(img))
        reports.append(report)
        meta = {
            "subject_id": subject,
            "study_id": study,
            "dicom_id": dicom,
            "view": str(row.view),
            "split": course_split,
            "findings": sections["findings"],
            "impression": sections["impression"],
            "indication": sections["indication"],
            "comparison": sections["comparison"],
            "report_source": (
                "findings"
                if sections["findings"]
                else ("last_paragraph" if sections["source"] == "last_paragraph" else "impression")
            ),
            "image_path": str(img),
            "report_path": str(txt),
        }
        meta.update(patients.get(subject, {}))
        metadata.append(meta)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} invalid studies, e.g. {skipped[0]}", stacklevel=2)
    out = {
        "images": images,
        "reports": reports,
        "labels": torch.from_numpy(np.ascontiguousarray(labels[keep], dtype=np.float32)),
        "metadata": metadata,
    }
    if load_pixels:
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"images differ in size {sorted(shapes)[:3]}; pass image_size")
        side = image_size or 0
        stacked = np.stack(pixels)[:, None] if pixels else np.zeros((0, 1, side, side), np.float32)
        out["pixels"] = torch.from_numpy(stacked)
    return out
