"""Shared fixtures: a tiny hand-made MIMIC-CXR-JPG tree with the edge cases the loader handles."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip

# Real MIMIC reports keep a space on "blank" lines and after headers: so do these.
REPORT_BOTH = (
    "                                 FINAL REPORT\n"
    " EXAMINATION:  CHEST (PA AND LAT)\n \n"
    " INDICATION:  ___F with cough  // eval for pneumonia\n \n"
    " COMPARISON:  None.\n \n"
    " FINDINGS: \n \n"
    " The heart is enlarged.  There is mild interstitial edema, possibly\n"
    " early.  No pleural effusion or pneumothorax.\n \n"
    " IMPRESSION: \n \n"
    " Cardiomegaly with possible mild edema.\n"
)
REPORT_IMPRESSION_ONLY = (
    "                                 FINAL REPORT\n"
    " HISTORY:  Chest pain.\n \n"
    " IMPRESSION:  No acute cardiopulmonary\n"
    " process.\n"
)
REPORT_COMBINED = """                                 FINAL REPORT
 FINDINGS AND IMPRESSION:  PA and AP views of the chest.  Lungs
 are clear.
"""

# (subject, study, split, [(dicom, view)], report or None, labels {name: value})
STUDIES = [
    (10000001, 50000001, "train", [("d-pa-1", "PA"), ("d-lat-1", "LATERAL")], REPORT_BOTH,
     {"Cardiomegaly": 1.0, "Edema": -1.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
    (10000001, 50000002, "train", [("d-ap-2", "AP")], REPORT_IMPRESSION_ONLY,
     {"No Finding": 1.0}),
    (10000002, 50000003, "train", [("d-lat-3", "LATERAL")], REPORT_IMPRESSION_ONLY,
     {"No Finding": 1.0}),  # lateral-only study: must be filtered out
    (10000002, 50000004, "train", [("d-zz-ap-4", "AP"), ("d-zz-pa-4", "PA"), ("d-aa-ap-4", "AP")],
     REPORT_COMBINED, {"No Finding": 1.0, "Support Devices": 0.0}),
    (11000003, 50000005, "validate", [("d-pa-5", "PA")], REPORT_BOTH, {"Cardiomegaly": 1.0}),
    (12000004, 50000006, "test", [("d-ap-6", "AP")], REPORT_BOTH, {"Edema": -1.0}),
]  # fmt: skip
GRAY = 128  # every fixture JPEG is a flat 40x32 image of this value


def write_jpeg(path: Path, value: int = GRAY, size: tuple[int, int] = (32, 40)) -> None:
    """Flat 8-bit grayscale JPEG (width, height) = ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8)).save(path, quality=95)


def _write_csv(path: Path, header: list[str], rows: list[list], gz: bool) -> None:
    text = ",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)


def make_mimic_fixture(root: Path, gz: bool = False, patients: bool = False) -> Path:
    """Write the tiny MIMIC-CXR-JPG tree described by :data:`STUDIES` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    split_rows, meta_rows, chex_rows = [], [], []
    for subject, study, split, images, report, labels in STUDIES:
        sdir = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        for dicom, view in images:
            write_jpeg(sdir / f"{dicom}.jpg")
            split_rows.append([dicom, study, subject, split])
            meta_rows.append([dicom, subject, study, "CHEST (PA AND LAT)", view, 40, 32, 21800506,
                              "213014.531", "CHEST (PA AND LAT)", view.lower(), "Erect"])  # fmt: skip
        if report is not None:
            (sdir.parent / f"s{study}.txt").write_text(report)
        chex_rows.append(
            [subject, study] + [
                "" if labels.get(lab) is None else f"{labels[lab]:.1f}" for lab in LABELS
            ]
        )  # fmt: skip
    _write_csv(root / "mimic-cxr-2.0.0-split.csv",
               ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz)  # fmt: skip
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv",
               ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                "PatientOrientationCodeSequence_CodeMeaning"], meta_rows, gz)  # fmt: skip
    _write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        ["subject_id", "study_id", *[f'"{lab}"' for lab in LABELS]],
        chex_rows,
        gz,
    )
    if patients:
        (root / "patients.csv").write_text(
            "subject_id,age,sex,race\n10000001,71,F,WHITE\n10000002,45,M,ASIAN\n"
            "11000003,30,F,OTHER\n12000004,8,M,UNKNOWN\n"
        )
    return root


@pytest.fixture
def mimic_root(tmp_path: Path) -> Path:
    """Plain-CSV MIMIC-CXR-JPG fixture (see :data:`STUDIES`)."""
    return make_mimic_fixture(tmp_path / "mimic")


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: a second OpenMP thread only adds synchronisation (badly so on a shared CPU).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
