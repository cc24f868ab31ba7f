"""ONNX export of the report model and greedy report generation with onnxruntime.

Three graphs make a full report without PyTorch:

* ``encoder.onnx`` - images (B, 1, S, S) in [0, 1] -> ``visual_tokens`` (B, N, d_l) (encoder +
  pooling + projector), ``label_logits`` (B, K) (detection head on CLS) and ``embedding``
  (B, d_v) (the CLS vector, for drift monitoring). Normalisation is inside the graph.
* ``embed.onnx`` - token ids (B, T) -> token embeddings (B, T, d_l) (BioGPT's scale included).
* ``decoder.onnx`` - one decoding step *with past key/values*: ``inputs_embeds`` (B, T, d_l),
  ``attention_mask`` (B, P + T), ``position_ids`` (B, T) and per layer ``past_key_i`` /
  ``past_value_i`` (B, H, P, d_h) -> ``logits`` of the last position (B, V) and
  ``present_key_i`` / ``present_value_i`` (B, H, P + T, d_h). The same graph runs the prompt
  (P = 0, T = N visual + prompt tokens) and every later token (T = 1).

:class:`OnnxReportModel` replays :meth:`RadiologyMultimodalModel.generate`'s greedy search
exactly: left-padded prompts, padding moved in front of the visual tokens, positions from the
attention mask, ``<pad>`` after ``<eos>``. Export uses the TorchScript exporter
(``dynamo=False``), which needs no extra package.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model.components import pool_patch_grid
from ..model.generation import cut_at_eos
from ..model.prompts import build_prompt, encode_prompt, pad_batch

OPSET = 17
META_NAME = "onnx_model.json"
LABEL_PROMPT_NAME = "label_prompt.npz"
ENCODER_OUTPUTS = ("visual_tokens", "label_logits", "embedding")


# ---------------------------------------------------------------------- wrappers
class EncoderForExport(nn.Module):
    """images (B, 1, S, S) in [0, 1] -> (visual_tokens (B, N, d_l), label_logits (B, K),
    embedding (B, d_v)): the model's vision side with normalisation, no Python checks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        channels = m.image_mean.shape[1]
        x = images.expand(-1, channels, -1, -1) if channels != images.shape[1] else images
        x = ((x - m.image_mean) / m.image_std).to(next(m.vision.parameters()).dtype)
        kwargs: dict[str, Any] = {}
        native = int(getattr(m.vision.config, "image_size", x.shape[-1]))
        if m.config.vision_family == "vit" and x.shape[-1] != native:
            kwargs["interpolate_pos_encoding"] = True
        hidden = m.vision(pixel_values=x, **kwargs).last_hidden_state
        h_cls = hidden[:, 0]
        patches = pool_patch_grid(hidden[:, m.num_prefix_tokens :], m.config.visual_grid)
        visual = m.projector(patches.to(m.projector.fc1.weight.dtype))
        logits = m.detection_head(h_cls.to(m.detection_head.linear.weight.dtype))
        return visual.float(), logits.float(), h_cls.float()


class EmbedForExport(nn.Module):
    """token ids (B, T) -> the LM's input embeddings (B, T, d_l)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.embed = lm.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class DecoderForExport(nn.Module):
    """One LM step with the KV cache passed as plain tensors (see the module docstring)."""

    def __init__(self, lm: nn.Module, num_layers: int) -> None:
        super().__init__()
        self.lm = lm
        self.num_layers = num_layers

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers[: self.num_layers]:
            present += [layer.keys, layer.values]
        return (out.logits[:, -1].float(), *present)


# ---------------------------------------------------------------------- export
def _image_size(model: nn.Module) -> int:
    return int(getattr(model.vision.config, "image_size", 128))


def _export(module: nn.Module, args: tuple, path: Path, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=OPSET,
            do_constant_folding=True, **kwargs,
        )  # fmt: skip
    return path


def export_encoder_onnx(model: nn.Module, path: str | os.PathLike) -> Path:
    """Export encoder + projector + detection head (see :class:`EncoderForExport`).

    Input ``images`` (B, 1, S, S) float32 in [0, 1], S = the encoder's image size, dynamic batch;
    outputs ``visual_tokens``, ``label_logits``, ``embedding``.
    """
    model = model.eval()
    size = _image_size(model)
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    return _export(
        EncoderForExport(model).eval(),
        (example,),
        Path(path),
        input_names=["images"],
        output_names=list(ENCODER_OUTPUTS),
        dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in ENCODER_OUTPUTS}},
    )


def kv_layout(lm: nn.Module) -> dict[str, int]:
    """``num_layers``, ``num_heads`` (key/value heads) and ``head_dim`` of the LM's cache,
    read from one tiny forward pass (works for BioGPT, GPT-2 and LLaMA alike)."""
    dim = lm.get_input_embeddings().embedding_dim
    with torch.no_grad():
        out = lm(inputs_embeds=torch.zeros(1, 2, dim), use_cache=True)
    layers = out.past_key_values.layers
    keys = layers[0].keys
    return {
        "num_layers": len(layers),
        "num_heads": int(keys.shape[1]),
        "head_dim": int(keys.shape[3]),
    }


def export_decoder_onnx(model: nn.Module, directory: str | os.PathLike) -> dict[str, Path]:
    """Export the token embedding (``embed.onnx``) and the cached decoding step
    (``decoder.onnx``) of ``model.lm`` into ``directory``."""
    directory = Path(directory)
    lm = model.lm.eval()
    layout = kv_layout(lm)
    n, heads, hd = layout["num_layers"], layout["num_heads"], layout["head_dim"]
    dim = lm.get_input_embeddings().embedding_dim
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    embed_path = _export(
        EmbedForExport(lm).eval(), (ids,), directory / "embed.onnx",
        input_names=["input_ids"], output_names=["inputs_embeds"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                      "inputs_embeds": {0: "batch", 1: "tokens"}},
    )  # fmt: skip
    # Trace with left padding, several new tokens and a non-empty past, so that no shortcut
    # (all-ones mask, single token) is frozen into the graph.
    g = torch.Generator().manual_seed(0)
    batch, past_len, new = 2, 3, 4
    embeds = torch.randn(batch, new, dim, generator=g)
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    mask[0, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
    past = [torch.randn(batch, heads, past_len, hd, generator=g) for _ in range(2 * n)]
    past_names = [f"past_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    present_names = [f"present_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    dynamic = {
        "inputs_embeds": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "tokens"},
        "logits": {0: "batch"},
        **{name: {0: "batch", 2: "past"} for name in past_names},
        **{name: {0: "batch", 2: "total"} for name in present_names},
    }
    decoder_path = _export(
        DecoderForExport(lm, n).eval(), (embeds, mask, positions, *past),
        directory / "decoder.onnx",
        input_names=["inputs_embeds", "attention_mask", "position_ids", *past_names],
        output_names=["logits", *present_names], dynamic_axes=dynamic,
    )  # fmt: skip
    return {"embed": embed_path, "decoder": decoder_path}


def export_onnx(
    model: nn.Module,
    tokenizer: Any,
    directory: str | os.PathLike,
    model_version: str = "dev",
    **extra_meta: Any,
) -> Path:
    """Export all three graphs, the tokenizer and ``onnx_model.json`` into ``directory``:
    everything :class:`OnnxReportModel` needs (PyTorch is not needed to load it).

    ``extra_meta`` (e.g. ``target``, ``prompt_context``, ``max_new_tokens``) is stored in the
    JSON for the service that loads the export."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    export_encoder_onnx(model, directory / "encoder.onnx")
    export_decoder_onnx(model, directory)
    tokenizer.save_pretrained(directory / "tokenizer")
    label_prompt = getattr(model, "label_prompt", None)
    if label_prompt is not None:  # two (K, d_l) tables: a weighted sum needs no graph
        np.savez(
            directory / LABEL_PROMPT_NAME,
            present=_numpy(label_prompt.present),
            absent=_numpy(label_prompt.absent),
        )
    meta = {
        "model_version": model_version,
        "image_size": _image_size(model),
        "num_labels": int(model.config.num_labels),
        **kv_layout(model.lm),
        "opset": OPSET,
        **extra_meta,
    }
    (directory / META_NAME).write_text(json.dumps(meta, indent=2))
    return directory


# ---------------------------------------------------------------------- runtime
def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle onnxruntime threads spin-wait by default; next to PyTorch on 2 cores that steals the
    # CPU from whatever runs next (and skews every interleaved timing).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxReportModel:
    """Reports from the exported graphs with onnxruntime (greedy decoding, KV cache).

    Args:
        directory: written by :func:`export_onnx`.
        threads: intra-op threads per session (default: torch's thread count).
        decoder_file: the decoder graph to load (e.g. an INT8 ``decoder.int8.onnx``).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        threads: int | None = None,
        decoder_file: str = "decoder.onnx",
    ) -> None:
        from transformers import PreTrainedTokenizerFast

        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not an exported model ({META_NAME} missing)")
        self.directory = directory
        self.meta = json.loads(meta_path.read_text())
        self.encoder = _session(directory / "encoder.onnx", threads)
        self.embed = _session(directory / "embed.onnx", threads)
        self.decoder = _session(directory / decoder_file, threads)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(directory / "tokenizer")
        self.image_size = int(self.meta["image_size"])
        self.num_layers = int(self.meta["num_layers"])
        prompt_file = directory / LABEL_PROMPT_NAME
        self.label_prompt: tuple[np.ndarray, np.ndarray] | None = None
        if prompt_file.is_file():
            with np.load(prompt_file) as tables:
                self.label_prompt = (tables["present"], tables["absent"])

    def encode(self, images: Any) -> dict[str, np.ndarray]:
        """images (B, 1, S, S) in [0, 1] -> ``visual_tokens``, ``label_logits``, ``embedding``."""
        x = np.ascontiguousarray(_numpy(images), dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be (B, 1, {self.image_size}, {self.image_size}), got {x.shape}"
            )
        outputs = self.encoder.run(None, {"images": x})
        return dict(zip(ENCODER_OUTPUTS, outputs, strict=True))

    def label_probs(self, images: Any) -> np.ndarray:
        """Detection-head probabilities (B, K)."""
        return 1.0 / (1.0 + np.exp(-self.encode(images)["label_logits"]))

    def prefix(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """The LM prefix from :meth:`encode`'s outputs: the visual tokens (B, N, d_l), then the
        label-prompt tokens ``p·present + (1-p)·absent`` (B, K, d_l) when the model has them."""
        visual = encoded["visual_tokens"]
        if self.label_prompt is None:
            return visual
        present, absent = self.label_prompt
        p = (1.0 / (1.0 + np.exp(-encoded["label_logits"].astype(np.float32))))[:, :, None]
        tokens = p * present[None] + (1.0 - p) * absent[None]
        return np.concatenate([visual, tokens.astype(visual.dtype)], axis=1)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run(None, {"input_ids": ids.astype(np.int64)})[0]

    def _step(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
              past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:  # fmt: skip
        feed = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        for i in range(self.num_layers):
            feed[f"past_key_{i}"], feed[f"past_value_{i}"] = past[2 * i], past[2 * i + 1]
        logits, *present = self.decoder.run(None, feed)
        return logits, present

    def generate_ids(
        self,
        visual: np.ndarray,
        prompt_ids: list[list[int]],
        max_new_tokens: int = 100,
        *,
        pad_id: int,
        eos_id: int,
    ) -> list[list[int]]:
        """Greedy ids per study (cut after ``<eos>``) from the LM prefix (B, N, d_l)
        (:meth:`prefix`: visual tokens, plus label-prompt tokens when the model has them).

        A finished report leaves the batch, so a batch costs about its longest report.
        """
        batch, n_visual, _ = visual.shape
        ids, mask = pad_batch(prompt_ids, pad_id, side="left")
        text = self._embed(np.asarray(ids, dtype=np.int64))
        embeds = np.concatenate([visual.astype(text.dtype), text], axis=1)
        full = np.concatenate([np.ones((batch, n_visual), np.int64), np.asarray(mask)], axis=1)
        order = np.argsort(full, axis=1, kind="stable")  # padding first, as the model does
        embeds = np.take_along_axis(embeds, order[:, :, None], axis=1)
        full = np.take_along_axis(full, order, axis=1)
        positions = np.clip(full.cumsum(-1) - 1, 0, None)
        heads, hd = int(self.meta["num_heads"]), int(self.meta["head_dim"])
        past = [np.zeros((batch, heads, 0, hd), np.float32) for _ in range(2 * self.num_layers)]
        logits, past = self._step(embeds, full, positions, past)
        last = positions[:, -1:]
        out = np.full((batch, max_new_tokens), pad_id, dtype=np.int64)
        active = np.arange(batch)
        for step in range(max_new_tokens):
            token = logits.argmax(-1)
            out[active, step] = token
            keep = token != eos_id
            if step == max_new_tokens - 1 or not keep.any():
                break
            if not keep.all():  # finished reports leave the batch (and their cache rows)
                active, token, full, last = active[keep], token[keep], full[keep], last[keep]
                past = [p[keep] for p in past]
            full = np.concatenate([full, np.ones((len(active), 1), np.int64)], axis=1)
            last = last + 1
            logits, past = self._step(self._embed(token[:, None]), full, last, past)
        return [cut_at_eos(row.tolist(), eos_id) for row in out]

    def generate(
        self,
        images: Any,
        prompt: str | list[str] | None = None,
        max_new_tokens: int = 100,
    ) -> list[str]:
        """Greedy reports for images (B, 1, S, S) in [0, 1], as ``model.generate`` writes them."""
        tok = self.tokenizer
        visual = self.prefix(self.encode(images))
        n = visual.shape[0]
        prompts = [prompt or build_prompt()] * n if not isinstance(prompt, list) else prompt
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} images")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = self.generate_ids(
            visual, [encode_prompt(tok, p) for p in prompts], max_new_tokens,
            pad_id=int(pad), eos_id=int(tok.eos_token_id),
        )  # fmt: skip
        return [tok.decode(row, skip_special_tokens=True).strip() for row in ids]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def quantize_onnx_decoder(directory: str | os.PathLike) -> Path:
    """INT8 dynamic quantisation of ``decoder.onnx`` with onnxruntime -> ``decoder.int8.onnx``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = Path(directory)
    out = directory / "decoder.int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(directory / "decoder.onnx"), str(out), weight_type=QuantType.QInt8)
    return out


__all__ = [
    "DecoderForExport",
    "EmbedForExport",
    "EncoderForExport",
    "OnnxReportModel",
    "export_decoder_onnx",
    "export_encoder_onnx",
    "export_onnx",
    "kv_layout",
    "quantize_onnx_decoder",
]
