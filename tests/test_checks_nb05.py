"""Grading validity for notebook 05: plausible wrong answers lose points, correct alternatives pass."""

from __future__ import annotations

import copy
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch
from torch import nn

from course_utils import plots_train, train
from course_utils.checks import CheckFailed
from course_utils.checks.nb04 import fixture_model
from course_utils.checks.nb05 import (
    CLIP,
    add_fake_lora,
    check_configure_stage,
    check_cosine_with_warmup,
    check_train_step,
    toy_problem,
)
from course_utils.labels import CHEXPERT_LABELS


# ====================================================================== q1 configure_stage
def make_configure_stage(
    freeze_first: bool = True,
    vision_in_stage2: bool = False,
    lm_in_stage1: bool = False,
    head_in_stage2: bool = False,
    ignore_lora: bool = False,
    lr_rule: str = "correct",
    decay: str = "split",
    forget_lm_params: bool = False,
    duplicate: bool = False,
    returns: str = "groups",
):
    """A student-style configure_stage with one knob per classic mistake."""

    def configure_stage(model, stage, config):
        if freeze_first:
            model.requires_grad_(False)
        model.projector.requires_grad_(True)
        if stage == 1:
            model.detection_head.requires_grad_(True)
            if lm_in_stage1:
                model.lm.requires_grad_(True)
            lr = config.stage1_lr
        else:
            if head_in_stage2:
                model.detection_head.requires_grad_(True)
            if vision_in_stage2:
                model.vision.requires_grad_(True)
            for name, p in model.lm.named_parameters():
                p.requires_grad_(not config.lora or ignore_lora or "lora_" in name)
            default = 1e-4 if config.lora else 2e-5
            if lr_rule == "stage1":
                lr = config.stage1_lr
            elif lr_rule == "swapped":
                lr = config.stage2_lr or (2e-5 if config.lora else 1e-4)
            elif lr_rule == "ignore_override":
                lr = default
            else:
                lr = config.stage2_lr if config.stage2_lr is not None else default
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if forget_lm_params:
            trainable = [(n, p) for n, p in trainable if not n.startswith("lm.")]
        if decay == "none_excluded":
            groups = [{"params": [p for _, p in trainable], "lr": lr, "weight_decay": 0.01}]
        else:
            wd = 0.01 if decay == "hardcoded" else config.weight_decay
            groups = [
                {"params": [p for _, p in trainable if p.ndim >= 2], "lr": lr, "weight_decay": wd},
                {"params": [p for _, p in trainable if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
            ]
        if duplicate:
            groups.append({"params": groups[0]["params"][:1], "lr": lr, "weight_decay": 0.0})
        if returns == "optimizer":
            return torch.optim.AdamW(groups)
        if returns == "params":
            return [p for _, p in trainable]
        return groups

    return configure_stage


def hf_style_configure_stage(model, stage, config):
    """A correct alternative: name-based freezing, HF-style no-decay names, frozen parameters
    left in the groups (AdamW skips them: they never get a gradient)."""
    for name, p in model.named_parameters():
        if name.startswith("projector."):
            p.requires_grad = True
        elif name.startswith("detection_head."):
            p.requires_grad = stage == 1
        elif name.startswith("lm."):
            p.requires_grad = stage == 2 and (not config.lora or "lora_" in name)
        else:
            p.requires_grad = False
    if stage == 1:
        lr = config.stage1_lr
    elif config.stage2_lr is not None:
        lr = config.stage2_lr
    else:
        lr = train.config.STAGE2_LR_LORA if config.lora else train.config.STAGE2_LR_FULL
    no_decay = ("bias", "layer_norm.weight", "layernorm.weight", "embed")
    named = list(model.named_parameters())
    return [
        {
            "params": [p for n, p in named if not any(k in n for k in no_decay)],
            "weight_decay": config.weight_decay,
            "lr": lr,
        },
        {
            "params": [p for n, p in named if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
            "lr": lr,
        },
    ]


def library_configure_stage(model, stage, config):
    """A correct alternative: the library's configure_stage plus the lr."""
    groups = train.configure_stage(model, stage, config.lora, config.weight_decay)
    lr = config.stage1_lr if stage == 1 else config.effective_stage2_lr
    return [dict(g, lr=lr) for g in groups]


@pytest.mark.parametrize(
    "func", [make_configure_stage(), hf_style_configure_stage, library_configure_stage]
)
def test_correct_configure_stage_passes(func, capsys):
    check_configure_stage(func)
    assert "all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "knob, message",
    [
        ({"freeze_first": False}, r"stage 1, from all trainable[\s\S]*vision encoder is frozen"),
        ({"vision_in_stage2": True}, r"stage 2 full[\s\S]*vision encoder is frozen in BOTH"),
        ({"lm_in_stage1": True}, r"stage 1[\s\S]*stage 1 keeps the LM frozen"),
        ({"head_in_stage2": True}, r"stage 2 full[\s\S]*detection head trains in stage 1 only"),
        ({"ignore_lora": True}, r"stage 2 LoRA[\s\S]*only\s+its LoRA adapters"),
        ({"lr_rule": "stage1"}, r"lr is the stage's learning rate[\s\S]*own, smaller"),
        ({"lr_rule": "swapped"}, r"stage 2 full[\s\S]*2e-5 \(1e-4 is the LoRA rate\)"),
        ({"lr_rule": "ignore_override"}, r"stage 2, tiny preset[\s\S]*overrides"),
        ({"decay": "none_excluded"}, r"biases and normalisation weights"),
        ({"decay": "hardcoded"}, r"tiny preset[\s\S]*config.weight_decay"),
        ({"forget_lm_params": True}, r"stage 2 full[\s\S]*every trainable parameter is in a group"),
        ({"duplicate": True}, r"AdamW\(groups\) refuses"),
        ({"returns": "optimizer"}, r"list of AdamW parameter groups"),
        ({"returns": "params"}, r"list of AdamW parameter groups"),
    ],
)
def test_wrong_configure_stage_fails(knob, message):
    with pytest.raises(CheckFailed, match=message):
        check_configure_stage(make_configure_stage(**knob))


def test_fake_lora_names_match_peft():
    """The check's hand-made adapters are named like peft's, so the library sees LoRA."""
    model = add_fake_lora(fixture_model(0))
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and all(
        ".lora_A.default.weight" in n or ".lora_B.default.weight" in n for n in names
    )
    assert train.has_lora(model)
    groups = train.configure_stage(model, 2, use_lora=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(names) | {
        n for n, _ in model.named_parameters() if n.startswith("projector.")
    }
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def test_unfinished_configure_stage_raises_not_implemented():
    def stub(model, stage, config):
        raise NotImplementedError("configure_stage: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_configure_stage(stub)


# ====================================================================== q2 schedule
def make_schedule(
    warmup: str = "linear", decay: str = "cosine", period: str = "half", denom: str = "rest"
):
    """A student-style cosine_with_warmup with one knob per classic mistake."""

    def cosine_with_warmup(step, total_steps, warmup_steps):
        if warmup == "ratio":  # min(1, step / warmup) divides by zero without warm-up
            ramp = min(1.0, step / warmup_steps)
            if step < warmup_steps:
                return ramp
        elif warmup == "plus_one_inclusive" and step <= warmup_steps:
            return step / (warmup_steps + 1)
        elif warmup == "step_plus_one" and step < warmup_steps:
            return (step + 1) / warmup_steps
        elif warmup == "linear" and step < warmup_steps:
            return step / warmup_steps
        start = 0 if warmup == "none" or denom == "ignore_warmup" else warmup_steps
        length = total_steps if denom in ("total", "ignore_warmup") else total_steps - start
        progress = min(1.0, (step - start) / max(1, length))
        if decay == "linear":
            return 1.0 - progress
        cycles = 2.0 if period == "full" else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * cycles * progress))

    return cosine_with_warmup


def cos_squared_schedule(step, total_steps, warmup_steps):
    """A correct alternative: cos²(π/2·p) = 0.5·(1 + cos(π·p)), returned as a 0-d tensor."""
    if step < warmup_steps:
        return torch.tensor(step / warmup_steps)
    p = np.clip((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0, 1.0)
    return torch.tensor(np.cos(np.pi / 2 * p) ** 2)


def transformers_schedule(step, total_steps, warmup_steps):
    """A correct alternative: the multiplier of transformers' own scheduler."""
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    return scheduler.lr_lambdas[0](step)


@pytest.mark.parametrize(
    "func", [make_schedule(), cos_squared_schedule, transformers_schedule, train.cosine_with_warmup]
)
def test_correct_schedules_pass(func, capsys):
    check_cosine_with_warmup(func)
    assert "all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "knob, message",
    [
        ({"warmup": "none"}, r"starts from 0[\s\S]*no warm-up"),
        ({"warmup": "step_plus_one"}, r"starts from 0[\s\S]*not \(step \+ 1\)"),
        ({"warmup": "plus_one_inclusive"}, r"reaching exactly 1[\s\S]*not\s+warmup_steps \+ 1"),
        ({"decay": "linear"}, r"every step \(total=20[\s\S]*linear decay"),
        ({"period": "full"}, r"decays to 0[\s\S]*half a period"),
        ({"denom": "total"}, r"decays to 0[\s\S]*total_steps - warmup_steps"),
        ({"denom": "ignore_warmup"}, r"reaching exactly 1[\s\S]*ignores the warm-up"),
        ({"warmup": "ratio"}, r"ZeroDivisionError[\s\S]*guard the division"),
    ],
)
def test_wrong_schedules_fail(knob, message):
    with pytest.raises(CheckFailed, match=message):
        check_cosine_with_warmup(make_schedule(**knob))


def test_schedule_reference_values():
    """Hand-computed: total 20, warm-up 5 -> 0, 0.2, ..., 1 at step 5, 0.5 at step 12.5, 0."""
    f = train.cosine_with_warmup
    assert [f(s, 20, 5) for s in range(6)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(20, 20, 5) == pytest.approx(0.0, abs=1e-12)
    assert f(10, 20, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))


# ====================================================================== q3 train_step
def make_train_step(
    divide: bool = True,
    step_every: bool = False,
    zero_grad: str = "start",
    clip: str = "after",
    scheduler_every: bool = False,
    train_mode: bool = True,
    loss_report: str = "mean",
    norm_report: str = "before",
):
    """A student-style train_step with one knob per classic mistake."""

    def train_step(model, batches, optimizer, scheduler=None, max_grad_norm=1.0):
        if train_mode:
            model.train()
        if zero_grad == "start":
            optimizer.zero_grad()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.tensor(0.0)
        if clip == "before_backward" and max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        k = len(batches)
        losses = []
        for batch in batches:
            if zero_grad == "every_micro":
                optimizer.zero_grad()
            loss = model(**train.model_inputs(batch)).loss
            (loss / k if divide else loss).backward()
            losses.append(loss.item())
            if clip == "each_micro" and max_grad_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            if step_every:
                optimizer.step()
                optimizer.zero_grad()
            if scheduler_every and scheduler is not None:
                scheduler.step()
        if clip == "after":
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or math.inf)
        if norm_report == "after":
            norm = torch.nn.utils.clip_grad_norm_(params, math.inf)
        if not step_every:
            optimizer.step()
        if scheduler is not None and not scheduler_every:
            scheduler.step()
        if zero_grad == "end":
            optimizer.zero_grad()
        reported = {"mean": sum(losses) / k, "last": losses[-1], "sum": sum(losses)}[loss_report]
        return {"loss": reported, "grad_norm": float(norm)}

    return train_step


def single_backward_train_step(model, batches, optimizer, scheduler=None, max_grad_norm=1.0):
    """A correct alternative: one backward of the averaged loss, clipping on model.parameters(),
    gradients zeroed after the step, model(**batch) directly."""
    model.train()
    loss = sum(model(**batch).loss for batch in batches) / len(batches)
    loss.backward()
    limit = max_grad_norm if max_grad_norm else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    if scheduler:
        scheduler.step()
    return {"loss": loss.item(), "grad_norm": norm.item()}


def library_train_step(model, batches, optimizer, scheduler=None, max_grad_norm=1.0):
    return train.train_step(
        model, batches, optimizer, scheduler=scheduler, max_grad_norm=max_grad_norm
    )


@pytest.mark.parametrize(
    "func",
    [
        make_train_step(),
        make_train_step(zero_grad="end"),
        single_backward_train_step,
        library_train_step,
    ],
)
def test_correct_train_steps_pass(func, capsys):
    check_train_step(func)
    assert "all" in capsys.readouterr().out


@pytest.mark.parametrize(
    "knob, message",
    [
        ({"divide": False}, r"exactly as one batch[\s\S]*4x too large"),
        ({"step_every": True}, r"one optimizer.step\(\) per call[\s\S]*after the loop"),
        ({"zero_grad": "every_micro"}, r"exactly as one batch[\s\S]*only the last micro-batch"),
        ({"zero_grad": "never"}, r"second call starts from zero gradients"),
        ({"clip": "before_backward"}, r"clipped to norm 0.05[\s\S]*clipping had no effect"),
        ({"clip": "never"}, r"clipped to norm 0.05[\s\S]*clipping had no effect"),
        ({"clip": "each_micro"}, r"clipped to norm 0.05[\s\S]*clip once"),
        ({"scheduler_every": True}, r"scheduler.step\(\) once per call"),
        ({"train_mode": False}, r"training mode[\s\S]*model.train\(\)"),
        ({"loss_report": "last"}, r"'loss' is the mean[\s\S]*last micro-batch"),
        ({"loss_report": "sum"}, r"'loss' is the mean[\s\S]*the sum"),
        ({"norm_report": "after"}, r"'grad_norm' is the global gradient norm before clipping"),
    ],
)
def test_wrong_train_steps_fail(knob, message):
    with pytest.raises(CheckFailed, match=message):
        check_train_step(make_train_step(**knob))


def test_accumulation_equals_one_big_batch_by_hand():
    """The fixed problem behind the check: 4 x 2 accumulated = 1 x 8, and clipping is active."""
    model0, batches = toy_problem(0)
    big = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    a, b = copy.deepcopy(model0), copy.deepcopy(model0)
    out_a = train.train_step(
        a, batches, torch.optim.SGD(a.parameters(), lr=0.5), max_grad_norm=None
    )
    out_b = train.train_step(b, [big], torch.optim.SGD(b.parameters(), lr=0.5), max_grad_norm=None)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)
    assert out_a["loss"] == pytest.approx(out_b["loss"], rel=1e-6)
    assert out_a["grad_norm"] > 10 * CLIP  # the clipping sub-check really clips


def test_unfinished_train_step_raises_not_implemented():
    def stub(model, batches, optimizer, scheduler=None, max_grad_norm=1.0):
        raise NotImplementedError("train_step: fill in this TODO")

    with pytest.raises(NotImplementedError):
        check_train_step(stub)


# ====================================================================== plots_train (notebook 05)
class _WordTokenizer:
    vocab = ["<pad>", "<bos>", "<eos>", "write", "heart", "normal"]

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]


def test_loss_mask_table_marks_scored_positions():
    table = plots_train.loss_mask_table([1, 3, 4, 5, 2], [-100, -100, 4, 5, 2], _WordTokenizer())
    assert table["token"].tolist() == ["<bos>", "write", "heart", "normal", "<eos>"]
    assert table["in_loss"].tolist() == [False, False, True, True, True]
    fig = plots_train.plot_loss_mask(table, max_tokens=3)
    assert "3 of 5 positions scored (2 more not shown)" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="4 input ids but 3 labels"):
        plots_train.loss_mask_table([1, 3, 4, 2], [-100, 4, 2], _WordTokenizer())
    with pytest.raises(ValueError, match="no tokens"):
        plots_train.loss_mask_table([], [], _WordTokenizer())


def test_sampling_balance_hand_computed():
    """3 normal studies + 1 with cardiomegaly: uniform 25 % abnormal, balanced 50 %."""
    labels = np.zeros((4, 14))
    labels[:3, 0] = 1
    labels[3, 2] = 1  # Cardiomegaly
    weights = train.balanced_sample_weights(labels)
    table = plots_train.sampling_balance(labels, weights, CHEXPERT_LABELS)
    assert table.loc["abnormal (any finding)"].tolist() == pytest.approx([0.25, 0.5])
    assert table.loc["Cardiomegaly"].tolist() == pytest.approx([0.25, 0.5])
    assert table.loc["Edema"].tolist() == [0.0, 0.0]
    fig = plots_train.plot_sampling_balance(table)
    assert len(fig.axes[0].containers) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="weights must be"):
        plots_train.sampling_balance(labels, np.ones(3), CHEXPERT_LABELS)
    with pytest.raises(ValueError, match=r"labels must be \(N, 14\)"):
        plots_train.sampling_balance(labels[:, :5], weights, CHEXPERT_LABELS)


def _fake_history():
    steps = [
        {"stage": s, "epoch": e, "step": k + 1, "loss": 5.0 - 0.1 * k, "lr": 1e-3, "grad_norm": 1.0}
        for k, (s, e) in enumerate([(1, 0)] * 3 + [(2, 0)] * 4 + [(2, 1)] * 2)
    ]
    epochs = [
        {"stage": 1, "epoch": 0, "train_loss": 4.9, "val_loss": 5.0},
        {"stage": 2, "epoch": 0, "train_loss": 4.5, "val_loss": 4.6},
        {"stage": 2, "epoch": 1, "train_loss": 4.2, "val_loss": 4.4},
    ]
    return {"steps": steps, "epochs": epochs}


def test_history_frames_and_training_plot():
    steps, epochs = plots_train.history_frames(_fake_history())
    assert len(steps) == 9
    assert epochs["last_step"].tolist() == [3, 7, 9]
    fig = plots_train.plot_training_history(_fake_history(), smooth=2)
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="no optimiser steps"):
        plots_train.history_frames({"steps": [], "epochs": []})


def test_samples_table_auroc_and_image_plots():
    table = plots_train.samples_table(["abc", "x" * 20], {"after": ["a", "b"]}, max_chars=10)
    assert table.loc[1, "reference"] == "x" * 9 + "…"
    with pytest.raises(ValueError, match="after: 1 texts for 2 references"):
        plots_train.samples_table(["a", "b"], {"after": ["a"]})
    fig = plots_train.plot_per_label_auroc({"Edema": 0.9, "Fracture": float("nan")})
    assert "n/a" in [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)
    image = torch.rand(1, 1, 8, 8)
    fig = plots_train.plot_augmentations({"original": image, "inverted": 1 - image[0]})
    assert [ax.get_title() for ax in fig.axes] == ["original", "inverted"]
    plt.close(fig)
    with pytest.raises(ValueError, match="one grayscale image"):
        plots_train.plot_augmentations({"batch": torch.rand(2, 1, 8, 8)})
    fig = plots_train.plot_lr_schedules({"s": [0.0, 1.0, 0.5, 0.0]}, {"s": 1})
    assert len(fig.axes) == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="nothing to plot"):
        plots_train.plot_lr_schedules({})
