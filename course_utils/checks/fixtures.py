"""Small hand-made fixtures with known answers, shared by graded checks and tests.

:func:`write_mimic_fixture` writes a six-study MIMIC-CXR-JPG tree whose edge cases expose the
usual loader mistakes: a lateral-only study (must be dropped), a study with an AP image whose
``dicom_id`` sorts before its PA image (PA must win), an IMPRESSION-only report, uncertain (-1)
and blank (NaN) labels, non-square images with a full 0-255 range, and all three splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import image_path, report_path, save_gray_jpeg
from ..labels import CHEXPERT_LABELS

# (subject, study, split, [(dicom_id, view)], labels {name: value}, findings, impression)
_STUDIES = [
    (10000001, 50000001, "train", [("d1-pa", "PA"), ("d1-lat", "LATERAL")],
     {"Cardiomegaly": 1, "Edema": -1, "Pleural Effusion": 0},
     "The heart is enlarged. Possible mild\n edema. No pleural effusion.", "Cardiomegaly."),
    (10000002, 50000002, "train", [("d2-lat", "LATERAL")],
     {"No Finding": 1}, "Lateral view only. Lungs are clear.", "Normal."),
    (10000003, 50000003, "train", [("d3-a-ap", "AP"), ("d3-b-pa", "PA")],
     {"No Finding": 1}, "", "No acute cardiopulmonary process."),
    (10000003, 50000006, "train", [("d6-pa", "PA")],
     {"Atelectasis": 1, "Lung Opacity": -1},
     "Left basilar atelectasis. Opacity at the\n right base may represent atelectasis.", ""),
    (10000004, 50000004, "validate", [("d4-pa", "PA"), ("d4-lat", "LATERAL")],
     {"Pneumothorax": 1}, "Small right apical pneumothorax.", "Right pneumothorax."),
    (10000005, 50000005, "test", [("d5-ap", "AP")],
     {"Support Devices": 1, "Lung Opacity": -1},
     "Endotracheal tube in standard position. Hazy\n opacity in the left lung.", "Tube in place."),
]  # fmt: skip

# Expected answers (hand-derived from _STUDIES) that tests and checks assert against.
EXPECTED_STUDIES = {
    "train": [50000001, 50000003, 50000006],
    "val": [50000004],
    "test": [50000005],
}
EXPECTED_DICOM = {50000001: "d1-pa", 50000003: "d3-b-pa", 50000006: "d6-pa", 50000004: "d4-pa",
                  50000005: "d5-ap"}  # fmt: skip
IMAGE_SHAPE = (40, 48)  # rows, columns: non-square on purpose


def _report_text(findings: str, impression: str) -> str:
    parts = ["                                 FINAL REPORT", " EXAMINATION:  CHEST (PA AND LAT)",
             " INDICATION:  ___ with shortness of breath"]  # fmt: skip
    if findings:
        parts.append(f" FINDINGS:\n \n {findings}")
    if impression:
        parts.append(f" IMPRESSION:\n \n {impression}")
    return "\n \n".join(parts) + "\n"


def _image(seed: int) -> np.ndarray:
    """A deterministic gradient with a bright square: spans the full [0, 1] range."""
    rows, cols = IMAGE_SHAPE
    rng = np.random.default_rng(seed)
    img = np.linspace(0.0, 1.0, cols)[None, :].repeat(rows, axis=0)
    top, left = rng.integers(0, rows - 10), rng.integers(0, cols - 10)
    img[top : top + 10, left : left + 10] = 1.0
    img[0, 0] = 0.0
    return img


def write_mimic_fixture(root: str | Path) -> Path:
    """Write the fixture under ``root`` (created) and return ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    split_rows, meta_rows, label_rows = [], [], []
    for index, (subject, study, split, images, labels, findings, impression) in enumerate(_STUDIES):
        for offset, (dicom, view) in enumerate(images):
            split_rows.append((dicom, study, subject, split))
            meta_rows.append((dicom, subject, study, view, IMAGE_SHAPE[0], IMAGE_SHAPE[1]))
            path = image_path(root, subject, study, dicom)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_gray_jpeg(_image(10 * index + offset), path)
        report_path(root, subject, study).write_text(_report_text(findings, impression))
        label_rows.append({"subject_id": subject, "study_id": study, **labels})
    pd.DataFrame(split_rows, columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(
        root / "mimic-cxr-2.0.0-split.csv", index=False
    )
    pd.DataFrame(
        meta_rows, columns=["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"]
    ).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    chexpert = pd.DataFrame(label_rows, columns=["subject_id", "study_id", *CHEXPERT_LABELS])
    chexpert.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    return root
