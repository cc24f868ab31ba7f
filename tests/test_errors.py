"""Tests for course_utils.errors (error categories, summaries, phantom CSVs, attention maps,
pointing score) and course_utils.plots_errors, with hand-computed numbers.

Attention tests use a tiny random model (64 px images -> 4 x 4 patch tokens, a 32-d BioGPT).
"""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from course_utils import errors as E  # noqa: E402
from course_utils import plots_errors as P  # noqa: E402
from course_utils.checks.nb07 import fixture_pairs  # noqa: E402
from course_utils.labels import CHEXPERT_LABELS, label_report  # noqa: E402
from course_utils.metrics import clinical_efficacy  # noqa: E402

IMAGE = 64

# Four studies with hand-derived answers (see test_error_rates_by_hand).
REFS = [
    "Small left pleural effusion.",
    "Small left pleural effusion.",
    "The lungs are clear.",
    "Mild cardiomegaly.",
]
GENS = ["Small right pleural effusion.", "", "Left pleural effusion.", "Mild cardiomegaly."]
IDS = ["a", "b", "c", "d"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ============================================================================ finding states
def test_finding_state_combines_sides_and_takes_the_worst_grade():
    mentions = label_report("Small right pneumothorax. Large left pneumothorax.").mentions
    assert E.finding_state(mentions, "Pneumothorax") == (1.0, "bilateral", "large")
    mentions = label_report(
        "Possible right pleural effusion. Small left pleural effusion."
    ).mentions
    assert E.finding_state(mentions, "Pleural Effusion") == (1.0, "left", "small")
    mentions = label_report("Left pleural effusion. No right pleural effusion.").mentions
    assert E.finding_state(mentions, "Pleural Effusion") == (1.0, "left", None)
    assert E.finding_state(mentions, "Pneumothorax") == (None, None, None)
    assert E.finding_state(label_report("No pneumothorax.").mentions, "Pneumothorax") == (
        0.0, None, None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown finding"):
        E.finding_state(mentions, "No Finding")


def test_status_name():
    assert [E.status_name(s) for s in (1.0, -1.0, 0.0, None, math.nan)] == [
        "positive", "uncertain", "negative", "not mentioned", "not mentioned",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        E.status_name(2.0)


# ============================================================================ categorisation
def test_categorize_errors_by_hand():
    table = E.categorize_errors(REFS, GENS, IDS)
    assert list(table.columns) == list(E.ERROR_COLUMNS)
    rows = [tuple(r) for r in table[["study_id", "finding", "category", "detail"]].to_numpy()]
    assert rows == [
        ("a", "Pleural Effusion", "laterality", "left -> right"),
        ("b", "Pleural Effusion", "missed",
         "reference: positive (left, small); generated: not mentioned"),
        ("c", "Pleural Effusion", "hallucinated", "reference: not mentioned; generated: positive (left)"),
    ]  # fmt: skip
    first = table.iloc[0]
    assert (first.ref_laterality, first.gen_laterality) == ("left", "right")
    assert (first.ref_severity, first.gen_severity) == ("small", "small")
    assert table.iloc[1].gen_laterality is None  # None, not NaN: "not given"


def test_severity_and_incomplete_details():
    table = E.categorize_errors(
        ["Small right pleural effusion.", "Large left pneumothorax."],
        ["Large pleural effusion.", "Small left pneumothorax."],
        ["x", "y"],
    )
    assert table[["study_id", "category", "detail"]].values.tolist() == [
        ["x", "severity", "small -> large (over-called)"],
        ["x", "incomplete", "omits laterality (right)"],
        ["y", "severity", "large -> small (under-called)"],
    ]


def test_fixture_counts_match_clinical_efficacy_fn_and_fp():
    refs, gens, ids = fixture_pairs()
    comparison = E.compare_findings(refs, gens, ids)
    rates = E.error_rates(comparison)
    ce = clinical_efficacy(dict(zip(ids, refs, strict=True)), dict(zip(ids, gens, strict=True)))
    per_label = ce.per_label.loc[list(E.FINDINGS)]
    assert rates["missed"].tolist() == per_label["fn"].tolist()
    assert rates["hallucinated"].tolist() == per_label["fp"].tolist()
    assert comparison.shape == (len(ids) * 13, len(E.COMPARISON_COLUMNS))


def test_uncertain_mode():
    refs, gens = ["Possible pneumonia."], ["Pneumonia."]
    assert E.categorize_errors(refs, gens)["category"].tolist() == ["hallucinated"]
    assert E.categorize_errors(refs, gens, uncertain="positive").empty
    with pytest.raises(ValueError, match="uncertain must be"):
        E.categorize_errors(refs, gens, uncertain="ignore")


def test_no_error_table_keeps_its_columns():
    table = E.categorize_errors(["No pneumothorax."], ["No pneumothorax."], [7])
    assert table.empty and list(table.columns) == list(E.ERROR_COLUMNS)
    assert E.error_counts(table).loc["total", "total"] == 0


@pytest.mark.parametrize(
    "refs, gens, ids, error, message",
    [
        (["a."], ["b.", "c."], None, ValueError, "aligned one to one"),
        (["a.", "b."], ["c.", "d."], [1], ValueError, "1 study ids for 2"),
        (["a.", "b."], ["c.", "d."], [1, 1], ValueError, "occurs twice"),
        (["  "], ["x."], None, ValueError, "empty"),
        ([None], ["x."], None, TypeError, "not str"),
        (["x."], [None], None, TypeError, "empty generation is the empty string"),
        ("Small effusion.", "Effusion.", None, TypeError, "list of report strings"),
    ],
)
def test_bad_input_raises(refs, gens, ids, error, message):
    with pytest.raises(error, match=message):
        E.categorize_errors(refs, gens, ids)


def test_error_analysis_on_a_dataset_dict_with_indices():
    dataset = {"reports": REFS, "metadata": [{"study_id": 10 + i} for i in range(4)]}
    table = E.error_analysis(None, dataset, [GENS[1], GENS[3]], indices=[1, 3])
    assert table[["study_id", "finding", "category"]].values.tolist() == [
        [11, "Pleural Effusion", "missed"]
    ]
    assert len(E.error_analysis(None, dataset, GENS)) == 3
    with pytest.raises(ValueError, match="3 predictions for 4 studies"):
        E.error_analysis(None, dataset, GENS[:3])
    with pytest.raises(ValueError, match="outside the dataset"):
        E.error_analysis(None, dataset, ["x"], indices=[4])
    with pytest.raises(TypeError, match="without predictions"):
        E.error_analysis(None, dataset)
    with pytest.raises(ValueError, match="lacks key"):
        E.error_analysis(None, {"reports": REFS}, GENS)


# ============================================================================ summaries
def test_error_rates_by_hand():
    rates = E.error_rates(E.compare_findings(REFS, GENS, IDS))
    pe = rates.loc["Pleural Effusion"]
    assert (pe.studies, pe.reference_positive, pe.generated_positive, pe.both_positive) == (
        4,
        2,
        2,
        1,
    )
    assert (pe.missed, pe.hallucinated, pe.laterality, pe.severity, pe.incomplete) == (
        1,
        1,
        1,
        0,
        0,
    )
    assert (pe.prevalence, pe.miss_rate, pe.hallucination_rate, pe.attribute_error_rate) == (
        0.5, 0.5, 0.5, 1.0,
    )  # fmt: skip
    cm = rates.loc["Cardiomegaly"]
    assert (cm.prevalence, cm.miss_rate, cm.hallucination_rate, cm.attribute_error_rate) == (
        0.25, 0.0, 0.0, 0.0,
    )  # fmt: skip
    edema = rates.loc["Edema"]
    assert math.isnan(edema.miss_rate) and edema.hallucination_rate == 0.0
    assert list(rates.index) == list(E.FINDINGS)


def test_error_rates_with_training_prevalence():
    labels = np.full((4, 14), np.nan)
    labels[:, 0] = 1.0
    labels[0, CHEXPERT_LABELS.index("Pleural Effusion")] = 1.0
    labels[1, CHEXPERT_LABELS.index("Pleural Effusion")] = -1.0  # uncertain: not positive
    prevalence = E.label_prevalence(labels)
    assert prevalence["Pleural Effusion"] == 0.25 and prevalence["Edema"] == 0.0
    rates = E.error_rates(E.compare_findings(REFS, GENS, IDS), prevalence)
    assert rates.loc["Pleural Effusion", "prevalence"] == 0.25
    with pytest.raises(ValueError, match="lacks finding"):
        E.error_rates(E.compare_findings(REFS, GENS, IDS), {"Edema": 0.1})
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        E.label_prevalence(np.zeros((3, 13)))


def test_confusion_matrix_and_sensitivity_by_hand():
    matrix = E.confusion_matrix(E.compare_findings(REFS, GENS, IDS), "Pleural Effusion")
    assert list(matrix.index) == list(E.STATES) == list(matrix.columns)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = expected[0, 3] = expected[3, 0] = expected[3, 3] = 1
    assert (matrix.to_numpy() == expected).all()
    assert E.sensitivity(matrix) == 0.5
    edema = E.confusion_matrix(E.compare_findings(REFS, GENS, IDS), "Edema")
    assert math.isnan(E.sensitivity(edema)) and edema.loc["not mentioned", "not mentioned"] == 4


def test_laterality_matrix_by_hand():
    comparison = E.compare_findings(
        [
            "Left pleural effusion.",
            "Bilateral pleural effusions.",
            "Pleural effusion.",
            "No effusion.",
        ],
        [
            "Right pleural effusion.",
            "Right pleural effusion.",
            "Right pleural effusion.",
            "Left effusion.",
        ],
    )
    matrix = E.laterality_matrix(comparison, "Pleural Effusion")
    assert list(matrix.index) == ["left", "right", "bilateral", "none"] == list(matrix.columns)
    assert matrix.loc[["left", "bilateral", "none"], "right"].tolist() == [1, 1, 1]
    assert matrix.to_numpy().sum() == 3  # the fourth study: only the generated report states it
    with pytest.raises(ValueError, match="not in the comparison"):
        E.laterality_matrix(comparison[comparison["finding"] == "Edema"], "Fracture")


def test_error_counts_and_examples():
    refs, gens, ids = fixture_pairs()
    table = E.categorize_errors(refs, gens, ids)
    counts = E.error_counts(table)
    assert counts.loc["total", list(E.CATEGORIES)].tolist() == [5, 4, 3, 3, 4]
    assert counts.loc["Pleural Effusion", "total"] == 7
    examples = E.error_examples(table, per_category=2)
    assert examples.groupby("category").size().to_dict() == dict.fromkeys(E.CATEGORIES, 2)
    missed = examples[examples["category"] == "missed"]
    # critical findings first (Pneumothorax before Fracture in CRITICAL_FINDINGS), study order
    assert missed[["study_id", "finding"]].values.tolist() == [
        ["s02", "Pneumothorax"], ["s20", "Fracture"],
    ]  # fmt: skip


def test_error_examples_prefer_studies_not_shown_yet():
    table = pd.DataFrame(
        [("x", "Pleural Effusion", "severity"), ("x", "Pleural Effusion", "incomplete"),
         ("y", "Edema", "incomplete")],
        columns=["study_id", "finding", "category"],
    )  # fmt: skip
    examples = E.error_examples(table)
    assert examples.values.tolist() == [["x", "Pleural Effusion", "severity"],
                                        ["y", "Edema", "incomplete"]]  # fmt: skip
    again = E.error_examples(table[table["study_id"] == "x"])  # no other study: reuse x
    assert again["study_id"].tolist() == ["x", "x"]


def test_errors_by_study_with_acquisition():
    comparison = E.compare_findings(REFS, GENS, IDS)
    meta = [{"study_id": s, "dicom_id": f"d{s}"} for s in IDS]
    acq = pd.DataFrame(
        {"exposure": [1.0, 1.1, 0.9, 1.2], "noise": [0.01, 0.02, 0.03, 0.01],
         "rotation_deg": [-2.0, 1.0, 0.0, 3.0]},
        index=pd.Index(["da", "db", "dc", "dd"], name="dicom_id"),
    )  # fmt: skip
    acq["abs_rotation"] = acq["rotation_deg"].abs()
    table = E.errors_by_study(comparison, meta, acq)
    assert table["errors"].tolist() == [1, 1, 1, 0]
    assert table["reference_positive"].tolist() == [1, 1, 0, 1]
    assert table.loc["a", "abs_rotation"] == 2.0 and table.loc["d", "exposure"] == 1.2
    with pytest.raises(ValueError, match="no dicom_id"):
        E.errors_by_study(comparison, meta[:3])
    with pytest.raises(ValueError, match="no acquisition record"):
        E.errors_by_study(comparison, meta, acq.iloc[:2])


# ============================================================================ phantom CSVs
def _write_dataset(tmp_path, boxes_rows, acq_rows=None, image_size=128):
    (tmp_path / "embedded_dataset.json").write_text(json.dumps({"image_size": image_size}))
    header = "dicom_id,label,status,laterality,severity,x0,y0,x1,y1\n"
    (tmp_path / "phantom_findings.csv").write_text(header + "".join(r + "\n" for r in boxes_rows))
    if acq_rows is not None:
        text = "dicom_id,exposure,noise,rotation_deg\n" + "".join(r + "\n" for r in acq_rows)
        (tmp_path / "phantom_acquisition.csv").write_text(text)
    return tmp_path


def test_read_finding_boxes_and_rescale(tmp_path):
    root = _write_dataset(tmp_path, ["d1,Pleural Effusion,1.0,left,small,4,2,5,3",
                                     "d1,Fracture,-1.0,right,,10,20,13,27"])  # fmt: skip
    boxes = E.read_finding_boxes(root)
    assert boxes[["x0", "y0", "x1", "y1"]].values.tolist() == [[4, 2, 5, 3], [10, 20, 13, 27]]
    assert boxes.loc[1, "severity"] is None
    half = E.read_finding_boxes(root, image_size=64)
    # x0 = floor(4 / 2) = 2, x1 = ceil((5 + 1) / 2) - 1 = 2; y: 1..1; second box 5..6, 10..13
    assert half[["x0", "y0", "x1", "y1"]].values.tolist() == [[2, 1, 2, 1], [5, 10, 6, 13]]
    assert E.boxes_for(boxes, "d1", "Fracture") == [(10, 20, 13, 27)]
    assert E.boxes_for(boxes, "d1", "Edema") == []


@pytest.mark.parametrize(
    "row, message",
    [
        ("d1,Pleural Effusion,1.0,left,,4,2,x,3", "must be integers"),
        ("d1,Pleural Effusion,1.0,left,,5,2,4,3", "x1 < x0"),
        ("d1,Pleural Effusion,1.0,left,,-1,2,4,3", "negative"),
        ("d1,Lung Nodule,1.0,left,,1,2,4,3", "unknown label"),
    ],
)
def test_read_finding_boxes_rejects_bad_rows(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        E.read_finding_boxes(_write_dataset(tmp_path, [row]))


def test_read_finding_boxes_missing_file_or_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="embedded phantom dataset"):
        E.read_finding_boxes(tmp_path)
    (tmp_path / "phantom_findings.csv").write_text("dicom_id,label\nd1,Edema\n")
    with pytest.raises(ValueError, match="missing column"):
        E.read_finding_boxes(tmp_path)


def test_read_acquisition(tmp_path):
    root = _write_dataset(tmp_path, [], ["d1,0.9,0.02,-3.5", "d2,1.1,0.01,2.0"])
    acq = E.read_acquisition(root)
    assert acq.loc["d1", "abs_rotation"] == 3.5 and acq.loc["d2", "noise"] == 0.01
    (tmp_path / "phantom_acquisition.csv").write_text(
        "dicom_id,exposure,noise,rotation_deg\nd1,0.9,bad,1\n"
    )
    with pytest.raises(ValueError, match="finite numbers"):
        E.read_acquisition(root)
    (tmp_path / "phantom_acquisition.csv").write_text(
        "dicom_id,exposure,noise,rotation_deg\nd1,0.9,0.1,1\nd1,0.9,0.1,1\n"
    )
    with pytest.raises(ValueError, match="occurs twice"):
        E.read_acquisition(root)
    with pytest.raises(FileNotFoundError):
        E.read_acquisition(tmp_path / "nowhere")


# ============================================================================ pointing score
def test_attention_to_pixels_by_hand():
    grid = np.array([[1.0, 0.0], [0.0, 3.0]])
    pixels = E.attention_to_pixels(grid, 4)
    assert pixels.shape == (4, 4) and math.isclose(pixels.sum(), 1.0)
    assert np.allclose(pixels[:2, :2], 0.25 / 4) and np.allclose(pixels[2:, 2:], 0.75 / 4)
    # 5 px over 2 cells: rows 0-2 -> cell 0 (3 px), rows 3-4 -> cell 1 (2 px)
    odd = E.attention_to_pixels(np.array([[1.0, 0.0], [0.0, 0.0]]), 5)
    assert np.allclose(odd[:3, :3], 1 / 9) and odd[3:, :].sum() == 0 and odd[:, 3:].sum() == 0


def test_pointing_score_by_hand():
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = 1.0
    score = E.pointing_score(one_hot, [(4, 2, 5, 3)], 8)
    assert (score.mass_in_box, score.area_fraction, score.lift, score.hit) == (
        1.0,
        4 / 64,
        16.0,
        True,
    )
    half = E.pointing_score(one_hot, [(5, 2, 6, 3)], 8)
    assert (half.mass_in_box, half.lift, half.hit) == (0.5, 8.0, True)
    uniform = E.pointing_score(np.ones((4, 4)), [(0, 0, 3, 3), (2, 2, 5, 5)], 8)
    assert math.isclose(uniform.mass_in_box, 28 / 64) and math.isclose(uniform.lift, 1.0)
    graded = E.pointing_score(np.array([[0.5, 0.25], [0.25, 0.0]]), [(1, 1, 2, 2)], 4)
    # one pixel of each 2 x 2 cell: 0.5/4 + 0.25/4 + 0.25/4 = 0.25 on 4/16 of the image
    assert (graded.mass_in_box, graded.area_fraction, graded.lift, graded.hit) == (
        0.25,
        0.25,
        1.0,
        True,
    )
    miss = E.pointing_score(one_hot, [(0, 0, 1, 1)], 8)
    assert (miss.mass_in_box, miss.lift, miss.hit) == (0.0, 0.0, False)


@pytest.mark.parametrize(
    "grid, boxes, message",
    [
        (np.ones((2, 2)), [], "at least one box"),
        (np.ones((2, 2)), [(0, 0, 8, 1)], "outside"),
        (np.ones((2, 2)), [(3, 0, 1, 1)], "inverted"),
        (np.ones((2, 2)), [(0, 0, 1)], r"\(x0, y0, x1, y1\)"),
        (-np.ones((2, 2)), [(0, 0, 1, 1)], "non-negative"),
        (np.zeros((2, 2)), [(0, 0, 1, 1)], "sums to 0"),
        (np.ones(4), [(0, 0, 1, 1)], "2-D grid"),
        (np.ones((16, 16)), [(0, 0, 1, 1)], "smaller than the attention grid"),
    ],
)
def test_pointing_score_rejects_bad_input(grid, boxes, message):
    with pytest.raises(ValueError, match=message):
        E.pointing_score(grid, boxes, 8)


# ============================================================================ attention maps
@pytest.fixture(scope="module")
def tok():
    from course_utils.model import prompt_corpus
    from course_utils.text import train_word_tokenizer

    texts = [
        "there is a small right pleural effusion . no pneumothorax .",
        "the lungs are clear . mild cardiomegaly .",
    ]
    return train_word_tokenizer(texts * 2 + prompt_corpus(ages=range(40, 42)), min_frequency=1)


def build_model(tok, visual_grid=None, vision_layers=1, label_prompt=False):
    from course_utils.model import ModelConfig, RadiologyMultimodalModel

    torch.manual_seed(0)
    cfg = ModelConfig.tiny(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, image_size=IMAGE,
                           vision_checkpoint=None, visual_grid=visual_grid,
                           label_prompt=label_prompt)  # fmt: skip
    cfg.vision_config.update(num_hidden_layers=vision_layers)
    cfg.lm_config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    cfg.llm_dim = 32
    return RadiologyMultimodalModel(cfg, load_weights=False).eval()


@pytest.fixture(scope="module")
def model(tok):
    return build_model(tok)


TEXT = "there is a small right pleural effusion. no pneumothorax."


def test_finding_token_positions(tok):
    ids, positions = E.finding_token_positions(tok, TEXT, "Pleural Effusion")
    words = tok.convert_ids_to_tokens(ids)
    assert [words[p].lstrip("▁") for p in positions] == ["pleural", "effusion"]
    assert E.finding_token_positions(tok, TEXT, "Pneumothorax")[1] == []  # negated
    _, negated = E.finding_token_positions(tok, TEXT, "Pneumothorax", statuses=(0.0,))
    assert [words[p].lstrip("▁") for p in negated] == ["pneumothorax"]


def test_finding_token_positions_without_offsets(tok):
    class SlowTokenizer:
        """Delegates to the fast tokenizer but, like BioGPT's, has no offset mapping."""

        def __call__(self, text, **kwargs):
            if kwargs.pop("return_offsets_mapping", False):
                raise NotImplementedError("no offsets")
            return tok(text, **kwargs)

        def decode(self, ids, **kwargs):
            return tok.decode(ids, **kwargs)

    fast = E.finding_token_positions(tok, TEXT, "Pleural Effusion")
    assert E.finding_token_positions(SlowTokenizer(), TEXT, "Pleural Effusion") == fast


def _manual_lm_attention(model, tok, image, prompt, text, positions):
    from course_utils.model.prompts import encode_prompt

    ids = tok(text, add_special_tokens=False)["input_ids"]
    p_ids = encode_prompt(tok, prompt)
    with torch.no_grad(), E.eager_attention(model.lm):
        visual = model.visual_tokens(image[None])
        prefix = model.prefix_tokens(image[None])  # + K label tokens when the model has them
        inputs, _ = model._lm_inputs(prefix, torch.tensor([p_ids + ids]), None)
        att = model.lm(**inputs, output_attentions=True).attentions
    n, k = visual.shape[1], prefix.shape[1] - visual.shape[1]
    mean = torch.stack([a[0] for a in att]).mean(dim=(0, 1))
    rows = mean[[n + k + len(p_ids) + p - 1 for p in positions], :n]
    return rows.sum(1).mean().item(), (rows.mean(0) / rows.mean(0).sum()).numpy()


def test_lm_visual_attention_matches_a_manual_computation(model, tok):
    image = torch.rand(1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    prompt = "write the findings section of the report for this chest x-ray ."
    _, positions = E.finding_token_positions(tok, TEXT, "Pleural Effusion")
    result = E.lm_visual_attention(model, tok, image, prompt, TEXT, positions)
    share, grid = _manual_lm_attention(model, tok, image, prompt, TEXT, positions)
    assert result.grid.shape == (4, 4)  # 64 px / patch 16 = 4 x 4 visual tokens
    assert math.isclose(result.grid.sum(), 1.0, rel_tol=1e-6)
    assert np.allclose(result.grid.ravel(), grid, atol=1e-6)
    assert math.isclose(result.visual_share, share, rel_tol=1e-5) and 0 < share < 1
    assert model.lm.config._attn_implementation != "eager"  # restored afterwards
    labelled = build_model(tok, label_prompt=True)  # label tokens are not part of the grid
    result = E.lm_visual_attention(labelled, tok, image, prompt, TEXT, positions)
    share, grid = _manual_lm_attention(labelled, tok, image, prompt, TEXT, positions)
    assert result.grid.shape == (4, 4) and np.allclose(result.grid.ravel(), grid, atol=1e-6)
    assert math.isclose(result.visual_share, share, rel_tol=1e-5)
    pooled = E.lm_visual_attention(build_model(tok, visual_grid=2), tok, image, prompt, TEXT, [0])
    assert pooled.grid.shape == (2, 2)
    with pytest.raises(ValueError, match="positions"):
        E.lm_visual_attention(model, tok, image, prompt, TEXT, [99])
    with pytest.raises(TypeError, match="RadiologyMultimodalModel"):
        E.lm_visual_attention(object(), tok, image, prompt, TEXT, [0])


def test_vit_rollout_one_layer_is_the_cls_attention_row(model):
    image = torch.rand(1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), E.eager_attention(model.vision):
        att = model.vision(
            pixel_values=model.preprocess_images(image[None]), output_attentions=True
        )
    cls_row = att.attentions[0][0].mean(0)[0, 1:].numpy()
    rollout = E.vit_attention_rollout(model, image)
    # one layer: 0.5 I + 0.5 A; the identity only touches CLS -> CLS, so the patch part is A's
    assert rollout.shape == (4, 4) and np.allclose(
        rollout.ravel(), cls_row / cls_row.sum(), atol=1e-6
    )
    with pytest.raises(ValueError, match="residual"):
        E.vit_attention_rollout(model, image, residual=1.0)


def test_vit_rollout_two_layers_multiplies_later_by_earlier(tok):
    two = build_model(tok, vision_layers=2)
    image = torch.rand(1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), E.eager_attention(two.vision):
        att = two.vision(pixel_values=two.preprocess_images(image[None]), output_attentions=True)
    a1, a2 = (a[0].mean(0) for a in att.attentions)
    expected = (a2 @ a1)[0, 1:].numpy()
    got = E.vit_attention_rollout(two, image, residual=0.0)
    assert np.allclose(got.ravel(), expected / expected.sum(), atol=1e-6)


def test_pointing_table_on_a_tiny_dataset(model, tok):
    from course_utils.train import ReportDataset

    g = torch.Generator().manual_seed(0)
    split = {
        "pixels": torch.rand(2, 1, IMAGE, IMAGE, generator=g),
        "reports": ["Small right pleural effusion. No pneumothorax.", "The lungs are clear."],
        "labels": torch.full((2, 14), float("nan")),
        "metadata": [{"study_id": 100, "dicom_id": "d0"}, {"study_id": 101, "dicom_id": "d1"}],
    }
    dataset = ReportDataset(split, tok, "findings", prompt_context=False)
    boxes = pd.DataFrame(
        [("d0", "Pleural Effusion", 1.0, "right", "small", 0, 32, 15, 63),
         ("d0", "Cardiomegaly", 1.0, "midline", None, 16, 16, 47, 47),
         ("d1", "Pleural Effusion", 1.0, "left", None, 40, 40, 63, 63)],
        columns=["dicom_id", "label", "status", "laterality", "severity", "x0", "y0", "x1", "y1"],
    )  # fmt: skip
    predictions = [TEXT, "the lungs are clear."]
    result = E.pointing_table(model, dataset, predictions, boxes)
    table = result.table
    # only the stated-and-drawn pair scores: study 0's effusion (cardiomegaly is not stated,
    # pneumothorax is negated, study 1 states nothing)
    assert table[["study_id", "finding", "source"]].values.tolist() == [
        [100, "Pleural Effusion", "lm"], [100, "Pleural Effusion", "vit_rollout"],
    ]  # fmt: skip
    assert np.allclose(table["area_fraction"], 16 * 32 / 64**2)  # x 0-15, y 32-63
    assert table.loc[0, "tokens"] == 2 and 0 < table.loc[0, "visual_share"] < 1
    assert set(result.maps) == {
        (0, "Pleural Effusion", "lm"),
        (0, "Pleural Effusion", "vit_rollout"),
    }
    summary = E.pointing_summary(table)
    assert summary.loc["lm", "pairs"] == 1
    assert math.isclose(summary.loc["lm", "area_fraction"], 0.125)
    with pytest.raises(ValueError, match="1 predictions for 2"):
        E.pointing_table(model, dataset, predictions[:1], boxes)


# ============================================================================ plots
def test_plots_build(tmp_path):
    refs, gens, ids = fixture_pairs()
    comparison = E.compare_findings(refs, gens, ids)
    table = E.errors_from_comparison(comparison)
    assert len(P.plot_error_counts(E.error_counts(table)).axes) == 1
    assert len(P.plot_confusion_matrices(comparison).axes) == 4
    examples = E.error_examples(table)
    images = {s: np.zeros((8, 8)) for s in ids}
    fig = P.plot_error_examples(examples, images, dict(zip(ids, refs, strict=True)),
                                dict(zip(ids, gens, strict=True)))  # fmt: skip
    assert len(fig.axes) == 2 * len(E.CATEGORIES)
    fig = P.plot_attention_maps([np.zeros((8, 8))] * 2, [np.ones((4, 4))] * 2,
                                [[(0, 0, 3, 3)], []], titles=["a", "b"])  # fmt: skip
    assert len(fig.axes) == 4
    assert len(P.plot_error_vs_prevalence(E.error_rates(comparison)).axes) == 1
    per_study = pd.DataFrame({"errors": [0, 1, 2, 1, 0, 3], "exposure": np.linspace(0.8, 1.2, 6),
                              "noise": np.linspace(0.01, 0.03, 6), "abs_rotation": range(6)})  # fmt: skip
    assert len(P.plot_error_vs_quality(per_study).axes) == 3
    with pytest.raises(ValueError, match="lacks column"):
        P.plot_error_vs_quality(per_study.drop(columns="noise"))
    with pytest.raises(ValueError, match="no examples"):
        P.plot_error_examples(examples.head(0), images, {}, {})
