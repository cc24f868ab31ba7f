"""Tests for course_utils.metrics: hand-computed values, pycocoevalcap parity, errors."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from course_utils import metrics
from course_utils.metrics import (
    CE_LABELS_5,
    NLG_KEYS,
    MetricUnavailable,
    ScoreInputError,
    bertscore,
    bleu_bootstrap,
    bleu_counts,
    bleu_from_counts,
    bootstrap_ci,
    bootstrap_indices,
    ce_counts,
    ce_f1_bootstrap,
    ce_scores_from_labels,
    f1_from_counts,
    format_scores_table,
    json_overlap,
    json_values,
    main,
    nlg_scores,
    nlg_scores_per_report,
    normalize_report,
    prepare_pairs,
    radgraph_f1,
    report_tokens,
    resample_weights,
    score_files,
)

# ------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "The heart is normal. No effusion, no XXXX!",
            "the heart is normal . no effusion no xxxx .",
        ),
        (
            "1. No acute disease 2. Stable 1.5 cm nodule.",
            "no acute disease . stable 1.5 cm nodule .",
        ),
        ("Patient's heart... ok?!", "patients heart . ok ."),
        ("x-ray and/or T11. (stable)", "x ray and or t11 . stable ."),
        ("  Heart   size\nnormal  ", "heart size normal ."),
        ("", ""),
        (" ... ", ""),
    ],
)
def test_normalize_report_examples(raw: str, expected: str) -> None:
    assert normalize_report(raw) == expected


def test_normalize_report_is_idempotent_on_random_text() -> None:
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019 .,;:!?'()-/\n\t") + ["XXXX", "1. ", " 2) ", "1.5", "..."]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))))
        once = normalize_report(text)
        assert normalize_report(once) == once, repr(text)


def test_normalize_report_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="expects str"):
        normalize_report(None)  # type: ignore[arg-type]


def test_report_tokens_drop_sentence_marks() -> None:
    assert report_tokens("Small left effusion. No XXXX.") == [
        "small",
        "left",
        "effusion",
        "no",
        "xxxx",
    ]


# ------------------------------------------------------------------ NLG, hand-computed

REF = "The heart size is normal."  # -> the heart size is normal .   (6 tokens)
HYP = "The heart is normal."  # -> the heart is normal .             (5 tokens)


def test_bleu_rouge_by_hand_single_pair() -> None:
    with pytest.warns(UserWarning, match="CIDEr on a single report"):
        scores = nlg_scores({"s1": REF}, {"s1": HYP})
    # unigrams 5/5 match; bigrams: "the heart", "is normal", "normal ." of 4 -> 3/4;
    # brevity penalty exp(1 - r/c) with c=5, r=6.
    bp = math.exp(1 - 6 / 5)
    assert scores["BLEU_1"] == pytest.approx(bp * 1.0, rel=1e-8)
    assert scores["BLEU_2"] == pytest.approx(bp * math.sqrt(1.0 * 3 / 4), rel=1e-8)
    # ROUGE-L (pycocoevalcap, beta=1.2): LCS = 5 -> P = 5/5, R = 5/6
    p, r, b2 = 1.0, 5 / 6, 1.2**2
    assert scores["ROUGE_L"] == pytest.approx((1 + b2) * p * r / (r + b2 * p), rel=1e-12)
    # rouge-score ignores "." : LCS 4 of hyp 4 / ref 5 tokens -> F1 = 8/9; bigrams 2 of 3 / 4
    assert scores["rougeL"] == pytest.approx(8 / 9, rel=1e-12)
    assert scores["rouge1"] == pytest.approx(8 / 9, rel=1e-12)
    assert scores["rouge2"] == pytest.approx(4 / 7, rel=1e-12)
    assert scores["CIDEr"] == 0.0  # one document: every idf is log(1) - log(1) = 0
    assert list(scores) == list(NLG_KEYS)


def test_rouge_lsum_uses_sentences() -> None:
    refs = {"a": "No effusion. Heart normal.", "b": "Lungs clear."}
    hyps = {"a": "Heart normal. No effusion.", "b": "Lungs clear."}
    per = nlg_scores_per_report(refs, hyps)
    # Summary-level LCS: each hyp sentence matches a ref sentence fully -> 1.0,
    # whereas plain rougeL on the swapped order finds LCS 2 of 4 tokens -> 0.5.
    assert per.loc["a", "rougeLsum"] == pytest.approx(1.0)
    assert per.loc["a", "rougeL"] == pytest.approx(0.5)


def test_empty_generation_scores_zero() -> None:
    refs = {"a": "The heart is normal.", "b": "No pleural effusion."}
    hyps = {"a": "", "b": "No pleural effusion."}
    per = nlg_scores_per_report(refs, hyps)
    assert (per.loc["a"] == 0.0).all()
    assert per.loc["b", "ROUGE_L"] == pytest.approx(1.0)
    assert per.loc["b", "rouge1"] == pytest.approx(1.0)


def _pycoco_direct(gts: dict, res: dict) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU_{i + 1}": bleu[i] for i in range(4)}
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


CORPUS_REFS = {
    "s1": "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "s2": ["Mild cardiomegaly. Small left pleural effusion.", "Heart is enlarged. Left effusion."],
    "s3": "No acute cardiopulmonary abnormality. XXXX opacity in the right base, likely atelectasis.",
    "s4": "Stable 1.5 cm nodule in the left upper lobe. No focal consolidation.",
}
CORPUS_HYPS = {
    "s1": "Heart size is normal. Lungs are clear. No effusion.",
    "s2": ["The heart is enlarged. There is a small left pleural effusion."],
    "s3": "No acute cardiopulmonary abnormality.",
    "s4": "There is a 1.5 cm nodule in the left upper lobe.",
}


def test_score_files_equals_pycocoevalcap_directly(tmp_path: Path) -> None:
    refs_path, hyps_path = tmp_path / "refs.json", tmp_path / "hyps.json"
    refs_path.write_text(json.dumps(CORPUS_REFS))
    hyps_path.write_text(json.dumps(CORPUS_HYPS))
    scores = score_files(refs_path, hyps_path)
    gts = {
        k: [normalize_report(t) for t in (v if isinstance(v, list) else [v])]
        for k, v in CORPUS_REFS.items()
    }
    res = {k: [normalize_report(v if isinstance(v, str) else v[0])] for k, v in CORPUS_HYPS.items()}
    direct = _pycoco_direct(gts, res)
    for key, value in direct.items():
        assert abs(scores[key] - value) < 1e-12, key
    assert scores["CIDEr"] > 0
    # rouge-score, best reference per id, mean over ids
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for name in ("rouge1", "rouge2", "rougeL"):
        best = [max(scorer.score(r, res[k][0])[name].fmeasure for r in gts[k]) for k in gts]
        assert abs(scores[name] - float(np.mean(best))) < 1e-12, name


def test_corpus_bleu_from_counts_matches_pycocoevalcap() -> None:
    counts = bleu_counts(CORPUS_REFS, CORPUS_HYPS)
    assert counts.shape == (4, 10)
    scores = nlg_scores(CORPUS_REFS, CORPUS_HYPS)
    bleu = bleu_from_counts(counts.sum(0))
    for k in range(4):
        assert abs(bleu[k] - scores[f"BLEU_{k + 1}"]) < 1e-12


def test_lists_and_dicts_give_the_same_scores() -> None:
    refs = ["The heart is normal.", "No effusion.", "Mild cardiomegaly."]
    hyps = ["Heart is normal.", "Small effusion.", "Cardiomegaly."]
    as_dict = nlg_scores(
        {str(i): r for i, r in enumerate(refs)}, {str(i): h for i, h in enumerate(hyps)}
    )
    assert nlg_scores(refs, hyps) == as_dict


# ------------------------------------------------------------------ input errors


def test_prepare_pairs_errors() -> None:
    with pytest.raises(ScoreInputError, match="refs is empty"):
        prepare_pairs({}, {})
    with pytest.raises(ScoreInputError, match=r"no hypothesis: 'b'"):
        prepare_pairs({"a": "x", "b": "y"}, {"a": "x", "c": "z"})
    with pytest.raises(ScoreInputError, match=r"hyps\['a'\] is a int"):
        prepare_pairs({"a": "x"}, {"a": 3})
    with pytest.raises(ScoreInputError, match=r"refs\['a'\] is empty"):
        prepare_pairs({"a": "  "}, {"a": "x"})
    with pytest.raises(ScoreInputError, match="empty after normalisation"):
        prepare_pairs({"a": "..."}, {"a": "x"})
    with pytest.raises(ScoreInputError, match="exactly one"):
        prepare_pairs({"a": "x"}, {"a": ["x", "y"]})
    with pytest.raises(ScoreInputError, match="expected a dict"):
        prepare_pairs("the heart", "the heart")
    gts, res = prepare_pairs({"a": "Heart normal."}, {"a": ""})
    assert res == {"a": [""]} and gts == {"a": ["heart normal ."]}


def test_mismatched_ids_names_a_few(tmp_path: Path) -> None:
    refs = {f"id{i}": "Heart normal." for i in range(20)}
    with pytest.raises(
        ScoreInputError, match=r"20 id\(s\) have a reference but no hypothesis: .*20 in all"
    ):
        prepare_pairs(refs, {"other": "x"})


# ------------------------------------------------------------------ CLI


def _write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("shape", ["str", "list"])
def test_cli_json_both_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    wrap = (lambda t: t) if shape == "str" else (lambda t: [t])
    refs = _write(
        tmp_path,
        "r.json",
        {k: wrap(v if isinstance(v, str) else v[0]) for k, v in CORPUS_REFS.items()},
    )
    hyps = _write(
        tmp_path,
        "h.json",
        {k: wrap(v if isinstance(v, str) else v[0]) for k, v in CORPUS_HYPS.items()},
    )
    assert main(["--refs", str(refs), "--hyps", str(hyps), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "BLEU_1",
        "BLEU_2",
        "BLEU_3",
        "BLEU_4",
        "ROUGE_L",
        "CIDEr",
        "rouge1",
        "rouge2",
        "rougeLsum",
    ):
        assert key in out
    assert out == pytest.approx(score_files(refs, hyps), rel=1e-15)


def test_cli_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs = _write(tmp_path, "r.json", {"a": "Heart normal.", "b": "No effusion."})
    hyps = _write(tmp_path, "h.json", {"a": "Heart normal.", "b": "No effusion."})
    assert main(["--refs", str(refs), "--hyps", str(hyps)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[2].startswith("BLEU_1")
    assert "rougeLsum" in table and "1.0000" in table


@pytest.mark.parametrize(
    ("refs", "hyps", "message"),
    [
        ({"a": "Heart normal.", "b": "x"}, {"a": "Heart normal."}, "different ids"),
        ("", {"a": "x"}, "is empty"),
        ({}, {"a": "x"}, "empty JSON object"),
        ({"a": "Heart normal."}, {"a": 5}, r"hyps\['a'\] is a int"),
        ({"a": "Heart normal."}, {"a": [None]}, r"hyps\['a'\] contains a NoneType"),
        ("{not json", {"a": "x"}, "not valid JSON"),
        (["a"], {"a": "x"}, "holds a JSON list"),
    ],
)
def test_cli_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refs: object, hyps: object, message: str
) -> None:
    refs_path, hyps_path = _write(tmp_path, "r.json", refs), _write(tmp_path, "h.json", hyps)
    with pytest.raises(ScoreInputError, match=message):
        score_files(refs_path, hyps_path)
    assert main(["--refs", str(refs_path), "--hyps", str(hyps_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hyps = _write(tmp_path, "h.json", {"a": "x"})
    assert main(["--refs", str(tmp_path / "nope.json"), "--hyps", str(hyps)]) == 2
    assert "refs file not found" in capsys.readouterr().err


def test_format_scores_table_order() -> None:
    table = format_scores_table({"CIDEr": 0.5, "BLEU_1": 0.25, "extra": 1.0})
    names = [line.split()[0] for line in table.splitlines()[2:]]
    assert names == ["BLEU_1", "CIDEr", "extra"]
    assert "0.2500" in table


# ------------------------------------------------------------------ F1 from counts


def test_f1_from_counts_matches_sklearn_zero_division_0() -> None:
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    truth = rng.random((40, 6)) < 0.3
    pred = rng.random((40, 6)) < 0.3
    truth[:, 5] = pred[:, 5] = False  # a label with no positive anywhere
    tp = (truth & pred).sum(0)
    fp = (~truth & pred).sum(0)
    fn = (truth & ~pred).sum(0)
    for average in ("micro", "macro"):
        expected = f1_score(truth, pred, average=average, zero_division=0)
        assert float(f1_from_counts(tp, fp, fn, average)) == pytest.approx(expected, abs=1e-12)
    assert f1_from_counts(tp, fp, fn, "none")[5] == 0.0
    with pytest.raises(ValueError, match="average"):
        f1_from_counts(tp, fp, fn, "weighted")


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_mean_coverage_in_simulation() -> None:
    rng = np.random.default_rng(123)
    true_mean, covered, reps = 2.0, 0, 400
    for rep in range(reps):
        sample = rng.normal(true_mean, 1.5, size=80)
        ci = bootstrap_ci(sample, n_resamples=1000, seed=rep)
        covered += ci.low <= true_mean <= ci.high
    assert 0.92 <= covered / reps <= 0.98, covered / reps


def test_bootstrap_is_seeded_and_estimate_is_the_sample_statistic() -> None:
    values = np.arange(10, dtype=float)
    a = bootstrap_ci(values, n_resamples=200, seed=7)
    b = bootstrap_ci(values, n_resamples=200, seed=7)
    c = bootstrap_ci(values, n_resamples=200, seed=8)
    assert a.estimate == 4.5 and a.low == b.low and a.high == b.high
    assert not np.array_equal(a.distribution, c.distribution)
    assert a.low < 4.5 < a.high
    # the vectorised mean equals an explicit loop over the same resampled indices
    idx = bootstrap_indices(10, 200, seed=7)
    np.testing.assert_allclose(a.distribution, values[idx].mean(axis=1), rtol=1e-12)
    assert "95% CI" in str(a)


def test_bootstrap_statistic_forms_agree() -> None:
    values = np.random.default_rng(3).random((50, 2))
    vec = bootstrap_ci(lambda idx: values[idx].mean(axis=1), n=50, n_resamples=300, seed=1)
    loop = bootstrap_ci(
        lambda idx: values[idx].mean(axis=0), n=50, n_resamples=300, seed=1, vectorized=False
    )
    direct = bootstrap_ci(values, n_resamples=300, seed=1)
    np.testing.assert_allclose(vec.distribution, loop.distribution, rtol=1e-12)
    np.testing.assert_allclose(vec.distribution, direct.distribution, rtol=1e-12)
    assert direct.estimate.shape == (2,)


def test_bootstrap_calls_a_vectorised_statistic_once_per_chunk() -> None:
    shapes: list[tuple[int, ...]] = []

    def statistic(idx: np.ndarray) -> np.ndarray:
        shapes.append(idx.shape)
        return idx.mean(axis=1)

    bootstrap_ci(statistic, n=3000, n_resamples=1000)
    assert shapes == [(1, 3000), (1000, 3000)]  # point estimate, then all resamples at once


def test_bootstrap_input_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="N > 0"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="needs the number of studies"):
        bootstrap_ci(lambda idx: idx.mean(axis=1))
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)


def test_resample_weights_counts_occurrences() -> None:
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    np.testing.assert_array_equal(resample_weights(idx, 3), [[2, 0, 1], [0, 1, 2]])


def _random_counts(n: int, seed: int = 0) -> metrics.CECounts:
    rng = np.random.default_rng(seed)
    truth = rng.random((n, 14)) < 0.2
    pred = truth ^ (rng.random((n, 14)) < 0.1)
    labels = _labels14()
    as_int = lambda a: a.astype(np.int64)  # noqa: E731
    return metrics.CECounts(
        as_int(truth & pred),
        as_int(~truth & pred),
        as_int(truth & ~pred),
        as_int(~truth & ~pred),
        labels,
    )


def _labels14() -> tuple[str, ...]:
    return (
        "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity",
        "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
        "Pleural Other", "Fracture", "Support Devices",
    )  # fmt: skip


def test_ce_f1_bootstrap_vectorised_equals_loop_and_is_fast() -> None:
    counts = _random_counts(3000)
    start = time.perf_counter()
    cis = ce_f1_bootstrap(counts, n_resamples=1000, seed=0)
    elapsed = time.perf_counter() - start
    # the < 1 s target is recorded by `make bench`; this only catches an accidental loop
    assert elapsed < 5.0, f"1000 resamples x 3000 studies x 14 labels took {elapsed:.2f} s"
    # same resamples, computed naively
    idx = bootstrap_indices(3000, 1000, seed=0)[:50]
    cols5 = [counts.labels.index(n) for n in CE_LABELS_5]
    for b in range(50):
        tp, fp, fn = (a[idx[b]].sum(0) for a in (counts.tp, counts.fp, counts.fn))
        assert cis["ce_micro_f1_14"].distribution[b] == pytest.approx(
            f1_from_counts(tp, fp, fn, "micro")
        )
        assert cis["ce_macro_f1_5"].distribution[b] == pytest.approx(
            f1_from_counts(tp[cols5], fp[cols5], fn[cols5], "macro")
        )
    tp, fp, fn = counts.tp.sum(0), counts.fp.sum(0), counts.fn.sum(0)
    assert cis["ce_micro_f1_14"].estimate == pytest.approx(float(f1_from_counts(tp, fp, fn)))
    ci = cis["ce_micro_f1_14"]
    assert ci.low < ci.estimate < ci.high and ci.high - ci.low < 0.05


def test_bleu_bootstrap_estimate_is_corpus_bleu() -> None:
    counts = bleu_counts(CORPUS_REFS, CORPUS_HYPS)
    cis = bleu_bootstrap(counts, n_resamples=200, seed=0)
    scores = nlg_scores(CORPUS_REFS, CORPUS_HYPS)
    assert cis["BLEU_4"].estimate == pytest.approx(scores["BLEU_4"], abs=1e-12)
    assert cis["BLEU_1"].low <= scores["BLEU_1"] <= cis["BLEU_1"].high


# ------------------------------------------------------------------ clinical efficacy (labels)
# Columns follow CHEXPERT_LABELS: 0 No Finding, 2 Cardiomegaly, 5 Edema, 8 Atelectasis,
# 10 Pleural Effusion, 13 Support Devices.


def _label_rows(rows: list[dict[int, float]]) -> np.ndarray:
    out = np.full((len(rows), 14), np.nan)
    for i, row in enumerate(rows):
        for j, v in row.items():
            out[i, j] = v
    return out


CE_REF = _label_rows([{0: 1}, {2: 1, 10: 1, 5: -1}, {8: 1, 9: 0}, {2: 1, 13: 1}])
CE_HYP = _label_rows([{0: 1}, {2: 1, 5: 1}, {8: -1, 10: 1}, {2: 1}])


def test_ce_by_hand_uncertain_negative() -> None:
    res = ce_scores_from_labels(CE_REF, CE_HYP)
    # TP: No Finding, Cardiomegaly x2 = 3; FP: Edema (ref -1), Effusion (study 3) = 2;
    # FN: Effusion (study 2), Atelectasis (hyp -1), Support Devices = 3
    assert res["ce_micro_f1_14"] == pytest.approx(6 / 11)
    assert res["ce_macro_f1_14"] == pytest.approx(2 / 14)  # F1=1 for two labels, 0 for 12
    # 5 labels: TP Cardiomegaly 2; FP Edema, Effusion; FN Effusion, Atelectasis
    assert res["ce_micro_f1_5"] == pytest.approx(4 / 8)
    assert res["ce_macro_f1_5"] == pytest.approx(1 / 5)
    assert res["ce_micro_precision_14"] == pytest.approx(3 / 5)
    assert res["ce_micro_recall_14"] == pytest.approx(3 / 6)
    table = res.per_label
    assert table.loc["Cardiomegaly", "f1"] == 1.0 and table.loc["Cardiomegaly", "support"] == 2
    assert table.loc["Pleural Effusion", ["tp", "fp", "fn"]].tolist() == [0, 1, 1]
    assert table.loc["Fracture", ["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]


def test_ce_by_hand_uncertain_positive() -> None:
    res = ce_scores_from_labels(CE_REF, CE_HYP, uncertain="positive")
    # Edema (-1 vs 1) and Atelectasis (1 vs -1) turn into true positives: TP 5, FP 1, FN 2
    assert res["ce_micro_f1_14"] == pytest.approx(10 / 13)
    assert res["ce_macro_f1_14"] == pytest.approx(4 / 14)
    assert res["ce_micro_f1_5"] == pytest.approx(8 / 10)
    assert res["ce_macro_f1_5"] == pytest.approx(3 / 5)
    assert res.to_dict()["ce_uncertain_as_positive"] == 1.0


def test_ce_matches_sklearn() -> None:
    from sklearn.metrics import f1_score

    truth = metrics.binarize_labels(CE_REF)
    pred = metrics.binarize_labels(CE_HYP)
    res = ce_scores_from_labels(CE_REF, CE_HYP)
    assert res["ce_micro_f1_14"] == pytest.approx(
        f1_score(truth, pred, average="micro", zero_division=0)
    )
    assert res["ce_macro_f1_14"] == pytest.approx(
        f1_score(truth, pred, average="macro", zero_division=0)
    )


def test_ce_counts_and_label_errors() -> None:
    counts = ce_counts(CE_REF, CE_HYP)
    assert counts.tp.shape == (4, 14) and counts.tp.sum() == 3
    assert counts.subset(CE_LABELS_5).tp.shape == (4, 5)
    with pytest.raises(ValueError, match="uncertain"):
        ce_counts(CE_REF, CE_HYP, uncertain="ignore")
    with pytest.raises(ValueError, match="shape"):
        ce_counts(CE_REF[:, :5], CE_HYP)
    with pytest.raises(ValueError, match="differ in size"):
        ce_counts(CE_REF, CE_HYP[:3])
    bad = CE_REF.copy()
    bad[0, 1] = 2.0
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        ce_counts(bad, CE_HYP)


# ------------------------------------------------------------------ JSON overlap

SLIDE_JSON = [
    {
        "anatomical_entity": None,
        "location_descriptor": None,
        "procedure": [None],
        "clinical_findings": [
            {"clinical_finding": "retrocardiac opacity", "existence": "pos_dx",
             "descriptive_term": "retrocardiac", "observation": "opacity"},
            {"clinical_finding": "atelectasis", "existence": "unc_dx", "observation": "atelectasis"},
            {"clinical_finding": "or small effusion", "existence": "unc_dx",
             "descriptive_term": "or small", "observation": "effusion"},
        ],
    },
    {"anatomical_entity": "lungs", "location_descriptor": "Right", "procedure": [None],
     "clinical_findings": {"clinical_finding": "clear", "existence": "neg_dx", "observation": "clear"}},
    {"anatomical_entity": None, "location_descriptor": None, "procedure": [None],
     "clinical_findings": {"clinical_finding": "pneumothorax", "existence": "neg_dx",
                           "observation": "pneumothorax"}},
    {"anatomical_entity": "diaphragm", "location_descriptor": None, "procedure": [None],
     "clinical_findings": None},
]  # fmt: skip
SLIDE_REPORT = (
    "Retrocardiac opacity which may represent atelectasis and or small effusion is stable. "
    "Right lung is otherwise clear. No pneumothorax."
)


def test_json_values() -> None:
    assert json_values(SLIDE_JSON) == [
        "retrocardiac opacity", "retrocardiac", "opacity", "atelectasis", "or small effusion",
        "or small", "effusion", "lungs", "right", "clear", "pneumothorax", "diaphragm",
    ]  # fmt: skip
    assert json_values({"a": ["X-ray!", "x ray", 3, True, None, "  "], "existence": "pos_dx"}) == [
        "x ray"
    ]


def test_json_overlap_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    # recall's terms come from the labeler; pin them here to test the arithmetic alone
    terms = ["retrocardiac opacity", "atelectasis", "effusion", "pneumothorax", "cardiomegaly"]
    monkeypatch.setattr(metrics, "_reference_terms", lambda report: terms)
    out = json_overlap(json.dumps(SLIDE_JSON), SLIDE_REPORT)
    # 12 values; "lungs" (report says "lung") and "diaphragm" are not supported -> 10/12
    assert out["valid"] and out["n_values"] == 12 and out["n_supported"] == 10
    assert out["precision"] == pytest.approx(10 / 12)
    assert out["unsupported_values"] == ["lungs", "diaphragm"]
    # 4 of the 5 terms occur among the value tokens; "cardiomegaly" does not
    assert out["recall"] == pytest.approx(4 / 5)
    assert out["missed_terms"] == ["cardiomegaly"]
    p, r = 10 / 12, 4 / 5
    assert out["f1"] == pytest.approx(2 * p * r / (p + r))


def test_json_overlap_invalid_and_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_reference_terms", lambda report: ["pneumothorax"])
    bad = json_overlap('{"clinical_finding": "pneumothorax",', "No pneumothorax.")
    assert bad["valid"] is False and bad["precision"] == bad["recall"] == bad["f1"] == 0.0
    assert json_overlap("42", "No pneumothorax.")["valid"] is False
    empty = json_overlap({"clinical_findings": []}, "No pneumothorax.")
    assert empty["valid"] and empty["n_values"] == 0 and empty["precision"] == 0.0
    with pytest.raises(ScoreInputError, match="reference report is empty"):
        json_overlap("{}", "  ")
    with pytest.raises(ScoreInputError, match="got int"):
        json_overlap(3, "No pneumothorax.")  # type: ignore[arg-type]


def test_json_overlap_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_reference_terms", lambda report: ["pneumothorax"])
    good = json.dumps({"clinical_finding": "pneumothorax", "existence": "neg_dx"})
    out = metrics.json_overlap_corpus([good, "not json"], ["No pneumothorax.", "No pneumothorax."])
    assert out == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "valid_rate": 0.5, "n": 2.0}
    with pytest.raises(ScoreInputError, match="1 generated vs 2"):
        metrics.json_overlap_corpus([good], ["a", "b"])


# ------------------------------------------------------------------ RadGraph / BERTScore


def test_radgraph_unavailable_offline_says_why() -> None:
    with pytest.raises(MetricUnavailable, match="'radgraph' package is not installed"):
        radgraph_f1({"a": "No effusion."}, {"a": "No effusion."})
    ok, reason = metrics.available_metrics()["radgraph"]
    assert ok is False and "pip install radgraph" in reason


def test_available_metrics_reports_offline_bertscore() -> None:
    status = metrics.available_metrics()
    assert status["nlg"][0] and status["rouge_score"][0]
    assert status["bertscore_minilm"][0], status["bertscore_minilm"][1]


def test_bertscore_minilm_offline() -> None:
    refs = [
        "The heart is enlarged. There is a small left pleural effusion.",
        "The lungs are clear. No pneumothorax.",
        "The heart is enlarged. There is a small left pleural effusion.",
        "No acute disease.",
    ]
    hyps = [
        "The heart is enlarged. There is a small left pleural effusion.",
        "Lungs are clear without pneumothorax.",  # paraphrase of refs[1]
        "The patient ate breakfast at noon yesterday.",  # unrelated to refs[2]
        "",
    ]
    out = bertscore(refs, hyps, backend="minilm-offline", device="cpu")
    assert out["backend"] == "minilm-offline" and out["fallback_reason"] is None
    assert out["P_each"][0] == pytest.approx(1.0, abs=1e-5)
    assert out["R_each"][0] == pytest.approx(1.0, abs=1e-5)
    assert out["F_each"][0] == pytest.approx(1.0, abs=1e-5)
    assert out["F_each"][1] > out["F_each"][2] + 0.1
    assert out["F_each"][3] == 0.0
    assert out["F"] == pytest.approx(float(np.mean(out["F_each"])))
    auto = bertscore(refs[:2], hyps[:2], device="cpu")
    assert auto["backend"] == "minilm-offline" and "bert-score" in auto["fallback_reason"]
    np.testing.assert_allclose(auto["F_each"], out["F_each"][:2], atol=1e-5)
    with pytest.raises(MetricUnavailable, match="bert-score"):
        bertscore(refs[:1], hyps[:1], backend="bert-score")


# ------------------------------------------------------------------ with the course labeler


CE_TEXT_REFS = [
    "There is cardiomegaly.",
    "No pneumothorax. No pleural effusion.",
    "Small left pleural effusion.",
]
CE_TEXT_HYPS = [
    "There is cardiomegaly. There is a pleural effusion.",
    "No pneumothorax.",
    "No pleural effusion.",
]


def test_clinical_efficacy_end_to_end_by_hand() -> None:
    res = metrics.clinical_efficacy(CE_TEXT_REFS, CE_TEXT_HYPS)
    # labeler: study 1 and hyps 1-2 have no positive finding -> "No Finding" = 1.
    # TP: Cardiomegaly (0), No Finding (1); FP: Pleural Effusion (0), No Finding (2);
    # FN: Pleural Effusion (2)
    table = res.per_label
    assert table.loc["Cardiomegaly", ["tp", "fp", "fn"]].tolist() == [1, 0, 0]
    assert table.loc["Pleural Effusion", ["tp", "fp", "fn"]].tolist() == [0, 1, 1]
    assert table.loc["No Finding", ["tp", "fp", "fn"]].tolist() == [1, 1, 0]
    assert res["ce_micro_f1_14"] == pytest.approx(4 / 7)
    assert res["ce_macro_f1_14"] == pytest.approx((2 / 3 + 1) / 14)
    assert res["ce_micro_f1_5"] == pytest.approx(2 / 4)
    assert res.ref_labels is not None and res.ref_labels.shape == (3, 14)
    same = metrics.clinical_efficacy(CE_TEXT_REFS, CE_TEXT_REFS)
    assert same["ce_micro_f1_14"] == 1.0 and same["ce_micro_f1_5"] == 1.0


def test_cli_with_ce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs = _write(tmp_path, "r.json", dict(enumerate(CE_TEXT_REFS)))
    hyps = _write(tmp_path, "h.json", dict(enumerate(CE_TEXT_HYPS)))
    assert main(["--refs", str(refs), "--hyps", str(hyps), "--json", "--ce"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ce_micro_f1_14"] == pytest.approx(4 / 7) and "BLEU_4" in out


def test_json_overlap_with_course_labeler() -> None:
    out = json_overlap(SLIDE_JSON, SLIDE_REPORT)
    # the labeler finds opacity, atelectasis, effusion, pneumothorax: all among the values
    assert set(out["missed_terms"]) == set()
    assert out["n_terms"] >= 4 and out["recall"] == 1.0
    assert out["precision"] == pytest.approx(10 / 12)
    cardiac = json_overlap({"clinical_finding": "clear lungs"}, "Cardiomegaly. Lungs are clear.")
    assert "cardiomegaly" in cardiac["missed_terms"] and cardiac["precision"] == 1.0
