"""Image loading and preprocessing shared by every loader.

All loaders return the same thing for one image: a ``float32`` array of shape ``(S, S)`` with
values in ``[0, 1]`` (0 = black/air, 1 = white/bone or metal), whatever the file held:
8-bit grayscale JPEG (MIMIC-CXR-JPG), 8- or 16-bit PNG (Open-i / IU X-ray), RGB or palette
images (converted to luminance). Resizing is a plain bilinear resize to a square (chest
radiographs are close to square; MIMIC-CXR-JPG and the case study do the same).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

PathLike = str | os.PathLike


def _to_gray_float(img: Image.Image, path: Path) -> np.ndarray:
    """Decoded PIL image -> float32 (H, W) in [0, 1], scaled by the file's bit depth."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
    elif mode == "I":
        # 32-bit integer mode: PIL also uses it for 16-bit PNGs, so scale by the data's depth.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = (arr / top).astype(np.float32)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo < 0.0 or hi > 1.0:  # float images of unknown scale: min-max normalise
            arr = (arr - lo) / max(hi - lo, 1e-12)
    elif mode == "1":
        arr = np.asarray(img, dtype=np.float32)
    else:
        if mode not in ("L",):
            if "A" in mode or mode == "P":
                img = img.convert("RGBA").convert("RGB")  # drop alpha, expand palettes
            img = img.convert("L")  # ITU-R 601 luma for RGB/CMYK/YCbCr
        arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32, copy=False)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float (H, W) image to (size, size); returns float32 in [0, 1]."""
    if image.ndim != 2:
        raise ValueError(f"resize_image expects a 2-D array, got shape {image.shape}")
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))  # mode "F"
    # reducing_gap makes large downsamples average (antialias) before the bilinear step.
    out = pil.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def load_image(path: PathLike, size: int | None = None) -> np.ndarray:
    """Read one radiograph as a float32 array in [0, 1].

    Args:
        path: a JPEG/PNG (8- or 16-bit, grayscale, RGB, palette) file.
        size: side of the square output in pixels; ``None`` keeps the file's own size.

    Returns:
        ``np.ndarray`` float32 of shape ``(size, size)`` (or ``(H, W)`` when ``size`` is None).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not an image, truncated/corrupt, or not 2-D.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncated files fail here, naming the file
            arr = _to_gray_float(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image file {path}: {exc}") from exc
    return arr if size is None else resize_image(arr, size)


def load_images(paths: Sequence[PathLike], size: int | None = None):
    """Stack images into a torch FloatTensor of shape (N, 1, S, S) in [0, 1].

    With ``size=None`` all images must already share one shape, else ``ValueError``.
    """
    import torch

    arrays = [load_image(p, size) for p in paths]
    if not arrays:
        side = size or 0
        return torch.zeros((0, 1, side, side), dtype=torch.float32)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"images have different shapes {sorted(shapes)[:3]}...; pass image_size to resize them"
        )
    return torch.from_numpy(np.stack(arrays)[:, None])


def save_gray_jpeg(image: np.ndarray, path: PathLike, quality: int = 90) -> None:
    """Write a float image in [0, 1] (H, W) as an 8-bit grayscale JPEG (deterministic bytes)."""
    arr = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format="JPEG", quality=quality, optimize=False)
