"""R2Gen2 track: Qwen2-VL with LoRA (tiny, CPU) or QLoRA (``Qwen/Qwen2-VL-2B-Instruct``, Colab).

R2Gen2 fine-tuned Qwen2-VL with QLoRA: the weights are stored in 4-bit NF4 (bitsandbytes) and only
low-rank adapters train. Their slides tune the *visual attention* layers and the *dense layer*
that turns vision features into embeddings (Qwen2-VL's patch merger), keep the language decoder
frozen and unfreeze its *final dense layer* (the LM head). :func:`build_qwen2vl` exposes each of
those choices; by default LoRA goes on the decoder's attention projections only.

:class:`Qwen2VLReportModel` gives Qwen2-VL the same ``forward(images, input_ids, attention_mask,
labels)`` / ``generate(images, prompt, tokenizer, ...)`` interface as
:class:`~course_utils.model.RadiologyMultimodalModel`, so one training loop serves both: it turns
(B, 1, H, W) images into Qwen2-VL's flattened patches with the real ``Qwen2VLImageProcessor`` and
puts ``<|vision_start|> <|image_pad|>×n <|vision_end|>`` in front of the text, where the model
swaps the placeholders for the merged patch features.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from .components import report_loss
from .generation import ReportGenerationMixin
from .multimodal import MultimodalOutput
from .prompts import pad_batch

QWEN2VL_2B = "Qwen/Qwen2-VL-2B-Instruct"
# Qwen/Qwen2-VL-2B-Instruct config.json (architecture sizes only).
QWEN2VL_2B_TEXT: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
QWEN2VL_2B_VISION: dict[str, Any] = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "mlp_ratio": 4,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN2VL_2B_TOKENS: dict[str, int] = {
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "image_token_id": 151655,
    "video_token_id": 151656,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rope_scaling": {"type": "mrope", "mrope_section": [4, 2, 2]},  # head_dim 16 -> 8 pairs
    "bos_token_id": None,  # the course tokenizer's ids live in the caller's tokenizer
    "eos_token_id": None,
    "pad_token_id": None,
}
TINY_VISION_QWEN: dict[str, Any] = {
    "depth": 2,
    "embed_dim": 32,
    "hidden_size": 64,
    "mlp_ratio": 2,
    "num_heads": 4,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
TINY_PIXELS = 112 * 112  # 8x8 patches of 14 px -> 16 visual tokens after the 2x2 merge
LM_HEAD_MODES = ("frozen", "lora", "full")

# Module names in transformers 5 ("model.language_model...", "model.visual..."); the optional
# prefixes also match the 4.x layout ("model.layers...", "visual...").
_TEXT_ATTENTION = (
    r"(?:model\.)?(?:language_model\.)?layers\.\d+\.self_attn\.(?:q_proj|k_proj|v_proj|o_proj)"
)
_VISION_ATTENTION = r"(?:model\.)?visual\.blocks\.\d+\.attn\.(?:qkv|proj)"
_MERGER = r"(?:model\.)?visual\.merger\.mlp\.(?:0|2)"


def qwen2vl_config(size: str = "tiny", vocab_size: int | None = None) -> Qwen2VLConfig:
    """A ``Qwen2VLConfig``: ``"2b"`` = the real Qwen2-VL-2B sizes, ``"tiny"`` = a CPU toy.

    For ``"tiny"`` the text vocabulary is ``vocab_size`` (the course tokenizer's length) plus
    four reserved ids at the end for ``vision_start``, ``vision_end``, ``image`` and ``video``,
    so any tokenizer works without adding tokens to it.
    """
    if size == "2b":
        return Qwen2VLConfig(
            text_config=dict(QWEN2VL_2B_TEXT),
            vision_config=dict(QWEN2VL_2B_VISION),
            tie_word_embeddings=True,
            **QWEN2VL_2B_TOKENS,
        )
    if size != "tiny":
        raise ValueError(f"size={size!r}; choose 'tiny' or '2b'")
    if vocab_size is None or vocab_size <= 0:
        raise ValueError("the tiny Qwen2-VL needs vocab_size = len(tokenizer)")
    tokens = {
        "vision_start_token_id": vocab_size,
        "vision_end_token_id": vocab_size + 1,
        "image_token_id": vocab_size + 2,
        "video_token_id": vocab_size + 3,
    }
    return Qwen2VLConfig(
        text_config=dict(TINY_TEXT, vocab_size=vocab_size + 4),
        vision_config=dict(TINY_VISION_QWEN),
        tie_word_embeddings=True,
        **tokens,
    )


def lora_target_regex(
    text_attention: bool = True,
    vision_attention: bool = False,
    merger: bool = False,
    lm_head: bool = False,
) -> str:
    """peft ``target_modules`` regex (full match) for the chosen parts of Qwen2-VL."""
    parts = []
    if text_attention:
        parts.append(_TEXT_ATTENTION)
    if vision_attention:
        parts.append(_VISION_ATTENTION)
    if merger:
        parts.append(_MERGER)
    if lm_head:
        parts.append(r"lm_head")
    if not parts:
        raise ValueError("LoRA needs at least one target (text/vision attention, merger, lm_head)")
    return "|".join(f"(?:{p})" for p in parts)


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    *,
    text_attention: bool = True,
    vision_attention: bool = False,
    merger: bool = False,
    lm_head: str = "frozen",
) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; everything else is frozen.

    ``lm_head``: ``"frozen"``, ``"lora"`` (adapters on the output layer) or ``"full"`` (train the
    whole output layer, R2Gen2's "final dense layer unfrozen"; for the 2B model that is a
    151936×1536 matrix, ~10 % of all weights, and it unties it from the input embeddings).
    """
    from peft import LoraConfig, get_peft_model

    if lm_head not in LM_HEAD_MODES:
        raise ValueError(f"lm_head={lm_head!r}; choose one of {LM_HEAD_MODES}")
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    target = lora_target_regex(text_attention, vision_attention, merger, lm_head == "lora")
    names = [n for n, _ in model.named_modules()]
    if not any(re.fullmatch(target, n) for n in names):
        raise ValueError(f"no module of {type(model).__name__} matches the LoRA targets {target}")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target,
        modules_to_save=["lm_head"] if lm_head == "full" else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad) / total if total else 0.0


def qwen2vl_components(model: nn.Module) -> dict[str, nn.Module]:
    """``vision`` (ViT + patch merger), ``language_model`` (decoder + embeddings), ``lm_head``."""
    base = _base_qwen(model)
    return {
        "vision": base.model.visual,
        "language_model": base.model.language_model,
        "lm_head": base.lm_head,
    }


def _base_qwen(model: nn.Module) -> Qwen2VLForConditionalGeneration:
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    if not isinstance(base, Qwen2VLForConditionalGeneration):
        raise TypeError(f"expected a Qwen2VLForConditionalGeneration, got {type(base).__name__}")
    return base


class Qwen2VLReportModel(ReportGenerationMixin, nn.Module):
    """Qwen2-VL (optionally peft-wrapped) behind the course's model interface.

    Args:
        model: ``Qwen2VLForConditionalGeneration`` or a peft model around one.
        image_processor: a ``Qwen2VLImageProcessor`` (its ``min_pixels``/``max_pixels`` set the
            number of visual tokens).
        lambda_report: weight of the LM loss (Qwen2-VL has no detection head: ``loss`` is
            ``lambda_report · loss_report``, ``label_logits`` is ``None``).
    """

    def __init__(self, model: nn.Module, image_processor: Any, lambda_report: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.image_processor = image_processor
        self.lambda_report = lambda_report
        cfg = _base_qwen(model).config
        self.image_token_id = int(cfg.image_token_id)
        self.vision_start_token_id = int(cfg.vision_start_token_id)
        self.vision_end_token_id = int(cfg.vision_end_token_id)
        self.merge_size = int(cfg.vision_config.spatial_merge_size)
        self.suppressed_token_ids = (
            self.vision_start_token_id,
            self.vision_end_token_id,
            self.image_token_id,
            int(cfg.video_token_id),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def components(self) -> dict[str, nn.Module]:
        """The parts :func:`~course_utils.model.count_parameters` reports."""
        return qwen2vl_components(self.model)

    def prepare_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) grayscale in [0, 1] -> (pixel_values (P, C·T·p·p), image_grid_thw (B, 3))."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"images must have shape (B, 1, H, W), got {tuple(images.shape)}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be scaled to [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        rgb = [
            np.repeat(img[0].detach().float().cpu().numpy()[..., None], 3, axis=-1)
            for img in images.clamp(0, 1)
        ]
        out = self.image_processor(images=rgb, do_rescale=False, return_tensors="pt")
        return out["pixel_values"].to(self.device), out["image_grid_thw"].to(self.device)

    def _vision_prefix(self, grid_thw: torch.Tensor) -> list[list[int]]:
        counts = (grid_thw.prod(-1) // (self.merge_size**2)).tolist()
        return [
            [self.vision_start_token_id]
            + [self.image_token_id] * int(n)
            + [self.vision_end_token_id]
            for n in counts
        ]

    def _token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """M-RoPE needs each token's modality: 1 on image placeholders, 0 on text."""
        return (ids == self.image_token_id).int()

    def _full_inputs(
        self, grid_thw: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """``[vision prefix | input_ids]`` with left padding moved in front of the prefix."""
        if input_ids.dim() != 2 or input_ids.shape[0] != grid_thw.shape[0]:
            raise ValueError(
                f"input_ids must be (B, T) with B={grid_thw.shape[0]} images, got {tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefixes = self._vision_prefix(grid_thw)
        if len({len(p) for p in prefixes}) != 1:
            raise ValueError("all images of a batch must give the same number of visual tokens")
        prefix = torch.tensor(prefixes, device=self.device)
        ids = torch.cat([prefix, input_ids.to(self.device)], dim=1)
        mask = torch.cat([torch.ones_like(prefix), attention_mask.to(self.device).long()], dim=1)
        order = None
        if bool((attention_mask[:, 0] == 0).any()):
            order = torch.argsort(mask, dim=1, stable=True)
            ids, mask = torch.gather(ids, 1, order), torch.gather(mask, 1, order)
        return ids, mask, order, prefix.shape[1]

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        finding_targets: torch.Tensor | None = None,
    ) -> MultimodalOutput:
        """Same contract as :meth:`RadiologyMultimodalModel.forward`; ``finding_targets`` is
        accepted and ignored (no detection head)."""
        pixel_values, grid_thw = self.prepare_images(images)
        ids, mask, order, n_prefix = self._full_inputs(grid_thw, input_ids, attention_mask)
        all_logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            image_grid_thw=grid_thw,
            mm_token_type_ids=self._token_types(ids),
            use_cache=False,
        ).logits
        if order is not None:
            restored = torch.empty_like(all_logits)
            restored.scatter_(1, order.unsqueeze(-1).expand_as(all_logits), all_logits)
            all_logits = restored
        logits = all_logits[:, n_prefix:]
        loss_report = report_loss(logits, labels.to(logits.device)) if labels is not None else None
        loss = self.lambda_report * loss_report if loss_report is not None else None
        return MultimodalOutput(loss=loss, logits=logits, loss_report=loss_report)

    def _generate_token_ids(
        self,
        images: torch.Tensor,
        prompt_ids: list[list[int]],
        tokenizer: Any,
        gen_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        pixel_values, grid_thw = self.prepare_images(images)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids, mask = pad_batch(prompt_ids, pad_id, side="left")
        full, full_mask, _, _ = self._full_inputs(grid_thw, torch.tensor(ids), torch.tensor(mask))
        out = self.model.generate(
            input_ids=full,
            attention_mask=full_mask,
            pixel_values=pixel_values,
            image_grid_thw=grid_thw,
            mm_token_type_ids=self._token_types(full),
            **gen_kwargs,
        )
        return out[:, full.shape[1] :]


def _profile_fields(profile: Any) -> tuple[str, str | None, bool]:
    if isinstance(profile, str):
        from ..config import get_profile

        profile = get_profile(profile) if profile in ("tiny", "colab") else profile
    if isinstance(profile, str):
        raise ValueError(f"profile={profile!r}; choose 'tiny' or 'colab'")
    return profile.name, profile.vlm_checkpoint, bool(profile.load_in_4bit)


def build_qwen2vl(
    profile: Any = "tiny",
    *,
    vocab_size: int | None = None,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_text_attention: bool = True,
    lora_vision_attention: bool = False,
    lora_merger: bool = False,
    lm_head: str = "frozen",
    checkpoint: str | None = None,
    load_in_4bit: bool | None = None,
    compute_dtype: torch.dtype | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    gradient_checkpointing: bool = True,
    seed: int = 42,
) -> tuple[Qwen2VLReportModel, Any]:
    """Qwen2-VL + LoRA behind the course interface -> ``(model, processor or None)``.

    ``tiny`` (CPU, offline): a random Qwen2-VL from :func:`qwen2vl_config` sized for the course
    tokenizer (``vocab_size=len(tokenizer)`` required); returns ``processor=None`` (use the
    course tokenizer). Images become 112x112 -> 16 visual tokens.

    ``colab``: ``from_pretrained(checkpoint or "Qwen/Qwen2-VL-2B-Instruct")``; with
    ``load_in_4bit`` (the profile's default) the weights load as 4-bit NF4 through bitsandbytes
    with ``compute_dtype`` matmuls (bf16 where supported, else fp16) and go through
    ``prepare_model_for_kbit_training``: QLoRA. Returns the checkpoint's ``AutoProcessor``
    (use ``processor.tokenizer`` for text). 4-bit needs a CUDA GPU.

    LoRA targets: decoder attention (default), and optionally the visual attention, the patch
    merger ("dense layer") and the LM head (see :func:`apply_lora`).
    """
    name, default_ckpt, default_4bit = _profile_fields(profile)
    torch.manual_seed(seed)
    from transformers import Qwen2VLImageProcessorPil

    if name == "tiny":
        base = Qwen2VLForConditionalGeneration(qwen2vl_config("tiny", vocab_size))
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=min_pixels or TINY_PIXELS, max_pixels=max_pixels or TINY_PIXELS
        )
        processor = None
    else:
        checkpoint = checkpoint or default_ckpt or QWEN2VL_2B
        use_4bit = default_4bit if load_in_4bit is None else load_in_4bit
        base = _load_pretrained_qwen(checkpoint, use_4bit, compute_dtype, gradient_checkpointing)
        from transformers import AutoProcessor

        kwargs = {
            k: v
            for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels or 512 * 512))
            if v
        }
        processor = AutoProcessor.from_pretrained(checkpoint, **kwargs)
        image_processor = processor.image_processor
    model = apply_lora(
        base,
        lora_r,
        lora_alpha,
        lora_dropout,
        text_attention=lora_text_attention,
        vision_attention=lora_vision_attention,
        merger=lora_merger,
        lm_head=lm_head,
    )
    return Qwen2VLReportModel(model, image_processor), processor


def _load_pretrained_qwen(
    checkpoint: str,
    load_in_4bit: bool,
    compute_dtype: torch.dtype | None,
    gradient_checkpointing: bool,
) -> Qwen2VLForConditionalGeneration:
    if not load_in_4bit:
        return Qwen2VLForConditionalGeneration.from_pretrained(
            checkpoint, dtype=compute_dtype or "auto"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            "4-bit loading (QLoRA) needs a CUDA GPU: bitsandbytes' NF4 kernels run on CUDA only. "
            "On CPU use build_qwen2vl('tiny'), or pass load_in_4bit=False to load full precision "
            "(the 2B model then needs ~9 GB of RAM in fp32)."
        )
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        checkpoint, quantization_config=quant, dtype=compute_dtype, device_map={"": 0}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
