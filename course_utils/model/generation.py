"""Report generation shared by the LLaVA-style model and the Qwen2-VL wrapper.

Both models expose ``forward(images, input_ids, attention_mask, labels) -> .logits`` over the text
positions and a ``_generate_token_ids`` hook; this mixin turns prompts into ids, runs greedy or
beam search through Hugging Face ``generate`` (KV cache, beams), decodes, and scores every
generated sequence by teacher forcing so that greedy and beam outputs are comparable numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .prompts import build_prompt, encode_prompt, pad_batch


@dataclass
class GenerationResult:
    """Generated reports with their scores.

    Attributes:
        texts: decoded reports (special tokens removed).
        token_ids: generated ids per report, up to and including ``<eos>`` when it was produced.
        log_probs: (B,) total log-probability log p(tokens | image, prompt) of each generated
            sequence, recomputed by teacher forcing so greedy and beam results are comparable.
    """

    texts: list[str]
    token_ids: list[list[int]]
    log_probs: torch.Tensor


def cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    """Ids up to and including the first ``eos_id`` (all of them when there is none)."""
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


class ReportGenerationMixin:
    """``generate`` and ``sequence_log_probs`` for a model with the course's forward signature."""

    #: token ids the model must never emit (e.g. Qwen2-VL's vision placeholders)
    suppressed_token_ids: tuple[int, ...] = ()

    def _generate_token_ids(
        self,
        images: torch.Tensor,
        prompt_ids: list[list[int]],
        tokenizer: Any,
        gen_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """Hook each model class implements (RadiologyMultimodalModel, Qwen2VLReportModel)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _generate_token_ids")

    def _prompt_ids(
        self, n: int, prompt: str | list[str] | None, tokenizer: Any
    ) -> list[list[int]]:
        if prompt is None:
            prompt = build_prompt()
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise ValueError(f"got {len(prompts)} prompts for {n} images")
        return [encode_prompt(tokenizer, p) for p in prompts]

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        prompt: str | list[str] | None = None,
        tokenizer: Any = None,
        max_new_tokens: int = 80,
        num_beams: int = 1,
        *,
        length_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        return_scores: bool = False,
    ) -> list[str] | GenerationResult:
        """Write reports for a batch of images (greedy with ``num_beams=1``, else beam search).

        Args:
            images: (B, 1, H, W) in [0, 1].
            prompt: one prompt for all images, one per image, or ``None`` for
                ``build_prompt("findings")``.
            tokenizer: the LM's tokenizer (``bos``/``eos``/``pad`` ids are read from it).
            max_new_tokens: generation budget (the ``<eos>`` included).
            num_beams: 1 = greedy; the case study evaluates with beam search, 4 beams.
            length_penalty: beams are ranked by ``log p / length**length_penalty``; 0 (default)
                ranks by total log-probability, the quantity beam search maximises; 1.0 is
                Hugging Face's per-token average, which favours longer reports.
            repetition_penalty, no_repeat_ngram_size: Hugging Face's anti-repetition options.
            return_scores: return a :class:`GenerationResult` with total log-probabilities
                instead of the texts alone.
        """
        if tokenizer is None:
            raise ValueError(
                "generate() needs the tokenizer that encodes prompts and decodes reports"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token: generation could never stop")
        if num_beams < 1 or max_new_tokens < 1:
            raise ValueError(
                f"need num_beams >= 1 and max_new_tokens >= 1, got {num_beams}, {max_new_tokens}"
            )
        if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
            raise ValueError("images must be a (B, 1, H, W) tensor")
        was_training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            prompt_ids = self._prompt_ids(images.shape[0], prompt, tokenizer)
            pad_id = (
                tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id
            )
            gen_kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "num_beams": num_beams,
                "do_sample": False,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": pad_id,
                "repetition_penalty": repetition_penalty,
                "no_repeat_ngram_size": no_repeat_ngram_size,
            }
            if self.suppressed_token_ids:
                gen_kwargs["suppress_tokens"] = list(self.suppressed_token_ids)
            if num_beams > 1:
                # early_stopping=False keeps searching while an unfinished beam could still win;
                # with length_penalty=0 that test is exact (scores only fall as tokens are added).
                gen_kwargs.update(length_penalty=length_penalty, early_stopping=False)
            sequences = self._generate_token_ids(images, prompt_ids, tokenizer, gen_kwargs)
            token_ids = [cut_at_eos(row.tolist(), tokenizer.eos_token_id) for row in sequences]
            texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in token_ids]
            if not return_scores:
                return texts
            log_probs = self.sequence_log_probs(images, prompt_ids, token_ids, tokenizer)
            return GenerationResult(texts=texts, token_ids=token_ids, log_probs=log_probs)
        finally:
            self.train(was_training)  # type: ignore[attr-defined]

    @torch.no_grad()
    def sequence_log_probs(
        self,
        images: torch.Tensor,
        prompt_ids: list[list[int]],
        continuations: list[list[int]],
        tokenizer: Any,
    ) -> torch.Tensor:
        """Total log p(continuation | image, prompt) per example, by teacher forcing -> (B,).

        ``prompt_ids`` are encoded prompts (:func:`encode_prompt`), ``continuations`` the ids to
        score (e.g. :attr:`GenerationResult.token_ids`).
        """
        if not (len(prompt_ids) == len(continuations) == images.shape[0]):
            raise ValueError("need one prompt and one continuation per image")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token (e.g. <bos>) to condition on")
        was_training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            full = [list(p) + list(c) for p, c in zip(prompt_ids, continuations, strict=True)]
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            ids, mask = pad_batch(full, pad_id, side="right")
            logits = self(  # type: ignore[operator]
                images, torch.tensor(ids), torch.tensor(mask)
            ).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            totals = []
            for i, (p, c) in enumerate(zip(prompt_ids, continuations, strict=True)):
                # token at position len(p) + j is predicted by the logits at len(p) + j - 1
                positions = torch.arange(len(p) - 1, len(p) - 1 + len(c), device=logits.device)
                targets = torch.tensor(c, dtype=torch.long, device=logits.device)
                totals.append(log_probs[i, positions, targets].sum())
            return torch.stack(totals)
        finally:
            self.train(was_training)  # type: ignore[attr-defined]
