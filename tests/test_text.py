"""Tests for course_utils.text: XXXX imputation, JSON findings, styles, tokenizer."""

from __future__ import annotations

import math

import pytest

from course_utils import text as T

# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iu_findings() -> list[str]:
    """FINDINGS of the 3,955 real IU reports (non-empty ones only)."""
    try:
        from course_utils.data import load_iu_reports
    except ImportError:  # data package __init__ not wired yet
        from course_utils.data.iu import load_iu_reports
    frame = load_iu_reports()
    assert len(frame) == 3955
    return [f for f in frame["findings"].fillna("") if f.strip()]


# ---------------------------------------------------------------------------------------------
# 1. normalisation and XXXX
# ---------------------------------------------------------------------------------------------


def test_normalize_report_text_cleans_case_space_tags() -> None:
    raw = "  The lungs are clear.There is  no\neffusion..<BR>Normal chest x-XXXX. "
    assert T.normalize_report_text(raw) == (
        "the lungs are clear. there is no effusion. normal chest x-xxxx."
    )
    assert T.normalize_report_text("Heart 2.5 cm.", lowercase=False) == "Heart 2.5 cm."
    with pytest.raises(TypeError, match="text must be a str"):
        T.normalize_report_text(None)  # type: ignore[arg-type]


def test_count_xxxx_hand_counted() -> None:
    reports = ["The XXXX are intact. Lungs clear.", "Normal chest x-XXXX. XXXX XXXX.", "No edema."]
    assert T.count_xxxx(reports) == {
        "n_reports": 3,
        "n_reports_with_xxxx": 2,
        "n_sentences": 5,
        "n_sentences_with_xxxx": 3,
        "n_tokens_xxxx": 4,
    }
    with pytest.raises(TypeError, match="report 1"):
        T.count_xxxx(["ok.", math.nan])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("Normal chest x-XXXX.", "Normal chest x-ray."),
        ("Calcified right hilar lymph XXXX.", "Calcified right hilar lymph nodes."),
        ("Calcified left hilar XXXX.", "Calcified left hilar nodes."),
        ("Calcified aortic XXXX.", "Calcified aortic arch."),
        ("Both costophrenic XXXX are blunted.", "Both costophrenic angles are blunted."),
        ("Blunting of the left costophrenic XXXX.", "Blunting of the left costophrenic angle."),
        (
            "Normal mediastinal contour, pulmonary XXXX and vasculature.",
            "Normal mediastinal contour, pulmonary hila and vasculature.",
        ),
        (
            "Pulmonary vasculature and XXXX are normal.",
            "Pulmonary vasculature and hila are normal.",
        ),
        ("The heart and pulmonary XXXX are normal.", "The heart and pulmonary vessels are normal."),
        ("Tip in the superior XXXX XXXX.", "Tip in the superior vena cava."),
        ("XXXX sternotomy XXXX are intact.", "Median sternotomy wires are intact."),
        ("There are no XXXX of a pleural effusion.", "There are no signs of a pleural effusion."),
        ("No XXXX focal airspace consolidation.", "No new focal airspace consolidation."),
        (
            "The heart and lungs have XXXX XXXX in the interval.",
            "The heart and lungs have remained stable in the interval.",
        ),
        ("The XXXX examination consists of", "The current examination consists of"),
        ("Right chest XXXX tip in the SVC.", "Right chest port tip in the SVC."),
        ("Mild wedge XXXX deformity.", "Mild wedge compression deformity."),
        ("Opacity, XXXX atelectasis.", "Opacity, likely atelectasis."),
        ("Air trapping versus inspiratory XXXX.", "Air trapping versus inspiratory effort."),
        ("Clear lung XXXX bilaterally.", "Clear lung fields bilaterally."),
        ("Central airways are XXXX.", "Central airways are patent."),
        ("Fluid in the right XXXX fissure.", "Fluid in the right minor fissure."),
        ("Trachea and XXXX bronchi appear normal.", "Trachea and mainstem bronchi appear normal."),
        ("Normal in XXXX and alignment.", "Normal in height and alignment."),
        ("There is an IVC XXXX.", "There is an IVC filter."),
        ("Right XXXX-A-XXXX is in XXXX.", "Right port-A-cath is in place."),
        ("Normal bowel XXXX pattern.", "Normal bowel gas pattern."),
        ("Questions, please XXXX.", "Questions, please call."),
        ("XXXX and soft tissues are unremarkable.", "Bones and soft tissues are unremarkable."),
        ("Lungs clear. The XXXX are intact.", "Lungs clear. The bones are intact."),
    ],
)
def test_impute_xxxx_each_rule(before: str, after: str) -> None:
    result = T.impute_xxxx(before)
    assert result.text == after
    assert result.n_resolved == result.n_xxxx == before.count("XXXX")
    assert len(result.applied) >= 1


def test_impute_xxxx_leaves_ambiguous_slots() -> None:
    result = T.impute_xxxx("XXXX opacities in the left base. Comparison XXXX, XXXX.")
    assert result.text == "XXXX opacities in the left base. Comparison XXXX, XXXX."
    assert (result.n_xxxx, result.n_resolved, result.applied) == (3, 0, [])
    # "mainstem" needs the word "bronchi", not "bronchial"
    assert T.impute_xxxx("XXXX bronchial wall").n_resolved == 0


def test_xxxx_rule_needs_slot_and_custom_rules_work() -> None:
    with pytest.raises(ValueError, match="slot"):
        T.XxxxRule(r"lymph XXXX", "nodes", "no group")
    rule = T.XxxxRule(r"\bwithin (?P<slot>XXXX) limits", "normal", "slides example")
    result = T.impute_xxxx("Heart within XXXX limits.", rules=[rule])
    assert result.text == "Heart within normal limits." and result.applied == [rule.name]


def test_impute_xxxx_corpus_totals() -> None:
    out = T.impute_xxxx_corpus(["Normal chest x-XXXX.", "XXXX opacities.", "Clear."])
    assert (out["n_reports"], out["n_xxxx"], out["n_resolved"]) == (3, 2, 1)
    assert out["share_resolved"] == pytest.approx(0.5)
    assert out["texts"][0] == "Normal chest x-ray."
    assert T.impute_xxxx_corpus([])["share_resolved"] == 0.0


def test_xxxx_on_real_reports(iu_findings: list[str]) -> None:
    counts = T.count_xxxx(iu_findings)
    assert counts["n_reports_with_xxxx"] == 1486  # the slides' number
    assert counts["n_tokens_xxxx"] == 2533
    out = T.impute_xxxx_corpus(iu_findings)
    assert out["n_resolved"] == 1219  # 48.1 % of the placeholders
    unused = [name for name, n in out["rule_counts"].items() if n == 0]
    assert len(unused) == 2  # "inspiratory effort" and "please call" occur in IMPRESSION only


# ---------------------------------------------------------------------------------------------
# 4. tokenizer
# ---------------------------------------------------------------------------------------------

_TOY = [
    "The lungs are clear.",
    "The heart is normal. The lungs are clear.",
    "No pleural effusion. Normal chest x-ray.",
    "No pneumothorax. Normal chest x-ray.",
]


def test_tokenizer_vocab_specials_and_oov() -> None:
    tok = T.train_word_tokenizer(_TOY, vocab_size=100, min_frequency=2)
    vocab = tok.get_vocab()
    assert [vocab[s] for s in T.SPECIAL_TOKENS] == list(range(len(T.SPECIAL_TOKENS)))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    # "heart" (1x) is rare -> <unk>; "lungs" (2x) is kept
    tokens = tok.convert_ids_to_tokens(tok("The heart lungs.")["input_ids"])
    assert tokens == ["<bos>", "▁the", "<unk>", "▁lungs", ".", "<eos>"]
    assert tok.decode(
        tok("<image> <findings> the lungs")["input_ids"], skip_special_tokens=True
    ) == ("the lungs")
    # the vocabulary cap counts the specials
    assert len(T.train_word_tokenizer(_TOY, vocab_size=12, min_frequency=1)) == 12
    assert tok.get_vocab() == T.train_word_tokenizer(list(_TOY), 100, 2).get_vocab()


def test_tokenizer_errors() -> None:
    with pytest.raises(ValueError, match="no non-empty"):
        T.train_word_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="vocab_size"):
        T.train_word_tokenizer(_TOY, vocab_size=5)
    with pytest.raises(TypeError, match="text 1"):
        T.train_word_tokenizer(["ok", None])  # type: ignore[list-item]


def test_tokenizer_round_trip_real_sentences_and_save_load(tmp_path, iu_findings) -> None:
    from transformers import AutoTokenizer

    texts = [T.normalize_report_text(t) for t in iu_findings]
    tok = T.train_word_tokenizer(texts[:2000], vocab_size=2000, min_frequency=2)
    assert len(tok) <= 2000
    n_exact = 0
    for text in texts[:300]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        if tok.unk_token_id not in ids:  # rare words decode to nothing, by design
            assert tok.decode(ids, skip_special_tokens=True) == text
            n_exact += 1
    assert n_exact >= 200
    raw = "  The lungs are CLEAR.There is no  effusion. "
    normed = T.normalize_report_text(raw)
    assert tok.decode(tok(normed, add_special_tokens=False)["input_ids"]) == normed
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded(texts[0])["input_ids"] == tok(texts[0])["input_ids"]
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<bos>", "<eos>")


# ---------------------------------------------------------------------------------------------
# 2. sentence -> JSON
# ---------------------------------------------------------------------------------------------

_SLIDES = "Retrocardiac opacity which may represent atelectasis and or or small effusion is stable."


def _finding(cf: str, existence: str, term: str | None, obs: str) -> dict:
    return {
        "clinical_finding": cf,
        "existence": existence,
        "descriptive_term": term,
        "observation": obs,
    }


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        (  # the slides' example (their "or small" descriptive term was a GPT artefact)
            _SLIDES,
            {
                "anatomical_entity": None,
                "location_descriptor": None,
                "procedure": None,
                "clinical_findings": [
                    _finding("retrocardiac opacity", "pos_dx", "retrocardiac", "opacity"),
                    _finding("atelectasis", "unc_dx", None, "atelectasis"),
                    _finding("small effusion", "unc_dx", "small", "effusion"),
                ],
            },
        ),
        (
            "Right Lung is otherwise clear.",
            {
                "anatomical_entity": "lungs",
                "location_descriptor": "right",
                "procedure": None,
                "clinical_findings": [_finding("clear", "neg_dx", None, "clear")],
            },
        ),
        (
            "No pneumothorax.",
            {
                "anatomical_entity": None,
                "location_descriptor": None,
                "procedure": None,
                "clinical_findings": [_finding("pneumothorax", "neg_dx", None, "pneumothorax")],
            },
        ),
        (
            "NG tube tip below the diaphragm.",
            {
                "anatomical_entity": "diaphragm",
                "location_descriptor": None,
                "procedure": "ng tube",
                "clinical_findings": [_finding("ng tube", "pos_dx", "ng", "tube")],
            },
        ),
        (
            "Small right pleural effusion.",
            {
                "anatomical_entity": "pleura",
                "location_descriptor": "right",
                "procedure": None,
                "clinical_findings": [
                    _finding(
                        "small right pleural effusion", "pos_dx", "small right pleural", "effusion"
                    )
                ],
            },
        ),
        (
            "The heart is not enlarged.",
            {
                "anatomical_entity": "heart",
                "location_descriptor": None,
                "procedure": None,
                "clinical_findings": [
                    _finding("heart is not enlarged", "neg_dx", None, "not enlarged")
                ],
            },
        ),
        (
            "Status post median sternotomy and cholecystectomy.",
            {
                "anatomical_entity": None,
                "location_descriptor": None,
                "procedure": "median sternotomy, cholecystectomy",
                "clinical_findings": [
                    _finding("median sternotomy", "pos_dx", "median", "sternotomy")
                ],
            },
        ),
    ],
)
def test_sentence_to_json_hand_made(sentence: str, expected: dict) -> None:
    assert T.sentence_to_json(sentence) == expected


def test_sentence_to_json_location_and_render() -> None:
    obj = T.sentence_to_json("Left lower lobe airspace disease may represent pneumonia.")
    assert (obj["anatomical_entity"], obj["location_descriptor"]) == ("lungs", "left lower lobe")
    assert [f["existence"] for f in obj["clinical_findings"]] == ["pos_dx", "unc_dx"]
    assert T.render_sentence(obj) == "Left lower lobe airspace disease. Possible pneumonia."
    assert T.render_sentence(T.sentence_to_json(_SLIDES)) == (
        "Retrocardiac opacity. Possible atelectasis. Possible small effusion."
    )
    assert T.render_sentence(T.sentence_to_json("Right Lung is otherwise clear.")) == (
        "The right lung is clear."
    )
    assert T.render_sentence(T.sentence_to_json("Heart size is normal.")) == "Heart size is normal."
    assert T.render_sentence(T.sentence_to_json("NG tube tip below the diaphragm.")) == "NG tube."
    empty = {
        "anatomical_entity": None,
        "location_descriptor": None,
        "procedure": None,
        "clinical_findings": [],
    }
    assert T.render_sentence(empty) == ""


def test_sentence_and_report_errors() -> None:
    with pytest.raises(ValueError, match="empty sentence"):
        T.sentence_to_json("   ")
    with pytest.raises(TypeError, match="sentence must be a str"):
        T.sentence_to_json(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty report"):
        T.report_to_json(" . ")


def test_validate_findings_json_paths_and_schema() -> None:
    import json

    import jsonschema

    objs = T.report_to_json("No pneumothorax. Small right pleural effusion.")
    assert len(objs) == 2
    parsed = T.validate_findings_json(json.dumps(objs))
    assert [p.model_dump() for p in parsed] == objs
    jsonschema.validate(objs, T.FINDINGS_JSON_SCHEMA)  # the exported schema accepts our output

    bad = json.loads(json.dumps(objs))
    bad[1]["clinical_findings"][0]["existence"] = "maybe"
    with pytest.raises(T.FindingsJSONError) as info:
        T.validate_findings_json(bad)
    assert info.value.path == "[1].clinical_findings[0].existence"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, T.FINDINGS_JSON_SCHEMA)

    missing = {k: v for k, v in objs[0].items() if k != "procedure"}
    with pytest.raises(T.FindingsJSONError, match=r"\[0\]\.procedure"):
        T.validate_findings_json(missing)
    with pytest.raises(T.FindingsJSONError, match=r"\[0\]\.confidence: Extra inputs"):
        T.validate_findings_json([{**objs[0], "confidence": 0.9}])
    with pytest.raises(T.FindingsJSONError, match="not valid JSON"):
        T.validate_findings_json('[{"anatomical_entity": ')
    with pytest.raises(T.FindingsJSONError, match="expected a list"):
        T.validate_findings_json(42)
    with pytest.raises(T.FindingsJSONError, match=r"\[0\]\.clinical_findings\[0\]\.observation"):
        T.json_to_report(
            [
                {
                    **objs[0],
                    "clinical_findings": [
                        {**bad[1]["clinical_findings"][0], "existence": "pos_dx", "observation": ""}
                    ],
                }
            ]
        )


def _agreement(originals: list[str], converted: list[str]) -> float:
    """Share of report pairs whose 14 labels are identical."""
    from course_utils.labels import label_report

    same = [
        label_report(a).values == label_report(b).values
        for a, b in zip(originals, converted, strict=True)
    ]
    return sum(same) / len(same)


def test_json_round_trip_keeps_labels_on_real_reports(iu_findings: list[str]) -> None:
    reports = iu_findings[::4]  # 857 reports, every 4th
    rendered = [T.json_to_report(T.report_to_json(r)) for r in reports]
    assert _agreement(reports, rendered) >= 0.95


# ---------------------------------------------------------------------------------------------
# 3. styles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "section"),
    [
        ("Right IJ catheter tip in the SVC.", "lines_tubes"),
        ("No pleural effusion or pneumothorax.", "pleura"),
        ("Heart size is normal.", "heart_mediastinum"),
        ("Calcified aortic XXXX.", "heart_mediastinum"),
        ("Degenerative changes of the thoracic spine.", "bones"),
        ("XXXX and soft tissues are unremarkable.", "bones"),
        ("The lungs are clear.", "lungs"),
        ("No focal consolidation, pleural effusion, or pneumothorax.", "lungs"),
        ("Calcified granuloma in the right upper lobe.", "lungs"),
        ("Normal bowel gas pattern.", "other"),
    ],
)
def test_classify_sentence(sentence: str, section: str) -> None:
    assert T.classify_sentence(sentence) == section


def test_to_style_and_detect_style_hand_made() -> None:
    report = (
        "The heart is normal in size. The lungs are clear.There is no pleural effusion. "
        "Degenerative changes of the spine."
    )
    sectioned = T.to_style(report, "sectioned")
    assert sectioned == (
        "Lines/tubes: None.\n"
        "Lungs: The lungs are clear.\n"
        "Pleura: There is no pleural effusion.\n"
        "Heart and mediastinum: The heart is normal in size.\n"
        "Bones: Degenerative changes of the spine."
    )
    assert T.detect_style(sectioned) == "sectioned"
    assert T.detect_style(report) == "narrative"
    assert T.to_style(sectioned, "narrative") == (
        "The lungs are clear. There is no pleural effusion. The heart is normal in size. "
        "Degenerative changes of the spine."
    )
    assert T.to_style(T.to_style(sectioned, "narrative"), "sectioned") == sectioned
    assert T.to_style("Normal bowel gas pattern.", "sectioned").endswith(
        "Bones: Normal.\nOther: Normal bowel gas pattern."
    )
    with pytest.raises(ValueError, match="unknown style"):
        T.to_style(report, "bulleted")
    with pytest.raises(ValueError, match="empty report"):
        T.to_style("  ", "sectioned")
    with pytest.raises(ValueError, match="empty text"):
        T.detect_style("")


def test_styles_on_real_reports(iu_findings: list[str]) -> None:
    reports = iu_findings[1::4]
    sectioned = [T.to_style(r, "sectioned") for r in reports]
    narrative = [T.to_style(r, "narrative") for r in reports]
    assert all(T.detect_style(s) == "sectioned" for s in sectioned)
    assert all(T.detect_style(n) == "narrative" for n in narrative)
    assert _agreement(reports, narrative) >= 0.99
    back = [T.to_style(s, "narrative") for s in sectioned]  # headers and defaults dropped
    assert _agreement(reports, back) >= 0.99
    # labelled directly: the labeler skips headers ("Lines/tubes:") and defaults say nothing
    assert _agreement(reports, sectioned) >= 0.95


def test_section_headers_and_defaults_create_no_mention() -> None:
    from course_utils.labels import label_report

    defaults = T.to_style("Normal bowel gas pattern.", "sectioned")
    assert defaults.startswith("Lines/tubes: None.\nLungs: Clear.\nPleura: Normal.")
    assert label_report(defaults).mentions == ()
