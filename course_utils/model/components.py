"""The small pieces of the LLaVA-style model: projector, detection head, losses, builders.

Notebook 04 asks students to write :class:`Projector` and :class:`DetectionHead`; these are the
references its graded cells compare against.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration import (
    BLANK_POLICIES,
    COURSE_ENCODER,
    LM_FAMILIES,
    UNCERTAIN_POLICIES,
    VISION_FAMILIES,
    ModelConfig,
)

IGNORE_INDEX = -100
"""Target value that ``cross_entropy`` skips: visual, prompt and padding positions."""

logger = logging.getLogger(__name__)


class Projector(nn.Module):
    """Two-layer MLP mapping vision features into the LM's embedding space.

    ``H_v = W2 · GELU(W1 · Z_v + b1) + b2`` with W1 ∈ R^{d_h×d_v}, W2 ∈ R^{d_l×d_h}.

    Shapes: ``Z_v`` (B, N, d_v) -> ``H_v`` (B, N, d_l); applied to every visual token alike.
    """

    def __init__(self, vision_dim: int, hidden_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, llm_dim)

    def forward(self, z_v: torch.Tensor) -> torch.Tensor:
        """(B, N, d_v) -> (B, N, d_l)."""
        if z_v.shape[-1] != self.fc1.in_features:
            raise ValueError(
                f"Projector expects features of size d_v={self.fc1.in_features}, "
                f"got shape {tuple(z_v.shape)}"
            )
        return self.fc2(self.act(self.fc1(z_v)))

    def squared_norm(self) -> torch.Tensor:
        """‖θ_proj‖²: sum of squares of every projector weight and bias (a scalar tensor)."""
        return sum(p.pow(2).sum() for p in self.parameters())  # type: ignore[return-value]


class DetectionHead(nn.Module):
    """Multi-label finding detector on the encoder's CLS token.

    ``ŷ_k = σ(w_kᵀ h_cls + b_k)`` for k = 1..K; :meth:`forward` returns the *logits*
    ``w_kᵀ h_cls + b_k`` (B, K) because the BCE loss is computed stably from logits;
    :meth:`predict_proba` applies the sigmoid.
    """

    def __init__(self, vision_dim: int, num_labels: int = 14) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_dim, num_labels)

    def forward(self, h_cls: torch.Tensor) -> torch.Tensor:
        """(B, d_v) -> label logits (B, K)."""
        if h_cls.dim() != 2 or h_cls.shape[-1] != self.linear.in_features:
            raise ValueError(
                f"DetectionHead expects CLS features (B, {self.linear.in_features}), "
                f"got shape {tuple(h_cls.shape)}"
            )
        return self.linear(h_cls)

    def predict_proba(self, h_cls: torch.Tensor) -> torch.Tensor:
        """(B, d_v) -> probabilities ŷ (B, K) in (0, 1)."""
        return torch.sigmoid(self.forward(h_cls))


class LabelPrompt(nn.Module):
    """The detection head's verdicts as K extra LM input tokens (a PromptMRG-style label prompt).

    ``e_k = p_k · e⁺_k + (1 − p_k) · e⁻_k`` with learned "present" / "absent" embeddings
    e⁺_k, e⁻_k ∈ R^{d_l}: token k tells the LM how likely finding k is, in its own embedding space.
    The tokens sit after the visual tokens. Without them a small LM trained for minutes learns the
    majority answer (a normal report) and ignores what the image shows; with them, writing
    "pneumothorax" only has to follow one token.

    Shapes: probabilities (B, K) -> tokens (B, K, d_l).
    """

    def __init__(self, num_labels: int, llm_dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.present = nn.Parameter(torch.randn(num_labels, llm_dim) * init_std)
        self.absent = nn.Parameter(torch.randn(num_labels, llm_dim) * init_std)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, K) probabilities in [0, 1] -> (B, K, d_l)."""
        if probs.dim() != 2 or probs.shape[-1] != self.present.shape[0]:
            raise ValueError(
                f"LabelPrompt expects probabilities (B, {self.present.shape[0]}), "
                f"got shape {tuple(probs.shape)}"
            )
        p = probs.to(self.present.dtype).unsqueeze(-1)
        return p * self.present + (1.0 - p) * self.absent


# ---------------------------------------------------------------------- losses
def report_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the text positions.

    Args:
        logits: (B, T, V), logits[:, t] predicts token t + 1.
        labels: (B, T) token ids aligned with ``input_ids``; ``-100`` on positions that are not
            targets (prompt, padding). The shift happens here, as in Hugging Face models.

    Returns:
        Mean negative log-likelihood over all target tokens of the batch (a scalar). ``0`` (with
        a graph) when there is no target token at all.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape[:2])}"
        )
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if not bool((shift_labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def detection_targets(
    targets: torch.Tensor, uncertain_policy: str = "ignore", blank_policy: str = "negative"
) -> tuple[torch.Tensor, torch.Tensor]:
    """CheXpert targets (1 / 0 / -1 / NaN) -> (0/1 targets, mask of the entries that count).

    Args:
        targets: (B, K) label values.
        uncertain_policy: -1 (uncertain) is ``"ignore"``-d (masked out, default), or mapped to
            1 (``"positive"``, U-Ones) or 0 (``"negative"``, U-Zeros).
        blank_policy: NaN (the report does not mention the finding) is ``"negative"`` (default,
            the CheXpert convention: an unmentioned finding is absent) or ``"ignore"``-d. Masking
            blanks would leave "No Finding" without a single negative (it is only ever 1 or
            blank), so the default treats them as 0.
    """
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise ValueError(
            f"uncertain_policy={uncertain_policy!r}; choose one of {UNCERTAIN_POLICIES}"
        )
    if blank_policy not in BLANK_POLICIES:
        raise ValueError(f"blank_policy={blank_policy!r}; choose one of {BLANK_POLICIES}")
    targets = targets.float()
    blank = torch.isnan(targets)
    bad = ~blank & ~torch.isin(targets, torch.tensor([1.0, 0.0, -1.0], device=targets.device))
    if bool(bad.any()):
        raise ValueError(
            "finding targets must be 1 (positive), 0 (negative), -1 (uncertain) or NaN; got "
            f"{sorted(set(targets[bad].tolist()))[:5]}"
        )
    uncertain = targets == -1.0
    mask = torch.ones_like(targets, dtype=torch.bool)
    if blank_policy == "ignore":
        mask &= ~blank
    if uncertain_policy == "ignore":
        mask &= ~uncertain
    else:
        fill = 1.0 if uncertain_policy == "positive" else 0.0
        targets = torch.where(uncertain, torch.full_like(targets, fill), targets)
    return torch.nan_to_num(targets, nan=0.0), mask


def detection_loss(
    label_logits: torch.Tensor,
    targets: torch.Tensor,
    uncertain_policy: str = "ignore",
    blank_policy: str = "negative",
) -> torch.Tensor:
    """Masked multi-label BCE: mean of ``-[y log ŷ + (1-y) log(1-ŷ)]`` over the entries that count.

    Args:
        label_logits: (B, K) logits ``w_kᵀ h_cls + b_k``.
        targets: (B, K) CheXpert values 1 / 0 / -1 / NaN, mapped by :func:`detection_targets`.

    With every entry counted this is the case study's (1/K)·Σ_k averaged over the batch. ``0``
    (with a graph) when no entry counts.
    """
    if label_logits.shape != targets.shape:
        raise ValueError(
            f"finding targets shape {tuple(targets.shape)} does not match label logits "
            f"{tuple(label_logits.shape)}"
        )
    y, mask = detection_targets(targets.to(label_logits.device), uncertain_policy, blank_policy)
    if not bool(mask.any()):
        return label_logits.sum() * 0.0
    per_entry = F.binary_cross_entropy_with_logits(label_logits.float(), y, reduction="none")
    return per_entry[mask].mean()


# ---------------------------------------------------------------------- builders
def build_vision_encoder(config: ModelConfig, load_weights: bool = True) -> PreTrainedModel:
    """The encoder: ``from_pretrained`` on the checkpoint, or built from ``vision_config``.

    ``load_weights=False`` (or ``vision_checkpoint=None``) builds from config with random weights:
    for tests and for counting parameters on the meta device, never for a frozen encoder in use.
    """
    config_cls, model_cls = VISION_FAMILIES[config.vision_family]
    kwargs = {"add_pooling_layer": False} if config.vision_family == "vit" else {}
    checkpoint = config.vision_checkpoint
    if load_weights and checkpoint is not None:
        if checkpoint == COURSE_ENCODER:
            from .encoder import ensure_pretrained_encoder, load_pretrained_encoder

            image_size = int(config.vision_config.get("image_size", 128))
            path = ensure_pretrained_encoder(image_size=image_size, seed=config.encoder_seed)
            return load_pretrained_encoder(path)  # ViTModel.from_pretrained
        return model_cls.from_pretrained(checkpoint, **kwargs)
    if load_weights and checkpoint is None:
        logger.warning("vision encoder built from config with RANDOM weights (tests only)")
    return model_cls(config_cls(**config.vision_config), **kwargs)


def build_language_model(config: ModelConfig, load_weights: bool = True) -> PreTrainedModel:
    """The causal LM: ``from_pretrained`` on ``lm_checkpoint`` or built from ``lm_config``."""
    config_cls, model_cls = LM_FAMILIES[config.lm_family]
    if load_weights and config.lm_checkpoint is not None:
        return model_cls.from_pretrained(config.lm_checkpoint)
    return model_cls(config_cls(**config.lm_config))


def hidden_size_of(model: PreTrainedModel) -> int:
    """The width of a transformers model's hidden states (``n_embd`` for GPT-2)."""
    cfg = model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the hidden size of {type(model).__name__}")


def pool_patch_grid(patches: torch.Tensor, grid: int | None) -> torch.Tensor:
    """Average-pool square patch tokens (B, h·w, d) to (B, grid², d); ``None`` returns them as is."""
    if grid is None:
        return patches
    b, n, d = patches.shape
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"cannot pool {n} patch tokens: not a square grid")
    if grid >= side:
        return patches
    x = patches.transpose(1, 2).reshape(b, d, side, side)
    x = F.adaptive_avg_pool2d(x, grid)
    return x.reshape(b, d, grid * grid).transpose(1, 2)
