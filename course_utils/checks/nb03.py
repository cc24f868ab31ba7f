"""Graded checks for notebook 03 (template baseline).

:func:`check_template_baseline` gives the student's ``template_baseline`` fixed label sets and
reads the paragraphs back with the course labeler (:func:`course_utils.labels.label_report`):
the strongest check there is for template filling, because it is what clinical-efficacy F1 does
with the generated reports later. It asserts that

* every positive finding comes back positive, every uncertain one uncertain (hedged: "possible",
  "may represent") and every negative one negative;
* laterality and severity of positive/uncertain findings come back unchanged;
* no finding the input does not have is written as positive or uncertain, and an empty label
  list gives a normal report (No Finding);
* no sentence is written twice (a duplicated input finding included);
* the output is deterministic and in a fixed anatomical order: the same call twice, and the
  same findings in another order, give the same text; sections follow heart, mediastinum,
  lungs, pleura, bones, devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..baseline import SECTIONS, Finding
from ..labels import NEGATIVE, POSITIVE, UNCERTAIN, label_report, split_sentences
from . import Checker

_F = Finding
#: Label sets with known answers; each exposes at least one classic mistake.
LABEL_SETS: dict[str, list[Finding]] = {
    "effusion and heart": [
        _F("Pleural Effusion", POSITIVE, "right", "small"),
        _F("Cardiomegaly", POSITIVE, None, "moderate"),
    ],
    "hedged and negated": [
        _F("Atelectasis", UNCERTAIN, "left", None),
        _F("Pneumothorax", NEGATIVE, None, None),
        _F("Edema", POSITIVE, "bilateral", "mild"),
    ],
    "pleura, bones, devices": [
        _F("Pneumothorax", POSITIVE, "left", "large"),
        _F("Lung Opacity", UNCERTAIN, "right", "severe"),
        _F("Fracture", POSITIVE, "right", None),
        _F("Support Devices", POSITIVE, None, None),
        _F("Pleural Effusion", NEGATIVE, None, None),
    ],
    "all thirteen labels": [
        _F("Support Devices", POSITIVE, None, None),
        _F("Fracture", NEGATIVE, None, None),
        _F("Pleural Other", POSITIVE, "right", None),
        _F("Pleural Effusion", UNCERTAIN, "left", "small"),
        _F("Pneumothorax", NEGATIVE, None, None),
        _F("Atelectasis", POSITIVE, "bilateral", "mild"),
        _F("Pneumonia", UNCERTAIN, "right", None),
        _F("Consolidation", POSITIVE, "right", None),
        _F("Edema", UNCERTAIN, None, "moderate"),
        _F("Lung Opacity", NEGATIVE, None, None),
        _F("Lung Lesion", POSITIVE, "left", "small"),
        _F("Cardiomegaly", NEGATIVE, None, None),
        _F("Enlarged Cardiomediastinum", UNCERTAIN, None, None),
    ],
    "a duplicated finding": [
        _F("Consolidation", POSITIVE, "left", None),
        _F("Pneumonia", UNCERTAIN, "left", None),
        _F("Consolidation", POSITIVE, "left", None),
    ],
    "negatives only": [
        _F("Cardiomegaly", NEGATIVE, None, None),
        _F("Pleural Effusion", NEGATIVE, None, None),
        _F("Consolidation", NEGATIVE, None, None),
        _F("Pneumothorax", NEGATIVE, None, None),
    ],
}
_STATE = {POSITIVE: "positive", UNCERTAIN: "uncertain", NEGATIVE: "negative", None: "not mentioned"}
_SECTION_RANK = {label: rank for rank, s in enumerate(SECTIONS) for label in s.labels}
_HINTS = {
    POSITIVE: "write positives as plain statements ('There is a small right pleural effusion.')",
    UNCERTAIN: "hedge uncertain findings: 'Possible ...' or '... may represent ...'",
    NEGATIVE: "write negatives as negations: 'No pneumothorax.'",
}


def _call(check: Checker, func: Callable[..., str], findings: Sequence[Finding], name: str) -> str:
    text = check.call(func, "fixture/study.jpg", list(findings))
    check.expect(isinstance(text, str) and text.strip() != "", f"[{name}] returns a non-empty str",
                 "a paragraph", text)  # fmt: skip
    return text


def _check_round_trip(check: Checker, text: str, findings: list[Finding], name: str) -> None:
    read = label_report(text)
    given = {f.label: f.status for f in findings}
    for label, status in given.items():
        got = read.values[label]
        check.expect(got == status, f"[{name}] {label} is read back as {_STATE[status]}",
                     _STATE[status], f"{_STATE[got]} in {text!r}", _HINTS[status])  # fmt: skip
    for f in findings:
        if f.status == NEGATIVE:
            continue
        mine = [m for m in read.mentions if m.label == f.label and m.status == f.status]
        if f.laterality is not None:
            sides = sorted({str(m.laterality) for m in mine})
            check.expect(any(m.laterality == f.laterality for m in mine),
                         f"[{name}] {f.label}: laterality '{f.laterality}' is written",
                         f.laterality, f"{sides} in {text!r}",
                         "put the side next to the finding ('small right pleural effusion')")  # fmt: skip
        if f.severity is not None:
            grades = sorted({str(m.severity) for m in mine})
            check.expect(any(m.severity == f.severity for m in mine),
                         f"[{name}] {f.label}: severity '{f.severity}' is written",
                         f.severity, f"{grades} in {text!r}",
                         "put the severity before the finding ('moderate pulmonary edema')")  # fmt: skip
    invented = sorted(k for k, v in read.values.items()
                      if k != "No Finding" and k not in given and v in (POSITIVE, UNCERTAIN))  # fmt: skip
    check.expect(not invented, f"[{name}] no finding is invented", "only the input's findings",
                 f"{invented} in {text!r}", "normal default sentences must be negative")  # fmt: skip


def _check_sentences(check: Checker, text: str, findings: list[Finding], name: str) -> None:
    sentences = [" ".join(s.lower().split()) for s in split_sentences(text)]
    repeated = sorted({s for s in sentences if sentences.count(s) > 1})
    check.expect(not repeated, f"[{name}] no sentence is written twice", "distinct sentences",
                 repeated, "drop duplicate findings first (e.g. through a set)")  # fmt: skip
    first: dict[str, int] = {}
    for mention in label_report(text).mentions:
        first.setdefault(mention.label, mention.sentence_index)
    labels = sorted({f.label for f in findings if f.label in first}, key=_SECTION_RANK.get)
    ranks = [(_SECTION_RANK[lab], first[lab]) for lab in labels]
    in_order = all(b[1] >= a[1] for a, b in zip(ranks, ranks[1:], strict=False) if b[0] > a[0])
    check.expect(in_order, f"[{name}] sections in a fixed order: heart, mediastinum, lungs, "
                 "pleura, bones, devices", [s.name for s in SECTIONS], text,
                 "loop over the sections, not over the input")  # fmt: skip


def check_template_baseline(template_baseline: Callable[..., str]) -> None:
    """Grade ``template_baseline(image_path, labels)`` on :data:`LABEL_SETS` and an empty set."""
    check = Checker("template_baseline")
    text = _call(check, template_baseline, [], "no findings")
    read = label_report(text)
    pathologic = sorted(k for k, v in read.values.items() if v in (POSITIVE, UNCERTAIN) and k != "No Finding")  # fmt: skip
    check.expect(read.values["No Finding"] == POSITIVE and not pathologic,
                 "[no findings] an empty label list gives a normal report",
                 "No Finding", f"{pathologic} in {text!r}")  # fmt: skip
    for name, findings in LABEL_SETS.items():
        text = _call(check, template_baseline, findings, name)
        _check_round_trip(check, text, findings, name)
        _check_sentences(check, text, findings, name)
        again = check.call(template_baseline, "fixture/study.jpg", list(findings))
        check.expect(again == text, f"[{name}] deterministic: the same call gives the same text",
                     text, again, "no random choices; iterate over lists, not sets")  # fmt: skip
        shuffled = findings[1:] + findings[:1] if len(findings) > 1 else findings
        other = check.call(template_baseline, "fixture/study.jpg", list(reversed(shuffled)))
        check.expect(other == text, f"[{name}] the input order does not change the text",
                     text, other, "order sentences by section and label, not by input position")  # fmt: skip
    check.done()
