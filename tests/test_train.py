"""Tests for course_utils.train: masking, freezing, optimiser groups, schedule, accumulation,
clipping, checkpoints/resume, augmentations, sampling, the three targets and bad input.

Everything runs on CPU with tiny random models (32 px images -> 4 visual tokens, a 32-d LM).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from course_utils.labels import CHEXPERT_LABELS
from course_utils.model import IGNORE_INDEX, ModelConfig, RadiologyMultimodalModel
from course_utils.text import detect_style, validate_findings_json
from course_utils.train import (
    Augmenter,
    EpochSampler,
    ReportCollator,
    ReportDataset,
    TrainConfig,
    abnormal_first,
    add_lora,
    affine_transform,
    assign_styles,
    balanced_sample_weights,
    build_tokenizer,
    configure_stage,
    cosine_schedule,
    cosine_with_warmup,
    generation_metrics,
    has_lora,
    init_head_from_encoder,
    invert_colours,
    jitter_intensity,
    json_target,
    load_training_state,
    make_target,
    model_inputs,
    postprocess_generation,
    save_model,
    stage_parts,
    train_step,
    train_two_stage,
    warmup_steps_for,
    word_dropout,
)

IMAGE = 32
REPORTS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "There is a small left pleural effusion. No focal consolidation.",
    "Mild cardiomegaly. The lungs are clear. No pneumothorax.",
    "The mediastinum is unremarkable. No acute bony abnormality.",
    "There is right lower lobe airspace opacity. The heart size is normal.",
    "Heart size is normal. Possible left basilar atelectasis. No effusion.",
]
NAMES = {name: k for k, name in enumerate(CHEXPERT_LABELS)}


def make_split(n: int = 12, seed: int = 0) -> dict:
    """A load_mimic_cxr_dataset-style dict: phantom-free random pixels, real-looking reports."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((n, 14), float("nan"))
    for i in range(n):
        if i % 3 == 0:
            labels[i, NAMES["No Finding"]] = 1.0
        else:
            labels[i, NAMES["Pleural Effusion"] if i % 3 == 1 else NAMES["Cardiomegaly"]] = 1.0
    return {
        "pixels": torch.rand(n, 1, IMAGE, IMAGE, generator=g),
        "reports": [REPORTS[i % len(REPORTS)] for i in range(n)],
        "labels": labels,
        "metadata": [
            {"age": 40 + i, "sex": "F" if i % 2 else "M", "indication": "cough", "study_id": i}
            for i in range(n)
        ],
        "images": [f"img{i}.jpg" for i in range(n)],
    }


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny tensors, 1 thread


@pytest.fixture(scope="module")
def split() -> dict:
    return make_split()


@pytest.fixture(scope="module")
def tok(split):
    return build_tokenizer(split, ("findings", "json", "style"), min_frequency=1)


def tiny_model(tok, seed: int = 0, dropout: float = 0.0, **overrides) -> RadiologyMultimodalModel:
    cfg = ModelConfig.tiny(
        len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        image_size=IMAGE,
        vision_checkpoint=None,  # random encoder: plumbing only
        **overrides,
    )
    cfg.vision_config.update(num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    cfg.vision_dim = 32
    cfg.lm_config.update(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        activation_dropout=dropout,
    )
    cfg.llm_dim, cfg.proj_hidden_dim = 32, 48
    torch.manual_seed(seed)
    return RadiologyMultimodalModel(cfg, load_weights=False)


def collate(ds: ReportDataset, idx: list[int]) -> dict:
    return ReportCollator(ds.tokenizer.pad_token_id)([ds[i] for i in idx])


# ---------------------------------------------------------------------------- datasets
def test_dataset_masks_prompt_and_padding(split, tok) -> None:
    ds = ReportDataset(split, tok, "findings")
    item = ds[0]
    n_prompt = len(tok(ds.prompts[0], add_special_tokens=False)["input_ids"]) + 1  # + <bos>
    assert item["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert item["labels"][n_prompt:] == item["input_ids"][n_prompt:]
    assert item["input_ids"][0] == tok.bos_token_id and item["input_ids"][-1] == tok.eos_token_id
    assert "patient : 40 year old male" in ds.prompts[0] and "indication : cough" in ds.prompts[0]
    batch = collate(ds, [0, 1, 2])
    short = int(batch["attention_mask"].sum(1).argmin())
    pad = batch["attention_mask"][short] == 0
    assert bool(pad.any())
    assert bool((batch["labels"][short][pad] == IGNORE_INDEX).all())
    assert bool((batch["input_ids"][short][pad] == tok.pad_token_id).all())
    assert batch["images"].shape == (3, 1, IMAGE, IMAGE) and batch["finding_targets"].shape == (
        3,
        14,
    )


def test_loss_ignores_prompt_tokens(split, tok) -> None:
    """The loss is the mean NLL of the target tokens only, computed by hand from the logits."""
    ds = ReportDataset(split, tok, "findings")
    model = tiny_model(tok).eval()
    batch = collate(ds, [0, 1])
    out = model(**model_inputs(batch))
    logp = torch.log_softmax(out.logits.float(), -1)
    nll, count = 0.0, 0
    for b in range(2):
        for t in range(1, batch["labels"].shape[1]):
            y = int(batch["labels"][b, t])
            if y != IGNORE_INDEX:
                nll -= float(logp[b, t - 1, y].detach())
                count += 1
    assert count == int((batch["labels"] != IGNORE_INDEX).sum())
    assert abs(float(out.loss_report.detach()) - nll / count) < 1e-5
    # Unmasked, the prompt would count: a different loss.
    unmasked = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    full = model(**{**model_inputs(batch), "labels": unmasked})
    assert abs(float(full.loss_report) - float(out.loss_report)) > 1e-3
    # The gradient of the loss w.r.t. the logits that predict prompt tokens is exactly zero.
    logits = out.logits.detach().requires_grad_(True)
    from course_utils.model import report_loss

    report_loss(logits, batch["labels"]).backward()
    first_target = next(i for i, y in enumerate(ds.examples[0]["labels"]) if y != IGNORE_INDEX)
    assert float(logits.grad[0, : first_target - 1].abs().sum()) == 0.0
    assert float(logits.grad[0, first_target - 1].abs().sum()) > 0.0


def test_json_target_parses_and_truncates_whole_objects(split, tok) -> None:
    ds = ReportDataset(split, tok, "json", max_length=256)
    for text in ds.targets:
        assert validate_findings_json(text)  # valid and schema-conform
        assert " " not in text.replace(" ", "", 0).split('"')[0]  # compact separators
    assert ds.prompts[0].startswith("<json>") and "as json" in ds.prompts[0]
    full = json.loads(json_target(REPORTS[0]))
    assert len(full) == 3  # one object per sentence
    short = json_target(REPORTS[0], tok, max_tokens=60)
    parsed = json.loads(short)
    assert 1 <= len(parsed) < 3 and parsed == full[: len(parsed)]
    assert len(tok(short, add_special_tokens=False)["input_ids"]) <= 60 or len(parsed) == 1


def test_json_target_abnormal_first_keeps_the_finding_when_truncated(tok) -> None:
    """In report order the effusion sentence is the last object and the first to be cut;
    abnormal-first puts it in front, so it survives the same token budget."""
    report = (
        "The heart is normal in size. The lungs are clear. There is a small left pleural effusion."
    )
    original = json.loads(json_target(report))
    ordered = json.loads(make_target(report, "json", order="abnormal_first"))
    assert len(ordered) == len(original) == 3
    assert ordered[0] == original[2] and ordered[1:] == original[:2]
    cut = json.loads(
        make_target(report, "json", tokenizer=tok, max_tokens=60, order="abnormal_first")
    )
    assert 1 <= len(cut) < 3 and cut[0] == original[2]
    assert original[2] not in json.loads(json_target(report, tok, max_tokens=60))


def test_style_dataset_names_the_style_and_targets_follow_it(split, tok) -> None:
    ds = ReportDataset(split, tok, "style", seed=3)
    assert ds.styles_used == assign_styles(len(split["reports"]), seed=3)
    assert set(ds.styles_used) == {"narrative", "sectioned"}
    for prompt, target, style in zip(ds.prompts, ds.targets, ds.styles_used, strict=True):
        assert prompt.startswith(f"<style:{style}>") and f"in the {style} style" in prompt
        assert detect_style(target) == style
    # the word-level tokenizer folds newlines; postprocessing puts them back
    i = ds.styles_used.index("sectioned")
    decoded = tok.decode(ds.examples[i]["input_ids"], skip_special_tokens=True)
    assert "\n" not in decoded and detect_style(decoded) == "narrative"
    assert detect_style(postprocess_generation(decoded, "style")) == "sectioned"
    assert postprocess_generation("the lungs are clear . no effusion .") == (
        "the lungs are clear . no effusion ."
    )


def test_dataset_rejects_bad_input(split, tok) -> None:
    no_pixels = {k: v for k, v in split.items() if k != "pixels"}
    with pytest.raises(ValueError, match="load_pixels=True"):
        ReportDataset(no_pixels, tok)
    empty = dict(split, reports=["" if i == 2 else r for i, r in enumerate(split["reports"])])
    with pytest.raises(ValueError, match="report 2 is empty"):
        ReportDataset(empty, tok)
    with pytest.raises(ValueError, match="different lengths"):
        ReportDataset(dict(split, labels=split["labels"][:5]), tok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ReportDataset(dict(split, pixels=split["pixels"] * 255), tok)
    with pytest.raises(ValueError, match="unknown target"):
        ReportDataset(split, tok, "impression")
    with pytest.raises(ValueError, match=r"\(N, 1, S, S\)"):
        ReportDataset(dict(split, pixels=split["pixels"][:, 0]), tok)
    with pytest.raises(ValueError, match="empty batch"):
        ReportCollator(0)([])


# ---------------------------------------------------------------------------- freezing
def _trainable(model) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _ids(module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_stage_freezing_and_groups(tok) -> None:
    model = tiny_model(tok)
    groups = configure_stage(model, 1, weight_decay=0.1)
    assert _trainable(model) == _ids(model.projector) | _ids(model.detection_head)
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(_trainable(model)) and len(set(in_groups)) == len(in_groups)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in by_name["no_decay"]["params"]}
    assert no_decay == {
        id(model.projector.fc1.bias), id(model.projector.fc2.bias), id(model.detection_head.linear.bias)
    }  # fmt: skip

    groups = configure_stage(model, 2, weight_decay=0.1)
    lm_ids = _ids(model.lm)
    assert _trainable(model) == _ids(model.projector) | lm_ids  # head was fitted in stage 1
    assert not _ids(model.vision) & _trainable(model)  # encoder frozen in both stages
    no_decay = {id(p) for g in groups if g["name"] == "no_decay" for p in g["params"]}
    for name, p in model.lm.named_parameters():
        if "layer_norm" in name or name.endswith("bias"):
            assert id(p) in no_decay, name
        elif p.ndim == 2:
            assert id(p) not in no_decay, name


def test_lora_stage2_trains_adapters_only(tok) -> None:
    model = tiny_model(tok).eval()
    with pytest.raises(ValueError, match="add_lora"):
        configure_stage(model, 2, use_lora=True)
    batch = {
        "images": torch.rand(2, 1, IMAGE, IMAGE),
        "input_ids": torch.tensor([[1, 5, 6, 7], [1, 8, 9, 2]]),
    }
    before = model(**batch).logits
    adapted = add_lora(model, r=4, alpha=8, dropout=0.0)
    assert adapted and has_lora(model)
    assert torch.allclose(model(**batch).logits, before, atol=1e-6)  # B = 0 at the start
    configure_stage(model, 1, use_lora=True)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    configure_stage(model, 2, use_lora=True)
    lm_trainable = [n for n, p in model.lm.named_parameters() if p.requires_grad]
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    assert model.projector.fc1.weight.requires_grad
    assert not model.detection_head.linear.weight.requires_grad


def test_lora_checkpoint_merges_into_plain_model(tok, tmp_path) -> None:
    model = tiny_model(tok).eval()
    add_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = {
        "images": torch.rand(2, 1, IMAGE, IMAGE),
        "input_ids": torch.tensor([[1, 5, 6, 7]] * 2),
    }
    expected = model(**batch).logits
    save_model(model, tmp_path / "ckpt", tok)
    assert has_lora(model)  # adapters restored after saving
    assert torch.allclose(model(**batch).logits, expected, atol=1e-5)
    reloaded = RadiologyMultimodalModel.from_pretrained(tmp_path / "ckpt").eval()
    assert not has_lora(reloaded)
    assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-4)
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()


def test_configure_stage_rejects_bad_input(tok) -> None:
    model = tiny_model(tok)
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        configure_stage(model, 3)
    with pytest.raises(ValueError, match="weight_decay"):
        configure_stage(model, 1, weight_decay=-1)
    with pytest.raises(TypeError, match="neither"):
        stage_parts(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------- schedule
def test_cosine_with_warmup_values() -> None:
    assert cosine_with_warmup(0, 110, 10) == 0.0
    assert cosine_with_warmup(5, 110, 10) == 0.5
    assert cosine_with_warmup(10, 110, 10) == 1.0
    assert abs(cosine_with_warmup(60, 110, 10) - 0.5) < 1e-12  # half-way down the cosine
    assert abs(cosine_with_warmup(35, 110, 10) - 0.5 * (1 + math.cos(math.pi / 4))) < 1e-12
    assert cosine_with_warmup(110, 110, 10) == 0.0 and cosine_with_warmup(500, 110, 10) == 0.0
    assert cosine_with_warmup(0, 10, 0) == 1.0
    assert warmup_steps_for(100, 0.03) == 3 and warmup_steps_for(10, 0.0) == 0
    for args in ((0, 0, 0), (0, 10, 11), (-1, 10, 2)):
        with pytest.raises(ValueError):
            cosine_with_warmup(*args)


@pytest.mark.parametrize(("total", "warmup"), [(100, 3), (37, 0), (12, 12), (50, 10)])
def test_cosine_schedule_matches_transformers(total: int, warmup: int) -> None:
    from transformers import get_cosine_schedule_with_warmup

    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt1 = torch.optim.SGD([p1], lr=0.3)
    opt2 = torch.optim.SGD([p2], lr=0.3)
    ours = cosine_schedule(opt1, total, warmup)
    ref = get_cosine_schedule_with_warmup(opt2, warmup, total)
    for _ in range(total + 1):  # steps 0..total (past the end transformers' cosine rises again)
        assert abs(opt1.param_groups[0]["lr"] - opt2.param_groups[0]["lr"]) < 1e-7
        opt1.step()
        opt2.step()
        ours.step()
        ref.step()
    ours.step()
    assert opt1.param_groups[0]["lr"] == 0.0  # ours stays at 0 after the schedule ends


# ---------------------------------------------------------------------------- one step
def _fixed_batch(n: int, vocab: int, seed: int = 0) -> dict:
    """n examples of equal length: 4 prompt tokens (masked) + 5 target tokens, no uncertain
    finding labels, so every micro-batch has the same number of loss terms."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, 9), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    targets = (torch.rand(n, 14, generator=g) > 0.7).float()
    return {
        "images": torch.rand(n, 1, IMAGE, IMAGE, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "finding_targets": targets,
    }


def _split_batch(batch: dict, parts: int) -> list[dict]:
    n = batch["input_ids"].shape[0] // parts
    return [{k: v[i * n : (i + 1) * n] for k, v in batch.items()} for i in range(parts)]


def test_gradient_accumulation_equals_one_big_batch(tok) -> None:
    batch = _fixed_batch(4, len(tok))
    grads = []
    for parts in (1, 2):
        model = tiny_model(tok, seed=1)
        groups = configure_stage(model, 2)
        opt = torch.optim.SGD(groups, lr=0.0)
        stats = train_step(model, _split_batch(batch, parts), opt, max_grad_norm=None)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    worst = max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0])
    assert worst < 1e-6


def test_train_step_clips_and_steps_once(tok) -> None:
    batch = _fixed_batch(4, len(tok))
    model = tiny_model(tok, seed=2)
    groups = configure_stage(model, 2, weight_decay=0.0)  # plain SGD: p <- p - lr * grad
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=0)
    before = [p.detach().clone() for p in params]
    stats = train_step(model, _split_batch(batch, 2), opt, scheduler=sched, max_grad_norm=0.05)
    clipped = float(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm())
    assert stats["grad_norm"] > 0.05  # the reported norm is the one before clipping
    assert abs(clipped - 0.05) < 1e-5
    # one SGD step with the clipped gradient at lr 0.1, then the scheduler moved once
    for p, b in zip(params, before, strict=True):
        if p.grad is not None:
            assert torch.allclose(p.detach(), b - 0.1 * p.grad, atol=1e-7)
    assert stats["lr"] == 0.1 and sched.last_epoch == 1
    with pytest.raises(ValueError, match="at least one"):
        train_step(model, [], opt)


# ---------------------------------------------------------------------------- augmentation
def test_augmentations() -> None:
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(invert_colours(x), 1 - x)
    mixed = invert_colours(x, torch.tensor([True, False, True]))
    assert torch.equal(mixed[0], 1 - x[0]) and torch.equal(mixed[1], x[1])
    assert torch.equal(affine_transform(x, 0.0), x)
    assert torch.allclose(affine_transform(x, 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    dot = torch.zeros(1, 1, 8, 8)
    dot[0, 0, 2, 2] = 1.0
    moved = affine_transform(dot, 0.0, (0.125, 0.25))  # 1 px right, 2 px down
    assert moved[0, 0].nonzero().tolist() == [[4, 3]]
    same = jitter_intensity(x, torch.ones(3), torch.zeros(3))
    assert torch.allclose(same, x, atol=1e-6)
    aug = Augmenter(p_invert=1.0, max_rotation=0.0, max_shift=0.0, jitter=0.0)
    assert torch.allclose(aug(x, torch.Generator().manual_seed(1)), 1 - x)
    aug = Augmenter()
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)
    with pytest.raises(ValueError, match="probability"):
        Augmenter(p_invert=1.5)
    with pytest.raises(ValueError, match="B, C, H, W"):
        invert_colours(torch.rand(16, 16))


# ---------------------------------------------------------------------------- sampling
def test_balanced_sample_weights() -> None:
    labels = torch.full((4, 14), float("nan"))
    labels[:3, 0] = 1.0  # three normal studies
    labels[3, NAMES["Edema"]] = 1.0
    w = balanced_sample_weights(labels)
    assert torch.allclose(w, torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2]))
    labels = torch.full((5, 14), float("nan"))
    labels[0, 0] = 1.0
    labels[1:4, NAMES["Cardiomegaly"]] = 1.0
    labels[4, NAMES["Cardiomegaly"]] = 1.0
    labels[4, NAMES["Pneumothorax"]] = -1.0  # uncertain counts as present, and is rarest
    w = balanced_sample_weights(labels, "rarest_label")
    raw = torch.tensor([1.0, 1 / 4, 1 / 4, 1 / 4, 1.0])
    assert torch.allclose(w, raw / raw.sum())
    with pytest.raises(ValueError, match="mode"):
        balanced_sample_weights(labels, "magic")


def test_epoch_sampler_is_seeded_and_groups_by_length() -> None:
    lengths = [5, 50, 7, 48, 6, 52, 9, 47, 8, 49, 51]
    s = EpochSampler(11, seed=3, lengths=lengths, batch_size=2, group_size=100)
    first = list(s)
    assert sorted(first) == list(range(11)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    batches = [first[i : i + 2] for i in range(0, 10, 2)]
    for b in batches:  # sorted windows: the two members of a batch are neighbours in length
        assert abs(lengths[b[0]] - lengths[b[1]]) <= 3
    w = torch.tensor([0.0] * 10 + [1.0])
    assert set(EpochSampler(11, weights=w)) == {10}


# ---------------------------------------------------------------------------- config
def test_train_config_validation_and_dict() -> None:
    cfg = TrainConfig.from_dict({"stage1_epochs": 2, "target": "json"})
    assert cfg.stage1_epochs == 2 and cfg.effective_stage2_lr == 2e-5
    assert TrainConfig(lora=True).effective_stage2_lr == 1e-4
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.tiny().resolved_mixed_precision() == "no"
    for bad, match in (
        ({"target": "impression"}, "target"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"stage1_epochs": 0, "stage2_epochs": 0}, "both 0"),
        ({"styles": ["gothic"]}, "styles"),
        ({"learning_rate": 1e-3}, "unknown TrainConfig field"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict(bad)
    with pytest.raises(TypeError):
        TrainConfig.coerce(3)


def test_generation_metrics() -> None:
    refs = ["There is a small left pleural effusion.", "The lungs are clear."]
    m = generation_metrics(refs, refs, "findings")
    assert m["ce_micro_f1_14"] == 1.0 and m["empty_rate"] == 0.0
    jsons = [json_target(refs[0]), "{not json"]
    m = generation_metrics(jsons, refs, "json")
    assert m["json_valid_rate"] == 0.5 and m["empty_rate"] == 0.5
    styled = ["Lungs: Clear.\nPleura: Normal.", "The lungs are clear."]
    m = generation_metrics(styled, refs, "style", ["sectioned", "sectioned"])
    assert m["style_adherence"] == 0.5
    with pytest.raises(ValueError, match="one requested style"):
        generation_metrics(styled, refs, "style")


# ---------------------------------------------------------------------------- the loop
def _loop_config(tmp_path, name: str, **overrides) -> TrainConfig:
    base = dict(
        output_dir=str(tmp_path / name), stage1_epochs=1, stage2_epochs=2, stage1_lr=1e-3,
        stage2_lr=3e-3, batch_size=4, grad_accum_steps=2, eval_batch_size=8,
        val_generate_studies=2, max_new_tokens=6, augment=True, balanced_sampling=True,
        group_by_length=True, progress=False, seed=7, mixed_precision="no",
    )  # fmt: skip
    base.update(overrides)
    return TrainConfig(**base)


def test_train_two_stage_runs_and_saves_best(split, tok, tmp_path) -> None:
    train = ReportDataset(split, tok)
    val = ReportDataset(make_split(6, seed=1), tok)
    model = tiny_model(tok, dropout=0.1)
    vision_before = {n: p.clone() for n, p in model.vision.named_parameters()}
    history = train_two_stage(model, train, val, _loop_config(tmp_path, "run"))
    assert [(r["stage"], r["epoch"]) for r in history["epochs"]] == [(1, 0), (2, 0), (2, 1)]
    assert len(history["steps"]) == 3 * 2  # 3 micro-batches per epoch, 2 per step -> 2 steps
    assert all(math.isfinite(r["val_loss"]) for r in history["epochs"])
    assert (
        "val_macro_auroc" in history["epochs"][0] and "val_ce_micro_f1_14" in history["epochs"][0]
    )
    assert history["samples"] == 3 * 12 and history["samples_per_second"] > 0
    assert not history["stopped_early"] and history["best_checkpoint"]
    for n, p in model.vision.named_parameters():
        assert torch.equal(p, vision_before[n]), n  # the encoder never trains
    best = RadiologyMultimodalModel.from_pretrained(history["best_checkpoint"]).eval()
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["best_val_loss"] == pytest.approx(history["best_val_loss"])
    assert (tmp_path / "run" / "train_config.json").is_file()
    # raw dicts need a tokenizer
    with pytest.raises(ValueError, match="tokenizer="):
        train_two_stage(tiny_model(tok), split, None, _loop_config(tmp_path, "x"))
    assert isinstance(best, RadiologyMultimodalModel)


def test_resume_continues_exactly(split, tok, tmp_path) -> None:
    """Stopped after 3 of 4 optimiser steps (mid-epoch, in stage 2) and resumed from `last`:
    the final weights equal an uninterrupted run's (dropout, augmentation, balanced sampling on)."""
    train = ReportDataset(split, tok)
    val = ReportDataset(make_split(6, seed=1), tok)
    fast = {"stage2_epochs": 1, "val_generate_studies": 0, "eval_every_epoch": False}
    full = tiny_model(tok, dropout=0.1)
    train_two_stage(full, train, val, _loop_config(tmp_path, "full", **fast))
    part = tiny_model(tok, dropout=0.1)
    h1 = train_two_stage(part, train, val, _loop_config(tmp_path, "part", max_steps=3, **fast))
    assert h1["stopped_early"] and h1["global_step"] == 3
    state = load_training_state(tmp_path / "part" / "last")["state"]
    assert state["position"] == {"stage": 2, "epoch": 0, "chunk": 1}
    resumed = tiny_model(tok, seed=99, dropout=0.1)  # different init: the checkpoint must win
    h2 = train_two_stage(
        resumed, train, val,
        _loop_config(tmp_path, "part", resume_from=str(tmp_path / "part" / "last"), **fast),
    )  # fmt: skip
    assert h2["global_step"] == 4 and not h2["stopped_early"]
    ref, got = full.state_dict(), resumed.state_dict()
    assert max(float((ref[k].float() - got[k].float()).abs().max()) for k in ref) < 1e-6
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        load_training_state(tmp_path)


def test_fractional_stages_and_time_budget(split, tok, tmp_path) -> None:
    train = ReportDataset(split, tok)
    fast = {"val_generate_studies": 0, "eval_every_epoch": False}
    cfg = _loop_config(tmp_path, "frac", stage1_epochs=0.5, stage2_epochs=0.5, **fast)
    # the case study's call: raw data dicts, a plain dict config, the tokenizer alongside
    history = train_two_stage(tiny_model(tok), split, None, cfg.to_dict(), tokenizer=tok)
    assert history["global_step"] == 2  # ceil(0.5 * 2 steps per epoch) in each stage
    assert [(r["stage"], r["partial"]) for r in history["epochs"]] == [(1, True), (2, True)]
    cfg = _loop_config(tmp_path, "budget", max_train_seconds=1e-9, **fast)
    history = train_two_stage(tiny_model(tok), train, None, cfg)
    assert history["stopped_early"] and history["global_step"] == 1
    assert "max_train_seconds" in history["stop_reason"]
    assert (tmp_path / "budget" / "last" / "trainer_state.json").is_file()


def test_train_step_reports_the_loss_terms(tok) -> None:
    """loss = λ1·loss_report + λ2·loss_detect + λ3·‖θ_proj‖² (values before the update)."""
    batch = _fixed_batch(4, len(tok))
    model = tiny_model(tok, seed=3)
    l2 = float(model.projector.squared_norm().detach())
    opt = torch.optim.SGD(configure_stage(model, 2), lr=0.0)
    stats = train_step(model, [batch], opt, max_grad_norm=None)
    cfg = model.config
    combined = cfg.lambda_report * stats["loss_report"] + cfg.lambda_detect * stats["loss_detect"]
    assert abs(stats["loss"] - (combined + cfg.lambda_proj * l2)) < 1e-5
    assert stats["loss_report"] > 0 and stats["loss_detect"] > 0


def test_word_dropout_hides_target_inputs_only() -> None:
    ids = torch.arange(1, 21).reshape(2, 10)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt
    labels[1, 8:] = IGNORE_INDEX  # padding
    out = word_dropout(ids, labels, 0.5, unk_id=3, generator=torch.Generator().manual_seed(0))
    changed = out != ids
    assert bool(changed.any()) and bool((out[changed] == 3).all())
    assert not bool(changed[labels == IGNORE_INDEX].any()) and not bool(changed[:, 0].any())
    assert torch.equal(word_dropout(ids, labels, 0.0, 3), ids)
    big = torch.randint(4, 100, (64, 50))
    rate = float(
        (word_dropout(big, big, 0.25, 3, torch.Generator().manual_seed(1)) == 3).float().mean()
    )
    assert abs(rate - 0.25) < 0.02
    with pytest.raises(ValueError, match="probability"):
        word_dropout(ids, labels, 1.0, 3)


def test_qwen2vl_stages_train_merger_then_adapters(split, tok) -> None:
    """R2Gen2 track: stage 1 = Qwen2-VL's patch merger (its projector), stage 2 + LoRA."""
    from course_utils.model import build_qwen2vl

    model, _ = build_qwen2vl("tiny", vocab_size=len(tok))
    merger = {id(p) for p in stage_parts(model)["projector"].parameters()}
    configure_stage(model, 1, use_lora=True)
    assert _trainable(model) == merger
    groups = configure_stage(model, 2, use_lora=True)
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in merger]
    assert extra and all("lora_" in n for n in extra)
    batch = collate(ReportDataset(split, tok), [0, 1])
    stats = train_step(model, [batch], torch.optim.AdamW(groups, lr=1e-3))
    assert math.isfinite(stats["loss"]) and "loss_detect" not in stats


def test_abnormal_first_reorders_sentences_only() -> None:
    from course_utils.labels import label_report

    report = (
        "The heart is normal in size. The mediastinum is unremarkable. "
        "There is a small left pleural effusion. Possible atelectasis. No pneumothorax."
    )
    out = abnormal_first(report)
    assert out == (
        "There is a small left pleural effusion. Possible atelectasis. "
        "The heart is normal in size. The mediastinum is unremarkable. No pneumothorax."
    )
    assert label_report(out).values == label_report(report).values
    normal = "The heart is normal in size. The lungs are clear."
    assert abnormal_first(normal) == normal
    assert make_target(report, "findings", order="abnormal_first").startswith("There is a small")
    narrative = make_target(report, "style", "narrative", order="abnormal_first")
    assert narrative.startswith("There is a small")
    with pytest.raises(ValueError, match="order"):
        make_target(report, order="random")


def test_init_head_from_encoder_copies_the_classifier(tok, tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    model = tiny_model(tok)
    vc = dict(model.config.vision_config)
    torch.manual_seed(5)
    clf = ViTForImageClassification(ViTConfig(**vc, num_labels=14))
    clf.save_pretrained(tmp_path / "enc")
    assert init_head_from_encoder(model, tmp_path / "enc")
    assert torch.equal(model.detection_head.linear.weight, clf.classifier.weight)
    assert torch.equal(model.detection_head.linear.bias, clf.classifier.bias)
    ViTForImageClassification(ViTConfig(**vc, num_labels=3)).save_pretrained(tmp_path / "other")
    assert not init_head_from_encoder(model, tmp_path / "other")  # wrong label count: untouched
    assert not init_head_from_encoder(model, tmp_path / "missing")
    assert not init_head_from_encoder(model)  # random encoder built from config: nothing to copy


def test_budget_refit_shrinks_then_grows_back_to_the_plan() -> None:
    """fit_to_budget: slow first steps (a GPU warming up) shorten the cosine; faster steps later
    lengthen it again, never beyond the stage's planned steps."""
    from course_utils.train import TrainConfig
    from course_utils.train.loop import _refit

    cfg = TrainConfig.tiny(max_train_seconds=100.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_schedule(opt, total_steps=1000, warmup_steps=30)
    # 10 steps took 10 s: 90 s left at 1 s/step affords 0.97 * 90 = 87 more steps
    assert _refit(cfg, sched, 30, 1000, 10, 10.0, 1.0) == 97
    assert sched.lr_lambdas[0].keywords["total_steps"] == 97
    # an epoch later at 0.1 s/step with 50 s left: 200 + 485 steps, the schedule grows back
    assert _refit(cfg, sched, 30, 1000, 200, 50.0, 0.1) == 685
    assert sched.lr_lambdas[0].keywords["total_steps"] == 685
    # very fast steps cannot go beyond the plan; no time left still allows one more step
    assert _refit(cfg, sched, 30, 1000, 200, 50.0, 0.001) == 1000
    assert _refit(cfg, sched, 30, 1000, 300, 100.0, 0.1) == 301
