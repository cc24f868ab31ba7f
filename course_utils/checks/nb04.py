"""Graded checks for notebook 04 (model architecture): projector, detection head, forward pass.

Every check runs the student's code on small fixed inputs (seeded) and compares it with the
library's reference (:mod:`course_utils.model`) after copying the student's weights into the
reference, so any naming of the sub-layers works. Tolerances are stated in each message.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model import DetectionHead as ReferenceHead
from ..model import ModelConfig, RadiologyMultimodalModel
from ..model import Projector as ReferenceProjector
from . import Checker, CheckFailed

TOL = 1e-5
# Distinct sizes so that a swapped dimension shows up as a wrong shape.
D_V, D_H, D_L, K = 6, 10, 4, 5


def _copy_by_shape(student: nn.Module, reference: nn.Module, check: Checker, what: str) -> None:
    """Copy the student's parameters into ``reference``, matching tensors by shape."""
    by_shape: dict[tuple[int, ...], torch.Tensor] = {}
    for p in student.parameters():
        by_shape.setdefault(tuple(p.shape), p.detach())
    missing = [name for name, p in reference.named_parameters() if tuple(p.shape) not in by_shape]
    check.expect(
        not missing,
        f"{what} has the reference's weight and bias shapes",
        {n: tuple(p.shape) for n, p in reference.named_parameters()},
        sorted(by_shape),
        "nn.Linear(in, out) stores weight (out, in) and bias (out,); keep bias=True",
    )
    with torch.no_grad():
        for _, p in reference.named_parameters():
            p.copy_(by_shape[tuple(p.shape)])


def _call(check: Checker, func: Callable[..., Any], hint: str, *args: Any) -> Any:
    """``check.call`` with a hint added when the student's code crashes (e.g. a shape error)."""
    try:
        return check.call(func, *args)
    except NotImplementedError:
        raise
    except CheckFailed as err:
        if isinstance(err.__cause__, NotImplementedError | CheckFailed) or not hint:
            raise
        raise CheckFailed(f"{err}\n  hint: {hint}") from err.__cause__


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


# ---------------------------------------------------------------------- q1
def check_projector(Projector: type[nn.Module]) -> None:  # noqa: N803 - a class is passed in
    """The student's ``Projector(vision_dim, hidden_dim, llm_dim)`` against the reference MLP."""
    check = Checker("Projector")
    torch.manual_seed(0)
    proj = check.call(Projector, D_V, D_H, D_L)
    check.expect(isinstance(proj, nn.Module), "Projector is an nn.Module", "nn.Module", type(proj))
    z = torch.randn(2, 3, D_V, generator=torch.Generator().manual_seed(1)) * 2
    out = _call(
        check,
        proj,
        "W1 maps d_v -> d_h, W2 maps d_h -> d_l; the constructor's "
        "arguments are (vision_dim, hidden_dim, llm_dim)",
        z,
    )
    check.expect(
        isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3, D_L),
        f"Z_v (B=2, N=3, d_v={D_V}) -> H_v (2, 3, d_l={D_L}) with d_h={D_H}",
        (2, 3, D_L),
        tuple(out.shape) if isinstance(out, torch.Tensor) else type(out),
        "W1: d_v -> d_h, W2: d_h -> d_l; the arguments are (vision_dim, hidden_dim, llm_dim)",
    )
    expected_n = D_V * D_H + D_H + D_H * D_L + D_L
    got_n = _n_params(proj)
    check.expect(
        got_n == expected_n,
        "parameter count d_v·d_h + d_h + d_h·d_l + d_l (two Linear layers with biases)",
        expected_n,
        got_n,
        "a single Linear has d_v·d_l + d_l; bias=False drops d_h + d_l"
        if got_n in (D_V * D_L + D_L, expected_n - D_H - D_L)
        else "",
    )
    ref = ReferenceProjector(D_V, D_H, D_L)
    _copy_by_shape(proj, ref, check, "Projector")
    want = ref(z)
    diff = _max_diff(out, want)
    hint = ""
    h = ref.fc1(z)
    for name, act in (("ReLU", F.relu), ("tanh-approximate GELU", None)):
        alt = ref.fc2(act(h) if act else F.gelu(h, approximate="tanh"))
        if _max_diff(out, alt) < TOL:
            hint = f"your activation behaves like {name}; the case study uses nn.GELU() (exact)"
    if not hint and _max_diff(out, F.gelu(want)) < TOL:
        hint = "no activation after the second Linear: H_v = W2·GELU(W1·Z_v + b1) + b2"
    check.expect(
        diff < TOL,
        f"H_v = W2·GELU(W1·Z_v + b1) + b2 matches the reference (max |diff| < {TOL:g}, seed 1)",
        "max |diff| < 1e-05",
        round(diff, 6),
        hint or "order: Linear(d_v, d_h) -> GELU -> Linear(d_h, d_l), nothing else",
    )
    out.sum().backward()
    check.expect(
        all(p.grad is not None for p in proj.parameters()),
        "gradients reach every projector parameter (it is the part that trains first)",
        "all .grad set",
        [n for n, p in proj.named_parameters() if p.grad is None],
    )
    check.done()


# ---------------------------------------------------------------------- q2
def check_detection_head(DetectionHead: type[nn.Module]) -> None:  # noqa: N803
    """The student's ``DetectionHead(vision_dim, num_labels=14)`` on encoder hidden states."""
    check = Checker("DetectionHead")
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 1 + 4, D_V, generator=g)  # (B, 1 + N, d_v), token 0 = CLS
    hidden[:, 0] += 3.0  # a CLS token unlike the patch average
    torch.manual_seed(0)
    head = check.call(DetectionHead, D_V, K)
    check.expect(
        isinstance(head, nn.Module), "DetectionHead is an nn.Module", "nn.Module", type(head)
    )
    out = _call(
        check,
        head,
        "forward gets the encoder's hidden states (B, 1 + N, d_v): pick "
        "the CLS token hidden_states[:, 0] and apply nn.Linear(vision_dim, num_labels)",
        hidden,
    )
    check.expect(
        isinstance(out, torch.Tensor) and tuple(out.shape) == (3, K),
        f"hidden states (B=3, 1+N=5, d_v={D_V}) -> label logits (B, K={K})",
        (3, K),
        tuple(out.shape) if isinstance(out, torch.Tensor) else type(out),
        "one logit per label: nn.Linear(vision_dim, num_labels) on the CLS vector (B, d_v)",
    )
    check.expect(
        _n_params(head) == D_V * K + K,
        "parameter count d_v·K + K (one weight vector w_k and bias b_k per label)",
        D_V * K + K,
        _n_params(head),
    )
    ref = ReferenceHead(D_V, K)
    _copy_by_shape(head, ref, check, "DetectionHead")
    want = ref(hidden[:, 0])
    hint = "logits = w_kᵀ h_cls + b_k with h_cls = hidden_states[:, 0]"
    if (
        _max_diff(out, ref(hidden.mean(1))) < TOL
        or _max_diff(out, ref(hidden[:, 1:].mean(1))) < TOL
    ):
        hint = (
            "you pooled the tokens; the case study's head reads the CLS token hidden_states[:, 0]"
        )
    elif _max_diff(out, torch.sigmoid(want)) < TOL:
        hint = "return logits, not probabilities: the sigmoid lives inside the BCE-with-logits loss"
    elif float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1:
        hint = "values in [0, 1] look like probabilities: drop the sigmoid from forward"
    diff = _max_diff(out, want)
    check.expect(
        diff < TOL,
        f"logits w_kᵀ h_cls + b_k match the reference (max |diff| < {TOL:g}, seed 2)",
        "max |diff| < 1e-05",
        round(diff, 6),
        hint,
    )
    default = check.call(DetectionHead, D_V)
    got = check.call(default, hidden)
    check.expect(
        tuple(got.shape) == (3, 14),
        "num_labels defaults to the 14 CheXpert labels",
        (3, 14),
        tuple(got.shape),
    )
    check.done()


# ---------------------------------------------------------------------- q3
def _get(out: Any, name: str) -> Any:
    if isinstance(out, Mapping):
        return out.get(name)
    return getattr(out, name, None)


def _scalar(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def fixture_model(seed: int = 0) -> RadiologyMultimodalModel:
    """A small random model (32 px images -> 4 visual tokens) with non-default λ weights."""
    cfg = ModelConfig.tiny(
        40,
        image_size=32,
        vision_checkpoint=None,
        lambda_report=0.7,
        lambda_detect=0.3,
        lambda_proj=0.01,
    )
    cfg.vision_config.update(num_hidden_layers=1)
    torch.manual_seed(seed)
    return RadiologyMultimodalModel(cfg, load_weights=False).eval()


def fixture_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two examples, the second right-padded; -100 on <bos> + prompt + padding."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 1, 32, 32, generator=g)
    input_ids = torch.randint(3, 40, (2, 9), generator=g)
    input_ids[:, 0] = 1  # <bos>
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = 0  # <pad>
    labels = input_ids.clone()
    labels[:, :3] = -100  # <bos> + a two-token prompt
    labels[attention_mask == 0] = -100
    nan = float("nan")
    targets = torch.tensor(
        [[1.0, 0.0, -1.0, nan] + [0.0] * 10, [nan, 1.0, 1.0, 0.0] + [1.0, nan] * 5]
    )
    return {
        "images": images,
        "input_ids": input_ids,
        "labels": labels,
        "finding_targets": targets,
        "attention_mask": attention_mask,
    }


def _check_forward_on(
    check: Checker,
    multimodal_forward: Callable[..., Any],
    model: RadiologyMultimodalModel,
    batch: Mapping[str, torch.Tensor],
    where: str,
) -> None:
    reference = copy.deepcopy(model)
    student_model = copy.deepcopy(model)
    want = reference(
        batch["images"],
        batch["input_ids"],
        batch.get("attention_mask"),
        labels=batch["labels"],
        finding_targets=batch["finding_targets"],
    )
    out = check.call(
        multimodal_forward,
        student_model,
        batch["images"],
        batch["input_ids"],
        batch["labels"],
        batch["finding_targets"],
        batch.get("attention_mask"),
    )
    keys = ("logits", "label_logits", "loss_report", "loss_detect", "loss_l2", "loss")
    absent = [k for k in keys if _get(out, k) is None]
    check.expect(not absent, f"[{where}] returns {', '.join(keys)}", keys, f"missing {absent}")
    b, t = batch["input_ids"].shape
    vocab = want.logits.shape[-1]
    logits = _get(out, "logits")
    check.expect(
        tuple(logits.shape) == (b, t, vocab),
        f"[{where}] logits cover the text positions only: (B, T, V)",
        (b, t, vocab),
        tuple(logits.shape),
        "drop the N visual positions: all_logits[:, N:]",
    )
    check.expect(
        tuple(_get(out, "label_logits").shape) == (b, model.config.num_labels),
        f"[{where}] label_logits are (B, K)",
        (b, model.config.num_labels),
        tuple(_get(out, "label_logits").shape),
    )
    keep = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    diff = _max_diff(logits[keep], want.logits[keep])
    check.expect(
        diff < 1e-4,
        f"[{where}] report logits match the reference on every real token (max |diff| < 1e-4)",
        "< 1e-4",
        round(diff, 6),
        "prepend H_v = projector(patch tokens) to the text embeddings; patch tokens exclude CLS",
    )
    cfg = model.config
    hints = {
        "loss_l2": "‖θ_proj‖² = sum over the projector's weights and biases of p², a SUM (not a "
        "mean), and only the projector's parameters",
        "loss_detect": "detection_loss(label_logits, finding_targets, config.uncertain_policy, "
        "config.blank_policy) with label_logits from the CLS token",
        "loss_report": "the N visual positions must be -100 in the LM labels; shift by one "
        "(logits at t predict token t+1); mean over target tokens",
    }
    for name in ("loss_l2", "loss_detect", "loss_report"):
        got, ref = _scalar(_get(out, name)), _scalar(want[name])
        check.expect(
            abs(got - ref) <= TOL * max(1.0, abs(ref)),
            f"[{where}] {name} matches the reference (|diff| < 1e-5 relative, seed 0)",
            round(ref, 6),
            round(got, 6),
            hints[name],
        )
    got, ref = _scalar(_get(out, "loss")), _scalar(want.loss)
    check.expect(
        abs(got - ref) <= TOL * max(1.0, abs(ref)),
        f"[{where}] loss = λ1·L_report + λ2·L_detect + λ3·‖θ_proj‖² with the config's λ "
        f"({cfg.lambda_report:g}, {cfg.lambda_detect:g}, {cfg.lambda_proj:g})",
        round(ref, 6),
        round(got, 6),
        "read the weights from model.config.lambda_report / lambda_detect / lambda_proj",
    )
    loss = _get(out, "loss")
    check.expect(
        isinstance(loss, torch.Tensor) and loss.requires_grad,
        f"[{where}] loss is a tensor with a graph (so it can be backpropagated)",
        "requires_grad=True",
        getattr(loss, "requires_grad", type(loss)),
    )
    loss.backward()
    want.loss.backward()
    leaked = [n for n, p in student_model.vision.named_parameters() if p.grad is not None]
    check.expect(
        not leaked and not any(p.requires_grad for p in student_model.vision.parameters()),
        f"[{where}] the vision encoder stays frozen: no gradient reaches it",
        "no encoder parameter with .grad or requires_grad",
        leaked[:3],
        "run the encoder under torch.no_grad() and never call requires_grad_(True) on it",
    )
    grads = dict(student_model.projector.named_parameters())
    for name, p in reference.projector.named_parameters():
        g = grads[name].grad
        ok = g is not None and _max_diff(g, p.grad) <= 1e-4 * max(1.0, float(p.grad.abs().max()))
        check.expect(
            ok,
            f"[{where}] projector gradient {name} matches the reference (incl. 2·λ3·θ)",
            "matching gradient",
            "None" if g is None else f"max |diff| {_max_diff(g, p.grad):.2e}",
            "keep every loss term in the graph (no .item(), no torch.no_grad() around them)",
        )


def check_forward(
    multimodal_forward: Callable[..., Any],
    model: RadiologyMultimodalModel | None = None,
    batch: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Compare ``multimodal_forward(model, images, input_ids, labels, finding_targets,
    attention_mask)`` with ``RadiologyMultimodalModel.forward``: on a fixed random fixture with
    non-default λ weights, and on ``model``/``batch`` (the notebook's) when given. Both models
    are deep-copied, so the caller's model is left untouched."""
    check = Checker("multimodal_forward")
    _check_forward_on(check, multimodal_forward, fixture_model(), fixture_batch(), "fixture")
    if model is not None and batch is not None:
        was_training = model.training
        model.eval()
        try:
            _check_forward_on(check, multimodal_forward, model, batch, "your model")
        finally:
            model.train(was_training)
    check.done()
