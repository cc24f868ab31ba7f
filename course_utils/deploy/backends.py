"""One interface over the three ways to run the model: PyTorch fp32, PyTorch INT8, onnxruntime.

A backend answers two questions for a batch of validated images (B, 1, S, S) in [0, 1]:
``label_probs`` (the detection head, (B, K)) and ``generate`` (greedy reports). The service,
the benchmark, the A/B test and the drift monitor take any backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Backend(Protocol):
    name: str
    image_size: int

    def label_probs(self, images: torch.Tensor) -> np.ndarray: ...

    def embeddings(self, images: torch.Tensor) -> np.ndarray: ...

    def generate(
        self, images: torch.Tensor, prompts: Sequence[str], max_new_tokens: int = 100
    ) -> list[str]: ...


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer: Any,
    images: torch.Tensor,
    prompts: Sequence[str],
    max_new_tokens: int = 100,
) -> list[str]:
    """Greedy reports with a plain KV-cache loop: the same tokens as ``model.generate``
    (``num_beams=1``), without Hugging Face ``generate``'s per-step bookkeeping.

    The same loop runs the fp32 and the INT8 model, so their timings differ by the model only.
    Inputs are laid out by the model's own ``_lm_inputs`` (left padding moved in front of the
    visual tokens, positions from the attention mask). A finished report leaves the batch (its
    rows of the cache are dropped), so a batch costs about as much as its longest report rather
    than batch size x longest.
    """
    from ..model.generation import cut_at_eos
    from ..model.prompts import encode_prompt, pad_batch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    ids, mask = pad_batch([encode_prompt(tokenizer, p) for p in prompts], pad, side="left")
    visual = model.prefix_tokens(images)  # visual tokens (+ label prompt)
    inputs, _ = model._lm_inputs(visual, torch.tensor(ids), torch.tensor(mask))
    out = model.lm(**inputs, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    full, last = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    tokens = torch.full((images.shape[0], max_new_tokens), pad, dtype=torch.long)
    active = torch.arange(images.shape[0])
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        tokens[active, step] = token.cpu()
        keep = token != eos
        if step == max_new_tokens - 1 or not bool(keep.any()):
            break
        if not bool(keep.all()):  # drop finished reports from the batch
            rows = keep.nonzero().squeeze(1)
            active, token, full, last = active[rows.cpu()], token[rows], full[rows], last[rows]
            for layer in past.layers:
                layer.batch_select_indices(rows)
        full = torch.cat([full, torch.ones_like(full[:, :1])], dim=1)
        last = last + 1
        out = model.lm(input_ids=token[:, None], attention_mask=full, position_ids=last,
                       past_key_values=past, use_cache=True)  # fmt: skip
        past, logits = out.past_key_values, out.logits[:, -1]
    return [
        tokenizer.decode(cut_at_eos(r, eos), skip_special_tokens=True).strip()
        for r in tokens.tolist()
    ]


class TorchBackend:
    """A :class:`~course_utils.model.RadiologyMultimodalModel` (fp32 or INT8) + tokenizer.

    Greedy decoding uses :func:`greedy_generate`; ``num_beams > 1`` uses ``model.generate``.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, name: str = "pytorch-fp32", num_beams: int = 1
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.num_beams = num_beams
        self.image_size = int(getattr(model.vision.config, "image_size", 128))

    @torch.no_grad()
    def label_probs(self, images: torch.Tensor) -> np.ndarray:
        _, h_cls = self.model.encode_images(torch.as_tensor(images, dtype=torch.float32))
        logits = self.model.detection_head(h_cls.to(self.model.detection_head.linear.weight.dtype))
        return torch.sigmoid(logits.float()).cpu().numpy()

    @torch.no_grad()
    def embeddings(self, images: torch.Tensor) -> np.ndarray:
        """CLS vectors (B, d_v) of the frozen encoder."""
        _, h_cls = self.model.encode_images(torch.as_tensor(images, dtype=torch.float32))
        return h_cls.float().cpu().numpy()

    def generate(
        self, images: torch.Tensor, prompts: Sequence[str], max_new_tokens: int = 100
    ) -> list[str]:
        images = torch.as_tensor(images, dtype=torch.float32)
        if self.num_beams == 1:
            return greedy_generate(self.model, self.tokenizer, images, prompts, max_new_tokens)
        return self.model.generate(
            images, prompt=list(prompts), tokenizer=self.tokenizer,
            max_new_tokens=max_new_tokens, num_beams=self.num_beams,
        )  # fmt: skip


class OnnxBackend:
    """An exported model (:class:`~course_utils.deploy.onnx_export.OnnxReportModel`)."""

    def __init__(self, onnx_model: Any, name: str = "onnxruntime") -> None:
        self.onnx = onnx_model
        self.tokenizer = onnx_model.tokenizer
        self.name = name
        self.image_size = onnx_model.image_size

    def label_probs(self, images: torch.Tensor) -> np.ndarray:
        return self.onnx.label_probs(images)

    def embeddings(self, images: torch.Tensor) -> np.ndarray:
        return self.onnx.encode(images)["embedding"]

    def generate(
        self, images: torch.Tensor, prompts: Sequence[str], max_new_tokens: int = 100
    ) -> list[str]:
        return self.onnx.generate(images, list(prompts), max_new_tokens)


def generate_all(
    backend: Backend,
    images: torch.Tensor,
    prompts: Sequence[str],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 100,
    progress: bool = False,
) -> list[str]:
    """Greedy reports for every image, in batches (post-processing left to the caller)."""
    from tqdm.auto import tqdm

    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
    out: list[str] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"generating ({backend.name})", disable=not progress,
                      leave=False):  # fmt: skip
        chunk = slice(start, start + batch_size)
        out += backend.generate(images[chunk], prompts[chunk], max_new_tokens)
    return out


__all__ = ["Backend", "OnnxBackend", "TorchBackend", "generate_all", "greedy_generate"]
