"""Loaders: MIMIC-CXR-JPG layout, report sections, images, IU / Open-i, R2Gen annotation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import GRAY, LABELS, make_mimic_fixture, write_jpeg
from PIL import Image

from course_utils.data import (
    extract_report_sections,
    find_iu_reports_archive,
    load_image,
    load_images,
    load_iu_reports,
    load_iu_xray_dataset,
    load_mimic_cxr_dataset,
    load_r2gen_annotation,
    load_r2gen_dataset,
    parse_iu_xml,
    select_frontal_studies,
)

NAN = float("nan")


def same(a, b) -> bool:
    """Equal, with NaN == NaN (labels keep blanks as NaN)."""
    return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)


# --------------------------------------------------------------------------- MIMIC-CXR-JPG
def test_mimic_train_split_frontal_only_sorted(mimic_root: Path) -> None:
    data = load_mimic_cxr_dataset(mimic_root, "train")
    assert set(data) == {"images", "reports", "labels", "metadata"}
    meta = data["metadata"]
    # s50000003 is lateral-only: filtered; the rest sorted by study id
    assert [m["study_id"] for m in meta] == [50000001, 50000002, 50000004]
    assert [m["view"] for m in meta] == ["PA", "AP", "PA"]
    # several frontal images: PA preferred over AP, even when AP sorts first by dicom id
    assert [m["dicom_id"] for m in meta] == ["d-pa-1", "d-ap-2", "d-zz-pa-4"]
    assert data["images"][0].endswith("files/p10/p10000001/s50000001/d-pa-1.jpg")
    assert all(m["split"] == "train" for m in meta)


def test_mimic_reports_sections_and_wraps(mimic_root: Path) -> None:
    data = load_mimic_cxr_dataset(mimic_root, "train")
    assert data["reports"] == [
        "The heart is enlarged. There is mild interstitial edema, possibly early. "
        "No pleural effusion or pneumothorax.",
        "No acute cardiopulmonary process.",  # IMPRESSION only
        "PA and AP views of the chest. Lungs are clear.",  # FINDINGS AND IMPRESSION
    ]
    first = data["metadata"][0]
    assert first["impression"] == "Cardiomegaly with possible mild edema."
    assert first["indication"] == "___F with cough // eval for pneumonia"
    assert first["comparison"] == "None."
    assert [m["report_source"] for m in data["metadata"]] == ["findings", "impression", "findings"]


def test_mimic_labels_keep_1_0_minus1_nan(mimic_root: Path) -> None:
    labels = load_mimic_cxr_dataset(mimic_root, "train")["labels"]
    assert labels.dtype == torch.float32 and labels.shape == (3, 14)
    row = [NAN] * 14
    row[LABELS.index("Cardiomegaly")] = 1.0
    row[LABELS.index("Edema")] = -1.0
    row[LABELS.index("Pleural Effusion")] = 0.0
    row[LABELS.index("Pneumothorax")] = 0.0
    assert same(labels[0], row)
    assert labels[1, 0].item() == 1.0 and torch.isnan(labels[1, 1:]).all()


@pytest.mark.parametrize(("split", "study"), [("val", 50000005), ("validate", 50000005),
                                              ("test", 50000006), (" TEST ", 50000006)])  # fmt: skip
def test_mimic_val_and_test_splits(mimic_root: Path, split: str, study: int) -> None:
    data = load_mimic_cxr_dataset(mimic_root, split)
    assert [m["study_id"] for m in data["metadata"]] == [study]


def test_mimic_max_studies_takes_first_by_study_id(mimic_root: Path) -> None:
    data = load_mimic_cxr_dataset(mimic_root, "train", max_studies=2)
    assert [m["study_id"] for m in data["metadata"]] == [50000001, 50000002]
    assert data["labels"].shape == (2, 14)
    assert len(select_frontal_studies(mimic_root, "train", max_studies=0)) == 0


def test_mimic_pixels_resized_in_unit_range(mimic_root: Path) -> None:
    data = load_mimic_cxr_dataset(mimic_root, "train", image_size=16, load_pixels=True)
    pixels = data["pixels"]
    assert pixels.shape == (3, 1, 16, 16) and pixels.dtype == torch.float32
    # a flat JPEG of 128 reads back as 128/255 = 0.502 (JPEG keeps flat images within 1 level)
    assert abs(pixels.mean().item() - GRAY / 255) < 1.5 / 255
    native = load_mimic_cxr_dataset(mimic_root, "train", load_pixels=True)["pixels"]
    assert native.shape == (3, 1, 40, 32)  # image_size=None keeps the native (H, W)


def test_mimic_gz_csvs_give_same_result(tmp_path: Path, mimic_root: Path) -> None:
    gz_root = make_mimic_fixture(tmp_path / "gz", gz=True)
    assert not (gz_root / "mimic-cxr-2.0.0-split.csv").exists()
    a = load_mimic_cxr_dataset(mimic_root, "train")
    b = load_mimic_cxr_dataset(gz_root, "train")
    assert a["reports"] == b["reports"] and same(a["labels"], b["labels"])


def test_mimic_patients_csv_adds_demographics(tmp_path: Path) -> None:
    root = make_mimic_fixture(tmp_path / "m", patients=True)
    meta = load_mimic_cxr_dataset(root, "test")["metadata"][0]
    assert (meta["age"], meta["sex"], meta["race"]) == (8, "M", "UNKNOWN")


# --- errors: each names the file or field
@pytest.mark.parametrize(
    "name", ["mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-chexpert.csv",
             "mimic-cxr-2.0.0-metadata.csv"],
)  # fmt: skip
def test_mimic_missing_csv_names_it(mimic_root: Path, name: str) -> None:
    (mimic_root / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        load_mimic_cxr_dataset(mimic_root, "train")


def test_mimic_study_without_image_names_file(mimic_root: Path) -> None:
    (mimic_root / "files/p10/p10000002/s50000004/d-zz-pa-4.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"s50000004.*d-zz-pa-4\.jpg"):
        load_mimic_cxr_dataset(mimic_root, "train")


def test_mimic_missing_report_names_file(mimic_root: Path) -> None:
    (mimic_root / "files/p10/p10000001/s50000002.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"s50000002\.txt"):
        load_mimic_cxr_dataset(mimic_root, "train")


@pytest.mark.parametrize("payload", [b"not a jpeg at all", b""])
def test_mimic_corrupt_jpg_names_file(mimic_root: Path, payload: bytes) -> None:
    (mimic_root / "files/p10/p10000001/s50000002/d-ap-2.jpg").write_bytes(payload)
    load_mimic_cxr_dataset(mimic_root, "train")  # paths only: not decoded, no error
    with pytest.raises(ValueError, match=r"d-ap-2\.jpg"):
        load_mimic_cxr_dataset(mimic_root, "train", load_pixels=True)


def test_mimic_truncated_jpg_names_file(mimic_root: Path) -> None:
    path = mimic_root / "files/p10/p10000001/s50000002/d-ap-2.jpg"
    write_jpeg(path, size=(256, 256))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"d-ap-2\.jpg"):
        load_mimic_cxr_dataset(mimic_root, "train", load_pixels=True, image_size=8)


@pytest.mark.parametrize("text", ["", "   \n\n  ", "FINAL REPORT\n FINDINGS:\n\n IMPRESSION:\n"])
def test_mimic_empty_report_names_file(mimic_root: Path, text: str) -> None:
    (mimic_root / "files/p10/p10000001/s50000001.txt").write_text(text)
    with pytest.raises(ValueError, match=r"empty report.*s50000001\.txt"):
        load_mimic_cxr_dataset(mimic_root, "train")


@pytest.mark.parametrize("split", ["training", "valid ation", "", None])
def test_mimic_wrong_split_name(mimic_root: Path, split) -> None:
    with pytest.raises(ValueError, match=r"split must be one of 'train', 'val', 'test'"):
        load_mimic_cxr_dataset(mimic_root, split)


def test_mimic_bad_label_value_names_column(mimic_root: Path) -> None:
    path = mimic_root / "mimic-cxr-2.0.0-chexpert.csv"
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[2 + LABELS.index("Fracture")] = "2.0"
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"chexpert\.csv: column 'Fracture' has value"):
        load_mimic_cxr_dataset(mimic_root, "train")


def test_mimic_missing_column_names_it(mimic_root: Path) -> None:
    path = mimic_root / "mimic-cxr-2.0.0-metadata.csv"
    frame = pd.read_csv(path).drop(columns=["ViewPosition"])
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"metadata\.csv: missing column\(s\) \['ViewPosition'\]"):
        load_mimic_cxr_dataset(mimic_root, "train")


def test_mimic_unknown_split_value_in_csv(mimic_root: Path) -> None:
    path = mimic_root / "mimic-cxr-2.0.0-split.csv"
    path.write_text(path.read_text().replace(",validate", ",valid"))
    with pytest.raises(ValueError, match=r"unknown value\(s\) \['valid'\] in column 'split'"):
        load_mimic_cxr_dataset(mimic_root, "train")


def test_mimic_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mimic_cxr_dataset(tmp_path / "nowhere", "train")


def test_mimic_skip_invalid_drops_with_warning(mimic_root: Path) -> None:
    (mimic_root / "files/p10/p10000001/s50000001.txt").write_text("")
    (mimic_root / "files/p10/p10000001/s50000002/d-ap-2.jpg").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="skipped 2 invalid studies"):
        data = load_mimic_cxr_dataset(mimic_root, "train", load_pixels=True, skip_invalid=True,
                                      image_size=8)  # fmt: skip
    assert [m["study_id"] for m in data["metadata"]] == [50000004]
    assert data["labels"].shape == (1, 14) and data["labels"][0, 0].item() == 1.0
    assert data["pixels"].shape == (1, 1, 8, 8)


def test_mimic_reports_dir_separate(tmp_path: Path, mimic_root: Path) -> None:
    reports = tmp_path / "reports"
    for txt in (mimic_root / "files").rglob("*.txt"):
        dest = reports / txt.relative_to(mimic_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(txt, dest)
    with pytest.raises(FileNotFoundError):
        load_mimic_cxr_dataset(mimic_root, "train")
    data = load_mimic_cxr_dataset(mimic_root, "train", reports_dir=reports)
    assert data["reports"][1] == "No acute cardiopulmonary process."


def test_mimic_study_missing_from_chexpert_is_nan_with_warning(mimic_root: Path) -> None:
    path = mimic_root / "mimic-cxr-2.0.0-chexpert.csv"
    lines = [ln for ln in path.read_text().splitlines() if ",50000002," not in ln]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="1 of 3 studies have no row"):
        labels = load_mimic_cxr_dataset(mimic_root, "train")["labels"]
    assert torch.isnan(labels[1]).all() and labels[0, 2].item() == 1.0


# --------------------------------------------------------------------------- report sections
def test_sections_variants_and_unknown_header() -> None:
    text = (
        "                FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " CLINICAL HISTORY:  Fever.\n \n FINDINGS:\n \n Lungs are\n clear.\n \n"
        " Heart normal.\n \n CONCLUSION:  Normal\n chest.\n \n NOTIFICATION:  Called Dr. ___.\n"
    )
    out = extract_report_sections(text)
    assert out["findings"] == "Lungs are clear. Heart normal."  # two paragraphs, wraps undone
    assert out["impression"] == "Normal chest."  # CONCLUSION; NOTIFICATION ends it
    assert out["indication"] == "Fever."
    assert out["examination"] == "CHEST (PA AND LAT)"
    assert out["source"] == "sections"


def test_sections_last_paragraph_fallback() -> None:
    text = " FINAL REPORT\n HISTORY:  Cough.\n \n Heart size normal.\n \n No acute\n process.\n"
    out = extract_report_sections(text)
    assert (out["findings"], out["impression"], out["source"]) == (
        "", "No acute process.", "last_paragraph",
    )  # fmt: skip
    assert out["indication"] == "Cough."


def test_sections_empty() -> None:
    assert extract_report_sections("")["source"] == "empty"
    assert extract_report_sections(" FINDINGS: \n\n IMPRESSION: \n")["source"] == "empty"


# --------------------------------------------------------------------------- images
def test_load_image_8bit_jpeg_resize(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    write_jpeg(path, 200, size=(30, 20))
    img = load_image(path)
    assert img.shape == (20, 30) and img.dtype == np.float32
    assert abs(float(img.mean()) - 200 / 255) < 1.5 / 255
    assert load_image(path, 12).shape == (12, 12)


def test_load_image_16bit_png(tmp_path: Path) -> None:
    arr = np.zeros((8, 8), dtype=np.uint16)
    arr[:, 4:] = 65535
    arr[0, 0] = 16384  # 0.25
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    img = load_image(path)
    assert img[0, 0] == pytest.approx(16384 / 65535, abs=1e-6)
    assert img[0, 4] == 1.0 and img[1, 1] == 0.0


def test_load_image_rgb_rgba_palette(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> ITU-R 601 luma 0.299
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_image(tmp_path / "rgb.png")[0, 0] == pytest.approx(76 / 255, abs=1 / 255)
    rgba = np.concatenate([np.full((4, 4, 3), 100, np.uint8), np.full((4, 4, 1), 0, np.uint8)], 2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png")[0, 0] == pytest.approx(100 / 255, abs=1 / 255)
    Image.fromarray(np.full((4, 4), 50, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png")[0, 0] == pytest.approx(50 / 255, abs=1 / 255)


def test_load_image_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\).*empty\.png"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ValueError, match=r"cannot decode image file .*text\.jpg"):
        load_image(tmp_path / "text.jpg")
    write_jpeg(tmp_path / "ok.jpg")
    with pytest.raises(ValueError, match="size must be positive"):
        load_image(tmp_path / "ok.jpg", 0)


def test_load_images_stack_and_shape_mismatch(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "a.jpg", size=(8, 8))
    write_jpeg(tmp_path / "b.jpg", size=(8, 10))
    assert load_images([tmp_path / "a.jpg", tmp_path / "b.jpg"], 4).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="pass image_size"):
        load_images([tmp_path / "a.jpg", tmp_path / "b.jpg"])


# --------------------------------------------------------------------------- IU X-ray
IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{uid}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">XXXX-year-old female, cough</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">No acute   disease.</AbstractText>
</Abstract></Article></MedlineCitation>
{images}</eCitation>"""


def _iu_xml(uid: str, findings: str, images: list[str]) -> str:
    tags = "".join(f'<parentImage id="{i}"><figureId>F1</figureId></parentImage>' for i in images)
    return IU_XML.format(uid=uid, findings=findings, images=tags)


def test_iu_real_archive_has_3955_reports() -> None:
    archive = find_iu_reports_archive()
    assert archive.name == "NLMCXR_reports.tgz" and archive.is_file()
    frame = load_iu_reports()
    assert len(frame) == 3955
    assert list(frame.columns) == ["uid", "findings", "impression", "indication", "comparison",
                                   "image_ids"]  # fmt: skip
    assert frame["uid"].iloc[:3].tolist() == ["1", "2", "3"]  # numeric order
    row = frame.set_index("uid").loc["3029"]
    assert row["findings"].startswith("Normal cardiac contour. Clear lung XXXX bilaterally.")
    assert row["impression"] == "No acute cardiopulmonary abnormalities."
    assert row["image_ids"] == ["CXR3029_IM-1404-1001", "CXR3029_IM-1404-2001"]
    assert int((frame["findings"] != "").sum()) == 3425
    assert int((frame["image_ids"].map(len) == 0).sum()) == 104


def test_iu_folder_parse_and_sort(tmp_path: Path) -> None:
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    (folder / "10.xml").write_text(_iu_xml("10", "Heart is   normal.", ["CXR10_IM-0002-1001"]))
    (folder / "9.xml").write_text(_iu_xml("9", "", []))
    frame = load_iu_reports(tmp_path)
    assert frame["uid"].tolist() == ["9", "10"]
    assert frame.loc[1, "findings"] == "Heart is normal."
    assert frame.loc[1, "impression"] == "No acute disease."
    assert frame.loc[1, "indication"] == "XXXX-year-old female, cough"
    assert frame.loc[0, "findings"] == "" and frame.loc[0, "image_ids"] == []


def test_iu_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.tgz"):
        load_iu_reports(tmp_path / "nope.tgz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no \\*.xml IU reports"):
        load_iu_reports(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "1.xml").write_text("<eCitation><uId id='CXR1'/>")
    with pytest.raises(ValueError, match=r"1\.xml: malformed IU report XML"):
        load_iu_reports(tmp_path / "bad")
    with pytest.raises(ValueError, match="no <uId"):
        parse_iu_xml("<eCitation/>", source="x.xml")


def _iu_images(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    reports = pd.DataFrame(
        [
            {"uid": "1", "findings": "Large right pleural effusion.", "impression": "Effusion.",
             "indication": "", "comparison": "",
             "image_ids": ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]},
            {"uid": "2", "findings": "Normal heart.", "impression": "", "indication": "",
             "comparison": "", "image_ids": ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"]},
            {"uid": "3", "findings": "", "impression": "Normal.", "indication": "",
             "comparison": "", "image_ids": ["CXR3_IM-1384-1001"]},
            {"uid": "4", "findings": "Clear lungs.", "impression": "", "indication": "",
             "comparison": "", "image_ids": ["CXR4_IM-2050-1001"]},  # no file on disk
        ]
    )  # fmt: skip
    images = tmp_path / "NLMCXR_png"
    for name in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001",
                 "CXR2_IM-0652-2001", "CXR3_IM-1384-1001"):  # fmt: skip
        images.mkdir(exist_ok=True)
        Image.fromarray(np.full((10, 12), 60, np.uint8)).save(images / f"{name}.png")
    return reports, images


def test_iu_openi_png_naming(tmp_path: Path) -> None:
    reports, images = _iu_images(tmp_path)
    data = load_iu_xray_dataset(images, reports, image_size=6, load_pixels=True)
    assert [m["uid"] for m in data["metadata"]] == ["1", "2"]  # 3: no findings, 4: no image
    assert Path(data["images"][0]).name == "CXR1_1_IM-0001-3001.png"  # first parentImage
    assert data["reports"][0] == "Large right pleural effusion."
    assert data["labels"].shape == (2, 14)
    assert data["labels"][0, LABELS.index("Pleural Effusion")].item() == 1.0
    assert data["pixels"].shape == (2, 1, 6, 6)
    assert data["pixels"][0].mean().item() == pytest.approx(60 / 255, abs=1e-3)
    with_impr = load_iu_xray_dataset(images, reports, require_findings=False)
    assert [m["uid"] for m in with_impr["metadata"]] == ["1", "2", "3"]


def test_iu_projections_pick_frontal(tmp_path: Path) -> None:
    reports, images = _iu_images(tmp_path)
    proj = tmp_path / "indiana_projections.csv"
    proj.write_text(
        "uid,filename,projection\n1,1_IM-0001-3001.dcm.png,Lateral\n1,1_IM-0001-4001.dcm.png,"
        "Frontal\n2,2_IM-0652-1001.dcm.png,Frontal\n"
    )
    data = load_iu_xray_dataset(images, reports, projections_csv=proj)
    assert Path(data["images"][0]).name == "CXR1_1_IM-0001-4001.png"
    assert data["metadata"][0]["view"] == "frontal"


def test_iu_images_errors(tmp_path: Path) -> None:
    reports, _ = _iu_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="IU image folder not found"):
        load_iu_xray_dataset(tmp_path / "none", reports)
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(other / "unrelated.png")
    with pytest.raises(ValueError, match="none of the 4 IU reports has an image"):
        load_iu_xray_dataset(other, reports)


# --------------------------------------------------------------------------- R2Gen
def _r2gen(tmp_path: Path, test_key: str = "test") -> Path:
    ann = {
        "train": [{"id": "CXR2384_IM-0942", "report": "The heart is enlarged.",
                   "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"],
                   "split": "train"}],
        "val": [{"id": "CXR1_IM-0001", "report": "No acute disease.",
                 "image_path": ["CXR1_IM-0001/0.png"], "split": "val"}],
        test_key: [{"id": "CXR7_IM-0007", "report": "Small left pleural effusion.",
                    "image_path": ["CXR7_IM-0007/0.png", "CXR7_IM-0007/1.png"], "split": "test"}],
    }  # fmt: skip
    path = tmp_path / "iu_xray" / "annotation.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(ann))
    for split in ann.values():
        for entry in split:
            for rel in entry["image_path"]:
                img = tmp_path / "iu_xray" / "images" / rel
                img.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((9, 9), 30, np.uint8)).save(img)
    return path


@pytest.mark.parametrize("key", ["test", " ", "\t", " test "])
def test_r2gen_annotation_whitespace_test_key(tmp_path: Path, key: str) -> None:
    ann = load_r2gen_annotation(_r2gen(tmp_path, key))
    assert list(ann) == ["train", "val", "test"]
    assert ann["test"][0]["id"] == "CXR7_IM-0007"
    assert len(ann["train"]) == len(ann["val"]) == 1


def test_r2gen_annotation_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    with pytest.raises(FileNotFoundError, match=r"a\.json"):
        load_r2gen_annotation(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_r2gen_annotation(path)
    path.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(ValueError, match=r"missing split\(s\) \['test'\]"):
        load_r2gen_annotation(path)
    path.write_text(json.dumps({"train": [], "val": [], "test": [], "extra": []}))
    with pytest.raises(ValueError, match="unknown split key 'extra'"):
        load_r2gen_annotation(path)
    path.write_text(json.dumps({"train": [{"id": "a", "image_path": ["a/0.png"]}], "val": [],
                                "test": []}))  # fmt: skip
    with pytest.raises(ValueError, match=r"train\[0\] has no 'report' field"):
        load_r2gen_annotation(path)


def test_r2gen_dataset_images_id_0_png(tmp_path: Path) -> None:
    path = _r2gen(tmp_path, " ")
    data = load_r2gen_dataset(path, path.parent / "images", "test", image_size=4, load_pixels=True)
    assert data["images"][0].endswith("images/CXR7_IM-0007/0.png")
    assert data["reports"] == ["Small left pleural effusion."]
    assert data["metadata"][0]["image_paths"][1].endswith("CXR7_IM-0007/1.png")
    assert data["labels"][0, LABELS.index("Pleural Effusion")].item() == 1.0
    assert data["pixels"].shape == (1, 1, 4, 4)
    assert math.isclose(data["pixels"].mean().item(), 30 / 255, abs_tol=1e-3)
    with pytest.raises(ValueError, match="split must be one of"):
        load_r2gen_dataset(path, path.parent / "images", "dev")
    (path.parent / "images" / "CXR1_IM-0001" / "0.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"CXR1_IM-0001.*0\.png"):
        load_r2gen_dataset(path, path.parent / "images", "val")


def test_r2gen_empty_report(tmp_path: Path) -> None:
    path = _r2gen(tmp_path)
    ann = json.loads(path.read_text())
    ann["train"][0]["report"] = "   "
    path.write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="'CXR2384_IM-0942' has an empty 'report'"):
        load_r2gen_dataset(path, path.parent / "images", "train")
