"""Tests for course_utils.model: shapes, freezing, loss terms, masking, generation, I/O, Qwen2-VL.

Everything runs on CPU with tiny random transformers (a random encoder is fine for testing the
plumbing; the course's real tiny encoder is pretrained, see test_fit_encoder_*).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_utils.model import (
    IGNORE_INDEX,
    DetectionHead,
    ModelConfig,
    Projector,
    RadiologyMultimodalModel,
    build_prompt,
    count_parameters,
    detection_loss,
    encode_example,
    encode_prompt,
    fit_encoder,
    load_pretrained_encoder,
    memory_estimate,
    pad_batch,
    per_label_auroc,
    predict_probs,
    prompt_corpus,
    report_loss,
    trainable_parameters,
)
from course_utils.model.configuration import TINY_VISION
from course_utils.text import train_word_tokenizer

REPORTS = [
    "the heart is normal in size . the lungs are clear .",
    "no pleural effusion or pneumothorax . mild cardiomegaly .",
    "there is a small left pleural effusion . no focal consolidation .",
    "the mediastinum is unremarkable . no acute osseous abnormality .",
]
IMAGE = 32  # tiny images keep the random encoder cheap: 32 px / patch 16 -> 4 visual tokens


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(REPORTS * 2 + prompt_corpus(ages=range(40, 80)), min_frequency=1)


def tiny_config(
    tok, lm_family: str = "biogpt", vision_checkpoint: str | None = None, **overrides
) -> ModelConfig:
    cfg = ModelConfig.tiny(
        len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        image_size=IMAGE,
        lm_family=lm_family,
        vision_checkpoint=vision_checkpoint,  # None = random encoder: plumbing tests only
        **overrides,
    )
    cfg.vision_config.update(num_hidden_layers=1)
    # a wide init makes random LMs produce varied (not constant) continuations
    cfg.lm_config.update(initializer_range=0.3)
    return cfg


def build(tok, lm_family: str = "biogpt", seed: int = 0, **overrides) -> RadiologyMultimodalModel:
    torch.manual_seed(seed)
    return RadiologyMultimodalModel(
        tiny_config(tok, lm_family, **overrides), load_weights=False
    ).eval()


@pytest.fixture(scope="module")
def model(tok):
    return build(tok)


def batch(tok, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 1, IMAGE, IMAGE, generator=g)
    examples = [
        encode_example(tok, build_prompt(), REPORTS[0]),
        encode_example(tok, build_prompt(age=63, sex="F", indication="cough"), REPORTS[2]),
    ]
    ids, mask = pad_batch([e["input_ids"] for e in examples], tok.pad_token_id)
    labels, _ = pad_batch([e["labels"] for e in examples], tok.pad_token_id, value_for_labels=True)
    targets = torch.tensor(
        [[1.0, 0.0, -1.0, float("nan")] + [0.0] * 10, [0.0, 1.0, 1.0, 0.0] + [float("nan")] * 10]
    )
    return images, torch.tensor(ids), torch.tensor(mask), torch.tensor(labels), targets


# ---------------------------------------------------------------------- components
def test_projector_matches_formula_by_hand():
    proj = Projector(2, 3, 1)
    with torch.no_grad():
        proj.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        proj.fc1.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
        proj.fc2.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        proj.fc2.bias.copy_(torch.tensor([0.5]))
    z = torch.tensor([[[1.0, 2.0]]])  # (B=1, N=1, d_v=2)
    # W1 z + b1 = [1, 3, -1]; GELU = [0.841345, 2.995950, -0.158655]; W2 h + b2:
    gelu = [0.8413447460685429, 2.9959502751731526, -0.15865525393145707]
    expected = gelu[0] + 2 * gelu[1] + 3 * gelu[2] + 0.5
    out = proj(z)
    assert out.shape == (1, 1, 1)
    assert abs(out.item() - expected) < 1e-5
    assert abs(proj.squared_norm().item() - (1 + 1 + 1 + 1 + 1 + 1 + 4 + 9 + 0.25)) < 1e-6
    with pytest.raises(ValueError, match="d_v=2"):
        proj(torch.zeros(1, 1, 5))


def test_detection_head_is_sigmoid_of_linear():
    head = DetectionHead(2, 1)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[0.5, -1.0]]))
        head.linear.bias.copy_(torch.tensor([0.25]))
    h = torch.tensor([[1.0, 2.0]])
    assert abs(head(h).item() - (-1.25)) < 1e-6
    assert abs(head.predict_proba(h).item() - 1 / (1 + math.exp(1.25))) < 1e-6
    with pytest.raises(ValueError, match="CLS features"):
        head(torch.zeros(1, 3, 2))


def test_detection_loss_blank_and_uncertain_policies_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0, -1.0, float("nan")]])
    # default: uncertain ignored, blank = negative (softplus(3) is its BCE)
    default = (softplus(-2) + softplus(-1) + softplus(3)) / 3
    ignore_both = (softplus(-2) + softplus(-1)) / 2
    u_ones = (softplus(-2) + softplus(-1) + softplus(-0.5)) / 3
    u_zeros = (softplus(-2) + softplus(-1) + softplus(0.5)) / 3
    assert abs(detection_loss(logits, targets).item() - default) < 1e-6
    assert abs(detection_loss(logits, targets, blank_policy="ignore").item() - ignore_both) < 1e-6
    assert abs(detection_loss(logits, targets, "positive", "ignore").item() - u_ones) < 1e-6
    assert abs(detection_loss(logits, targets, "negative", "ignore").item() - u_zeros) < 1e-6
    all_blank = torch.full((1, 4), float("nan"))
    assert detection_loss(logits, all_blank, blank_policy="ignore").item() == 0.0
    with pytest.raises(ValueError, match="must be 1"):
        detection_loss(logits, torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        detection_loss(logits, targets[:, :3])
    with pytest.raises(ValueError, match="blank_policy"):
        detection_loss(logits, targets, blank_policy="positive")


def test_report_loss_by_hand_skips_ignored_positions():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2]])  # only token 2 (predicted at t=1)
    expected = -math.log(math.exp(0.0) / (math.exp(0.0) + math.exp(1.0) + math.exp(0.0)))
    assert abs(report_loss(logits, labels).item() - expected) < 1e-6
    assert report_loss(logits, torch.full((1, 3), IGNORE_INDEX)).item() == 0.0


# ---------------------------------------------------------------------- the model
def test_forward_shapes_and_combined_loss_by_hand(tok, model):
    images, ids, mask, labels, targets = batch(tok)
    out = model(images, ids, mask, labels=labels, finding_targets=targets)
    assert out.logits.shape == (2, ids.shape[1], len(tok))  # text positions only
    assert out.label_logits.shape == (2, 14)
    l2 = sum(float(p.detach().pow(2).sum()) for p in model.projector.parameters())
    assert abs(out.loss_l2.item() - l2) / l2 < 1e-5
    # report loss by hand from the returned logits
    logp = torch.log_softmax(out.logits, -1)
    nll = [
        -logp[b, t - 1, labels[b, t]].item()
        for b in range(2)
        for t in range(1, ids.shape[1])
        if labels[b, t] != IGNORE_INDEX
    ]
    assert abs(out.loss_report.item() - float(np.mean(nll))) < 1e-5
    # detection loss by hand: sigmoid(w^T h_cls + b) vs the 1/0 targets, uncertain and NaN masked
    _, h_cls = model.encode_images(images)
    manual_logits = h_cls @ model.detection_head.linear.weight.T + model.detection_head.linear.bias
    assert torch.allclose(out.label_logits, manual_logits, atol=1e-5)
    keep = targets != -1  # uncertain ignored; blank (NaN) counts as negative
    bce = F.binary_cross_entropy_with_logits(manual_logits[keep], targets.nan_to_num(0.0)[keep])
    assert abs(out.loss_detect.item() - bce.item()) < 1e-5
    expected = 1.0 * out.loss_report + 0.5 * out.loss_detect + 1e-4 * out.loss_l2
    assert abs(out.loss.item() - expected.item()) < 1e-6
    no_targets = model(images, ids, mask)
    assert no_targets.loss is None and no_targets.loss_report is None
    assert torch.allclose(no_targets.logits, out.logits)


def test_visual_and_prompt_positions_are_not_targets(tok, model):
    images, ids, mask, labels, _ = batch(tok)
    base = model(images, ids, mask, labels=labels).loss_report
    # position 0 would be predicted by the last visual token: the model never uses it
    changed = labels.clone()
    changed[:, 0] = ids[:, 0]
    assert model(images, ids, mask, labels=changed).loss_report.item() == base.item()
    # the prompt is -100 in labels; scoring it too would change the loss
    unmasked = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE_INDEX))
    assert abs(model(images, ids, mask, labels=unmasked).loss_report.item() - base.item()) > 1e-3
    # the number of scored tokens is exactly the target + <eos> tokens
    n_targets = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert n_targets == sum(
        len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r in (REPORTS[0], REPORTS[2])
    )


def test_encoder_is_frozen_and_stays_in_eval_mode(tok):
    m = build(tok)
    m.train()
    assert m.training and not m.vision.training
    assert all(not p.requires_grad for p in m.vision.parameters())
    images, ids, mask, labels, targets = batch(tok)
    m(images, ids, mask, labels=labels, finding_targets=targets).loss.backward()
    assert all(p.grad is None for p in m.vision.parameters())
    assert all(p.grad is not None for p in m.projector.parameters())
    assert m.detection_head.linear.weight.grad is not None
    vision_ids = {id(p) for p in m.vision.parameters()}
    assert not vision_ids & {id(p) for p in trainable_parameters(m)}
    m.set_trainable(lm=False)  # stage 1: projector (+ head) only
    lm_ids = {id(p) for p in m.lm.parameters()}
    assert not lm_ids & {id(p) for p in trainable_parameters(m)}


def test_count_parameters_tiny(tok, model):
    table = count_parameters(model)
    d_v, d_h, d_l = TINY_VISION["hidden_size"], 256, 128
    assert table.loc["projector", "total"] == d_v * d_h + d_h + d_h * d_l + d_l
    assert table.loc["detection_head", "total"] == d_v * 14 + 14
    assert table.loc["vision", "trainable"] == 0
    assert table.loc["total", "total"] == sum(p.numel() for p in model.parameters())
    mem = memory_estimate(model)
    assert abs(mem.loc["total", "fp16_GiB"] - table.loc["total", "total"] * 2 / 1024**3) < 1e-12
    with pytest.raises(ValueError, match="unknown dtype"):
        memory_estimate(model, "fp8")


def test_colab_sizes_on_meta_device():
    with torch.device("meta"):
        m = RadiologyMultimodalModel(ModelConfig.colab(), load_weights=False)
        llama = RadiologyMultimodalModel(
            ModelConfig.colab("llama-7b", "any/llama"), load_weights=False
        )
    table = count_parameters(m)
    assert table.loc["vision", "total"] == 86_580_480  # RAD-DINO, DINOv2 ViT-B/14
    assert table.loc["lm", "total"] == 346_763_264  # BioGPT (347M)
    assert table.loc["projector", "total"] == 768 * 2048 + 2048 + 2048 * 1024 + 1024
    assert table.loc["detection_head", "total"] == 768 * 14 + 14
    big = count_parameters(llama)
    assert big.loc["lm", "total"] == 6_738_415_616  # LLaMA-7B
    assert big.loc["projector", "total"] == 768 * 2048 + 2048 + 2048 * 4096 + 4096  # case study
    assert m.num_visual_tokens(512) == 256 and build_num_tokens() == 64


def build_num_tokens() -> int:
    with torch.device("meta"):
        cfg = ModelConfig.tiny(100, vision_checkpoint=None)
        return RadiologyMultimodalModel(cfg, load_weights=False).num_visual_tokens()


@pytest.mark.parametrize("family", ["biogpt", "gpt2", "llama"])
def test_greedy_matches_a_hand_loop_and_beam_is_not_worse(tok, family):
    m = build(tok, family, seed=1)
    images = torch.rand(2, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    prompts = [build_prompt(), build_prompt(age=71, sex="M")]  # different lengths: left padding
    greedy = m.generate(images, prompts, tok, max_new_tokens=8, return_scores=True)
    again = m.generate(images, prompts, tok, max_new_tokens=8, return_scores=True)
    assert greedy.token_ids == again.token_ids  # deterministic
    for i in range(2):  # HF generate (KV cache, padding) == argmax loop over forward()
        ids = encode_prompt(tok, prompts[i])
        for _ in range(len(greedy.token_ids[i])):
            logits = m(images[i : i + 1], torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
        assert ids[len(encode_prompt(tok, prompts[i])) :] == greedy.token_ids[i]
        single = m.generate(images[i : i + 1], prompts[i], tok, max_new_tokens=8)
        assert single[0] == greedy.texts[i]  # batching does not change the output
    beam = m.generate(images, prompts, tok, max_new_tokens=8, num_beams=4, return_scores=True)
    assert bool((beam.log_probs >= greedy.log_probs - 1e-4).all())
    assert m.generate(images, prompts, tok, max_new_tokens=8, num_beams=1) == greedy.texts


def test_save_load_round_trip(tok, model, tmp_path):
    images, ids, mask, labels, targets = batch(tok)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = RadiologyMultimodalModel.from_pretrained(tmp_path / "ckpt").eval()
    a = model(images, ids, mask, labels=labels, finding_targets=targets)
    b = loaded(images, ids, mask, labels=labels, finding_targets=targets)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert abs(a.loss.item() - b.loss.item()) < 1e-6
    assert loaded.config.to_dict() == model.config.to_dict()
    assert all(not p.requires_grad for p in loaded.vision.parameters())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "ckpt" / "model.safetensors").unlink()
        RadiologyMultimodalModel.from_pretrained(tmp_path / "ckpt")


def test_label_prompt_conditions_the_lm_on_the_head(tok, tmp_path):
    """label_prompt=True: K more prefix tokens p·e⁺ + (1-p)·e⁻, the LM reads them, the report loss
    does not train the head, they train with the projector, and they survive save/load and
    generation (KV cache == forward loop)."""
    from course_utils.model.components import LabelPrompt
    from course_utils.train import stage_parts

    lp = LabelPrompt(3, 4)
    probs = torch.tensor([[1.0, 0.0, 0.25]])
    expected = torch.stack(
        [lp.present[0], lp.absent[1], 0.25 * lp.present[2] + 0.75 * lp.absent[2]]
    )
    assert torch.allclose(lp(probs)[0], expected)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        lp(torch.rand(2, 4))

    m = build(tok, seed=3, label_prompt=True)
    images, ids, mask, labels, targets = batch(tok)
    assert m.num_label_tokens == 14
    assert m.prefix_tokens(images).shape == (2, m.num_visual_tokens() + 14, 128)
    out = m(images, ids, mask, labels=labels, finding_targets=targets)
    assert out.logits.shape == (*ids.shape, len(tok))
    # the LM's output moves with the head's verdicts (same images, same text)
    with torch.no_grad():
        m.detection_head.linear.bias.add_(5.0)
        shifted = m(images, ids, mask).logits
        m.detection_head.linear.bias.sub_(5.0)
    assert float((shifted - out.logits.detach()).abs().max()) > 1e-3
    # the report loss reaches the label prompt but never the head (probabilities are detached)
    m.zero_grad()
    m.set_trainable(projector=True, lm=True, head=True)
    m(images, ids, mask, labels=labels).loss_report.backward()
    assert (
        m.detection_head.linear.weight.grad is None
        or float(m.detection_head.linear.weight.grad.abs().sum()) == 0.0
    )
    assert float(m.label_prompt.present.grad.abs().sum()) > 0
    m.set_trainable(projector=False, lm=True, head=True)
    assert not m.label_prompt.present.requires_grad
    assert any(p is m.label_prompt.present for p in stage_parts(m)["projector"].parameters())
    assert "label_prompt" in count_parameters(m).index
    # save / load and generation
    m.save_pretrained(tmp_path / "lp")
    loaded = RadiologyMultimodalModel.from_pretrained(tmp_path / "lp").eval()
    assert loaded.config.label_prompt
    assert torch.allclose(
        loaded(images, ids, mask).logits, m.eval()(images, ids, mask).logits, atol=1e-6
    )
    result = m.generate(images[:1], build_prompt(), tok, max_new_tokens=6, return_scores=True)
    loop = encode_prompt(tok, build_prompt())
    for _ in range(len(result.token_ids[0])):
        loop.append(int(m(images[:1], torch.tensor([loop])).logits[0, -1].argmax()))
    assert loop[len(encode_prompt(tok, build_prompt())) :] == result.token_ids[0]


def test_bad_inputs_raise_clear_errors(tok, model):
    images, ids, mask, _, _ = batch(tok)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(images * 255, ids, mask)
    with pytest.raises(ValueError, match="shape"):
        model(images[:, 0, 0], ids, mask)
    with pytest.raises(ValueError, match="B=2"):
        model(images, ids[:1], mask[:1])
    with pytest.raises(ValueError, match="vocabulary"):
        model(images, ids + 10_000, mask)
    with pytest.raises(ValueError, match="lm_family"):
        ModelConfig(lm_family="t5")
    with pytest.raises(ValueError, match="uncertain_policy"):
        ModelConfig(uncertain_policy="maybe")
    with pytest.raises(ValueError, match="llm_dim"):
        RadiologyMultimodalModel(tiny_config(tok, llm_dim=64), load_weights=False)
    with pytest.raises(ValueError, match="2 prompts for 1"):
        model.generate(images[:1], ["a", "b"], tok)
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(images, None, None)


# ---------------------------------------------------------------------- prompts
def test_build_prompt_template_and_context():
    assert (
        build_prompt()
        == "<findings> write the findings section of the report for this chest x-ray ."
    )
    assert build_prompt("json") == "<json> list the findings of this chest x-ray as json ."
    text = build_prompt("style", "narrative", age=63.4, sex="F", indication="Chest pain, r/o PNA.")
    assert text == (
        "<style:narrative> patient : 63 year old female . indication : chest pain , r/o pna . "
        "write the findings section of the report for this chest x-ray in the narrative style ."
    )
    assert build_prompt(age=float("nan"), sex=None, indication="  ") == build_prompt()
    for kwargs, match in [
        ({"task": "summary"}, "task"),
        ({"task": "style"}, "style"),
        ({"task": "findings", "style": "narrative"}, "only used"),
        ({"sex": "X"}, "sex"),
        ({"age": 200}, "age"),
        ({"age": "old"}, "age"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_prompt(**kwargs)


def test_encode_example_layout(tok):
    ex = encode_example(tok, build_prompt(age=50, sex="M"), REPORTS[1])
    prompt = encode_prompt(tok, build_prompt(age=50, sex="M"))
    target = tok(REPORTS[1], add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == prompt + target + [tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt) + target + [tok.eos_token_id]
    assert prompt[0] == tok.bos_token_id and tok.unk_token_id not in prompt
    plain = encode_prompt(tok, build_prompt())
    short = encode_example(tok, build_prompt(), REPORTS[1], max_length=len(plain) + 3)
    assert len(short["input_ids"]) == len(plain) + 3
    assert short["input_ids"][-1] == tok.eos_token_id
    with pytest.raises(ValueError, match="empty"):
        encode_example(tok, build_prompt(), "  ")


# ---------------------------------------------------------------------- encoder pretraining
def synthetic_xrays(n: int, size: int = 32, seed: int = 0, k: int = 14):
    """Blobs at label-specific places; label 0 ("No Finding") = no other positive."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, k, generator=g) < 0.3).float()
    labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
    labels[torch.rand(n, k, generator=g) < 0.05] = -1.0
    labels[torch.rand(n, k, generator=g) < 0.05] = float("nan")
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = 0.3 + 0.05 * torch.rand(n, 1, size, size, generator=g)
    for j in range(1, k):
        cy, cx = (j // 4 + 1) * size / 5, (j % 4 + 1) * size / 5
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 16) ** 2))
        x = x + 0.5 * (labels[:, j] == 1).float().view(n, 1, 1, 1) * blob
    return x.clamp(0, 1), labels


SMALL_VIT = {
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def easy_xrays(n: int, size: int = 32, seed: int = 0):
    """Three labels, each brightening its own quadrant (one 16-px patch each)."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 3, generator=g) < 0.4).float()
    labels[torch.rand(n, 3, generator=g) < 0.05] = -1.0
    labels[torch.rand(n, 3, generator=g) < 0.05] = float("nan")
    x = 0.2 + 0.2 * torch.rand(n, 1, size, size, generator=g)
    h = size // 2
    for j, region in enumerate([np.s_[:h, :h], np.s_[:h, h:], np.s_[h:, :h]]):
        x[:, 0][(slice(None),) + region] += 0.4 * (labels[:, j] == 1).float().view(n, 1, 1)
    return x.clamp(0, 1), labels


QUADRANT_VIT = {
    "patch_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def test_fit_encoder_learns_and_reports_per_label_auroc():
    # A ViT needs a few hundred steps even for this; 96 steps only has to beat chance clearly.
    # The real quality bar (macro AUROC on the embedded dataset) is measured by pretrain_encoder.
    x, y = easy_xrays(256)
    vx, vy = easy_xrays(200, seed=1)
    names = ["top-left", "top-right", "bottom-left"]
    model, history = fit_encoder(
        x,
        y,
        val_pixels=vx,
        val_labels=vy,
        vit_config=QUADRANT_VIT,
        epochs=6,
        batch_size=16,
        lr=3e-3,
        max_shift=0,
        progress=False,
        label_names=names,
    )
    assert (
        len(history["train_loss"]) == 6
        and history["train_loss"][-1] < 0.85 * history["train_loss"][0]
    )
    assert len(history["val_macro_auroc"]) == 6
    aurocs = per_label_auroc(predict_probs(model, vx), vy, names=names)
    assert min(aurocs.values()) > 0.65 and np.mean(list(aurocs.values())) > 0.75, aurocs
    again, _ = fit_encoder(x[:64], y[:64], vit_config=QUADRANT_VIT, epochs=1, progress=False)
    twice, _ = fit_encoder(x[:64], y[:64], vit_config=QUADRANT_VIT, epochs=1, progress=False)
    assert torch.equal(again.classifier.weight, twice.classifier.weight)  # seeded
    assert model.config.id2label[1] == "top-right" and model.config.num_channels == 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_encoder(x * 3, y, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"\(N, 1, S, S\)"):
        fit_encoder(x[:, 0], y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="N=256"):
        fit_encoder(x, y[:10], epochs=1, progress=False)


def test_patch_targets_from_boxes_by_hand():
    import pandas as pd

    from course_utils.model.encoder import patch_targets_from_boxes

    boxes = pd.DataFrame(
        [
            ("a", "L1", 1.0, 0, 0, 20, 10),  # patches (row 0, cols 0-1) of a 4x4 grid of 16 px
            ("a", "L2", -1.0, 40, 40, 64, 64),  # uncertain in a: whole channel ignored
            ("b", "L1", 1.0, 33, 17, 34, 18),  # one pixel -> patch (row 1, col 2)
            ("b", "L2", 1.0, 0, 48, 16, 64),  # patch (row 3, col 0)
            ("zzz", "L1", 1.0, 0, 0, 1, 1),  # image not in the split: skipped
        ],
        columns=["dicom_id", "label", "status", "x0", "y0", "x1", "y1"],
    )
    labels = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    t = patch_targets_from_boxes(boxes, ["a", "b"], labels, ["L1", "L2", "L0"], 64, 16)
    assert t.shape == (2, 16, 3)
    expected_a = torch.zeros(4, 4)
    expected_a[0, :2] = 1
    assert torch.equal(t[0, :, 0].view(4, 4), expected_a)
    assert torch.isnan(t[0, :, 1]).all()  # uncertain finding: no patch target
    assert t[1, :, 0].view(4, 4)[1, 2] == 1 and t[1, :, 0].sum() == 1
    assert t[1, :, 1].view(4, 4)[3, 0] == 1 and t[1, :, 1].sum() == 1
    assert torch.isnan(t[:, :, 2]).all()  # never boxed (like "No Finding")
    half = patch_targets_from_boxes(boxes, ["a", "b"], labels, ["L1", "L2", "L0"], 32, 16, 64)
    assert half[1, :, 1].view(2, 2)[1, 0] == 1  # boxes scaled from the 64 px build
    with pytest.raises(ValueError, match="column"):
        patch_targets_from_boxes(boxes.drop(columns="x0"), ["a"], labels[:1], ["L1"], 64, 16)
    with pytest.raises(ValueError, match="multiple of the patch"):
        patch_targets_from_boxes(boxes, ["a"], labels[:1], ["L1"], 60, 16)


def test_per_label_auroc_by_hand():
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.6, 0.4], [0.3, 0.1]])
    labels = np.array([[1, 0], [0, 1], [1, -1], [float("nan"), 0]])
    aurocs = per_label_auroc(probs, labels, names=["a", "b"])
    assert aurocs["a"] == 1.0  # positives 0.9, 0.6 vs negatives 0.1, 0.3 (blank = negative)
    assert aurocs["b"] == 1.0  # positive 0.8 vs negatives 0.2, 0.1 (uncertain 0.4 ignored)
    probs[3, 0] = 0.95  # the blank study now outranks both positives...
    assert per_label_auroc(probs, labels, names=["a", "b"])["a"] == 0.5
    # ...unless blanks are left out
    assert per_label_auroc(probs, labels, names=["a", "b"], blank_policy="ignore")["a"] == 1.0
    assert math.isnan(per_label_auroc(probs[:2, :1], np.array([[1.0], [1.0]]), names=["c"])["c"])


def test_pretrain_save_and_load_like_a_checkpoint(tmp_path, monkeypatch, tok):
    import course_utils.data as data
    from course_utils.model import encoder as enc

    splits = {
        "train": synthetic_xrays(256, seed=2),
        "val": synthetic_xrays(96, seed=3),
        "test": synthetic_xrays(96, seed=4),
    }

    def fake_loader(data_dir, split="train", image_size=None, load_pixels=False, max_studies=None):
        x, y = splits[split]
        return {"pixels": x, "labels": y, "images": [], "reports": [], "metadata": []}

    monkeypatch.setattr(data, "load_mimic_cxr_dataset", fake_loader)
    (tmp_path / "ds").mkdir()
    metrics = enc.pretrain_encoder(
        tmp_path / "ds",
        tmp_path / "enc",
        image_size=32,
        epochs=1,
        progress=False,
        vit_config=SMALL_VIT,
    )
    assert (
        set(metrics["test_auroc"]) == set(metrics["val_auroc"]) and len(metrics["test_auroc"]) == 14
    )
    assert metrics["n_train"] == 256 and metrics["train_seconds"] > 0
    assert enc.load_pretraining_metrics(tmp_path / "enc")["epochs"] == 1
    vit = load_pretrained_encoder(tmp_path / "enc")
    assert type(vit).__name__ == "ViTModel"
    cfg = tiny_config(tok, vision_checkpoint=str(tmp_path / "enc"), vision_dim=32)
    m = RadiologyMultimodalModel(cfg)  # the same from_pretrained path as a hub checkpoint
    assert torch.equal(
        m.vision.embeddings.patch_embeddings.projection.weight,
        vit.embeddings.patch_embeddings.projection.weight,
    )
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained_encoder(tmp_path / "missing")


def test_ensure_pretrained_encoder_builds_once(tmp_path, monkeypatch):
    import course_utils.data as data
    from course_utils.data.embedded import EMBEDDED_VERSION
    from course_utils.model import encoder as enc

    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))  # locks live there

    calls = []

    def fake_pretrain(dataset, out_dir, image_size=128, seed=42, progress=False):
        calls.append(out_dir)
        for name in ("config.json", "model.safetensors"):
            (out_dir / name).write_text("{}")
        (out_dir / enc.METRICS_NAME).write_text(stamp(version[0]))
        return {"test_macro_auroc": 1.0}

    def stamp(encoder_version: int, data_version: str = EMBEDDED_VERSION) -> str:
        return json.dumps({"encoder_version": encoder_version, "data_version": data_version})

    version = [enc.ENCODER_VERSION]

    monkeypatch.setattr(data, "ensure_embedded_dataset", lambda image_size, seed: tmp_path)
    monkeypatch.setattr(enc, "pretrain_encoder", fake_pretrain)
    target = tmp_path / "cache" / "encoder"
    assert enc.ensure_pretrained_encoder(out_dir=target) == target
    assert enc.ensure_pretrained_encoder(out_dir=target) == target
    assert len(calls) == 1 and (target / "config.json").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # temp dir removed
    version[0] = enc.ENCODER_VERSION - 1  # a cache from an older recipe is rebuilt
    (target / enc.METRICS_NAME).write_text(stamp(version[0]))
    enc.ensure_pretrained_encoder(out_dir=target)
    assert len(calls) == 2
    version[0] = enc.ENCODER_VERSION  # ... and so is one built from older embedded data
    (target / enc.METRICS_NAME).write_text(stamp(version[0], "stale-data"))
    enc.ensure_pretrained_encoder(out_dir=target)
    enc.ensure_pretrained_encoder(out_dir=target)
    assert len(calls) == 3


def test_oversample_weights_lift_rare_labels_to_the_median():
    from course_utils.model.encoder import _oversample_weights

    # label 0: 8 positives, label 1: 2 positives, label 2: 4 -> median 4
    pos = torch.zeros(12, 3)
    pos[:8, 0] = 1
    pos[8:10, 1] = 1
    pos[:4, 2] = 1
    w = _oversample_weights(pos, cap=10.0)
    raw = w / w.min()
    assert torch.allclose(raw[8:10], torch.tensor([2.0, 2.0]))  # 4 / 2
    assert torch.allclose(raw[:8], torch.ones(8))  # common or at-median labels: weight 1
    assert torch.allclose(raw[10:], torch.ones(2))  # no positives: weight 1
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert _oversample_weights(pos, cap=1.0) is None
    capped = _oversample_weights(pos, cap=1.5)
    assert torch.isclose(capped[8] / capped[0], torch.tensor(1.5))


def test_rerender_rare_positives_adds_labelled_images_with_boxes():
    from course_utils.labels import CHEXPERT_LABELS
    from course_utils.model.encoder import rerender_rare_positives

    n = 6
    labels = torch.full((n, 14), float("nan"))
    labels[:, 0] = 1.0
    labels[0, 0], labels[0, 9] = float("nan"), 1.0  # one pneumothorax among six studies
    data = {
        "labels": labels,
        "reports": ["There is a large left pneumothorax."] + ["The lungs are clear."] * 5,
        "metadata": [{"dicom_id": f"d{i}", "sex": "F"} for i in range(n)],
    }
    px, lab, boxes, ids = rerender_rare_positives(data, CHEXPERT_LABELS, 64, min_positives=4)
    # "No Finding" has 5 positives >= 4: not re-rendered; pneumothorax: ceil(4 / 1) - 1 = 3 copies
    assert px.shape == (3, 1, 64, 64) and len(ids) == 3
    assert float(px.min()) >= 0 and float(px.max()) <= 1
    assert torch.equal(lab.nan_to_num(-9), labels[[0, 0, 0]].nan_to_num(-9))  # same labels
    ptx = boxes[boxes.label == "Pneumothorax"]
    assert set(ptx.dicom_id) == set(ids) and set(ptx.laterality) == {"left"}
    assert not torch.equal(px[0], px[1])  # new patient / acquisition each time


# ---------------------------------------------------------------------- Qwen2-VL / LoRA
def test_qwen2vl_tiny_lora_forward_generate(tok):
    from course_utils.model.qwen2vl import build_qwen2vl, trainable_fraction

    m, processor = build_qwen2vl("tiny", vocab_size=len(tok))
    assert processor is None
    assert trainable_fraction(m) < 0.05
    table = count_parameters(m)
    assert set(table.index) == {"vision", "language_model", "lm_head", "total"}
    images = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    pixel_values, grid = m.prepare_images(images)
    assert pixel_values.shape == (2 * 64, 3 * 2 * 14 * 14) and grid.tolist() == [[1, 8, 8]] * 2
    _, ids, mask, labels, _ = batch(tok)
    m.train()
    out = m(images, ids, mask, labels=labels)
    assert out.logits.shape == (2, ids.shape[1], len(tok) + 4) and torch.isfinite(out.loss)
    out.loss.backward()
    lora = [p for n, p in m.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora if p.requires_grad)
    prompts = [build_prompt(), build_prompt(age=71, sex="M")]
    greedy = m.generate(images, prompts, tok, max_new_tokens=6, return_scores=True)
    single = m.generate(images[1:], prompts[1], tok, max_new_tokens=6, return_scores=True)
    assert single.token_ids[0] == greedy.token_ids[1]
    assert abs(single.log_probs[0].item() - greedy.log_probs[1].item()) < 1e-4
    beam = m.generate(images, prompts, tok, max_new_tokens=6, num_beams=4, return_scores=True)
    assert bool((beam.log_probs >= greedy.log_probs - 1e-4).all())
    assert all(t < len(tok) for ids_ in beam.token_ids + greedy.token_ids for t in ids_)


def test_qwen2vl_lora_targets_and_real_2b_size_on_meta():
    from transformers import Qwen2VLForConditionalGeneration

    from course_utils.model.qwen2vl import (
        apply_lora,
        qwen2vl_components,
        qwen2vl_config,
        trainable_fraction,
    )

    with torch.device("meta"):
        base = Qwen2VLForConditionalGeneration(qwen2vl_config("2b"))
    table = count_parameters(base, qwen2vl_components(base))
    assert abs(table.loc["total", "total"] - 2.209e9) < 0.01e9  # Qwen2-VL-2B: 2.21 B
    assert abs(table.loc["vision", "total"] - 0.675e9) < 0.01e9
    lora = apply_lora(base, r=8, vision_attention=True, merger=True)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("visual.blocks.0.attn.qkv.lora_A" in n for n in names)
    assert any("visual.merger.mlp.0.lora_A" in n for n in names)
    assert any("self_attn.q_proj.lora_A" in n for n in names)
    assert not any("mlp.gate_proj" in n for n in names)
    assert trainable_fraction(lora) < 0.01


def test_qwen2vl_4bit_needs_cuda(monkeypatch):
    from course_utils.model import qwen2vl

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):
        qwen2vl._load_pretrained_qwen("Qwen/Qwen2-VL-2B-Instruct", True, None, True)
    with pytest.raises(ValueError, match="vocab_size"):
        qwen2vl.qwen2vl_config("tiny")
    with pytest.raises(ValueError, match="lm_head"):
        qwen2vl.apply_lora(torch.nn.Linear(2, 2), lm_head="half")
