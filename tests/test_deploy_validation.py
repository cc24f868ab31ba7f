"""Input validation of the deployment service: every bad input gets its own clear error."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from course_utils.deploy import (
    ChannelError,
    ClinicalContextError,
    DicomError,
    EmptyContextError,
    ImageLimits,
    ImageResizedWarning,
    ImageSizeError,
    InputValidationError,
    MissingContextWarning,
    MissingPixelDataError,
    NotAnImageError,
    TruncatedImageError,
    decode_image_bytes,
    read_dicom,
    validate_clinical_context,
    validate_image,
    validate_pixels,
)
from course_utils.deploy.fixtures import (
    bad_inputs,
    dicom_bytes,
    encode_jpeg,
    encode_png,
    gradient_image,
)
from course_utils.deploy.validation import apply_window

LIMITS = ImageLimits(target_size=128)


def _no_warning(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


@pytest.mark.parametrize("case", bad_inputs(LIMITS), ids=lambda c: c.name)
def test_each_bad_input_raises_its_own_error(case) -> None:
    with pytest.raises(case.error) as info:
        validate_image(case.source, LIMITS)
    assert type(info.value) is case.error  # the exact class, not just the base
    assert isinstance(info.value, InputValidationError) and isinstance(info.value, ValueError)
    assert len(str(info.value)) > 15  # a message that says something


def test_valid_inputs_round_trip_to_the_same_pixels() -> None:
    ok = gradient_image((128, 128))
    png8 = _no_warning(validate_image, encode_png(ok), LIMITS)
    png16 = _no_warning(validate_image, encode_png(ok, bits=16), LIMITS)
    arr = _no_warning(validate_image, ok, LIMITS)
    tensor = _no_warning(validate_image, torch.from_numpy(ok)[None, None], LIMITS)
    jpeg = _no_warning(validate_image, encode_jpeg(ok, quality=100), LIMITS)
    for out in (png8, png16, arr, tensor, jpeg):
        assert out.shape == (128, 128) and out.dtype == np.float32
    assert np.abs(png8 - ok).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    assert np.abs(png16 - ok).max() <= 0.5 / 65535 + 1e-6
    assert np.array_equal(arr, ok) and np.array_equal(tensor, ok)
    assert np.abs(jpeg - ok).max() < 0.05
    uint8 = np.rint(ok * 255).astype(np.uint8)
    assert np.allclose(validate_pixels(uint8, LIMITS), uint8 / 255.0)


def test_gray_rgb_is_accepted_colour_is_not() -> None:
    ok = gradient_image((128, 128))
    gray_rgb = np.stack([ok, ok, ok], axis=-1)
    assert np.allclose(validate_pixels(gray_rgb, LIMITS), ok)
    assert np.allclose(validate_pixels(np.moveaxis(gray_rgb, -1, 0), LIMITS), ok)
    tinted = gray_rgb.copy()
    tinted[..., 0] = np.clip(tinted[..., 0] + 0.05, 0, 1)
    with pytest.raises(ChannelError, match="colour"):
        validate_pixels(tinted, LIMITS)
    jpeg_rgb = encode_jpeg(np.stack([ok, ok * 0.2, ok], -1))
    with pytest.raises(ChannelError):
        validate_image(jpeg_rgb, LIMITS)


def test_sizes_inside_the_limits_are_resized_with_a_warning() -> None:
    small_ok = gradient_image((LIMITS.min_side, LIMITS.min_side + 10))
    with pytest.warns(ImageResizedWarning, match=r"74x64 to 128x128"):
        out = validate_pixels(small_ok, LIMITS)
    assert out.shape == (128, 128)
    with pytest.warns(ImageResizedWarning):
        assert validate_image(encode_png(gradient_image((300, 256))), LIMITS).shape == (128, 128)
    with pytest.raises(ImageSizeError, match="below min_side=64"):
        validate_pixels(gradient_image((63, 100)), LIMITS)
    with pytest.raises(ImageSizeError, match="max_aspect"):
        validate_pixels(gradient_image((64, 129)), LIMITS)  # aspect 2.02 > 2
    tight = ImageLimits(target_size=128, max_bytes=100)
    with pytest.raises(ImageSizeError, match="limit of 100"):
        validate_image(encode_png(gradient_image((128, 128))), tight)


def test_large_image_rejected_before_decoding() -> None:
    """The header says 5000 px: refused without decoding the pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5000, 64)).save(buf, format="PNG")
    with pytest.raises(ImageSizeError, match="5000x64 pixels, above max_side=4096"):
        decode_image_bytes(buf.getvalue(), LIMITS)


def test_truncation_detected_even_when_pil_would_decode() -> None:
    jpeg = encode_jpeg(gradient_image((128, 128)))
    with pytest.raises(TruncatedImageError, match="end-of-image"):
        decode_image_bytes(jpeg[:-2])  # only the FFD9 marker is missing
    png = encode_png(gradient_image((128, 128)))
    with pytest.raises(TruncatedImageError, match="IEND"):
        decode_image_bytes(png[:-12])
    assert decode_image_bytes(jpeg + b"\x00\x00").shape == (128, 128)  # padding after EOI is fine


def test_corrupt_but_complete_png_is_not_an_image() -> None:
    png = bytearray(encode_png(gradient_image((128, 128))))
    png[40:60] = b"\x00" * 20  # damage the image data, keep the header and IEND
    with pytest.raises((NotAnImageError, TruncatedImageError)):
        decode_image_bytes(bytes(png))


# ---------------------------------------------------------------------------- DICOM
STORED = np.array([[1000, 1536, 2559, 3000, 1792], [0, 4095, 2048, 2047, 1280]], dtype=np.uint16)


def test_dicom_linear_window_by_hand() -> None:
    out = read_dicom(dicom_bytes(STORED, window=(2048, 1024)))
    # c - 0.5 = 2047.5, (w - 1) = 1023: y = (x - 2047.5) / 1023 + 0.5, clipped to [0, 1]
    expected = np.clip((STORED - 2047.5) / 1023 + 0.5, 0, 1)
    assert np.allclose(out, expected, atol=1e-6)
    assert out[0, 0] == 0.0 and out[0, 2] == 1.0 and abs(out[0, 4] - 0.250244) < 1e-5


def test_dicom_monochrome1_is_inverted() -> None:
    m2 = read_dicom(dicom_bytes(STORED, window=(2048, 1024)))
    m1 = read_dicom(dicom_bytes(STORED, window=(2048, 1024), photometric="MONOCHROME1"))
    assert np.allclose(m1, 1.0 - m2)
    assert m1[0, 0] == 1.0  # low stored value = white in MONOCHROME1


def test_dicom_rescale_and_min_max_without_window() -> None:
    out = read_dicom(dicom_bytes(STORED, rescale=(2.0, -1000.0), window=(1000, 2001)))
    assert abs(out[0, 0] - ((2 * 1000 - 1000 - 999.5) / 2000 + 0.5)) < 1e-6
    plain = read_dicom(dicom_bytes(STORED))  # no window: min-max of the stored values
    assert plain.min() == 0.0 and plain.max() == 1.0
    assert abs(plain[0, 0] - 1000 / 4095) < 1e-6


def test_dicom_errors() -> None:
    with pytest.raises(MissingPixelDataError, match="no pixel data"):
        read_dicom(dicom_bytes(None))
    with pytest.raises(DicomError, match="constant"):
        read_dicom(dicom_bytes(np.full((4, 4), 7, np.uint16)))
    whole = dicom_bytes(STORED)
    with pytest.raises(DicomError, match="cannot read"):
        read_dicom(whole[:150])  # cut inside the file meta
    with pytest.raises(DicomError, match="cannot decode DICOM pixel data"):
        read_dicom(whole[:-6])  # cut inside the pixel data
    assert apply_window(np.array([5.0]), 5.0, 1.0)[0] == 1.0  # width 1: a hard threshold


def test_colour_dicom_is_a_channel_error() -> None:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom_bytes(STORED)))
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ChannelError, match="RGB"):
        read_dicom(buf.getvalue())


def test_dicom_through_the_full_pipeline() -> None:
    stored = np.rint(gradient_image((140, 128)) * 4095).astype(np.uint16)
    with pytest.warns(ImageResizedWarning):
        out = validate_image(dicom_bytes(stored, photometric="MONOCHROME1"), LIMITS)
    assert out.shape == (128, 128) and out[:, 0].mean() > out[:, -1].mean()  # gradient inverted


# ---------------------------------------------------------------------------- context and files
def test_clinical_context_is_normalised() -> None:
    ctx = validate_clinical_context(
        {
            "age": 67,
            "sex": "male",
            "indication": "  Shortness   of breath ",
            "prior_studies": ["2024-01-15"],
        }  # fmt: skip
    )
    assert ctx == {"age": 67.0, "sex": "M", "indication": "Shortness of breath",
                   "prior_studies": ["2024-01-15"]}  # fmt: skip


@pytest.mark.parametrize("empty", [None, {}, {"age": None, "sex": "", "indication": "   "}])
def test_empty_context_warns_or_rejects(empty) -> None:
    with pytest.warns(MissingContextWarning, match="empty"):
        assert validate_clinical_context(empty)["age"] is None
    with pytest.raises(EmptyContextError, match="requires it"):
        validate_clinical_context(empty, policy="reject")


@pytest.mark.parametrize(
    "context, message",
    [
        ({"age": 150}, "between 0 and 120"),
        ({"age": "old"}, "number of years"),
        ({"age": True}, "number of years"),
        ({"sex": "X"}, "sex must be"),
        ({"indicaton": "typo"}, "unknown clinical_context key"),
        ({"indication": "x" * 501}, "above 500"),
        ({"age": 40, "prior_studies": ["15/01/2024"]}, "not an ISO date"),
        ("67M", "must be an object"),
    ],
)
def test_bad_context_fields(context, message) -> None:
    with pytest.raises(ClinicalContextError, match=message):
        validate_clinical_context(context)


def test_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        validate_image(tmp_path / "missing.png", LIMITS)
    path = tmp_path / "ok.png"
    path.write_bytes(encode_png(gradient_image((128, 128))))
    assert validate_image(path, LIMITS).shape == (128, 128)
    with pytest.raises(NotAnImageError, match="expected an image array"):
        validate_image(["not", "an", "image"], LIMITS)
    with pytest.raises(ValueError, match="min_side <= target_size"):
        ImageLimits(target_size=32, min_side=64)
