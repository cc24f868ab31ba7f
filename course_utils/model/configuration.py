"""`ModelConfig`: every size and source of a `RadiologyMultimodalModel` in one JSON-able place.

Two presets mirror the course profiles (see :mod:`course_utils.config`):

* :meth:`ModelConfig.tiny` - CPU, offline. The encoder is the course's own ViT, pretrained on the
  embedded dataset's CheXpert labels (``vision_checkpoint=COURSE_ENCODER``, built on first use by
  :func:`course_utils.model.ensure_pretrained_encoder`); the LM is a small BioGPT with random
  weights, built from its config.
* :meth:`ModelConfig.colab` - real checkpoints loaded with ``from_pretrained``: RAD-DINO
  (``microsoft/rad-dino``, a DINOv2 ViT-B/14 trained on chest X-rays) and BioGPT
  (``microsoft/biogpt``). The architecture dicts below are the checkpoints' own sizes, so the same
  model can be *built* offline from config (e.g. on the meta device to count parameters).

Visual tokens: the encoder's patch tokens (CLS and register tokens excluded) are all used, one
visual token per patch: 128 px / patch 16 -> 8x8 = 64 tokens in ``tiny``. ``visual_grid=g``
average-pools the patch grid to g x g tokens; ``colab`` uses 16 -> 256 tokens because 512 px /
patch 14 gives 36x36 = 1296 patches, more than BioGPT's 1024 positions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from transformers import (
    BioGptConfig,
    BioGptForCausalLM,
    Dinov2Config,
    Dinov2Model,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    ViTConfig,
    ViTModel,
)

NUM_LABELS = 14
COURSE_ENCODER = "course-encoder"
"""Sentinel for ``vision_checkpoint``: the course-pretrained ViT (built and cached on first use)."""

VISION_FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "vit": (ViTConfig, ViTModel),
    "dinov2": (Dinov2Config, Dinov2Model),
}
LM_FAMILIES: dict[str, tuple[type[PretrainedConfig], type[PreTrainedModel]]] = {
    "gpt2": (GPT2Config, GPT2LMHeadModel),
    "llama": (LlamaConfig, LlamaForCausalLM),
    "biogpt": (BioGptConfig, BioGptForCausalLM),
}
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")
BLANK_POLICIES = ("negative", "ignore")

# Architecture of the course's tiny encoder (also what `pretrain_encoder` trains): a 64-wide
# ViT; 128-wide trained 3x slower on 2 cores without a better AUROC in 30 epochs.
TINY_VISION: dict[str, Any] = {
    "image_size": 128,
    "patch_size": 16,
    "num_channels": 1,
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 192,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
# A small BioGPT (same class as microsoft/biogpt, random weights).
TINY_LM: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "layerdrop": 0.0,
}
# microsoft/rad-dino: DINOv2 ViT-B/14 (config.json of the checkpoint).
RAD_DINO: dict[str, Any] = {
    "image_size": 518,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "layerscale_value": 1.0,
    "use_swiglu_ffn": False,
}
# microsoft/biogpt (config.json of the checkpoint; these are also BioGptConfig's defaults).
BIOGPT: dict[str, Any] = {
    "vocab_size": 42384,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 1024,
    "scale_embedding": True,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}
# LLaMA-7B sizes: the case study's d_l = 4096 (checkpoints are gated: pass your own name).
LLAMA_7B: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@dataclass
class ModelConfig:
    """Sizes and sources of the encoder, projector, LM and detection head, plus the loss weights.

    Attributes:
        vision_family: ``"vit"`` (``ViTModel``) or ``"dinov2"`` (``Dinov2Model``).
        vision_checkpoint: name or path for ``from_pretrained``; :data:`COURSE_ENCODER` for the
            course-pretrained ViT; ``None`` builds a *random* encoder from ``vision_config``
            (only for unit tests and parameter counting - a frozen random encoder is useless).
        vision_config: kwargs of the family's config class (used when building from config).
        image_mean, image_std: per-channel normalisation applied to images in [0, 1].
        visual_grid: ``None`` keeps every patch token; ``g`` average-pools the grid to g x g.
        vision_dim, proj_hidden_dim, llm_dim: projector sizes d_v -> d_h -> d_l.
        lm_family: ``"gpt2"``, ``"llama"`` or ``"biogpt"``.
        lm_checkpoint: name or path for ``from_pretrained``; ``None`` builds from ``lm_config``.
        lm_config: kwargs of the family's config class (vocab size and special-token ids included).
        num_labels: K, the CheXpert labels of the detection head (14).
        lambda_report, lambda_detect, lambda_proj: the weights λ1, λ2, λ3 of the combined loss.
        uncertain_policy: what an uncertain (-1) finding target means for the detection loss:
            ``"ignore"`` (masked out, default), ``"positive"`` (U-Ones) or ``"negative"`` (U-Zeros).
        blank_policy: what a blank (NaN, not mentioned) target means: ``"negative"`` (default,
            the CheXpert convention; "No Finding" is never 0 in the data, only 1 or blank) or
            ``"ignore"``.
        freeze_vision: keep the encoder frozen (the case study's choice).
        label_prompt: also feed the detection head's probabilities to the LM as K label tokens
            after the visual tokens (:class:`~course_utils.model.components.LabelPrompt`). Off in
            the case study's architecture; the course's trained models turn it on (notebook 05).
    """

    vision_family: str = "vit"
    vision_checkpoint: str | None = COURSE_ENCODER
    vision_config: dict[str, Any] = field(default_factory=lambda: dict(TINY_VISION))
    image_mean: float | tuple[float, ...] = 0.5
    image_std: float | tuple[float, ...] = 0.5
    visual_grid: int | None = None
    vision_dim: int = 64
    proj_hidden_dim: int = 256
    llm_dim: int = 128
    lm_family: str = "biogpt"
    lm_checkpoint: str | None = None
    lm_config: dict[str, Any] = field(default_factory=lambda: dict(TINY_LM))
    num_labels: int = NUM_LABELS
    lambda_report: float = 1.0
    lambda_detect: float = 0.5
    lambda_proj: float = 1e-4
    uncertain_policy: str = "ignore"
    blank_policy: str = "negative"
    freeze_vision: bool = True
    encoder_seed: int = 42
    label_prompt: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot work."""
        if self.vision_family not in VISION_FAMILIES:
            raise ValueError(
                f"ModelConfig.vision_family={self.vision_family!r}; choose one of "
                f"{sorted(VISION_FAMILIES)}"
            )
        if self.lm_family not in LM_FAMILIES:
            raise ValueError(
                f"ModelConfig.lm_family={self.lm_family!r}; choose one of {sorted(LM_FAMILIES)}"
            )
        if self.uncertain_policy not in UNCERTAIN_POLICIES:
            raise ValueError(
                f"ModelConfig.uncertain_policy={self.uncertain_policy!r}; choose one of "
                f"{UNCERTAIN_POLICIES}"
            )
        if self.blank_policy not in BLANK_POLICIES:
            raise ValueError(
                f"ModelConfig.blank_policy={self.blank_policy!r}; choose one of {BLANK_POLICIES}"
            )
        for name in ("vision_dim", "proj_hidden_dim", "llm_dim", "num_labels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.visual_grid is not None and self.visual_grid <= 0:
            raise ValueError(
                f"ModelConfig.visual_grid must be positive or None, got {self.visual_grid}"
            )
        for name in ("lambda_report", "lambda_detect", "lambda_proj"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(
        cls,
        vocab_size: int,
        *,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        image_size: int = 128,
        lm_family: str = "biogpt",
        vision_checkpoint: str | None = COURSE_ENCODER,
        encoder_seed: int = 42,
        **overrides: Any,
    ) -> ModelConfig:
        """CPU preset: course-pretrained ViT (64-d, 64 patch tokens) + a small random BioGPT.

        ``vocab_size`` and the special-token ids come from the course tokenizer
        (``course_utils.text.train_word_tokenizer``: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2).
        ``lm_family`` may be ``"gpt2"`` or ``"llama"`` to compare decoders of the same size.
        """
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        lm = dict(TINY_LM)
        if lm_family == "gpt2":
            lm = {
                "n_embd": 128,
                "n_layer": 2,
                "n_head": 4,
                "n_inner": 256,
                "n_positions": 512,
                "resid_pdrop": 0.1,
                "embd_pdrop": 0.1,
                "attn_pdrop": 0.1,
            }
        elif lm_family == "llama":
            lm = {
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "intermediate_size": 256,
                "max_position_embeddings": 512,
            }
        lm.update(
            vocab_size=vocab_size,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        )
        vision = dict(TINY_VISION, image_size=image_size)
        config = cls(
            vision_family="vit",
            vision_checkpoint=vision_checkpoint,
            vision_config=vision,
            image_mean=0.5,
            image_std=0.5,
            visual_grid=None,
            vision_dim=TINY_VISION["hidden_size"],
            proj_hidden_dim=256,
            llm_dim=128,
            lm_family=lm_family,
            lm_checkpoint=None,
            lm_config=lm,
            encoder_seed=encoder_seed,
        )
        return replace(config, **overrides) if overrides else config

    @classmethod
    def colab(
        cls, lm: str = "biogpt", lm_checkpoint: str | None = None, **overrides: Any
    ) -> ModelConfig:
        """GPU preset: RAD-DINO (768-d) -> projector 768 -> 2048 -> d_l -> a pretrained LM.

        ``lm="biogpt"`` (default): ``microsoft/biogpt``, d_l = 1024.
        ``lm="llama-7b"``: the case study's LLaMA-7B, d_l = 4096 (768 -> 2048 -> 4096 exactly as
        in the case study); LLaMA checkpoints are gated, so pass ``lm_checkpoint`` (e.g. a
        ``meta-llama/Llama-2-7b-hf`` you have access to). Needs far more than a T4 to fine-tune.
        """
        if lm == "biogpt":
            family, lm_cfg, default_ckpt = "biogpt", dict(BIOGPT), "microsoft/biogpt"
        elif lm == "llama-7b":
            family, lm_cfg, default_ckpt = "llama", dict(LLAMA_7B), None
        else:
            raise ValueError(f"ModelConfig.colab(lm={lm!r}); choose 'biogpt' or 'llama-7b'")
        config = cls(
            vision_family="dinov2",
            vision_checkpoint="microsoft/rad-dino",
            vision_config=dict(RAD_DINO),
            # RAD-DINO's preprocessor_config.json normalisation (grayscale repeated to 3 channels).
            image_mean=(0.5307, 0.5307, 0.5307),
            image_std=(0.2583, 0.2583, 0.2583),
            visual_grid=16,
            vision_dim=768,
            proj_hidden_dim=2048,
            llm_dim=int(lm_cfg["hidden_size"]),
            lm_family=family,
            lm_checkpoint=lm_checkpoint or default_ckpt,
            lm_config=lm_cfg,
        )
        return replace(config, **overrides) if overrides else config

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("image_mean", "image_std"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {sorted(unknown)}")
        data = dict(data)
        for key in ("image_mean", "image_std"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)
