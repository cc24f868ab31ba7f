"""Tests for course_utils.evaluate (and its plots): hand-computed metrics, bootstrap tables,
the comparison table, and evaluate_model end to end on a tiny untrained model (CPU, seconds)."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from course_utils import evaluate as ev  # noqa: E402
from course_utils import metrics, plots_evaluate  # noqa: E402
from course_utils.baseline import FIXED_NORMAL_REPORT  # noqa: E402
from course_utils.checks import nb06  # noqa: E402
from course_utils.labels import CHEXPERT_LABELS  # noqa: E402
from course_utils.model import ModelConfig, RadiologyMultimodalModel  # noqa: E402
from course_utils.train import ReportDataset, build_tokenizer, json_target  # noqa: E402

IMAGE = 32
NAN = float("nan")
REPORTS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "There is a small left pleural effusion. No focal consolidation.",
    "Mild cardiomegaly. The lungs are clear. No pneumothorax.",
    "Small right pneumothorax. The heart is normal in size.",
    "There is right lower lobe airspace opacity. The heart size is normal.",
    "Acute fracture of the left seventh rib. No pneumothorax.",
]
K = {name: k for k, name in enumerate(CHEXPERT_LABELS)}


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest: tiny tensors, 1 thread


def frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    data = np.full((len(rows), 14), NAN)
    for i, row in enumerate(rows):
        for name, value in row.items():
            data[i, K[name]] = value
    return pd.DataFrame(data, columns=list(CHEXPERT_LABELS))


# ------------------------------------------------------------------ per-finding / critical
def test_per_finding_scores_hand_computed():
    ref = frame([{"Edema": 1}, {"Edema": 1}, {"Edema": -1}, {"No Finding": 1}])
    hyp = frame([{"Edema": 1}, {}, {"Edema": 1}, {"No Finding": 1, "Fracture": 0}])
    table = ev.per_finding_scores(ref, hyp)
    assert list(table.index) == [*CHEXPERT_LABELS, "micro", "macro"]
    # Edema: TP 1 (study 0), FN 1 (study 1, empty generation), FP 1 (study 2, ref uncertain)
    assert table.loc["Edema", ["precision", "recall", "f1"]].tolist() == [0.5, 0.5, 0.5]
    assert table.loc["Edema", ["support", "predicted", "tp", "fp", "fn"]].tolist() == [
        2,
        2,
        1,
        1,
        1,
    ]
    assert table.loc["No Finding", "f1"] == 1.0 and table.loc["Fracture", "f1"] == 0.0
    # micro: TP 2, FP 1, FN 1 -> 2/3 each; macro: (0.5 + 1) / 14
    assert table.loc["micro", ["precision", "recall", "f1"]].tolist() == pytest.approx([2 / 3] * 3)
    assert table.loc["macro", "f1"] == pytest.approx(1.5 / 14)
    assert table.loc["micro", "tp"] == 2


def test_per_finding_scores_matches_the_nb06_fixture_and_sklearn():
    from sklearn.metrics import f1_score

    ref, hyp = nb06.label_fixture()
    table = ev.per_finding_scores(ref, hyp)
    assert table.loc["micro", "f1"] == pytest.approx(8 / 15)
    assert table.loc["macro", "f1"] == pytest.approx(nb06.EXPECTED_MACRO[2])
    y, p = ref.to_numpy() == 1, hyp.to_numpy() == 1
    assert table.loc["macro", "f1"] == pytest.approx(
        f1_score(y, p, average="macro", zero_division=0)
    )


def test_label_tables_are_validated():
    ref = frame([{"Edema": 1}])
    with pytest.raises(ValueError, match="shape"):
        ev.per_finding_scores(np.zeros((2, 13)), np.zeros((2, 13)))
    with pytest.raises(ValueError, match="differ in size"):
        ev.per_finding_scores(ref, frame([{}, {}]))
    with pytest.raises(ValueError, match="lacks label column"):
        ev.critical_sensitivity(ref.drop(columns=["Edema"]), ref)
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        ev.per_finding_scores(ref.fillna(2.0), ref)
    with pytest.raises(ValueError, match="unknown finding"):
        ev.critical_sensitivity(ref, ref, ["Mass"])


def test_clopper_pearson_known_values():
    low, high = ev.clopper_pearson(25, 25)
    assert low == pytest.approx(0.025 ** (1 / 25), abs=1e-9) and high == 1.0  # 0.8628
    low, high = ev.clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)  # 0.3085
    assert all(math.isnan(v) for v in ev.clopper_pearson(0, 0))
    with pytest.raises(ValueError):
        ev.clopper_pearson(3, 2)


def test_critical_sensitivity_on_the_graded_fixture():
    ref, hyp = nb06.critical_fixture()
    table = ev.critical_sensitivity(ref, hyp)
    assert list(table.index) == list(ev.CRITICAL_FINDINGS)
    assert math.isnan(table.loc["Pneumothorax", "sensitivity"])
    assert not table.loc["Pneumothorax", "meets_bar"]
    assert table.loc["Fracture", ["positives", "detected", "missed"]].tolist() == [3, 2, 1]
    assert table.loc["Pleural Effusion", "sensitivity"] == pytest.approx(0.9)
    assert table.loc["Pleural Effusion", "false_negative_rate"] == pytest.approx(0.1)
    lesion = table.loc["Lung Lesion"]
    assert lesion["sensitivity"] == 1.0 and lesion["meets_bar"]
    # 50 of 50 found: the exact lower bound 0.025**(1/50) = 0.929 is below the bar
    assert lesion["exact_low"] == pytest.approx(0.025 ** (1 / 50)) and not lesion["demonstrated"]


# ------------------------------------------------------------------ scoring and bootstrap
def test_bootstrap_table_estimates_equal_the_corpus_metrics():
    refs = REPORTS
    hyps = [REPORTS[0], REPORTS[1], "", REPORTS[0], REPORTS[4], "No pneumothorax."]
    scores = ev.score_reports(refs, hyps, name="sys", bertscore=False, radgraph=False)
    long = ev.bootstrap_table(scores, n_boot=200, seed=3)
    est = long.set_index("metric")["estimate"]
    nlg = metrics.nlg_scores(refs, hyps)
    ce = metrics.clinical_efficacy(refs, hyps)
    assert est["BLEU-4"] == pytest.approx(nlg["BLEU_4"], abs=1e-9)
    assert est["ROUGE-L"] == pytest.approx(nlg["ROUGE_L"], abs=1e-9)
    assert est["ROUGE-Lsum"] == pytest.approx(nlg["rougeLsum"], abs=1e-9)
    assert est["CIDEr"] == pytest.approx(nlg["CIDEr"], abs=1e-9)
    for key, name in (("ce_micro_f1_14", "CE F1 micro-14"), ("ce_macro_f1_5", "CE F1 macro-5")):
        assert est[name] == pytest.approx(ce[key], abs=1e-12)
    # pneumothorax: positive in study 3 only, written as normal -> missed; fracture missed too
    assert est["sensitivity Pneumothorax"] == 0.0 and est["sensitivity Fracture"] == 0.0
    assert est["sensitivity Pleural Effusion"] == 1.0
    assert math.isnan(est["sensitivity Lung Lesion"])  # no positive in the references
    assert set(long["system"]) == {"sys"} and (long["n"] == 6).all()
    ok = long.dropna(subset=["estimate"])
    assert ((ok["low"] <= ok["estimate"] + 1e-12) & (ok["estimate"] <= ok["high"] + 1e-12)).all()
    again = ev.bootstrap_table(scores, n_boot=200, seed=3)
    pd.testing.assert_frame_equal(long, again)
    assert not long.equals(ev.bootstrap_table(scores, n_boot=200, seed=4))


def test_bootstrap_ci_of_a_perfect_system_is_degenerate_and_rouge_matches_a_manual_bootstrap():
    scores = ev.score_reports(REPORTS, REPORTS, bertscore=False, radgraph=False)
    long = ev.bootstrap_table(scores, n_boot=300, seed=0).set_index("metric")
    assert long.loc["CE F1 micro-14", ["estimate", "low", "high"]].tolist() == [1.0, 1.0, 1.0]
    # the percentile CI of a mean equals a by-hand bootstrap with the same generator
    other = ev.score_reports(REPORTS, REPORTS[::-1], bertscore=False, radgraph=False)
    table = ev.bootstrap_table(other, n_boot=300, seed=0).set_index("metric")
    each = other.nlg["ROUGE_L"].to_numpy()
    idx = np.random.default_rng(0).integers(0, 6, size=(300, 6))
    low, high = np.percentile(each[idx].mean(1), [2.5, 97.5])
    assert table.loc["ROUGE-L", "low"] == pytest.approx(low)
    assert table.loc["ROUGE-L", "high"] == pytest.approx(high)


def test_bertscore_rows_are_named_by_backend_and_use_the_subset():
    scores = ev.score_reports(REPORTS, REPORTS[::-1], bertscore=True,
                              bertscore_backend="minilm-offline", bertscore_index=[0, 2, 4],
                              radgraph=False)  # fmt: skip
    long = ev.bootstrap_table(scores, n_boot=100).set_index("metric")
    row = long.loc["BERTScore-F (MiniLM, offline)"]
    assert row["n"] == 3 and 0.0 < row["estimate"] < 1.0
    direct = metrics.bertscore([REPORTS[i] for i in (0, 2, 4)], [REPORTS[::-1][i] for i in (0, 2, 4)],
                               backend="minilm-offline")  # fmt: skip
    assert row["estimate"] == pytest.approx(direct["F"])
    assert "BERTScore-P (MiniLM, offline)" in long.index


def test_format_and_wide_tables():
    long = pd.DataFrame(
        {"system": ["a", "a", "b"], "metric": ["m1", "m2", "m1"],
         "estimate": [0.5, NAN, 0.25], "low": [0.4, NAN, NAN], "high": [0.6, NAN, NAN], "n": 3}
    )  # fmt: skip
    text = ev.format_ci_table(long, digits=2)
    assert text.loc["a", "m1"] == "0.50 [0.40, 0.60]"
    assert text.loc["a", "m2"] == "n/a" and text.loc["b", "m1"] == "0.25"
    wide = ev.wide_table(long)
    assert list(wide.index) == ["a", "b"] and list(wide.columns) == ["m1", "m2"]
    assert math.isnan(wide.loc["b", "m2"])


def test_comparison_table_fixed_normal_report_has_zero_ce_on_findings():
    refs = REPORTS
    systems = {
        "fixed normal report": [FIXED_NORMAL_REPORT] * len(refs),
        "copy": ev.score_reports(refs, refs, name="whatever", bertscore=False, radgraph=False),
    }
    long = ev.comparison_table(refs, systems, n_boot=200, radgraph=False)
    wide = ev.wide_table(long)
    assert list(wide.index) == ["fixed normal report", "copy"]
    assert list(wide.columns) == list(ev.COMPARISON_METRICS)
    fixed = wide.loc["fixed normal report"]
    assert fixed["CE F1 micro-5"] == 0.0
    assert fixed["sensitivity Pneumothorax"] == 0.0 and fixed["sensitivity Fracture"] == 0.0
    assert fixed["CE F1 micro-14"] > 0  # No Finding true positive on the normal study
    assert math.isnan(fixed["RadGraph F1"])
    assert wide.loc["copy", "CE F1 micro-14"] == 1.0 and wide.loc["copy", "BLEU-4"] > 0.99
    with pytest.raises(ValueError, match="other references"):
        ev.comparison_table(refs[:3], {"copy": systems["copy"]})


def test_baseline_reports_oracle_is_read_back_and_classifier_is_optional():
    test = {"reports": REPORTS}
    out = ev.baseline_reports(test)
    assert set(out) == {"fixed normal report", "template (oracle labels)"}
    assert out["fixed normal report"] == [FIXED_NORMAL_REPORT] * 6
    ce = metrics.clinical_efficacy(REPORTS, out["template (oracle labels)"])
    assert ce["ce_micro_f1_14"] == 1.0
    assert len(ev.baseline_reports(test, indices=[1, 2])["template (oracle labels)"]) == 2


def test_structured_and_style_scores_hand_made():
    ref = "There is a small left pleural effusion. No pneumothorax."
    outputs = [json_target(ref), '[{"anatomical_entity": ', "[]"]
    table = ev.structured_scores(outputs, [ref] * 3)
    assert table["json_parses"].tolist() == [True, False, True]
    assert table["json_schema_valid"].tolist() == [True, False, True]
    # 5 of the 6 values of the first JSON occur in the report ("pleura" does not); both
    # labeler terms ("pleural effusion", "pneumothorax") are recalled
    assert table.loc[0, "json_precision"] == pytest.approx(5 / 6)
    assert table.loc[0, "json_recall"] == 1.0 and table.loc[1, "json_f1"] == 0.0
    styled = ev.style_scores(
        ["Lungs: Clear.\nPleura: No effusion.", "The lungs are clear.", ""],
        ["sectioned", "sectioned", "narrative"],
    )
    assert styled["detected"].tolist() == ["sectioned", "narrative", "empty"]
    assert styled["adherent"].tolist() == [True, False, False]


def test_content_text_renders_json_and_styles():
    ref = "There is a small left pleural effusion. No pneumothorax."
    assert (
        ev.content_text(json_target(ref), "json") == "Small left pleural effusion. No pneumothorax."
    )
    assert ev.content_text("{not json", "json") == ""
    narrative = ev.content_text("Lines/tubes: None.\nPleura: Small left effusion.", "style")
    assert narrative == "Small left effusion."
    assert ev.content_text("", "style") == "" and ev.content_text("x", "findings") == "x"
    assert ev.content_text("....", "style") == ""  # no sentence left: an empty report
    with pytest.raises(ValueError, match="unknown target"):
        ev.content_text("x", "html")


def test_beam_vs_greedy_table():
    def run(logps, texts, name):
        return ev.GenerationRun(name, 1, texts, [[1] * len(t) for t in texts],
                                np.array(logps), 1.0, 2)  # fmt: skip

    table = ev.beam_vs_greedy(run([-5.0, -2.0, -3.0], ["a", "b", "c"], "greedy"),
                              run([-4.0, -2.0, -3.5], ["x", "b", "yy"], "beam-4"))  # fmt: skip
    assert table["gain"].tolist() == [1.0, 0.0, -0.5]
    assert table["beam_not_worse"].tolist() == [True, True, False]
    assert table["same_text"].tolist() == [False, True, False]
    assert table["beam_tokens"].tolist() == [1, 1, 2]
    assert run([-1.0], ["abcd"], "greedy").ms_per_report == 1000.0


# ------------------------------------------------------------------ evaluate_model end to end
def make_split(n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((n, 14), NAN)
    for i in range(n):
        labels[i, K["No Finding"] if i % 2 == 0 else K["Pleural Effusion"]] = 1.0
    return {
        "pixels": torch.rand(n, 1, IMAGE, IMAGE, generator=g),
        "reports": [REPORTS[i % len(REPORTS)] for i in range(n)],
        "labels": labels,
        "metadata": [
            {"age": 40 + i, "sex": "F", "indication": "cough", "study_id": 100 + i}
            for i in range(n)
        ],  # fmt: skip
    }


def tiny_model(tok) -> RadiologyMultimodalModel:
    cfg = ModelConfig.tiny(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, image_size=IMAGE,
                           vision_checkpoint=None)  # fmt: skip
    cfg.vision_config.update(num_hidden_layers=1, hidden_size=32, intermediate_size=64)
    cfg.vision_dim = 32
    cfg.lm_config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         initializer_range=0.3)  # fmt: skip
    cfg.llm_dim, cfg.proj_hidden_dim = 32, 48
    torch.manual_seed(0)
    return RadiologyMultimodalModel(cfg, load_weights=False).eval()


@pytest.fixture(scope="module")
def split() -> dict:
    return make_split()


@pytest.fixture(scope="module")
def tok(split):
    return build_tokenizer(split, ("findings", "json", "style"), min_frequency=1)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


@pytest.fixture(scope="module")
def result(split, tok, model):
    ds = ReportDataset(split, tok, "findings", prompt_context=False)
    return ev.evaluate_model(model, ds, max_new_tokens=6, n_boot=200, bertscore=False,
                             latency_studies=3, progress=False)  # fmt: skip


def test_evaluate_model_tables_are_consistent(result, split):
    assert list(result.generations) == ["beam-4", "greedy"] and result.main_decoding == "beam-4"
    assert result.references == split["reports"] and result.study_ids == list(range(100, 106))
    systems = set(result.headline["system"])
    assert systems == {"beam-4", "greedy", "detection head"}
    beam = result.headline[result.headline["system"] == "beam-4"].set_index("metric")
    texts = result.texts("beam-4")
    nlg = metrics.nlg_scores(split["reports"], texts)
    assert beam.loc["BLEU-4", "estimate"] == pytest.approx(nlg["BLEU_4"], abs=1e-9)
    assert math.isnan(beam.loc["RadGraph F1", "estimate"])
    assert any("RadGraph" in note for note in result.notes)
    for metric in ("ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "CIDEr", "CE F1 micro-14",
                   "latency median (ms)", "latency p95 (ms)"):  # fmt: skip
        assert metric in beam.index
    assert (beam.loc["latency median (ms)", ["estimate", "low", "high"]] > 0).all()
    assert result.latency["n_timed"].tolist() == [3, 3]
    assert result.latency_ms["greedy"].shape == (3,)
    # per-finding: 16 rows per system, consistent with the headline's micro F1
    pf = result.per_finding
    assert pf.groupby("system").size().to_dict() == {"beam-4": 16, "greedy": 16,
                                                     "detection head": 16}  # fmt: skip
    micro = pf[(pf["system"] == "beam-4") & (pf["label"] == "micro")]["f1"].item()
    assert micro == pytest.approx(beam.loc["CE F1 micro-14", "estimate"])
    # the detection head is scored from its thresholded probabilities
    assert result.head_probs.shape == (6, 14)
    head = pf[pf["system"] == "detection head"].set_index("label")
    assert head.loc["micro", "predicted"] == int((result.head_probs >= 0.5).sum())
    crit = result.critical
    assert set(crit["finding"]) == set(ev.CRITICAL_FINDINGS) and len(crit) == 12
    assert {"low", "high", "exact_low", "meets_bar"} <= set(crit.columns)
    dec = result.decoding
    assert len(dec) == 6
    assert np.allclose(dec["gain"], result.generations["beam-4"].log_probs
                       - result.generations["greedy"].log_probs)  # fmt: skip
    table = result.table(["BLEU-4", "CE F1 micro-14"])
    assert list(table.columns) == ["BLEU-4", "CE F1 micro-14"] and "[" in table.iloc[0, 0]


def test_evaluate_model_greedy_matches_generate_reports(result, split, tok, model):
    from course_utils.train import generate_reports

    ds = ReportDataset(split, tok, "findings", prompt_context=False)
    assert result.generations["greedy"].texts == generate_reports(model, ds, max_new_tokens=6)


def test_evaluate_model_saves_its_tables(result, tmp_path):
    out = result.save(tmp_path / "eval")
    names = {p.name for p in out.iterdir()}
    assert {"headline.csv", "per_finding.csv", "critical.csv", "latency.csv", "decoding.csv",
            "reports.json", "evaluation.json"} <= names  # fmt: skip
    reports = json.loads((out / "reports.json").read_text())
    assert set(reports["100"]) == {"reference", "beam-4", "greedy"}
    assert len(pd.read_csv(out / "headline.csv")) == len(result.headline)


def test_evaluate_model_json_and_style_targets(split, tok, model):
    ds = ReportDataset(split, tok, "json", prompt_context=False)
    res = ev.evaluate_model(model, ds, num_beams=1, n_boot=50, bertscore=False, radgraph=False,
                            latency_studies=0, max_new_tokens=5, progress=False)  # fmt: skip
    assert list(res.generations) == ["greedy"] and res.decoding is None and res.latency.empty
    assert len(res.structured) == 6
    names = set(res.headline["metric"])
    assert {"JSON valid rate (parses)", "JSON valid rate (schema)", "JSON overlap F1"} <= names
    parses = res.headline.set_index("metric").loc["JSON valid rate (parses)", "estimate"]
    assert parses == pytest.approx(res.structured["json_parses"].mean())
    ds = ReportDataset(split, tok, "style", prompt_context=False, seed=3)
    res = ev.evaluate_model(model, ds, num_beams=1, n_boot=50, bertscore=False, radgraph=False,
                            latency_studies=0, max_new_tokens=5, indices=[0, 1, 2, 3],
                            progress=False)  # fmt: skip
    assert res.style["requested"].tolist() == [ds.styles_used[i] for i in range(4)]
    rows = res.headline.set_index("metric")
    assert "style adherence" in rows.index
    for style in set(ds.styles_used[:4]):
        assert f"style adherence ({style})" in rows.index


def test_evaluate_model_rejects_bad_input(split, tok, model):
    ds = ReportDataset(split, tok, "findings", prompt_context=False)
    with pytest.raises(TypeError, match="ReportDataset"):
        ev.evaluate_model(model, split)
    with pytest.raises(ValueError, match="indices is empty"):
        ev.evaluate_model(model, ds, indices=[])
    with pytest.raises(IndexError, match="out of range"):
        ev.evaluate_model(model, ds, indices=[0, 99])
    with pytest.raises(ValueError, match="n_boot"):
        ev.evaluate_model(model, ds, n_boot=0)
    with pytest.raises(ValueError, match="texts for"):
        ev.score_reports(REPORTS, REPORTS[:2])
    with pytest.raises(ValueError, match="num_beams"):
        ev.decoding_name(0)


def test_sequence_log_prob_reference_equals_the_models_scorer(model, tok):
    from course_utils.model import build_prompt, encode_prompt

    images = torch.rand(2, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    prompts = [build_prompt(), build_prompt(age=60, sex="M")]
    out = model.generate(images, prompts, tok, max_new_tokens=5, num_beams=2, return_scores=True)
    ids = [encode_prompt(tok, p) for p in prompts]
    got = ev.sequence_log_prob(model, images, ids, out.token_ids)
    assert torch.allclose(got, out.log_probs, atol=1e-5)


# ------------------------------------------------------------------ plots
def test_plots_return_figures(result):
    import matplotlib.pyplot as plt

    fig = plots_evaluate.plot_metric_cis(result.headline, ["BLEU-4", "ROUGE-L", "CE F1 micro-14"])
    assert len(fig.axes[0].get_yticklabels()) == 3
    plt.close(fig)
    fig = plots_evaluate.plot_per_finding_f1(result.per_finding)
    assert len(fig.axes[0].patches) == 3 * 16
    plt.close(fig)
    fig = plots_evaluate.plot_critical_sensitivity(result.critical)
    assert fig.axes[0].get_xlim() == (-0.02, 1.02)
    plt.close(fig)
    plt.close(plots_evaluate.plot_latency(result.latency_ms, budget_ms=None))
    plt.close(plots_evaluate.plot_beam_vs_greedy(result.decoding))
    with pytest.raises(ValueError, match="lacks column"):
        plots_evaluate.plot_metric_cis(result.per_finding)
    with pytest.raises(ValueError, match="empty"):
        plots_evaluate.plot_latency({})
