"""Image augmentations on batches of tensors (no torchvision): R2Gen2's colour inversion and
small rotation, plus small translation and brightness/contrast jitter.

R2Gen2 augmented to fight over-fitting on a small dataset ("augmentation increased the number of
images by 14 %"); here augmentations are drawn afresh for every training batch. Everything works
on grayscale batches ``(B, 1, H, W)`` in [0, 1] and keeps that shape and range. Geometry uses
``affine_grid`` / ``grid_sample`` (bilinear, border padding: an edge pixel is repeated rather
than filled with black, which would look like a finding to a model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")


def invert_colours(images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Colour inversion ``1 - x`` (R2Gen2's "Color Inversion"); ``mask`` (B,) picks images."""
    _check_images(images)
    if mask is None:
        return 1.0 - images
    mask = mask.to(device=images.device, dtype=torch.bool).view(-1, 1, 1, 1)
    return torch.where(mask, 1.0 - images, images)


def affine_transform(
    images: torch.Tensor,
    angles_deg: torch.Tensor | float = 0.0,
    shifts: torch.Tensor | tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Rotate by ``angles_deg`` about the centre and translate each image.

    A positive angle turns the picture counter-clockwise as displayed (row 0 at the top), like
    ``torch.rot90(images, 1, dims=(2, 3))`` for 90 degrees; a positive shift moves it right/down.

    Args:
        images: (B, C, H, W).
        angles_deg: scalar or (B,) rotation angles in degrees.
        shifts: (dx, dy) or (B, 2) translations as a fraction of the image side (0.05 = 5 %).

    Returns:
        (B, C, H, W), bilinear, edges repeated. Angle 0 and shift 0 return the input exactly.
    """
    _check_images(images)
    b = images.shape[0]
    dev, dtype = images.device, images.dtype
    angles = torch.as_tensor(angles_deg, dtype=dtype, device=dev).reshape(-1).expand(b)
    shift = torch.as_tensor(shifts, dtype=dtype, device=dev).reshape(-1, 2).expand(b, 2)
    if not bool((angles != 0).any() or (shift != 0).any()):
        return images.clone()
    theta = torch.deg2rad(angles)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # affine_grid maps *output* coordinates to input ones (normalised to [-1, 1]): the inverse
    # rotation, and a shift of s (fraction of the side) is 2s in normalised units.
    matrix = torch.stack(
        [
            torch.stack([cos, -sin, -2 * shift[:, 0]], dim=1),
            torch.stack([sin, cos, -2 * shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter_intensity(images: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Contrast/brightness: ``clamp(mean + gain·(x - mean) + bias, 0, 1)`` per image.

    ``gain`` and ``bias`` are (B,); gain 1 and bias 0 leave the image unchanged.
    """
    _check_images(images)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    g = gain.to(images).view(-1, 1, 1, 1)
    b = bias.to(images).view(-1, 1, 1, 1)
    return (mean + g * (images - mean) + b).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Augmenter:
    """Random augmentation of training batches, reproducible through a ``torch.Generator``.

    Attributes:
        p_invert: probability of colour inversion per image (R2Gen2).
        max_rotation: rotations are uniform in ±max_rotation degrees (R2Gen2: small rotations).
        max_shift: translations are uniform in ±max_shift of the side, per axis.
        jitter: contrast gain in 1 ± jitter, brightness bias in ±jitter/2.
    """

    p_invert: float = 0.2
    max_rotation: float = 5.0
    max_shift: float = 0.03
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_invert <= 1.0:
            raise ValueError(f"p_invert must be a probability, got {self.p_invert}")
        for name in ("max_rotation", "max_shift", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_shift >= 0.5:
            raise ValueError(f"max_shift is a fraction of the side; {self.max_shift} is too large")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a (B, 1, H, W) batch in [0, 1]; draws come from ``generator`` (CPU)."""
        _check_images(images)
        b = images.shape[0]

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return (low + (high - low) * torch.rand(*shape, generator=generator)).to(images.device)

        angles = uniform(-self.max_rotation, self.max_rotation, b)
        shifts = uniform(-self.max_shift, self.max_shift, b, 2)
        out = affine_transform(images, angles, shifts)
        if self.jitter > 0:
            gain = uniform(1 - self.jitter, 1 + self.jitter, b)
            bias = uniform(-self.jitter / 2, self.jitter / 2, b)
            out = jitter_intensity(out, gain, bias)
        if self.p_invert > 0:
            invert = torch.rand(b, generator=generator) < self.p_invert
            out = invert_colours(out, invert)
        return out.clamp(0.0, 1.0)
