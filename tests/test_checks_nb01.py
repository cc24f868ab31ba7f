"""Grading validity for notebook 01: plausible wrong answers lose points, a correct alternative passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from course_utils.checks import CheckFailed
from course_utils.checks.nb01 import check_load_mimic_cxr_dataset
from course_utils.data import extract_report_sections
from course_utils.labels import CHEXPERT_LABELS

SPLITS = {"train": "train", "val": "validate", "test": "test"}


def make_loader(
    keep_lateral: bool = False,
    prefer_pa: bool = True,
    fill_blank: float | None = None,
    uncertain_to: float | None = None,
    map_val: bool = True,
    scale: bool = True,
    resize: bool = True,
    report: str = "findings",
    check_split: bool = True,
):
    """An independent loader written the way a student might, with one knob per classic mistake."""

    def loader(data_dir, split="train", image_size=None, load_pixels=False, max_studies=None):
        root = Path(data_dir)
        if check_split and split not in SPLITS:
            raise ValueError(split)
        wanted = SPLITS.get(split, split) if map_val else split
        rows = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv")
        views = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv")[["dicom_id", "ViewPosition"]]
        rows = rows[rows["split"] == wanted].merge(views, on="dicom_id")
        if not keep_lateral:
            rows = rows[rows["ViewPosition"].isin(["PA", "AP"])]
        order = ["study_id", "is_ap", "dicom_id"] if prefer_pa else ["study_id", "dicom_id"]
        rows = rows.assign(is_ap=rows["ViewPosition"] != "PA").sort_values(order)
        if not keep_lateral:
            rows = rows.drop_duplicates("study_id")
        rows = rows.head(max_studies) if max_studies else rows
        chexpert = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv")
        labels = rows[["subject_id", "study_id"]].merge(chexpert, how="left")[list(CHEXPERT_LABELS)]
        if fill_blank is not None:
            labels = labels.fillna(fill_blank)
        if uncertain_to is not None:
            labels = labels.replace(-1.0, uncertain_to)
        out = {"images": [], "reports": [], "metadata": [], "pixels": []}
        for r in rows.itertuples():
            folder = root / "files" / f"p{str(r.subject_id)[:2]}" / f"p{r.subject_id}"
            path = folder / f"s{r.study_id}" / f"{r.dicom_id}.jpg"
            sections = extract_report_sections((folder / f"s{r.study_id}.txt").read_text())
            text = sections["impression"] if report == "impression" else sections["findings"]
            out["images"].append(str(path))
            out["reports"].append(text or sections["impression"])
            out["metadata"].append(
                {
                    "subject_id": r.subject_id,
                    "study_id": r.study_id,
                    "dicom_id": r.dicom_id,
                    "view": r.ViewPosition,
                    "split": split,
                }  # fmt: skip
            )
            if load_pixels:
                img = Image.open(path).convert("L")
                if resize and image_size:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)
                out["pixels"].append(arr / 255.0 if scale else arr)
        out["labels"] = torch.tensor(labels.to_numpy(dtype=np.float32))
        out["pixels"] = torch.from_numpy(np.stack(out["pixels"])[:, None]) if load_pixels else None
        return out

    return loader


def test_reference_passes():
    from course_utils.data import load_mimic_cxr_dataset

    check_load_mimic_cxr_dataset(load_mimic_cxr_dataset)


def test_correct_alternative_implementation_passes():
    check_load_mimic_cxr_dataset(make_loader())


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(keep_lateral=True), "frontal views only"),
        (dict(prefer_pa=False), "PA preferred"),
        (dict(fill_blank=0.0), "stay NaN"),
        (dict(uncertain_to=0.0), "1 / 0 / -1 kept"),
        (dict(uncertain_to=1.0), "1 / 0 / -1 kept"),
        (dict(map_val=False), r"\[val\]"),
        (dict(scale=False), r"normalised to \[0, 1\]"),
        (dict(resize=False), r"shape \(N, 1, S, S\)|raised"),
        (dict(report="impression"), "FINDINGS section"),
        (dict(check_split=False), "wrong split name raises ValueError"),
    ],
)
def test_plausible_wrong_answers_fail(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_load_mimic_cxr_dataset(make_loader(**mistake))


def test_unfinished_todo_surfaces_not_implemented():
    def stub(*args, **kwargs):
        raise NotImplementedError("load_mimic_cxr_dataset: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_load_mimic_cxr_dataset(stub)


# ----------------------------------------------------------------------------- impute_xxxx
def make_imputer(
    global_replace: bool = False,
    capitalise: bool = True,
    count_applications: bool = False,
    last_rule_wins: bool = False,
    count_after: bool = False,
    case_sensitive: bool = False,
):
    """A student-style impute_xxxx (splicing by hand), one knob per classic mistake."""
    import re

    from course_utils.text import XXXX_PATTERN, ImputationResult

    def impute(text, rules):
        n_before = len(XXXX_PATTERN.findall(text))
        applied = []
        for rule in reversed(rules) if last_rule_wins else rules:
            regex = re.compile(rule.pattern) if case_sensitive else rule.regex
            if global_replace:
                if regex.search(text):
                    text = XXXX_PATTERN.sub(rule.replacement, text)
                    applied.append(rule.name)
                continue
            pieces, last = [], 0
            for m in regex.finditer(text):
                start, end = m.span("slot")
                word = rule.replacement
                if capitalise and (not text[:start].strip() or text[:start].rstrip()[-1] in ".:"):
                    word = word[0].upper() + word[1:]
                pieces += [text[last:start], word]
                last = end
                applied.append(rule.name)
            text = "".join(pieces) + text[last:]
        n_left = len(XXXX_PATTERN.findall(text))
        n_xxxx = n_left if count_after else n_before
        resolved = len(applied) if count_applications else n_before - n_left
        return ImputationResult(text, n_xxxx, resolved, applied)

    return impute


def test_impute_reference_and_alternative_pass():
    from course_utils.checks.nb01 import check_impute_xxxx
    from course_utils.text import impute_xxxx

    check_impute_xxxx(impute_xxxx)
    check_impute_xxxx(make_imputer())


@pytest.mark.parametrize(
    "mistake, message",
    [
        (dict(global_replace=True), "imputed text"),
        (dict(capitalise=False), "imputed text"),
        (dict(count_applications=True), "n_resolved"),
        (dict(last_rule_wins=True), "imputed text"),
        (dict(count_after=True), "n_xxxx"),
        (dict(case_sensitive=True), "imputed text"),
    ],
)
def test_impute_wrong_answers_fail(mistake, message):
    from course_utils.checks.nb01 import check_impute_xxxx

    with pytest.raises(CheckFailed, match=message):
        check_impute_xxxx(make_imputer(**mistake))
