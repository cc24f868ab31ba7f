"""Exceptions and warnings of the deployment service.

Every input the service refuses raises a subclass of :class:`InputValidationError` (itself a
``ValueError``) whose name says *what* is wrong, so an API maps it to a 4xx answer and a caller can
``except TruncatedImageError`` without parsing messages. Nothing bad reaches torch.
"""

from __future__ import annotations


class InputValidationError(ValueError):
    """Base class: the request cannot be served as given (HTTP 422 in the API)."""

    status_code = 422


class NotAnImageError(InputValidationError):
    """The bytes are not a JPEG, PNG or DICOM file (checked by magic number, then decoding)."""


class TruncatedImageError(InputValidationError):
    """A JPEG or PNG whose data stops early (missing end marker / IEND chunk, or short data)."""


class ChannelError(InputValidationError):
    """Wrong number of channels: a radiograph is one gray channel (RGB allowed only if gray)."""


class ImageSizeError(InputValidationError):
    """Image side below ``min_side``, above ``max_side``, too elongated, or too many bytes."""


class NonFiniteError(InputValidationError):
    """The pixel array holds NaN or +/-inf."""


class IntensityRangeError(InputValidationError):
    """A float pixel array outside [0, 1] (the service never guesses an intensity scale)."""


class DicomError(InputValidationError):
    """A DICOM file the service cannot turn into a radiograph (unreadable, multi-frame, colour,
    unsupported compression, invalid window)."""


class MissingPixelDataError(DicomError):
    """A DICOM file without a PixelData element (e.g. a structured report or a header-only file)."""


class ClinicalContextError(InputValidationError):
    """Clinical context with an invalid field (age out of range, unknown sex, unknown key)."""


class EmptyContextError(ClinicalContextError):
    """No usable clinical context while the service is configured to require it."""


class PathNotAllowedError(InputValidationError):
    """An image path outside the configured image root (absolute, ``..``, or a symlink out)."""

    status_code = 403


class ImageResizedWarning(UserWarning):
    """The image was resized to the model's input size (within the accepted size limits)."""


class MissingContextWarning(UserWarning):
    """The request had no clinical context: the report is written from the image alone."""


__all__ = [
    "ChannelError",
    "ClinicalContextError",
    "DicomError",
    "EmptyContextError",
    "ImageResizedWarning",
    "ImageSizeError",
    "InputValidationError",
    "IntensityRangeError",
    "MissingContextWarning",
    "MissingPixelDataError",
    "NonFiniteError",
    "NotAnImageError",
    "PathNotAllowedError",
    "TruncatedImageError",
]
