"""Graded checks for notebook 01 (load and preprocess)."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data import load_mimic_cxr_dataset as reference_loader
from . import Checker
from .fixtures import EXPECTED_DICOM, EXPECTED_STUDIES, write_mimic_fixture

_META_KEYS = ("subject_id", "study_id", "dicom_id", "view", "split")


def _squash(text: str) -> str:
    return " ".join(str(text).split())


def _labels_array(labels: object) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy().astype(np.float64)
    return np.asarray(labels, dtype=np.float64)


def _check_split(check: Checker, out: dict, ref: dict, split: str) -> None:
    check.expect(isinstance(out, dict), f"[{split}] returns a dict", "dict", type(out).__name__)
    missing = [k for k in ("images", "reports", "labels", "metadata") if k not in out]
    check.expect(not missing, f"[{split}] has the case study's keys", "images, reports, labels, metadata",
                 f"missing {missing}")  # fmt: skip
    want_dicoms = [EXPECTED_DICOM[s] for s in EXPECTED_STUDIES[split]]
    got_dicoms = [Path(p).stem for p in out["images"]]
    check.expect(
        not any("lat" in d for d in got_dicoms),
        f"[{split}] keeps frontal views only",
        "no LATERAL images",
        got_dicoms,
        "filter mimic-cxr-2.0.0-metadata.csv's ViewPosition to PA/AP before picking images",
    )
    check.expect(
        got_dicoms == want_dicoms,
        f"[{split}] one frontal image per study, PA preferred, sorted by study_id",
        want_dicoms,
        got_dicoms,
        "study 50000003 has an AP and a PA image; keep the PA one. Sort by study_id.",
    )
    check.expect(
        [_squash(r) for r in out["reports"]] == [_squash(r) for r in ref["reports"]],
        f"[{split}] reports are the FINDINGS section (IMPRESSION when there is none)",
        ref["reports"],
        out["reports"],
        "use extract_report_sections(text)['findings'] or ...['impression']",
    )
    got, want = _labels_array(out["labels"]), _labels_array(ref["labels"])
    check.expect(
        got.shape == want.shape, f"[{split}] labels have shape (N, 14)", want.shape, got.shape
    )
    check.expect(
        np.array_equal(np.isnan(got), np.isnan(want)),
        f"[{split}] blank CheXpert cells stay NaN (not mentioned != negative)",
        "NaN where the CSV cell is blank",
        got.tolist(),
        "don't fillna(0): 'not mentioned' and 'negative' are different statements",
    )
    check.expect(
        np.array_equal(np.nan_to_num(got, nan=9), np.nan_to_num(want, nan=9)),
        f"[{split}] label values 1 / 0 / -1 kept, columns in CHEXPERT_LABELS order",
        want.tolist(),
        got.tolist(),
        "keep -1 (uncertain) as -1; select columns with list(CHEXPERT_LABELS)",
    )
    meta = out["metadata"]
    check.expect(
        isinstance(meta, list) and len(meta) == len(want_dicoms),
        f"[{split}] metadata is one dict per study",
        len(want_dicoms),
        len(meta) if isinstance(meta, list) else type(meta).__name__,
    )
    got_meta = [{k: m.get(k) for k in _META_KEYS} for m in meta]
    want_meta = [{k: m[k] for k in _META_KEYS} for m in ref["metadata"]]
    check.expect(got_meta == want_meta, f"[{split}] metadata has {', '.join(_META_KEYS)}", want_meta,
                 got_meta, "split is 'train' / 'val' / 'test' (the course's names)")  # fmt: skip


def _check_pixels(check: Checker, out: dict, ref: dict, size: int) -> None:
    pixels = out.get("pixels")
    check.expect(
        isinstance(pixels, torch.Tensor), "pixels is a torch tensor", "Tensor", type(pixels)
    )
    n = len(ref["images"])
    check.expect(tuple(pixels.shape) == (n, 1, size, size), "pixels have shape (N, 1, S, S)",
                 (n, 1, size, size), tuple(pixels.shape), "resize every image to image_size")  # fmt: skip
    check.expect(pixels.dtype == torch.float32, "pixels are float32", torch.float32, pixels.dtype)
    lo, hi = float(pixels.min()), float(pixels.max())
    check.expect(0.0 <= lo and hi <= 1.0 and hi > 0.9, "pixel values are normalised to [0, 1]",
                 "min >= 0, max <= 1 (the fixture spans the full range)", (lo, hi),
                 "divide 8-bit values by 255")  # fmt: skip
    diff = float((pixels - ref["pixels"]).abs().mean())
    check.expect(diff < 0.05, "pixels match the reference preprocessing (mean |diff| < 0.05)",
                 "< 0.05", round(diff, 4), "load each frontal image with load_image(path, size)")  # fmt: skip


def check_load_mimic_cxr_dataset(
    load_mimic_cxr_dataset: Callable[..., dict], embedded_dir: str | Path | None = None
) -> None:
    """Run the student's loader on a six-study fixture (and on the first studies of the
    embedded dataset when ``embedded_dir`` is given) and compare with the reference."""
    check = Checker("load_mimic_cxr_dataset")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = write_mimic_fixture(tmp)
        for split in ("train", "val", "test"):
            out = check.call(load_mimic_cxr_dataset, str(root), split)
            _check_split(check, out, reference_loader(root, split), split)
        size = 16
        out = check.call(
            load_mimic_cxr_dataset, str(root), "train", image_size=size, load_pixels=True
        )
        ref = reference_loader(root, "train", image_size=size, load_pixels=True)
        _check_pixels(check, out, ref, size)
        out = check.call(load_mimic_cxr_dataset, str(root), "train", max_studies=2)
        got = [Path(p).stem for p in out["images"]]
        check.expect(got == ["d1-pa", "d3-b-pa"], "max_studies keeps the first N studies by study_id",
                     ["d1-pa", "d3-b-pa"], got)  # fmt: skip
        try:
            load_mimic_cxr_dataset(str(root), "training")
        except NotImplementedError:
            raise
        except ValueError:
            check.passed.append("a wrong split name raises ValueError")
        except Exception as err:  # noqa: BLE001
            check.expect(
                False, "a wrong split name raises ValueError", "ValueError", type(err).__name__
            )
        else:
            check.expect(False, "a wrong split name raises ValueError", "ValueError", "no error",
                         "check split against 'train', 'val', 'test' first")  # fmt: skip
    if embedded_dir is not None:
        for split in ("train", "test"):
            out = check.call(load_mimic_cxr_dataset, str(embedded_dir), split, max_studies=40)
            ref = reference_loader(embedded_dir, split, max_studies=40)
            check.expect([Path(p).name for p in out["images"]] == [Path(p).name for p in ref["images"]],
                         f"[embedded {split}] same 40 frontal images as the reference")  # fmt: skip
            same = np.array_equal(np.nan_to_num(_labels_array(out["labels"]), nan=9),
                                  np.nan_to_num(_labels_array(ref["labels"]), nan=9))  # fmt: skip
            check.expect(same, f"[embedded {split}] same labels as the reference")
    check.done()


# Texts chosen so that each classic mistake changes at least one answer: sentence-initial slots
# (capitalisation), a two-placeholder slot ("superior XXXX XXXX"), a placeholder no rule covers,
# lower-case "xxxx", and a slot that two rules of the custom table both match (first rule wins).
_XXXX_TEXTS = (
    "There are no XXXX of a pleural effusion. Heart size normal.",
    "XXXX sternotomy. Sternotomy XXXX are intact.",
    "Right IJ catheter tip in the superior XXXX XXXX. Comparison XXXX, XXXX.",
    "no xxxx of pneumothorax. lymph xxxx are not enlarged.",
    "The lungs are clear.",
    "",
)
_CUSTOM_RULES = (
    ("\\bno (?P<slot>XXXX) of", "evidence"),
    ("(?P<slot>XXXX) of", "signs"),
    ("\\blymph (?P<slot>XXXX)", "nodes"),
)


def _result_fields(check: Checker, result: object, where: str) -> tuple[str, int, int]:
    names = ("text", "n_xxxx", "n_resolved")
    check.expect(all(hasattr(result, n) for n in names), f"{where}: returns an ImputationResult",
                 "ImputationResult(text, n_xxxx, n_resolved, applied)", result)  # fmt: skip
    return result.text, int(result.n_xxxx), int(result.n_resolved)


def check_impute_xxxx(impute_xxxx: Callable) -> None:
    """Compare the student's ``impute_xxxx`` with the reference on texts with known answers."""
    from ..text import DEFAULT_XXXX_RULES, XxxxRule
    from ..text import impute_xxxx as reference

    check = Checker("impute_xxxx")
    custom = tuple(XxxxRule(p, r, "check fixture") for p, r in _CUSTOM_RULES)
    for rules, table in ((DEFAULT_XXXX_RULES, "default rules"), (custom, "custom rules")):
        for text in _XXXX_TEXTS:
            where = f"[{table}] {text!r}"
            got = _result_fields(check, check.call(impute_xxxx, text, rules), where)
            want = reference(text, rules)
            check.expect(got[1] == want.n_xxxx, f"{where}: n_xxxx counts placeholders before imputation",
                         want.n_xxxx, got[1], "count XXXX_PATTERN matches in the input")  # fmt: skip
            check.expect(got[0] == want.text, f"{where}: imputed text", want.text, got[0],
                         "replace only the 'slot' group of each match; capitalise a slot that starts "
                         "a sentence; the first rule that matches a slot wins")  # fmt: skip
            check.expect(got[2] == want.n_resolved, f"{where}: n_resolved counts placeholders replaced",
                         want.n_resolved, got[2], "n_xxxx minus the placeholders left")  # fmt: skip
    check.done()
