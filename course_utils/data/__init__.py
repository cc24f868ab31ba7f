"""Data: loaders (MIMIC-CXR-JPG, IU X-ray / Open-i, R2Gen), image preprocessing, and the
embedded dataset (real IU report text + label-conditioned phantom images).

Everything public is importable from here: ``from course_utils.data import load_mimic_cxr_dataset``.
"""

from __future__ import annotations

from .embedded import (
    build_embedded_dataset,
    default_embedded_dir,
    ensure_embedded_dataset,
    format_mimic_report,
    read_embedded_info,
    stratified_patient_split,
)
from .images import load_image, load_images, resize_image, save_gray_jpeg
from .iu import (
    find_iu_reports_archive,
    index_openi_images,
    load_iu_reports,
    load_iu_xray_dataset,
    load_r2gen_annotation,
    load_r2gen_dataset,
    parse_iu_xml,
)
from .mimic import (
    extract_report_sections,
    find_csv,
    image_path,
    load_mimic_cxr_dataset,
    report_path,
    select_frontal_studies,
    study_dir,
)
from .phantom import (
    Acquisition,
    Anatomy,
    DrawnFinding,
    FindingSpec,
    Phantom,
    render_phantom,
    resolve_findings,
    sample_acquisition,
    sample_anatomy,
)

__all__ = [
    "Acquisition",
    "Anatomy",
    "DrawnFinding",
    "FindingSpec",
    "Phantom",
    "build_embedded_dataset",
    "default_embedded_dir",
    "ensure_embedded_dataset",
    "extract_report_sections",
    "find_csv",
    "find_iu_reports_archive",
    "format_mimic_report",
    "image_path",
    "index_openi_images",
    "load_image",
    "load_images",
    "load_iu_reports",
    "load_iu_xray_dataset",
    "load_mimic_cxr_dataset",
    "load_r2gen_annotation",
    "load_r2gen_dataset",
    "parse_iu_xml",
    "read_embedded_info",
    "render_phantom",
    "report_path",
    "resize_image",
    "resolve_findings",
    "sample_acquisition",
    "sample_anatomy",
    "save_gray_jpeg",
    "select_frontal_studies",
    "stratified_patient_split",
    "study_dir",
]
