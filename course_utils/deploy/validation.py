"""Input validation: bytes, files, arrays and DICOM in; one gray (S, S) float32 image in [0, 1] out.

The service never hands torch anything it has not checked. Each way an input can be wrong has
its own exception (:mod:`course_utils.deploy.errors`), raised with a message that names the
problem and the limit:

========================================  ===============================================
input                                     outcome
========================================  ===============================================
bytes that are not JPEG / PNG / DICOM     :class:`NotAnImageError`
JPEG without its end marker, PNG without  :class:`TruncatedImageError`
IEND, or data that stops early
DICOM without PixelData                   :class:`MissingPixelDataError`
DICOM multi-frame / bad window / codec    :class:`DicomError`
colour (R, G, B differ) or 2 / 4 channels :class:`ChannelError`
side < ``min_side`` or > ``max_side``,    :class:`ImageSizeError`
aspect > ``max_aspect``, too many bytes
NaN or inf pixels                         :class:`NonFiniteError`
float pixels outside [0, 1]               :class:`IntensityRangeError`
any other size within the limits          resized, with an :class:`ImageResizedWarning`
empty clinical context                    :class:`MissingContextWarning` (``policy="warn"``)
                                          or :class:`EmptyContextError` (``"reject"``)
========================================  ===============================================

DICOM (read with pydicom) goes through the display pipeline of PS3.3 C.11: modality LUT
(``RescaleSlope``/``RescaleIntercept``), VOI windowing (``WindowCenter``/``WindowWidth``;
min-max when absent), then MONOCHROME1 images (white = low values) are inverted so that, as in
every other input, 0 is black (air) and 1 is white (bone).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ChannelError,
    ClinicalContextError,
    DicomError,
    EmptyContextError,
    ImageResizedWarning,
    ImageSizeError,
    IntensityRangeError,
    MissingContextWarning,
    MissingPixelDataError,
    NonFiniteError,
    NotAnImageError,
    TruncatedImageError,
)

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
DICOM_MAGIC_OFFSET = 128  # "DICM" follows a 128-byte preamble (PS3.10 7.1)
CONTEXT_KEYS = ("age", "sex", "indication", "prior_studies")
MAX_INDICATION_CHARS = 500


@dataclass(frozen=True)
class ImageLimits:
    """What the service accepts.

    Attributes:
        target_size: side S of the square model input (128 in ``tiny``, 512 in ``colab``).
        min_side: smaller images are rejected (nothing diagnostic survives upsampling).
        max_side: larger images are rejected before their pixels are decoded (memory guard).
        max_aspect: longer side / shorter side above this is rejected (not a chest film).
        max_bytes: encoded files above this are rejected.
        gray_tolerance: 3-channel images count as gray when R, G, B differ by at most this
            (on the [0, 1] scale): a gray JPEG saved as RGB passes, a photo does not.
    """

    target_size: int = 128
    min_side: int = 64
    max_side: int = 4096
    max_aspect: float = 2.0
    max_bytes: int = 64 * 2**20
    gray_tolerance: float = 2.0 / 255.0

    def __post_init__(self) -> None:
        if not 0 < self.min_side <= self.target_size <= self.max_side:
            raise ValueError(
                f"need 0 < min_side <= target_size <= max_side, got {self.min_side}, "
                f"{self.target_size}, {self.max_side}"
            )
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")


# ---------------------------------------------------------------------- bytes
def sniff_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"dicom"`` (from the magic numbers) or ``None``."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return None


def _check_complete(data: bytes, fmt: str) -> None:
    """Raise :class:`TruncatedImageError` when the file's end marker is missing."""
    if fmt == "jpeg" and not data.rstrip(b"\x00").endswith(JPEG_END):
        raise TruncatedImageError(
            f"JPEG is truncated: {len(data)} bytes and no end-of-image marker (FFD9)"
        )
    if fmt == "png" and not data.endswith(PNG_END):
        raise TruncatedImageError(f"PNG is truncated: {len(data)} bytes and no IEND chunk")


def _pil_to_array(img: Any) -> np.ndarray:
    """Decoded PIL image -> float32 (H, W) or (H, W, C) on a [0, 1] scale (by bit depth)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode == "I":  # PIL reads 16-bit PNGs as "I"
        arr = np.asarray(img, dtype=np.float64)
        return (arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)).astype(np.float32)
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    elif mode in ("CMYK", "YCbCr"):
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0  # L, LA, RGB, RGBA


def decode_image_bytes(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Encoded JPEG / PNG / DICOM bytes -> float32 array, (H, W) or (H, W, C), scale [0, 1].

    Channels, size and values are checked afterwards by :func:`validate_pixels`; this step only
    makes sure the bytes are a complete image of a supported format.

    Raises:
        NotAnImageError, TruncatedImageError, ImageSizeError, DicomError (and subclasses).
    """
    from PIL import Image, UnidentifiedImageError

    limits = limits or ImageLimits()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NotAnImageError(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise NotAnImageError("empty upload (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageSizeError(
            f"file is {len(data):,} bytes, above the limit of {limits.max_bytes:,}"
        )
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:8].hex(" ")
        raise NotAnImageError(
            f"not a JPEG, PNG or DICOM file (first bytes {head}); upload the radiograph itself"
        )
    if fmt == "dicom":
        return read_dicom(data)
    _check_complete(data, fmt)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max(width, height) > limits.max_side:  # before decoding: a memory guard
                raise ImageSizeError(
                    f"image is {width}x{height} pixels, above max_side={limits.max_side}"
                )
            img.load()
            return _pil_to_array(img)
    except ImageSizeError:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as err:
        text = str(err).lower()
        if "truncated" in text or "broken data stream" in text or "end of file" in text:
            raise TruncatedImageError(f"{fmt.upper()} data stops early: {err}") from err
        raise NotAnImageError(f"cannot decode the {fmt.upper()} file: {err}") from err


# ---------------------------------------------------------------------- DICOM
def _first(value: Any) -> float:
    """First number of a (possibly multi-valued) DICOM element."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def apply_window(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) to [0, 1].

    ``LINEAR``: 0 below ``c - 0.5 - (w - 1) / 2``, 1 above ``c - 0.5 + (w - 1) / 2``,
    ``((x - (c - 0.5)) / (w - 1) + 0.5)`` in between; ``LINEAR_EXACT``: ``(x - c) / w + 0.5``;
    ``SIGMOID``: ``1 / (1 + exp(-4 (x - c) / w))``.
    """
    function = (function or "LINEAR").upper()
    x = np.asarray(values, dtype=np.float64)
    if function == "LINEAR":
        if width < 1:
            raise DicomError(f"WindowWidth must be >= 1 for LINEAR windowing, got {width}")
        if width == 1:
            return (x > center - 0.5).astype(np.float32)
        y = (x - (center - 0.5)) / (width - 1) + 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise DicomError(f"WindowWidth must be > 0, got {width}")
        y = (x - center) / width + 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise DicomError(f"WindowWidth must be > 0, got {width}")
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise DicomError(f"unsupported VOILUTFunction {function!r}")
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def read_dicom(data: bytes | str | os.PathLike) -> np.ndarray:
    """A single-frame grayscale DICOM -> float32 (H, W) in [0, 1], 0 = black.

    Steps: modality LUT (slope/intercept), VOI window (first ``WindowCenter``/``WindowWidth``
    pair; min-max of the stored values when absent), MONOCHROME1 inversion.

    Raises:
        DicomError: unreadable file, multi-frame, undecodable pixel data, invalid window,
            or constant pixels with no window to display them.
        MissingPixelDataError: no PixelData element.
        ChannelError: colour photometric interpretation or SamplesPerPixel != 1.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray)) else data
    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise DicomError(f"cannot read the DICOM file: {err}") from err
    if len(ds) == 0:
        raise DicomError("cannot read the DICOM file: no data elements after the header")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        modality = ds.get("Modality", "?")
        raise MissingPixelDataError(
            f"DICOM file has no pixel data (Modality {modality}, SOP class "
            f"{ds.get('SOPClassUID', '?')}): send the image instance, not a report or header"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames): send one radiograph per instance")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ChannelError(
            f"DICOM is {photometric} with {samples} samples per pixel; a radiograph is "
            "MONOCHROME1/MONOCHROME2 with one sample"
        )
    try:
        stored = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as err:  # pydicom raises many types for codecs it cannot decode
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DicomError(
            f"cannot decode DICOM pixel data (transfer syntax {syntax}): {err}"
        ) from err
    if stored.ndim != 2:
        raise DicomError(f"DICOM pixel array has shape {stored.shape}, expected (rows, columns)")
    slope = _first(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = _first(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = stored * slope + intercept
    if "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        image = apply_window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise DicomError(f"DICOM pixels are constant ({lo:g}) and carry no window")
        image = ((values - lo) / (hi - lo)).astype(np.float32)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return np.ascontiguousarray(image, dtype=np.float32)


# ---------------------------------------------------------------------- arrays
def _as_array(pixels: Any) -> np.ndarray:
    if hasattr(pixels, "detach") and hasattr(pixels, "cpu"):  # a torch tensor
        pixels = pixels.detach().cpu().numpy()
    if not isinstance(pixels, np.ndarray):
        raise NotAnImageError(f"expected an image array or bytes, got {type(pixels).__name__}")
    if pixels.dtype == bool:
        return pixels.astype(np.float32)
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise NotAnImageError(f"pixel dtype {pixels.dtype} is not a real number type")
    return pixels


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """(H, W), (C, H, W), (H, W, C) or (1, C, H, W) -> (H, W, C) with C the channel count."""
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise NotAnImageError(
            f"pixel array has shape {arr.shape}; expected (H, W), (C, H, W) or (H, W, C)"
        )
    if arr.shape[0] <= 4 and arr.shape[-1] > 4:
        return np.moveaxis(arr, 0, -1)
    if arr.shape[-1] <= 4:
        return arr
    raise ChannelError(
        f"pixel array has shape {arr.shape}: no channel axis of size 1 or 3 (a 3-D volume?)"
    )


def validate_pixels(pixels: Any, limits: ImageLimits | None = None) -> np.ndarray:
    """Check and normalise decoded pixels -> float32 (S, S) in [0, 1], S = ``target_size``.

    Accepts numpy arrays or torch tensors shaped (H, W), (C, H, W), (H, W, C) or (1, C, H, W).
    Integer arrays are scaled by their dtype's maximum (uint8 / 255, uint16 / 65535); float
    arrays must already lie in [0, 1].

    Raises:
        NotAnImageError, ChannelError, ImageSizeError, NonFiniteError, IntensityRangeError.

    Warns:
        ImageResizedWarning: the image was resized to (S, S).
    """
    from ..data.images import resize_image

    limits = limits or ImageLimits()
    arr = _channels_last(_as_array(pixels))
    height, width, channels = arr.shape
    if channels not in (1, 3):
        raise ChannelError(
            f"image has {channels} channels; a radiograph has 1 (gray) or 3 identical (RGB gray)"
        )
    short, long = min(height, width), max(height, width)
    if short < limits.min_side:
        raise ImageSizeError(
            f"image is {width}x{height} pixels, below min_side={limits.min_side}: too small to read"
        )
    if long > limits.max_side:
        raise ImageSizeError(f"image is {width}x{height} pixels, above max_side={limits.max_side}")
    if long / short > limits.max_aspect:
        raise ImageSizeError(
            f"image is {width}x{height} pixels: aspect {long / short:.2f} above "
            f"max_aspect={limits.max_aspect} (not a chest radiograph?)"
        )
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bool(bad.any()):
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            raise NonFiniteError(f"image has {n_nan} NaN and {n_inf} inf pixels")
        values = arr.astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise IntensityRangeError(
                f"float pixels must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; scale them first "
                "(uint8 / 255) or send the encoded file"
            )
    else:
        if int(arr.min()) < 0:
            raise IntensityRangeError(f"integer pixels must be >= 0, got min {int(arr.min())}")
        values = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    values = np.clip(values, 0.0, 1.0)
    if channels == 3:
        spread = float((values.max(axis=-1) - values.min(axis=-1)).max())
        if spread > limits.gray_tolerance:
            raise ChannelError(
                f"colour image: R, G and B differ by up to {spread:.3f}; a radiograph is gray"
            )
        values = values.mean(axis=-1, keepdims=True)
    image = values[:, :, 0]
    size = limits.target_size
    if image.shape != (size, size):
        warnings.warn(
            f"image resized from {width}x{height} to {size}x{size} pixels",
            ImageResizedWarning,
            stacklevel=2,
        )
        image = resize_image(image, size)
    return np.ascontiguousarray(image, dtype=np.float32)


def validate_image(source: Any, limits: ImageLimits | None = None) -> np.ndarray:
    """Any supported input -> float32 (S, S) in [0, 1]: the service's single entry point.

    ``source`` is encoded bytes (JPEG / PNG / DICOM), a path to such a file, or a pixel array /
    tensor. See the module docstring for every error.
    """
    limits = limits or ImageLimits()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageSizeError(
                f"{path} is {size:,} bytes, above the limit of {limits.max_bytes:,}"
            )
        source = path.read_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = decode_image_bytes(bytes(source), limits)
    return validate_pixels(source, limits)


# ---------------------------------------------------------------------- clinical context
def context_from_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The request's ``clinical_context`` from a dataset ``metadata`` dict (age, sex,
    indication; missing / NaN values dropped, other keys ignored)."""
    if not meta:
        return {}
    return {k: meta[k] for k in ("age", "sex", "indication") if k in meta and not _blank(meta[k])}


def _blank(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def validate_clinical_context(
    context: Mapping[str, Any] | None, policy: str = "warn"
) -> dict[str, Any]:
    """Check the request's clinical context -> ``{"age", "sex", "indication", "prior_studies"}``.

    Args:
        context: e.g. ``{"age": 67, "sex": "M", "indication": "Shortness of breath",
            "prior_studies": ["2024-01-15"]}``; ``None`` or ``{}`` is empty.
        policy: what an *empty* context (no age, sex or indication) does: ``"warn"`` (a
            :class:`MissingContextWarning`; the report is written from the image alone) or
            ``"reject"`` (:class:`EmptyContextError`).

    Raises:
        ClinicalContextError: unknown keys, age not in [0, 120], unknown sex, indication over
            500 characters, prior study dates that are not ISO ``YYYY-MM-DD``.
    """
    from ..model.prompts import clinical_context

    if policy not in ("warn", "reject"):
        raise ValueError(f"policy={policy!r}; choose 'warn' or 'reject'")
    if context is None:
        context = {}
    if not isinstance(context, Mapping):
        raise ClinicalContextError(
            f"clinical_context must be an object, got {type(context).__name__}"
        )
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise ClinicalContextError(
            f"unknown clinical_context key(s) {unknown}; allowed: {list(CONTEXT_KEYS)}"
        )
    age, sex, indication = (context.get(k) for k in ("age", "sex", "indication"))
    if isinstance(age, bool):
        raise ClinicalContextError(f"age must be a number of years, got {age!r}")
    if indication is not None and not isinstance(indication, str):
        raise ClinicalContextError(f"indication must be text, got {type(indication).__name__}")
    if isinstance(indication, str) and len(indication) > MAX_INDICATION_CHARS:
        raise ClinicalContextError(
            f"indication has {len(indication)} characters, above {MAX_INDICATION_CHARS}"
        )
    try:
        clinical_context(age, sex, indication)  # the prompt's own rules for age and sex
    except ValueError as err:
        raise ClinicalContextError(str(err)) from err
    priors = context.get("prior_studies") or []
    if not isinstance(priors, (list, tuple)):
        raise ClinicalContextError("prior_studies must be a list of ISO dates")
    for day in priors:
        try:
            date.fromisoformat(str(day))
        except ValueError as err:
            raise ClinicalContextError(
                f"prior study date {day!r} is not an ISO date (YYYY-MM-DD)"
            ) from err
    out = {
        "age": None if _blank(age) else float(age),
        "sex": None if _blank(sex) else str(sex).strip()[0].upper(),
        "indication": None if _blank(indication) else " ".join(str(indication).split()),
        "prior_studies": [str(d) for d in priors],
    }
    if out["age"] is None and out["sex"] is None and out["indication"] is None:
        message = "clinical context is empty (no age, sex or indication)"
        if policy == "reject":
            raise EmptyContextError(message + ": this service requires it")
        warnings.warn(message + ": the report is written from the image alone",
                      MissingContextWarning, stacklevel=2)  # fmt: skip
    return out


__all__ = [
    "ImageLimits",
    "apply_window",
    "context_from_metadata",
    "decode_image_bytes",
    "read_dicom",
    "sniff_format",
    "validate_clinical_context",
    "validate_image",
    "validate_pixels",
]
