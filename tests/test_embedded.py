"""Embedded dataset builder on a small subset: layout, determinism, round trip, splits, CSVs."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from course_utils.data import (
    build_embedded_dataset,
    ensure_embedded_dataset,
    extract_report_sections,
    format_mimic_report,
    load_image,
    load_iu_reports,
    load_mimic_cxr_dataset,
    read_embedded_info,
    stratified_patient_split,
)
from course_utils.data.embedded import EMBEDDED_VERSION, default_embedded_dir
from course_utils.labels import CHEXPERT_LABELS

N = 60
SIZE = 64
CSVS = (
    "mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-metadata.csv",
    "patients.csv", "phantom_findings.csv", "phantom_acquisition.csv", "iu_source.csv",
)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedded_dataset(tmp_path_factory.mktemp("emb") / "a", seed=7, image_size=SIZE,
                                  max_studies=N, workers=1)  # fmt: skip


def test_layout_and_marker(built: Path) -> None:
    for name in CSVS:
        assert (built / name).is_file(), name
    info = read_embedded_info(built)
    assert (info["studies"], info["images"], info["seed"], info["image_size"]) == (
        N,
        2 * N,
        7,
        SIZE,
    )
    assert info["version"] == EMBEDDED_VERSION
    assert sum(info["studies_per_split"].values()) == N
    jpgs = sorted(built.glob("files/p*/p*/s*/*.jpg"))
    txts = sorted(built.glob("files/p*/p*/s*.txt"))
    assert len(jpgs) == 2 * N and len(txts) == N
    assert load_image(jpgs[0]).shape == (SIZE, SIZE)
    assert not list(built.parent.glob("*.partial-*"))  # the temporary folder was renamed


def test_same_seed_byte_identical_any_worker_count(built: Path, tmp_path: Path) -> None:
    again = build_embedded_dataset(tmp_path / "b", seed=7, image_size=SIZE, max_studies=N,
                                   workers=2)  # fmt: skip
    for name in CSVS:
        assert (built / name).read_bytes() == (again / name).read_bytes(), name
    jpgs = sorted(p.relative_to(built) for p in built.glob("files/**/*.jpg"))
    assert jpgs == sorted(p.relative_to(again) for p in again.glob("files/**/*.jpg"))
    assert all(filecmp.cmp(built / p, again / p, shallow=False) for p in jpgs[:20])
    other = build_embedded_dataset(tmp_path / "c", seed=8, image_size=SIZE, max_studies=10,
                                   workers=1)  # fmt: skip
    assert (other / CSVS[0]).read_bytes() != (built / CSVS[0]).read_bytes()


def test_round_trip_through_mimic_loader(built: Path) -> None:
    chex = pd.read_csv(built / "mimic-cxr-2.0.0-chexpert.csv").set_index("study_id")
    source = pd.read_csv(built / "iu_source.csv", dtype={"iu_uid": str}).set_index("study_id")
    iu = load_iu_reports().set_index("uid")
    total = 0
    for split in ("train", "val", "test"):
        data = load_mimic_cxr_dataset(built, split, load_pixels=True)
        n = len(data["images"])
        total += n
        assert data["pixels"].shape == (n, 1, SIZE, SIZE)
        assert float(data["pixels"].min()) >= 0.0 and float(data["pixels"].max()) <= 1.0
        studies = [m["study_id"] for m in data["metadata"]]
        assert studies == sorted(studies)
        expected = chex.loc[studies, list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)
        assert np.array_equal(data["labels"].numpy(), expected, equal_nan=True)
        for meta, report in zip(data["metadata"], data["reports"], strict=True):
            assert meta["view"] == "PA" and meta["split"] == split
            uid = source.loc[meta["study_id"], "iu_uid"]
            assert report == iu.loc[uid, "findings"]  # findings text survives the MIMIC format
            assert meta["impression"] == iu.loc[uid, "impression"]
            assert {"age", "sex", "race"} <= set(meta)
    assert total == N


def test_labels_come_from_the_labeler(built: Path) -> None:
    from course_utils.labels import label_reports

    chex = pd.read_csv(built / "mimic-cxr-2.0.0-chexpert.csv").set_index("study_id")
    source = pd.read_csv(built / "iu_source.csv", dtype={"iu_uid": str}).set_index("study_id")
    iu = load_iu_reports().set_index("uid").loc[source["iu_uid"]]
    texts = (iu["findings"] + " " + iu["impression"]).str.strip().tolist()
    expected = label_reports(texts)[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)
    got = chex.loc[source.index, list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)
    assert np.array_equal(got, expected, equal_nan=True)


def test_patient_level_split_and_demographics(built: Path) -> None:
    split = pd.read_csv(built / "mimic-cxr-2.0.0-split.csv")
    assert set(split["split"]) == {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()  # no patient leaks
    per_study = split.drop_duplicates("study_id")["split"].value_counts()
    assert 0.6 * N <= per_study["train"] <= 0.8 * N and per_study["test"] >= 0.1 * N
    patients = pd.read_csv(built / "patients.csv")
    assert set(patients["subject_id"]) == set(split["subject_id"])
    assert patients["age"].between(1, 90).all()
    assert set(patients["sex"]) <= {"M", "F"}
    assert set(patients["race"]) <= {"WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO",
                                     "ASIAN", "OTHER", "UNKNOWN"}  # fmt: skip
    assert patients["subject_id"].between(10_000_000, 19_999_999).all()
    assert split["study_id"].between(50_000_000, 59_999_999).all()


def test_metadata_views_and_acquisition(built: Path) -> None:
    meta = pd.read_csv(built / "mimic-cxr-2.0.0-metadata.csv")
    assert meta["ViewPosition"].value_counts().to_dict() == {"PA": N, "LATERAL": N}
    assert (meta["Rows"] == SIZE).all() and (meta["Columns"] == SIZE).all()
    assert meta["dicom_id"].str.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}").all()
    acq = pd.read_csv(built / "phantom_acquisition.csv")
    assert set(acq["dicom_id"]) == set(meta["dicom_id"]) and len(acq) == 2 * N
    assert acq["exposure"].between(0.8, 1.25).all() and acq["noise"].between(0.008, 0.03).all()
    assert acq["rotation_deg"].abs().max() <= 4.0


def test_phantom_findings_match_labels(built: Path) -> None:
    finds = pd.read_csv(built / "phantom_findings.csv")
    meta = pd.read_csv(built / "mimic-cxr-2.0.0-metadata.csv").set_index("dicom_id")
    chex = pd.read_csv(built / "mimic-cxr-2.0.0-chexpert.csv").set_index("study_id")
    assert len(finds) > 0
    assert finds[["x0", "y0", "x1", "y1"]].ge(0).all().all()
    assert (finds["x1"] >= finds["x0"]).all() and (finds[["x1", "y1"]] < SIZE).all().all()
    for row in finds.itertuples(index=False):
        study = meta.loc[row.dicom_id, "study_id"]
        assert chex.loc[study, row.label] == row.status  # drawn = positive (1) or uncertain (-1)
    # every positive label of a study is drawn on its frontal image
    pa = meta[meta["ViewPosition"] == "PA"].reset_index().set_index("study_id")["dicom_id"]
    drawn = set(zip(finds["dicom_id"], finds["label"], strict=True))
    for study, row in chex.iterrows():
        for label in CHEXPERT_LABELS[1:]:
            if row[label] == 1.0:
                assert (pa[study], label) in drawn, (study, label)


def test_report_text_has_mimic_format(built: Path) -> None:
    txt = next(iter(sorted(built.glob("files/p*/p*/s*.txt")))).read_text()
    assert txt.startswith(" " * 33 + "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)")
    assert "\n FINDINGS: \n" in txt
    assert max(len(line) for line in txt.splitlines()) <= 78


def test_format_mimic_report_round_trip() -> None:
    findings = "The heart is normal in size. " * 8
    text = format_mimic_report(findings, "No acute disease.", "Cough.", "")
    sections = extract_report_sections(text)
    assert sections["findings"] == findings.strip()
    assert sections["impression"] == "No acute disease."
    assert sections["indication"] == "Cough."
    assert "COMPARISON" not in text  # empty sections are left out


def test_subgroup_effects_hook(tmp_path: Path) -> None:
    path = build_embedded_dataset(tmp_path / "fx", seed=7, image_size=32, max_studies=24,
                                  workers=1, subgroup_effects={"sex": {"F": {"noise": 0.05}}})  # fmt: skip
    acq = pd.read_csv(path / "phantom_acquisition.csv")
    meta = pd.read_csv(path / "mimic-cxr-2.0.0-metadata.csv")
    sex = pd.read_csv(path / "patients.csv").set_index("subject_id")["sex"]
    acq = acq.merge(meta[["dicom_id", "subject_id"]], on="dicom_id")
    female = acq["subject_id"].map(sex) == "F"
    assert female.any() and (~female).any()
    assert (acq.loc[female, "noise"] >= 0.058).all() and (acq.loc[~female, "noise"] <= 0.03).all()
    assert read_embedded_info(path)["subgroup_effects"] == {"sex": {"F": {"noise": 0.05}}}
    with pytest.raises(ValueError, match="unknown attribute 'height'"):
        build_embedded_dataset(tmp_path / "bad", max_studies=4, workers=1,
                               subgroup_effects={"height": {"1": {"noise": 0.1}}})  # fmt: skip


def test_stratified_split_hand_made() -> None:
    rng = np.random.default_rng(0)
    positives = np.zeros((200, 3), dtype=bool)
    positives[:10, 0] = True  # a rare label: 10 positives
    positives[rng.choice(200, 60, replace=False), 1] = True
    patients = [[i, i + 1] for i in range(0, 200, 2)]  # 100 patients x 2 studies
    out = stratified_patient_split(positives, patients, seed=0)
    assert len(out) == 100 and set(out) == {"train", "validate", "test"}
    study_split = np.empty(200, dtype=object)
    for rows, name in zip(patients, out, strict=True):
        study_split[rows] = name
    sizes = {s: int((study_split == s).sum()) for s in ("train", "validate", "test")}
    assert abs(sizes["train"] - 140) <= 6 and abs(sizes["test"] - 40) <= 6
    for split in ("train", "validate", "test"):
        assert positives[study_split == split, 0].any()  # the rare label reaches every split
        assert positives[study_split == split, 1].sum() >= 3
    assert out == stratified_patient_split(positives, patients, seed=0)


def test_ensure_uses_the_cache_when_complete(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    path = default_embedded_dir(32, 5)
    assert path == tmp_path / "embedded-32px-seed5"
    path.mkdir(parents=True)
    marker = {"version": EMBEDDED_VERSION, "seed": 5, "image_size": 32, "max_studies": None,
              "subgroup_effects": {}}  # fmt: skip
    (path / "embedded_dataset.json").write_text(json.dumps(marker))
    assert ensure_embedded_dataset(32, 5) == path  # returned without building
    with pytest.raises(FileNotFoundError, match="embedded_dataset.json missing"):
        read_embedded_info(tmp_path)
