"""`RadiologyMultimodalModel`: frozen vision encoder -> MLP projector -> causal LM, plus a
multi-label detection head on the encoder's CLS token (case study §3.4).

Sequence layout inside the LM (``N`` visual tokens, ``T`` text tokens)::

    inputs_embeds = [ H_v (B, N, d_l) | L (B, K, d_l) | embed(input_ids) (B, T, d_l) ]

``L`` are the optional label-prompt tokens (``ModelConfig.label_prompt``: the detection head's
probabilities as K tokens, :class:`~course_utils.model.components.LabelPrompt`); without them the
prefix is ``H_v`` alone, the case study's layout.

``forward`` returns logits for the *text* positions only, (B, T, V): ``logits[:, t]`` is the
distribution of token ``t + 1``. Visual positions are never LM targets (the model treats them as
``-100``); the caller puts ``-100`` on the prompt and padding in ``labels`` (see
:func:`course_utils.model.encode_example`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers.utils import ModelOutput

from .components import (
    DetectionHead,
    LabelPrompt,
    Projector,
    build_language_model,
    build_vision_encoder,
    detection_loss,
    hidden_size_of,
    pool_patch_grid,
    report_loss,
)
from .configuration import ModelConfig
from .generation import ReportGenerationMixin
from .prompts import pad_batch

CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.safetensors"
SUBCONFIGS_NAME = "architectures.json"


@dataclass
class MultimodalOutput(ModelOutput):
    """What :meth:`RadiologyMultimodalModel.forward` returns (attribute or key access).

    Attributes:
        loss: λ1·loss_report + λ2·loss_detect + λ3·loss_l2 over the terms whose targets were given
            (``None`` when neither ``labels`` nor ``finding_targets`` was passed).
        logits: (B, T, V) report logits over the text positions.
        label_logits: (B, K) detection logits ``w_kᵀ h_cls + b_k``.
        loss_report: mean next-token NLL over target tokens (``None`` without ``labels``).
        loss_detect: masked BCE of the detection head (``None`` without ``finding_targets``).
        loss_l2: ‖θ_proj‖², unweighted (always computed: it is cheap and worth watching).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None
    loss_report: torch.Tensor | None = None
    loss_detect: torch.Tensor | None = None
    loss_l2: torch.Tensor | None = None


class RadiologyMultimodalModel(ReportGenerationMixin, nn.Module):
    """LLaVA-style report generator with an auxiliary finding detector.

    Components: ``vision`` (frozen ViT/DINOv2), ``projector`` (:class:`Projector`), ``lm``
    (BioGPT / GPT-2 / LLaMA causal LM), ``detection_head`` (:class:`DetectionHead`) and, with
    ``config.label_prompt``, ``label_prompt`` (:class:`LabelPrompt`, trained with the projector).

    Args:
        config: sizes, sources and loss weights (:class:`ModelConfig`).
        load_weights: ``False`` builds every transformer from its config dict without touching
            checkpoints: random weights, for tests and for parameter counting on the meta device.
    """

    def __init__(self, config: ModelConfig, *, load_weights: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.vision = build_vision_encoder(config, load_weights=load_weights)
        self.lm = build_language_model(config, load_weights=load_weights)
        d_v, d_l = hidden_size_of(self.vision), hidden_size_of(self.lm)
        if d_v != config.vision_dim:
            raise ValueError(
                f"ModelConfig.vision_dim={config.vision_dim} but the encoder's hidden size is {d_v}"
            )
        if d_l != config.llm_dim:
            raise ValueError(
                f"ModelConfig.llm_dim={config.llm_dim} but the language model's hidden size is {d_l}"
            )
        self.projector = Projector(d_v, config.proj_hidden_dim, d_l)
        self.detection_head = DetectionHead(d_v, config.num_labels)
        self.label_prompt = LabelPrompt(config.num_labels, d_l) if config.label_prompt else None
        channels = int(getattr(self.vision.config, "num_channels", 1))
        mean = torch.as_tensor(config.image_mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(config.image_std, dtype=torch.float32).reshape(-1)
        if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
            raise ValueError(f"image_mean/image_std need 1 or {channels} values")
        self.register_buffer(
            "image_mean", mean.expand(channels).reshape(1, -1, 1, 1).clone(), persistent=False
        )
        self.register_buffer(
            "image_std", std.expand(channels).reshape(1, -1, 1, 1).clone(), persistent=False
        )
        # DINOv2-with-registers style encoders put register tokens after CLS.
        self.num_prefix_tokens = 1 + int(getattr(self.vision.config, "num_register_tokens", 0) or 0)
        if config.freeze_vision:
            self.freeze_vision()

    # ------------------------------------------------------------------ freezing
    def freeze_vision(self) -> None:
        """Freeze the encoder: no gradients, and eval mode (no dropout) even under ``.train()``."""
        self.vision.requires_grad_(False)
        self.vision.eval()

    def train(self, mode: bool = True) -> RadiologyMultimodalModel:
        super().train(mode)
        if self.config.freeze_vision:
            self.vision.eval()
        return self

    def set_trainable(self, *, projector: bool = True, lm: bool = True, head: bool = True) -> None:
        """Choose what trains (the encoder stays frozen). Stage 1: ``lm=False``; stage 2: all."""
        self.projector.requires_grad_(projector)
        if self.label_prompt is not None:
            self.label_prompt.requires_grad_(projector)
        self.lm.requires_grad_(lm)
        self.detection_head.requires_grad_(head)
        if self.config.freeze_vision:
            self.vision.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    # ------------------------------------------------------------------ vision side
    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """Grayscale images in [0, 1], (B, 1, H, W) or (B, H, W) -> normalised encoder input.

        Repeats the gray channel when the encoder expects 3 (RAD-DINO), then applies
        ``(x - mean) / std``.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, 1, H, W), got {tuple(images.shape)}")
        channels = self.image_mean.shape[1]
        if images.shape[1] not in (1, channels):
            raise ValueError(
                f"images have {images.shape[1]} channels; the encoder takes 1 or {channels}"
            )
        images = images.to(device=self.image_mean.device, dtype=torch.float32)
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images contain NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be scaled to [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        if images.shape[1] != channels:
            images = images.expand(-1, channels, -1, -1)
        return (images - self.image_mean) / self.image_std

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (patch tokens Z_v (B, N, d_v), CLS token h_cls (B, d_v))."""
        pixel_values = self.preprocess_images(images)
        pixel_values = pixel_values.to(next(self.vision.parameters()).dtype)
        kwargs: dict[str, Any] = {}
        native = int(getattr(self.vision.config, "image_size", pixel_values.shape[-1]))
        if self.config.vision_family == "vit" and pixel_values.shape[-1] != native:
            kwargs["interpolate_pos_encoding"] = True
        frozen = not any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            hidden = self.vision(pixel_values=pixel_values, **kwargs).last_hidden_state
        h_cls = hidden[:, 0]
        patches = pool_patch_grid(hidden[:, self.num_prefix_tokens :], self.config.visual_grid)
        return patches, h_cls

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens H_v (B, N, d_l) (patches only, no label prompt)."""
        patches, _ = self.encode_images(images)
        return self.projector(patches.to(self.projector.fc1.weight.dtype))

    def lm_prefix(self, visual: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
        """What goes in front of the text: H_v (B, N, d_l), followed by the K label-prompt
        tokens (B, K, d_l) when ``config.label_prompt`` is on.

        The head's probabilities are detached: the report loss must not teach the detector to
        say what is easy to write, only the detection loss trains it.
        """
        if self.label_prompt is None:
            return visual
        probs = torch.sigmoid(label_logits.detach().float())
        return torch.cat([visual, self.label_prompt(probs).to(visual.dtype)], dim=1)

    def prefix_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The LM prefix for images: :meth:`lm_prefix` of the visual tokens and head logits."""
        patches, h_cls = self.encode_images(images)
        visual = self.projector(patches.to(self.projector.fc1.weight.dtype))
        if self.label_prompt is None:
            return visual
        label_logits = self.detection_head(h_cls.to(self.detection_head.linear.weight.dtype))
        return self.lm_prefix(visual, label_logits)

    @property
    def num_label_tokens(self) -> int:
        """K when the label prompt is on, else 0."""
        return 0 if self.label_prompt is None else self.config.num_labels

    def num_visual_tokens(self, image_size: int | None = None) -> int:
        """N for square images of ``image_size`` (default: the encoder's native size); the LM
        prefix is N + :attr:`num_label_tokens` long."""
        size = image_size or int(self.vision.config.image_size)
        side = size // int(self.vision.config.patch_size)
        grid = self.config.visual_grid
        return side * side if grid is None or grid >= side else grid * grid

    # ------------------------------------------------------------------ LM side
    def _lm_inputs(
        self, visual: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Concatenate visual and text embeddings -> (LM kwargs, reordering or ``None``).

        Positions follow the attention mask. Left padding (used for batched generation) would
        sit between the visual tokens and the prompt, so it is moved to the very front; the
        returned ``order`` maps new positions to old ones (``None`` when nothing moved).
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != visual.shape[0]:
            raise ValueError(
                f"input_ids must be (B, T) with B={visual.shape[0]} images, "
                f"got {tuple(input_ids.shape)}"
            )
        input_ids = input_ids.to(visual.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids "
                f"{tuple(input_ids.shape)}"
            )
        embedding = self.lm.get_input_embeddings()
        vocab = embedding.num_embeddings
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab:
            raise ValueError(
                f"input_ids must be in [0, {vocab}) (the LM vocabulary); got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )
        text = embedding(input_ids)  # BioGPT scales its embeddings inside the embedding module
        attention_mask = attention_mask.to(device=visual.device, dtype=torch.long)
        visual_mask = torch.ones(visual.shape[:2], dtype=torch.long, device=visual.device)
        mask = torch.cat([visual_mask, attention_mask], dim=1)
        embeds = torch.cat([visual.to(text.dtype), text], dim=1)
        order = None
        if bool((attention_mask[:, 0] == 0).any()):
            order = torch.argsort(mask, dim=1, stable=True)  # padding first, order kept
            embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand_as(embeds))
            mask = torch.gather(mask, 1, order)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return {
            "inputs_embeds": embeds,
            "attention_mask": mask,
            "position_ids": position_ids,
        }, order

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        finding_targets: torch.Tensor | None = None,
    ) -> MultimodalOutput:
        """Report logits, label logits and (given targets) the three loss terms.

        Args:
            images: (B, 1, H, W) grayscale in [0, 1].
            input_ids: (B, T) ``<bos> prompt target <eos>`` ids, right-padded for training.
            attention_mask: (B, T), 1 on tokens, 0 on padding (default: all ones).
            labels: (B, T) LM targets aligned with ``input_ids`` (-100 on prompt/padding).
            finding_targets: (B, K) CheXpert values 1 / 0 / -1 / NaN for the detection head.
        """
        patches, h_cls = self.encode_images(images)
        label_logits = self.detection_head(h_cls.to(self.detection_head.linear.weight.dtype))
        visual = self.projector(patches.to(self.projector.fc1.weight.dtype))
        visual = self.lm_prefix(visual, label_logits)
        lm_inputs, order = self._lm_inputs(visual, input_ids, attention_mask)
        all_logits = self.lm(**lm_inputs, use_cache=False).logits
        if order is not None:  # put positions back in [visual | input_ids] order
            restored = torch.empty_like(all_logits)
            restored.scatter_(1, order.unsqueeze(-1).expand_as(all_logits), all_logits)
            all_logits = restored
        logits = all_logits[:, visual.shape[1] :]

        loss_l2 = self.projector.squared_norm()
        loss_report = loss_detect = None
        if labels is not None:
            loss_report = report_loss(logits, labels.to(logits.device))
        if finding_targets is not None:
            loss_detect = detection_loss(
                label_logits,
                finding_targets,
                self.config.uncertain_policy,
                self.config.blank_policy,
            )
        loss = None
        if loss_report is not None or loss_detect is not None:
            cfg = self.config
            loss = cfg.lambda_proj * loss_l2
            if loss_report is not None:
                loss = loss + cfg.lambda_report * loss_report
            if loss_detect is not None:
                loss = loss + cfg.lambda_detect * loss_detect
        return MultimodalOutput(
            loss=loss,
            logits=logits,
            label_logits=label_logits,
            loss_report=loss_report,
            loss_detect=loss_detect,
            loss_l2=loss_l2,
        )

    # ------------------------------------------------------------------ generation
    def _generate_token_ids(
        self,
        images: torch.Tensor,
        prompt_ids: list[list[int]],
        tokenizer: Any,
        gen_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """New token ids (B, L) from the LM's ``generate`` on ``inputs_embeds``."""
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids, mask = pad_batch(prompt_ids, pad_id, side="left")
        device = self.device
        visual = self.prefix_tokens(images)
        inputs, _ = self._lm_inputs(
            visual, torch.tensor(ids, device=device), torch.tensor(mask, device=device)
        )
        # With inputs_embeds only, generate() returns just the new tokens.
        return self.lm.generate(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"],
            **gen_kwargs,
        )

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model_config.json``, the sub-model architectures and all weights (safetensors).

        The directory reloads offline with :meth:`from_pretrained` (no hub access needed).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        arch = {"vision": self.vision.config.to_dict(), "lm": self.lm.config.to_dict()}
        (directory / SUBCONFIGS_NAME).write_text(
            json.dumps(arch, indent=2, sort_keys=True, default=str)
        )
        save_model(self, str(directory / WEIGHTS_NAME))
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> RadiologyMultimodalModel:
        """Rebuild a model written by :meth:`save_pretrained` (architectures from the saved
        configs, weights from ``model.safetensors``)."""
        from dataclasses import replace

        from .configuration import LM_FAMILIES, VISION_FAMILIES

        directory = Path(directory)
        for name in (CONFIG_NAME, SUBCONFIGS_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory} is not a saved RadiologyMultimodalModel: {name} missing"
                )
        config = ModelConfig.load(directory / CONFIG_NAME)
        arch = json.loads((directory / SUBCONFIGS_NAME).read_text())
        vision_cfg = (
            VISION_FAMILIES[config.vision_family][0].from_dict(arch["vision"]).to_diff_dict()
        )
        lm_cfg = LM_FAMILIES[config.lm_family][0].from_dict(arch["lm"]).to_diff_dict()
        for cfg in (vision_cfg, lm_cfg):
            for key in ("model_type", "transformers_version", "architectures", "_name_or_path"):
                cfg.pop(key, None)
        build_config = replace(config, vision_config=vision_cfg, lm_config=lm_cfg)
        model = cls(build_config, load_weights=False)
        model.config = config
        missing, unexpected = load_model(
            model, str(directory / WEIGHTS_NAME), strict=False, device=str(map_location)
        )
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise ValueError(
                f"weights in {directory} do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        if config.freeze_vision:
            model.freeze_vision()
        return model
