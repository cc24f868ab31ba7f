"""Hand-made inputs with known answers: valid and broken JPEG / PNG / DICOM files and arrays.

Used by the graded checks of notebook 08, the unit tests and the notebook's demo of input
validation. :func:`bad_inputs` lists one input per way of being wrong, with the exception the
service must raise for it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import (
    ChannelError,
    DicomError,
    ImageSizeError,
    InputValidationError,
    IntensityRangeError,
    MissingPixelDataError,
    NonFiniteError,
    NotAnImageError,
    TruncatedImageError,
)
from .validation import ImageLimits


def gradient_image(size: tuple[int, int] = (160, 144), seed: int = 0) -> np.ndarray:
    """Float32 (H, W) in [0, 1]: a horizontal gradient with a bright square (seeded place)."""
    rows, cols = size
    rng = np.random.default_rng(seed)
    img = np.linspace(0.05, 0.95, cols, dtype=np.float32)[None, :].repeat(rows, axis=0)
    top, left = int(rng.integers(0, rows // 2)), int(rng.integers(0, cols // 2))
    img[top : top + rows // 4, left : left + cols // 4] = 1.0
    return img


def encode_png(image: np.ndarray, bits: int = 8) -> bytes:
    """Float (H, W) / (H, W, 3) in [0, 1] -> PNG bytes (8- or 16-bit gray, or 8-bit RGB)."""
    from PIL import Image

    if bits == 16:
        arr = np.rint(np.clip(image, 0, 1) * 65535).astype(np.uint16)
        pil = Image.fromarray(arr)
    else:
        pil = Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """Float (H, W) or (H, W, 3) in [0, 1] -> JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()


def dicom_bytes(
    stored: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    bits_stored: int = 12,
    frames: int = 1,
) -> bytes:
    """A minimal Digital X-Ray DICOM file (explicit VR little endian) as bytes.

    Args:
        stored: (rows, columns) stored values (uint16); ``None`` writes a file with no PixelData.
        photometric: ``"MONOCHROME1"`` (white = low values) or ``"MONOCHROME2"``.
        window: (center, width) written as WindowCenter / WindowWidth.
        rescale: (slope, intercept) written as RescaleSlope / RescaleIntercept.
        frames: NumberOfFrames (> 1 stacks ``stored`` that many times).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["course-fixture", photometric])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "course-fixture"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["course-fixture-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["course-fixture-series"])
    ds.ViewPosition = "PA"
    if stored is not None:
        arr = np.asarray(stored, dtype=np.uint16)
        if frames > 1:
            arr = np.stack([arr] * frames)
            ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = int(arr.shape[-2]), int(arr.shape[-1])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = arr.tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass(frozen=True)
class BadInput:
    """One invalid input and the exception the service must raise for it."""

    name: str
    source: Any
    error: type[InputValidationError]
    why: str


def bad_inputs(limits: ImageLimits | None = None) -> list[BadInput]:
    """One input per way of being wrong (sizes relative to ``limits``)."""
    limits = limits or ImageLimits()
    ok = gradient_image((limits.target_size + 16, limits.target_size))
    rgb = np.stack([ok, ok * 0.5, 1.0 - ok], axis=-1)
    jpeg, png = encode_jpeg(ok), encode_png(ok)
    nan = ok.copy()
    nan[3, 5] = np.nan
    inf = ok.copy()
    inf[7, 2] = np.inf
    small = gradient_image((limits.min_side - 8, limits.min_side - 8))
    big_side = limits.max_side + 64
    stored = np.rint(ok * 4095).astype(np.uint16)
    return [
        BadInput("colour RGB photo", rgb, ChannelError, "R, G, B differ: not a radiograph"),
        BadInput("two channels", np.stack([ok, ok]), ChannelError, "2 channels (gray + alpha?)"),
        BadInput("four channels", np.stack([ok] * 4, -1), ChannelError, "RGBA array"),
        BadInput("too small", small, ImageSizeError, f"below min_side={limits.min_side}"),
        BadInput(
            "too large",
            np.zeros((big_side, big_side), np.float32),
            ImageSizeError,
            f"above max_side={limits.max_side}",
        ),  # fmt: skip
        BadInput(
            "too elongated",
            np.zeros((limits.target_size, limits.target_size * 3), np.float32),
            ImageSizeError,
            "aspect 3:1",
        ),  # fmt: skip
        BadInput("NaN pixel", nan, NonFiniteError, "one NaN"),
        BadInput("inf pixel", inf, NonFiniteError, "one +inf"),
        BadInput("float outside [0, 1]", ok * 255.0, IntensityRangeError, "0-255 floats"),
        BadInput(
            "text bytes", b"patient: 67M, shortness of breath", NotAnImageError, "not an image file"
        ),  # fmt: skip
        BadInput("PDF bytes", b"%PDF-1.7\n" + b"0" * 200, NotAnImageError, "a PDF"),
        BadInput("empty bytes", b"", NotAnImageError, "0 bytes"),
        BadInput("truncated JPEG", jpeg[: len(jpeg) // 2], TruncatedImageError, "half a JPEG"),
        BadInput("truncated PNG", png[: len(png) // 2], TruncatedImageError, "half a PNG"),
        BadInput(
            "DICOM without pixels", dicom_bytes(None), MissingPixelDataError, "header only"
        ),  # fmt: skip
        BadInput("multi-frame DICOM", dicom_bytes(stored, frames=2), DicomError, "2 frames"),
        BadInput("truncated DICOM", dicom_bytes(stored)[:-100], DicomError, "pixel data cut"),
        BadInput(
            "DICOM with zero window",
            dicom_bytes(stored, window=(2048, 0)),
            DicomError,
            "WindowWidth 0",
        ),  # fmt: skip
    ]


# ---------------------------------------------------------------------- a tiny model
FIXTURE_REPORTS = (
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "There is a small left pleural effusion. No focal consolidation.",
    "Mild cardiomegaly. The lungs are clear. No pneumothorax.",
    "Small right apical pneumothorax. No pleural effusion.",
    "There is right lower lobe airspace opacity. The heart size is normal.",
    "Heart size is normal. Possible left basilar atelectasis. No effusion.",
)


def fixture_split(n: int = 8, image_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """A ``load_mimic_cxr_dataset``-style dict with seeded random pixels and short reports."""
    import torch

    from ..labels import label_report

    g = torch.Generator().manual_seed(seed)
    reports = [FIXTURE_REPORTS[i % len(FIXTURE_REPORTS)] for i in range(n)]
    return {
        "pixels": torch.rand(n, 1, image_size, image_size, generator=g),
        "reports": reports,
        "labels": torch.tensor(np.stack([label_report(r).as_array() for r in reports])).float(),
        "metadata": [
            {"age": 40 + i, "sex": "F" if i % 2 else "M", "indication": "cough", "study_id": i}
            for i in range(n)
        ],
        "images": [f"img{i}.jpg" for i in range(n)],
    }


def tiny_model_and_data(
    seed: int = 0,
    image_size: int = 64,
    n: int = 8,
    train_steps: int = 120,
    label_prompt: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """(tiny RadiologyMultimodalModel in eval mode, its tokenizer, a fixture split).

    Small enough for tests and graded checks (~60 k parameters: a 1-layer 32-wide ViT on 64 px
    images -> 16 visual tokens, a 2-layer 32-wide BioGPT), built from config. ``train_steps``
    full-batch AdamW steps (about 2 s) make it write each fixture study's report exactly, so
    greedy outputs differ between studies and stop at ``<eos>`` after different lengths (an
    untrained model repeats one token forever, which tests nothing). ``label_prompt`` builds
    the course models' variant (the head's probabilities as K extra LM tokens). Cached per
    process; every call returns a fresh copy.
    """
    import copy

    model, tok, split = _trained_fixture(seed, image_size, n, train_steps, label_prompt)
    return copy.deepcopy(model), tok, split


@lru_cache(maxsize=4)
def _trained_fixture(
    seed: int, image_size: int, n: int, train_steps: int, label_prompt: bool = False
) -> tuple[Any, Any, Any]:
    import torch

    from ..model import ModelConfig, RadiologyMultimodalModel
    from ..train.data import ReportCollator, ReportDataset, build_tokenizer

    split = fixture_split(n, image_size, seed)
    tok = build_tokenizer(split, ("findings",), min_frequency=1)
    cfg = ModelConfig.tiny(
        len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, image_size=image_size, vision_checkpoint=None,
        label_prompt=label_prompt,
    )  # fmt: skip
    cfg.vision_config.update(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                             num_attention_heads=2)  # fmt: skip
    cfg.vision_dim = 32
    cfg.lm_config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         activation_dropout=0.0)  # fmt: skip
    cfg.llm_dim, cfg.proj_hidden_dim = 32, 48
    torch.manual_seed(seed)
    model = RadiologyMultimodalModel(cfg, load_weights=False)
    if train_steps:
        ds = ReportDataset(split, tok, "findings", max_length=64)
        batch = ReportCollator(tok.pad_token_id)([ds[i] for i in range(len(ds))])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        model.train()
        for _ in range(train_steps):
            out = model(batch["images"], batch["input_ids"], batch["attention_mask"],
                        labels=batch["labels"], finding_targets=batch["finding_targets"])  # fmt: skip
            opt.zero_grad()
            out.loss.backward()
            opt.step()
    model.requires_grad_(False)
    return model.eval(), tok, split


__all__ = [
    "BadInput",
    "bad_inputs",
    "dicom_bytes",
    "encode_jpeg",
    "encode_png",
    "fixture_split",
    "gradient_image",
    "tiny_model_and_data",
]
