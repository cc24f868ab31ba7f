"""Grading validity for notebook 04: plausible wrong answers lose points, correct alternatives pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_utils.checks import CheckFailed
from course_utils.checks.nb04 import (
    check_detection_head,
    check_forward,
    check_projector,
    fixture_batch,
    fixture_model,
)
from course_utils.model import detection_loss


# ---------------------------------------------------------------------- q1 projector
def make_projector(act: str = "gelu", bias: bool = True, layers: int = 2, swap: bool = False):
    """A student-style projector with one knob per classic mistake."""

    class Projector(nn.Module):
        def __init__(self, vision_dim, hidden_dim, llm_dim):
            super().__init__()
            if swap:  # dims in the wrong order
                vision_dim, hidden_dim = hidden_dim, vision_dim
            if layers == 1:
                self.layers = nn.Sequential(nn.Linear(vision_dim, llm_dim, bias=bias))
            else:
                activation = {"gelu": nn.GELU(), "relu": nn.ReLU(), "tanh": nn.GELU("tanh")}[act]
                self.layers = nn.Sequential(
                    nn.Linear(vision_dim, hidden_dim, bias=bias),
                    activation,
                    nn.Linear(hidden_dim, llm_dim, bias=bias),
                )

        def forward(self, z_v):
            return self.layers(z_v)

    return Projector


class FunctionalProjector(nn.Module):
    """A correct alternative: raw Parameters, F.linear, other names."""

    def __init__(self, vision_dim, hidden_dim, llm_dim):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(hidden_dim, vision_dim) * 0.1)
        self.b1 = nn.Parameter(torch.zeros(hidden_dim))
        self.w2 = nn.Parameter(torch.randn(llm_dim, hidden_dim) * 0.1)
        self.b2 = nn.Parameter(torch.zeros(llm_dim))

    def forward(self, z_v):
        return F.linear(F.gelu(F.linear(z_v, self.w1, self.b1)), self.w2, self.b2)


def test_correct_projectors_pass(capsys):
    check_projector(make_projector())
    check_projector(FunctionalProjector)
    assert "all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "knob, message",
    [
        ({"act": "relu"}, "ReLU"),
        ({"act": "tanh"}, "tanh-approximate"),
        ({"bias": False}, "bias=False"),
        ({"layers": 1}, "single Linear"),
        ({"swap": True}, "vision_dim, hidden_dim, llm_dim"),
    ],
)
def test_wrong_projectors_fail(knob, message):
    with pytest.raises(CheckFailed, match=message):
        check_projector(make_projector(**knob))


def test_unfinished_projector_raises_not_implemented():
    class Stub(nn.Module):
        def __init__(self, *args):
            raise NotImplementedError("Projector: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_projector(Stub)


# ---------------------------------------------------------------------- q2 detection head
def make_head(pool: str = "cls", sigmoid: bool = False, fixed_k: int | None = None):
    class DetectionHead(nn.Module):
        def __init__(self, vision_dim, num_labels=14):
            super().__init__()
            self.linear = nn.Linear(vision_dim, fixed_k or num_labels)

        def forward(self, hidden_states):
            h = hidden_states[:, 0] if pool == "cls" else hidden_states.mean(1)
            out = self.linear(h)
            return torch.sigmoid(out) if sigmoid else out

    return DetectionHead


class EinsumHead(nn.Module):
    """A correct alternative: explicit w_k, b_k and einsum."""

    def __init__(self, vision_dim, num_labels=14):
        super().__init__()
        self.w = nn.Parameter(torch.randn(num_labels, vision_dim) * 0.1)
        self.b = nn.Parameter(torch.zeros(num_labels))

    def forward(self, hidden_states):
        return torch.einsum("bd,kd->bk", hidden_states[:, 0, :], self.w) + self.b


def test_correct_heads_pass():
    check_detection_head(make_head())
    check_detection_head(EinsumHead)


@pytest.mark.parametrize(
    "knob, message",
    [
        ({"pool": "mean"}, "pooled the tokens"),
        ({"sigmoid": True}, "return logits"),
        ({"fixed_k": 14}, r"label logits \(B, K=5\)"),
        ({"fixed_k": 13}, r"label logits \(B, K=5\)"),
    ],
)
def test_wrong_heads_fail(knob, message):
    with pytest.raises(CheckFailed, match=message):
        check_detection_head(make_head(**knob))


# ---------------------------------------------------------------------- q3 forward
def make_forward(
    mask_visual: bool = True,
    l2: str = "projector_sum",
    weighted: bool = True,
    unfreeze: bool = False,
    pool: str = "cls",
    detach_l2: bool = False,
):
    """A student-style forward with one knob per classic mistake."""

    def multimodal_forward(model, images, input_ids, labels, finding_targets, attention_mask=None):
        if unfreeze:
            model.vision.requires_grad_(True)
        pixels = model.preprocess_images(images)
        hidden = model.vision(pixel_values=pixels).last_hidden_state
        h_cls = hidden[:, 0] if pool == "cls" else hidden[:, 1:].mean(1)
        h_v = model.projector(hidden[:, 1:])
        n = h_v.shape[1]
        embeds = torch.cat([h_v, model.lm.get_input_embeddings()(input_ids)], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = torch.cat([torch.ones(h_v.shape[:2], dtype=torch.long), attention_mask], dim=1)
        all_logits = model.lm(inputs_embeds=embeds, attention_mask=mask).logits
        fill = -100 if mask_visual else 0
        full = torch.cat([torch.full((labels.shape[0], n), fill), labels], dim=1)
        loss_report = F.cross_entropy(
            all_logits[:, :-1].flatten(0, 1), full[:, 1:].flatten(), ignore_index=-100
        )
        label_logits = model.detection_head(h_cls)
        cfg = model.config
        loss_detect = detection_loss(
            label_logits, finding_targets, cfg.uncertain_policy, cfg.blank_policy
        )
        params = list(model.parameters()) if l2 == "all" else list(model.projector.parameters())
        if l2 == "projector_mean":
            loss_l2 = sum(p.pow(2).mean() for p in params)
        else:
            loss_l2 = sum(p.pow(2).sum() for p in params)
        if detach_l2:
            loss_l2 = loss_l2.detach()
        if weighted:
            loss = (
                cfg.lambda_report * loss_report
                + cfg.lambda_detect * loss_detect
                + cfg.lambda_proj * loss_l2
            )
        else:
            loss = loss_report + loss_detect + loss_l2
        return {
            "logits": all_logits[:, n:],
            "label_logits": label_logits,
            "loss_report": loss_report,
            "loss_detect": loss_detect,
            "loss_l2": loss_l2,
            "loss": loss,
        }

    return multimodal_forward


def hardcoded_lambdas(model, images, input_ids, labels, finding_targets, attention_mask=None):
    out = make_forward()(model, images, input_ids, labels, finding_targets, attention_mask)
    out["loss"] = out["loss_report"] + 0.5 * out["loss_detect"] + 1e-4 * out["loss_l2"]
    return out


def library_alternative(model, images, input_ids, labels, finding_targets, attention_mask=None):
    """Correct alternative: encode_images + slicing the text logits + report_loss."""
    from course_utils.model import report_loss

    with torch.no_grad():
        patches, h_cls = model.encode_images(images)
    h_v = model.projector(patches)
    embeds = torch.cat([h_v, model.lm.get_input_embeddings()(input_ids)], dim=1)
    logits = model.lm(inputs_embeds=embeds).logits[:, h_v.shape[1] :]
    label_logits = model.detection_head(h_cls)
    cfg = model.config
    terms = {
        "loss_report": report_loss(logits, labels),
        "loss_detect": detection_loss(label_logits, finding_targets),
        "loss_l2": model.projector.squared_norm(),
    }
    lambdas = (cfg.lambda_report, cfg.lambda_detect, cfg.lambda_proj)
    loss = sum(w * v for w, v in zip(lambdas, terms.values(), strict=True))
    return dict(terms, logits=logits, label_logits=label_logits, loss=loss)


def test_correct_forwards_pass(capsys):
    check_forward(make_forward())
    check_forward(library_alternative)
    model, batch = fixture_model(seed=3), fixture_batch(seed=3)
    check_forward(make_forward(), model=model, batch=batch)
    assert "multimodal_forward: all" in capsys.readouterr().out
    assert all(not p.requires_grad for p in model.vision.parameters())  # caller's model untouched
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "knob, message",
    [
        ({"mask_visual": False}, "loss_report matches"),
        ({"l2": "all"}, "loss_l2 matches"),
        ({"l2": "projector_mean"}, "a SUM"),
        ({"weighted": False}, "λ1·L_report"),
        ({"unfreeze": True}, "stays frozen"),
        ({"pool": "mean"}, "loss_detect matches"),
        ({"detach_l2": True}, "projector gradient"),
    ],
)
def test_wrong_forwards_fail(knob, message):
    with pytest.raises(CheckFailed, match=message):
        check_forward(make_forward(**knob))


def test_hardcoded_case_study_lambdas_fail():
    with pytest.raises(CheckFailed, match="config's λ"):
        check_forward(hardcoded_lambdas)
