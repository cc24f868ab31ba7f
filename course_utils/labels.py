"""A rule-based CheXpert-style labeler for chest X-ray reports.

The CheXpert labeler (Irvin et al., 2019) turns free-text reports into 14 observation labels
in three steps: find *mentions* of each observation, classify each mention as negated,
uncertain or positive, and *aggregate* the mentions of a report into one value per label.
This module re-implements that idea with our own phrase lists and rules (it does not use the
Stanford phrase files) and adds laterality and severity to every mention.

Pipeline, for one report::

    text ──► sentences ──► phrases (mention table) ──┬─► status from cues  ──► Mention
                       └─► events (cue table) ───────┴─► laterality, severity
    mentions ──► per label: positive > uncertain > negative > not mentioned (None)

Each table is scanned once per report (an indexed scan equivalent to one big regex
alternation, see ``_PhraseScanner``), so labeling costs ~0.1 ms per IU report on one core.

Mentions
    *Finding* phrases name an observation ("cardiomegaly", "pleural effusion", "sternotomy").
    *Anatomy* phrases name a structure ("heart size", "cardiac silhouette", "mediastinum") and
    only become a mention when an attribute qualifies them in the same clause: "heart size is
    normal" / "normal heart size" / "within normal limits" / "upper limits of normal" ->
    negative; "enlarged" / "widened" / "is large" -> positive; "borderline" / "prominent" ->
    uncertain. "Stable cardiomediastinal silhouette" alone is not a mention. "Normal heart size
    and mediastinal contours" gives both Cardiomegaly and Enlarged Cardiomediastinum.

Cues and scope
    *Pre* cues govern phrases to their right ("no", "without", "free of", "clear of",
    "negative for", "possible", "questionable", "suspicious for", "likely", "cannot exclude"),
    *post* cues the phrases to their left ("is not seen", "has resolved", "cannot be excluded",
    "is possible", "?"), some both ("resolved", "absent", "not excluded"). *Pair* cues
    ("versus", "vs", "and/or", "may", "could") and "borderline" reach only the adjacent phrase,
    so "atelectasis versus scarring" makes both uncertain but leaves an earlier "cardiomegaly,"
    alone. A phrase takes the status of a following post cue, else of the nearest pre cue to
    its left, else its base status (positive, or the anatomy attribute's). A scope ends at the
    sentence end, after 250 characters, or at a terminator ("but", "however", "although",
    "except", "other than", "which", "there is", "with", "and" + a new noun phrase, ";", ...):
    "No pneumothorax or pleural effusion." negates both; "No effusion but there is
    atelectasis." leaves atelectasis positive. Pseudo-negations ("no change in", "without
    interval change") end a scope without negating; "to suggest" is not a cue ("no opacity to
    suggest pneumonia" is negative).

Choices (where the official labeler and radiology practice leave room)
    * ``XXXX`` (the IU de-identification mask) is an ordinary unknown word: it never creates or
      breaks a mention, cue or terminator, so "There are no XXXX of a pleural effusion" is
      negative. One exception: "within XXXX limits" reads as "within normal limits" (the mask
      hides "normal" there).
    * Calcified granulomas are **not** Lung Lesion (as in the Stanford labeler): they are healed
      benign calcifications, and about one IU report in nine mentions one.
      A "nodule", "mass" or "nodular density" is a lesion even when called calcified.
    * "likely", "probable", "suggestive of", "concerning for", "suspicious for" are uncertain
      (as in the official labeler); "consistent with" / "compatible with" are positive.
      The bare adjective "suspicious" ("no suspicious pulmonary opacity") is not a cue.
    * "Heart size at the upper limits of normal" is negative (still normal; IU annotators tag
      it "normal"); "borderline" is uncertain.
    * Costophrenic "blunting" is Pleural Effusion with base status *uncertain* (fluid or
      pleural thickening); negated blunting is negative.
    * "Sternotomy" alone is Support Devices: IU masks "wires" ("sternotomy XXXX") and a
      sternotomy leaves wires on the film. External ECG/monitor leads and breast prostheses
      are not support devices. "Fractures may not be demonstrated" (a disclaimer) is negative.
    * Scarring, fibrosis (not pleural), interstitial markings and infiltrates are Lung
      Opacity; pleural thickening/scarring/plaques/fibrosis and apical capping are Pleural
      Other; congestive heart failure and vascular congestion are Edema; aspiration and
      infection (not "granulomatous infection") are Pneumonia.
    * Section headers at a line start ("Lines/tubes:", "Heart and mediastinum:", "FINDINGS:")
      are no mentions and start a new sentence, so the R2Gen2 sectioned style ("Lines/tubes:
      None.") labels like the same report written as a paragraph.
    * "No Finding" is 1.0 when no pathology label (every label but Support Devices) is positive
      or uncertain, and blank (None) otherwise. A report with no sentence at all (empty,
      whitespace, list markers) gets every label blank, as the Stanford labeler leaves it.

Laterality comes from the same clause (no comma or terminator in between): the words before
the phrase ("small left pleural effusion"), else after it ("effusion on the right");
"bilateral", "bibasilar", "biapical", "both lungs/bases" or left and right together (for
example "left greater than right") give "bilateral". Cardiomegaly and Enlarged
Cardiomediastinum have none.

Severity: Pleural Effusion, Pneumothorax and Lung Lesion are described by size ("small" |
"moderate" | "large"), the other labels by "mild" | "moderate" | "severe", Support Devices by
none. Trace/tiny/minimal/slight/subtle count as small/mild; marked/massive/extensive as
large/severe; a range takes its upper end ("mild-to-moderate" -> "moderate",
"moderate to severe" -> "severe"). A severity word after the phrase counts only after a
copula ("the effusion is small").
"""

from __future__ import annotations

import csv
import math
import os
import re
import string
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

try:  # the regex parser, used once at import to index the phrase tables
    import re._parser as _sre_parser
except ImportError:  # Python 3.10
    import sre_parse as _sre_parser  # type: ignore[no-redef]

__all__ = [
    "CHEXPERT_LABELS",
    "CSV_HEADER",
    "NEGATIVE",
    "POSITIVE",
    "UNCERTAIN",
    "Mention",
    "ReportLabels",
    "label_csv",
    "label_report",
    "label_reports",
    "split_sentences",
]

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

#: Header of the Stanford chexpert-labeler output CSV (``Reports`` + the 14 labels).
CSV_HEADER: tuple[str, ...] = ("Reports", *CHEXPERT_LABELS)

_PATHOLOGIES = tuple(lab for lab in CHEXPERT_LABELS[1:] if lab != "Support Devices")
_SIZE_LABELS = frozenset({"Pleural Effusion", "Pneumothorax", "Lung Lesion"})
_NO_LATERALITY = frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum"})

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Mention:
    """One mention of an observation in a report.

    Attributes:
        label: one of ``CHEXPERT_LABELS[1:]``.
        status: ``POSITIVE`` (1.0), ``NEGATIVE`` (0.0) or ``UNCERTAIN`` (-1.0).
        sentence_index: index into ``split_sentences(report)``.
        sentence: that sentence.
        start, end: character span of the matched phrase inside ``sentence``.
        text: the matched phrase (``sentence[start:end]``).
        laterality: ``"left"``, ``"right"``, ``"bilateral"`` or None.
        severity: ``"mild"``, ``"moderate"``, ``"severe"``, ``"small"``, ``"large"`` or None.

    Laterality and severity are read whatever the status: "no large pleural effusion" is a
    negative mention with severity "large" (a small one is not excluded).
    """

    label: str
    status: float
    sentence_index: int
    sentence: str
    start: int
    end: int
    text: str
    laterality: str | None
    severity: str | None


@dataclass(frozen=True)
class ReportLabels:
    """Labels of one report: the aggregated values and the mentions behind them.

    Attributes:
        values: every name in ``CHEXPERT_LABELS`` -> 1.0 / 0.0 / -1.0, or None (not mentioned).
        mentions: every mention found, in reading order.
    """

    values: dict[str, float | None]
    mentions: tuple[Mention, ...]

    def as_array(self) -> np.ndarray:
        """Values as a float array of shape (14,) in ``CHEXPERT_LABELS`` order, NaN for None."""
        return np.array(
            [np.nan if self.values[k] is None else self.values[k] for k in CHEXPERT_LABELS],
            dtype=float,
        )


# --------------------------------------------------------------------------- phrase tables
# Each entry: (labels, kind, base status, pattern). Patterns are lower-case regexes; a single
# space stands for any run of whitespace or hyphens. Within one start position the first
# listed alternative wins, so longer phrases come first.
_ED, _CM, _LL, _LO = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity"
_EDEMA, _CONS, _PNA, _ATEL = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
_PTX, _EFF, _PO, _FX, _SD = (
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_FINDING, _ANATOMY = "finding", "anatomy"

_MENTION_TABLE: tuple[tuple[tuple[str, ...], str, float, str], ...] = (
    # ---- Edema first: "heart failure" must beat the anatomy word "heart"
    ((_EDEMA,), _FINDING, POSITIVE, r"(?:congestive )?heart failure|chf"),
    (
        (_EDEMA,),
        _FINDING,
        POSITIVE,
        r"(?:(?:pulmonary|interstitial|alveolar|airspace) )?(?<!soft tissue )edema",
    ),
    ((_EDEMA,), _FINDING, POSITIVE, r"(?:(?:central|pulmonary|venous|vascular) )*congestion"),
    ((_EDEMA,), _FINDING, POSITIVE, r"fluid overload|cephalization|kerley (?:b )?lines"),
    # ---- Enlarged Cardiomediastinum / Cardiomegaly
    ((_ED,), _FINDING, POSITIVE, r"mediastinal (?:widening|enlargement)"),
    ((_CM,), _FINDING, POSITIVE, r"cardiomegaly|cardiac enlargement"),
    ((_CM,), _FINDING, POSITIVE, r"large (?:heart|cardiac (?:silhouette|shadow|size))"),
    (
        (_CM, _ED),
        _ANATOMY,
        POSITIVE,
        r"(?:heart|cardiac)(?:,| and|, and) mediastin(?:um|al)(?: and hilar)?"
        r"(?: (?:silhouettes?|contours?|size|shadows?))?",
    ),
    (
        (_ED,),
        _ANATOMY,
        POSITIVE,
        r"cardio ?mediastinal(?: (?:and hilar )?(?:silhouettes?|contours?|outlines?|shadows?"
        r"|size|width|structures))?|cardiomediastinum|mediastinum"
        r"|mediastinal (?:and hilar )?(?:silhouettes?|contours?|outlines?|shadows?|width)",
    ),
    (
        (_CM,),
        _ANATOMY,
        POSITIVE,
        r"heart(?: (?:size|silhouette|shadow|contours?))?"
        r"|cardiac (?:silhouette|size|contours?|shadow|outline|diameter)",
    ),
    # ---- Pleural
    ((_PTX, _EFF), _FINDING, POSITIVE, r"hydropneumothora(?:x|ces|xes)"),
    ((_PTX,), _FINDING, POSITIVE, r"pneumothora(?:x|ces|xes)"),
    ((_EFF,), _FINDING, POSITIVE, r"pleural (?:effusions?|fluid)|hydrothorax|fissural fluid"),
    ((_EFF,), _FINDING, POSITIVE, r"(?<!pericardial )(?<!pericardial-)(?<!joint )effusions?"),
    ((_EFF,), _FINDING, UNCERTAIN, r"blunt(?:ing|ed)"),
    (
        (_PO,),
        _FINDING,
        POSITIVE,
        r"(?:pleural|pleuro) ?(?:parenchymal )?(?:thickening|scarring|scars?|plaques?"
        r"|calcifications?|fibrosis|reaction)|fibrothorax|apical (?:pleural )?capping"
        r"|thickening of the pleura",
    ),
    # ---- Parenchyma
    ((_CONS,), _FINDING, POSITIVE, r"consolidat(?:ion|ions|ive|ed)"),
    (
        (_PNA,),
        _FINDING,
        POSITIVE,
        r"(?:broncho)?pneumonias?|pneumonitis|aspiration|(?<!granulomatous )infect(?:ions?|ious)",
    ),
    ((_ATEL,), _FINDING, POSITIVE, r"atelecta(?:sis|ses|tic)"),
    ((_ATEL,), _FINDING, POSITIVE, r"(?<!vertebral )(?<!body )(?<!compression )collapse"),
    (
        (_LL,),
        _FINDING,
        POSITIVE,
        r"nodular (?:opacit(?:y|ies)|densit(?:y|ies))|(?:micro)?nodules?"
        r"|(?<!thyroid )(?<!pericardial )(?<!breast )mass(?:es)?(?! effect)|masslike"
        r"|neoplasms?|tumou?rs?|malignancy|carcinoma|metasta(?:sis|ses|tic disease)",
    ),
    (
        (_LL,),
        _FINDING,
        POSITIVE,
        r"(?<!lytic )(?<!sclerotic )(?<!osseous )(?<!bony )(?<!bone )(?<!destructive )"
        r"(?<!lucent )(?<!skin )(?<!expansile )(?<!blastic )lesions?",
    ),
    (
        (_LO,),
        _FINDING,
        POSITIVE,
        r"opacit(?:y|ies)|opacification|opacified|air ?space (?:disease|process)"
        r"|infiltrat(?:e|es|ion|ions|ive)|ground glass|haziness|reticula(?:r|tion)"
        r"|reticulonodular|peribronchial (?:thickening|cuffing)|scar(?:ring|s)?|fibrosis"
        r"|fibrotic(?: changes?)?"
        r"|interstitial (?:markings?|prominence|(?:lung )?disease|pattern|thickening|changes)",
    ),
    (
        (_LO,),
        _FINDING,
        POSITIVE,
        r"(?<!bone )(?<!soft tissue )(?<!calcific )(?<!calcified )(?<!radiopaque )(?<!metallic )"
        r"densit(?:y|ies)",
    ),
    # ---- Bones
    ((_FX,), _FINDING, POSITIVE, r"fractur(?:e|es|ed)|fx"),
    # ---- Support devices
    (
        (_SD,),
        _FINDING,
        POSITIVE,
        r"(?:(?:endotracheal|et|nasogastric|ng|orogastric|og|feeding|chest|enteric|tracheostomy"
        r"|thoracostomy|gastrostomy|dobhoff|drainage|pleural) )?tubes?"
        r"|(?:tubes? (?:and|or) lines?|lines? (?:and|or) tubes?)"
        r"|(?:picc|central(?: venous)?|venous|arterial|ij|subclavian|jugular|dialysis|hickman"
        r"|swan ganz|infusion|support|monitoring) lines?"
        r"|picc|catheters?|(?:cardiac )?pacemakers?|pacers?|a?icds?|defibrillators?"
        r"|(?:pacing|pacer|pacemaker|transvenous|epicardial|a?icd) (?:leads?|wires?)"
        r"|(?:median )?sternotomy(?: (?:wires?|sutures?))?|sternal (?:wires?|sutures?)"
        r"|(?:cerclage|surgical) wires?|(?:surgical |vascular |cholecystectomy )?clips?"
        r"|stent grafts?|stents?|port a cath|portacath|mediport|port|devices?|hardware"
        r"|(?<!breast )prosthe(?:sis|ses|tic)|valve (?:replacement|prosthesis)|avr|mvr"
        r"|screws?|(?:harrington|spinal|fusion) rods?|coils?|(?:ivc|vena cava) filters?"
        r"|drains?|staples|lvad|iabp|balloon pump|impella|loop recorder"
        r"|(?:pacemaker|pulse) generator|tracheostomy|(?:nerve |spinal |cord )?stimulator",
    ),
)

# Event groups (one combined regex): cues, scope terminators, anatomy attributes,
# laterality and severity words, commas.
_SEV_WORD = (
    r"mild|mildly|minimal|minimally|slight|slightly|small|trace|tiny|subtle|minor|moderate"
    r"|moderately|moderate sized|severe|severely|marked|markedly|large|massive|extensive"
    r"|substantial|huge"
)
_SEV_RANGE = rf"(?:{_SEV_WORD})(?: (?:(?:to|or) )?(?:{_SEV_WORD}))?"
_MOD = (
    r"significant|interval|appreciable|substantial|major|definite|real|apparent|radiographic"
    r"|notable|gross|further"
)
_CHANGE = r"change|increase|decrease|worsening|improvement|progression|difference"
# (group name, kind, pattern, word-bounded). Same-position ties go to the earlier group.
_EVENT_TABLE: tuple[tuple[str, str, str, bool], ...] = (
    # pseudo-negations: end a scope, negate nothing ("no change in the effusion")
    (
        "pseudo",
        "pseudo",
        rf"no (?:(?:{_MOD}) )*(?:{_CHANGE})s?|without (?:(?:{_MOD}) )*(?:{_CHANGE})s?"
        r"|not (?:significantly |substantially )?(?:changed|increased|decreased|improved"
        r"|worsened)|not well (?:seen|visualized|evaluated|assessed)|not only|gram negative",
        True,
    ),
    # "fractures may not be demonstrated" (a disclaimer) asserts nothing: negative
    (
        "neg_post0",
        "neg_post",
        r"may not be (?:demonstrated|seen|visible|visualized|detected|apparent|evident)",
        True,
    ),
    # uncertainty
    (
        "unc_post1",
        "unc_post",
        r"may (?:also )?be (?:present|seen|noted|developing|identified|evident)"
        r"|(?:is|are|seems?|appears?) (?:most |more |less )?(?:likely|possible|probable"
        r"|suspected|questioned|favou?red)(?= ?(?:[.,;]|$))",
        True,
    ),
    ("unc_post2", "unc_post", r"\?", False),
    (
        "unc_pre1",
        "unc_pre",
        r"(?:may|could|might) (?:represent|reflect|indicate|be)",
        True,
    ),
    (
        "unc_both",
        "unc_both",
        r"(?:can ?not|could not|may not) be (?:entirely |completely |totally |fully )?"
        r"(?:excluded|ruled out)|not (?:entirely |completely |totally |fully )?"
        r"(?:excluded|ruled out)",
        True,
    ),
    # "atelectasis versus pneumonia": only the nearest mention on each side
    ("unc_pair", "unc_pair", r"versus|vs|and/or|or possibly|may|might|could", True),
    (
        "unc_pre2",
        "unc_pre",
        r"can ?not exclude|can ?not rule out|difficult to exclude|to exclude|exclude|rule out"
        r"|r/o|possible|possibly|questionable|question of|questioned|question(?! about)"
        r"|suspicious for|suspicion (?:of|for)|correlation for|suspected|suspect"
        r"|(?:most )?likely|probable|probably|presumed|presumably|concerning for|concern for"
        r"|concerning"
        r"|suggestive of|suggestion of|(?<!to )suggest(?:s|ing)?|differential(?: diagnosis)?"
        r"|equivocal|indeterminate|uncertain",
        True,
    ),
    ("border", "border", r"borderline", True),
    # negation
    (
        "neg_both",
        "neg_both",
        r"(?:(?:has|have) (?:since )?(?:been )?)?(?:resolved|cleared|removed)|absent",
        True,
    ),
    (
        "neg_post",
        "neg_post",
        r"(?:(?:is|are|was|were|has been|have been) )?(?:not (?:seen|identified|visualized"
        r"|visible|appreciated|evident|present|demonstrated|noted|detected|apparent|shown"
        r"|observed)|no longer (?:seen|visualized|visible|present|evident|identified"
        r"|demonstrated|apparent))",
        True,
    ),
    (
        "neg_pre",
        "neg_pre",
        r"no|not|without|negative for|free of|clear of|clear(?= air ?space)|absence of"
        r"|resolution of|removal of"
        r"|rather than|nor|neither|never",
        True,
    ),
    # scope terminators
    (
        "term1",
        "term",
        r"but|however|although|though|except|aside from|apart from|other than|besides|which"
        r"|that|whereas|while|yet|there (?:is|are|was|were|has been|have been)|also"
        r"|(?<!consistent )(?<!compatible )with"
        r"|in addition|additionally"
        r"|and(?= (?:the|a|an|there|mild|mildly|moderate|severe|small|large|stable|minimal"
        r"|persistent|unchanged|new|increased|decreased|slight|trace|tiny)\b)",
        True,
    ),
    ("term2", "term", r"[;:]", False),
    # anatomy attributes ("left atrial enlargement" is not an enlarged heart: consume it)
    (
        "chamber",
        "chamber",
        r"(?:left |right )?(?:atrial|ventricular) (?:enlargement|dilatation)",
        True,
    ),
    # "upper limits of normal" is still normal; "prominent" is uncertain
    ("attr_uln", "attr_neg", r"(?:upper|top|high)(?: limits?| end)?(?: of)?(?: the)? normal", True),
    ("attr_unc", "attr_unc", r"prominent", True),
    ("attr_neg", "attr_neg", r"within (?:normal|xxxx) limits|normal(?:ly)?|unremarkable", True),
    (
        "attr_pos",
        "attr_pos",
        r"enlarged|enlargement|widened|widening|dilated|dilatation|increased in size"
        r"|increased(?= ?(?:[.,;]|$))",
        True,
    ),
    # laterality / severity words, commas
    (
        "lat_b",
        "lat_b",
        r"bilateral(?:ly)?|bibasilar|bibasal|bibasally|biapical|bilat|both(?= (?:lungs?|bases"
        r"|basilar|lower|upper|mid|apices|apical|hemithora\w*|sides|lateral|costophrenic|hila"
        r"|pleural))",
        True,
    ),
    ("lat_l", "lat_l", r"left|lt", True),
    ("lat_r", "lat_r", r"right|rt", True),
    # "the heart is large." - "large" closing a clause is an attribute (and a severity)
    ("sev_end", "sev_end", r"large(?= ?(?:[.,;]|$| in size| and\b))", True),
    ("sev", "sev", _SEV_RANGE, True),
    ("comma", "comma", r",", False),
)


def _spaced(pattern: str) -> str:
    """Let a space in a table pattern match whitespace/hyphen runs (" ?": optional)."""
    # Lookbehinds need a fixed width, so spaces inside them stay literal.
    out, i = [], 0
    for m in re.finditer(r"\(\?<!?[^)]*\)", pattern):
        out.append(_spaced_plain(pattern[i : m.start()]))
        out.append(m.group(0))
        i = m.end()
    out.append(_spaced_plain(pattern[i:]))
    return "".join(out)


def _spaced_plain(pattern: str) -> str:
    return pattern.replace(" ?", r"[\s-]*").replace(" ", r"[\s-]+")


# ------------------------------------------------------------------------------ scanning
_ALPHABET = string.ascii_lowercase + string.digits + "_" + string.punctuation + " \t\n"
_CATEGORY_RE = {
    "CATEGORY_WORD": re.compile(r"\w"),
    "CATEGORY_NOT_WORD": re.compile(r"\W"),
    "CATEGORY_SPACE": re.compile(r"\s"),
    "CATEGORY_NOT_SPACE": re.compile(r"\S"),
    "CATEGORY_DIGIT": re.compile(r"\d"),
    "CATEGORY_NOT_DIGIT": re.compile(r"\D"),
}
_KEY_LEN = 3


class _PhraseScanner:
    """Leftmost, first-alternative-wins scan of many named patterns, like one big
    ``re.finditer`` over ``(?P<g0>...)|(?P<g1>...)|...``, but fast.

    The combined regex tries every alternative at every word start (~300 us per IU report).
    Instead each pattern is compiled alone and indexed by its possible *keys*: the first
    three characters of the words it can start with (shorter words whole, punctuation
    itself), enumerated from the regex parse tree. A small trigger regex finds the tokens
    whose key is indexed, and only their patterns are tried there, in table order (~15 us).
    """

    def __init__(self, groups: list[tuple[str, str]]) -> None:
        self.names = [name for name, _ in groups]
        self.regexes = [re.compile(pattern) for _, pattern in groups]
        index: dict[str, list[int]] = {}
        for i, (_, pattern) in enumerate(groups):
            for key in _start_keys(pattern):
                index.setdefault(key, []).append(i)
        self.index = {k: tuple(v) for k, v in index.items()}
        # The trigger: a 3-letter key is a token prefix, a shorter one the whole token;
        # alternatives are grouped by first character so the engine rejects a branch early.
        by_first: dict[str, list[str]] = {}
        for key in sorted(self.index, key=len, reverse=True):
            if _is_word(key):
                tail = re.escape(key[1:]) + ("" if len(key) == _KEY_LEN else r"\b")
                by_first.setdefault(key[0], []).append(tail)
        words = "|".join(f"{c}(?:{'|'.join(tails)})" for c, tails in by_first.items())
        punct = [re.escape(k) for k in self.index if not _is_word(k)]
        self.trigger = re.compile("|".join([rf"(?<!\w)(?:{words})", *punct]))

    def scan(self, low: str) -> list[tuple[int, int, str, str]]:
        """Non-overlapping matches ``(start, end, group name, text)`` in reading order."""
        out = []
        index, regexes, names = self.index, self.regexes, self.names
        end = 0
        # trigger hits are token prefixes, so none straddles a word start: iterating them all
        # and skipping those inside the previous match equals re-searching after each match
        for m in self.trigger.finditer(low):
            start = m.start()
            if start < end:
                continue
            for i in index[m.group()[:_KEY_LEN]]:
                hit = regexes[i].match(low, start)
                if hit is not None:
                    end = hit.end()
                    out.append((start, end, names[i], hit.group()))
                    break
        return out


def _is_word(key: str) -> bool:
    return key[0].isalnum() or key[0] == "_"


def _start_keys(pattern: str) -> set[str]:
    """First ``_KEY_LEN`` characters of the words ``pattern`` can start with."""
    parsed = _sre_parser.parse(pattern)
    states = _walk(list(parsed), {("", False)})
    keys = {s for s, _ in states}
    if "" in keys:  # a zero-width or whitespace start: we could not index it
        raise ValueError(f"pattern {pattern!r} can start without a word or punctuation key")
    return keys


def _op_name(op: object) -> str:
    """Name of a regex-parser opcode ("LITERAL", "BRANCH", ...) on every Python version."""
    return str(getattr(op, "name", op))


def _walk(items: list, states: set[tuple[str, bool]]) -> set[tuple[str, bool]]:
    for op, av in items:
        states = _step(_op_name(op), av, states)
    return states


def _step(op: str, av, states: set[tuple[str, bool]]) -> set[tuple[str, bool]]:
    live = {st for st in states if not st[1] and len(st[0]) < _KEY_LEN}
    done = states - live
    if not live or op in ("AT", "ASSERT", "ASSERT_NOT"):
        return states
    if op == "SUBPATTERN":
        return done | _walk(list(av[-1]), live)
    if op == "BRANCH":
        return done.union(*(_walk(list(alt), live) for alt in av[1]))
    if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        lo, hi, sub = av
        out, cur = set(), live
        for n in range(min(hi, lo + _KEY_LEN + 1) + 1):
            if n >= lo:
                out |= cur
            cur = _walk(list(sub), cur)
        return done | out
    if op == "LITERAL":
        chars = [chr(av)]
    elif op == "IN":
        chars = [c for c in _ALPHABET if _in_class(av, c)]
    elif op == "ANY":
        chars = list(_ALPHABET)
    else:
        raise ValueError(f"unsupported regex construct {op}")
    new = set()
    for s, _ in live:
        for c in chars:
            if c.isalnum() or c == "_":
                new.add((s + c, False))
            elif s or c.isspace():
                new.add((s, True))
            else:  # a pattern that starts with punctuation (",", ";", "?") is keyed by it
                new.add((c, True))
    return done | new


def _in_class(items: list, c: str) -> bool:
    hit, negate = False, False
    for op, av in items:
        op = _op_name(op)
        if op == "NEGATE":
            negate = True
        elif op == "LITERAL":
            hit |= c == chr(av)
        elif op == "RANGE":
            hit |= av[0] <= ord(c) <= av[1]
        elif op == "CATEGORY":
            hit |= _CATEGORY_RE[_op_name(av)].match(c) is not None
        else:
            raise ValueError(f"unsupported character-class item {op}")
    return hit != negate


def _mention_groups() -> list[tuple[str, str]]:
    return [(f"m{i}", rf"\b(?:{_spaced(p)})\b") for i, (*_, p) in enumerate(_MENTION_TABLE)]


def _event_groups() -> list[tuple[str, str]]:
    return [(n, rf"\b(?:{_spaced(p)})\b" if bounded else p) for n, _, p, bounded in _EVENT_TABLE]


_MENTION_SCANNER = _PhraseScanner(_mention_groups())
_MENTION_META = {
    f"m{i}": (labels, kind, base) for i, (labels, kind, base, _) in enumerate(_MENTION_TABLE)
}
_EVENT_SCANNER = _PhraseScanner(_event_groups())
_EVENT_KIND = {name: kind for name, kind, _, _ in _EVENT_TABLE}
_SEV_WORD_RE = re.compile(rf"\b(?:{_spaced(_SEV_WORD)})\b")

_SEV_LEVEL = {
    "mild": 1, "mildly": 1, "minimal": 1, "minimally": 1, "slight": 1, "slightly": 1,
    "small": 1, "trace": 1, "tiny": 1, "subtle": 1, "minor": 1,
    "moderate": 2, "moderately": 2,
    "severe": 3, "severely": 3, "marked": 3, "markedly": 3, "large": 3, "massive": 3,
    "extensive": 3, "substantial": 3, "huge": 3,
}  # fmt: skip
_SEV_KINDS = frozenset({"sev", "sev_end"})
_LAT_KINDS = frozenset({"lat_b", "lat_l", "lat_r"})
_AND_GAP_RE = re.compile(r"\s*(?:,|and|, and)?\s*")
# up to two modifier words ("enlarged [upper] mediastinum"): no punctuation, "and" or "or"
_MODIFIER_GAP_RE = re.compile(r"[\s-]*(?:(?!and\b|or\b)\w+[\s-]+){0,2}")
_COPULA_RE = re.compile(r"\s*(?:is|are|was|were|remains?|appears?|seems?)\b")
_SEV_NAMES = {False: ("mild", "moderate", "severe"), True: ("small", "moderate", "large")}

# cue kinds that govern mentions to their right / left ("both" kinds do both)
_PRE_KINDS = {
    "neg_pre": NEGATIVE,
    "unc_pre": UNCERTAIN,
    "neg_both": NEGATIVE,
    "unc_both": UNCERTAIN,
}
_POST_KINDS = {
    "neg_post": NEGATIVE,
    "unc_post": UNCERTAIN,
    "neg_both": NEGATIVE,
    "unc_both": UNCERTAIN,
}
# a cue governs phrases at most this many characters away (a long list still fits)
_MAX_SCOPE = 250
# a pair cue ("versus", "may") or "borderline" reaches only the adjacent phrase (characters)
_PAIR_REACH = 30
# a post-cue search stops at these: a new scope starts ("neg_pre", "pseudo") or ends ("term")
_STOP_KINDS = frozenset({"term", "pseudo", "neg_pre", "unc_pre", "border"})
_ATTR_STATUS = {"attr_neg": NEGATIVE, "attr_unc": UNCERTAIN, "attr_pos": POSITIVE}

# ---------------------------------------------------------------------------- sentences
# a sentence also ends at a blank line and before a line that starts with a section header
_HEADER = r"[ \t]*[A-Za-z][A-Za-z /&-]{0,40}:"
_BOUNDARY_RE = re.compile(rf"[.?!]+(?=\s|$)|\n[ \t\r]*\n|\n(?={_HEADER})")
# the words of a section header ("Lines/tubes:", "Heart and mediastinum:") are no mention
_HEADER_RE = re.compile(rf"^{_HEADER}", re.MULTILINE)
_ABBREVIATIONS = frozenset({"vs", "dr", "e.g", "i.e", "approx", "mr", "mrs", "ms", "st", "cf"})
_WORD_BEFORE_RE = re.compile(r"([A-Za-z.]+)$")
_ALNUM_RE = re.compile(r"[^\W_]")
_LIST_MARKER_RE = re.compile(r"^\(?\d{1,2}[.)]?$")


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (stripped, list markers dropped)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(text):
        if m.group(0)[0] == ".":
            word = _WORD_BEFORE_RE.search(text, max(0, m.start() - 8), m.start())
            if word and word.group(1).lower().strip(".") in _ABBREVIATIONS:
                continue
        _add_span(text, start, m.start() if m.group(0)[:1] in ("\n", "") else m.end(), spans)
        start = m.end()
    _add_span(text, start, len(text), spans)
    return spans


def _add_span(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    # drop list markers ("1.") and pieces with no letters or digits ("..")
    if _ALNUM_RE.search(text, start, end) is None or (
        end - start <= 4 and _LIST_MARKER_RE.match(text[start:end])
    ):
        return
    spans.append((start, end))


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences.

    Sentences end at ``.``, ``?`` or ``!`` followed by whitespace (so decimals like "1.9 cm"
    stay whole; "vs." and "Dr." do not end a sentence) and at blank lines. Numbered-list
    markers ("1.", "2)") and punctuation-only pieces are dropped, and each sentence is
    stripped of surrounding whitespace.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects a report string, got {type(text).__name__}")
    return [text[s:e] for s, e in _sentence_spans(text)]


# ------------------------------------------------------------------------------ labeling
def _lower_same_length(text: str) -> str:
    """``text.lower()`` keeping character offsets (a few Unicode letters lower to 2 chars)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


class _Event(NamedTuple):
    """A cue, terminator, attribute, laterality/severity word or comma found in a report."""

    start: int
    end: int
    kind: str
    text: str


@dataclass
class _Report:
    """Everything the per-mention rules look at, computed once per report."""

    text: str
    low: str  # lower-cased text, same offsets
    sentences: list[tuple[int, int]]
    sentence_starts: list[int]
    sentence_texts: list[str]
    phrases: list[tuple[int, int, str, str]]  # mention-table matches (start, end, group, text)
    phrase_starts: list[int]
    events: list[_Event]
    event_starts: list[int]
    headers: list[tuple[int, int]]  # section headers "Lungs:" at line starts: (start, end)


def _prepare(text: str) -> _Report | None:
    """Scan a report once; None when it has no sentence or no candidate phrase."""
    sentences = _sentence_spans(text)
    if not sentences:
        return None
    low = _lower_same_length(text)
    phrases = _MENTION_SCANNER.scan(low)
    if not phrases:
        return None
    events = [_Event(s, e, _EVENT_KIND[g], t) for s, e, g, t in _EVENT_SCANNER.scan(low)]
    return _Report(
        text=text,
        low=low,
        sentences=sentences,
        sentence_starts=[s for s, _ in sentences],
        sentence_texts=[text[s:e] for s, e in sentences],
        phrases=phrases,
        phrase_starts=[p[0] for p in phrases],
        events=events,
        event_starts=[e.start for e in events],
        headers=[h.span() for h in _HEADER_RE.finditer(text)] if ":" in text else [],
    )


def _cue_status(
    rep: _Report, anchor: tuple[int, int], sentence: tuple[int, int], k: int
) -> float | None:
    """Status that cues impose on the phrase ``k`` whose cue anchor is ``anchor``.

    A post cue to the right (before a terminator or a new pre cue) wins; otherwise the
    nearest pre cue to the left (before a terminator); otherwise None. A pair cue ("versus",
    "may") or "borderline" only reaches the adjacent phrase: no other phrase, no comma and at
    most ``_PAIR_REACH`` characters in between.
    """
    (a0, a1), (s0, s1) = anchor, sentence
    events = rep.events
    prev_end = rep.phrases[k - 1][1] if k else -1
    next_start = rep.phrases[k + 1][0] if k + 1 < len(rep.phrases) else s1
    comma = False
    j = bisect_left(rep.event_starts, a1)
    while j < len(events) and events[j].start < min(s1, a1 + _MAX_SCOPE):
        ev = events[j]
        j += 1
        if ev.kind == "comma":
            comma = True
        elif ev.kind == "unc_pair":
            if not comma and ev.start < next_start and ev.start - a1 <= _PAIR_REACH:
                return UNCERTAIN
        elif ev.kind in _STOP_KINDS:
            break
        elif ev.kind in _POST_KINDS:
            return _POST_KINDS[ev.kind]
    comma = False
    i = bisect_left(rep.event_starts, a0) - 1
    while i >= 0 and events[i].start >= max(s0, a0 - _MAX_SCOPE):
        ev = events[i]
        i -= 1
        if ev.end > a0:
            continue
        if ev.kind == "comma":
            comma = True
        elif ev.kind == "unc_pair" or ev.kind == "border":
            if not comma and ev.end > prev_end and a0 - ev.end <= _PAIR_REACH:
                return UNCERTAIN
        elif ev.kind in _PRE_KINDS:
            return _PRE_KINDS[ev.kind]
        elif ev.kind == "term" or ev.kind == "pseudo":
            return None
    return None


def _find_attribute(
    rep: _Report, k: int, sentence: tuple[int, int], share: bool = True
) -> _Event | None:
    """The attribute word that qualifies the anatomy phrase ``k``, or None.

    Searched between the previous phrase and the next *finding* (another anatomy phrase may
    share the attribute: "heart size and mediastinum are normal"), in this order: adjacent
    left ("normal heart size"), right up to 60 characters ("heart size is normal"), left up
    to 45 characters within the clause ("moderate enlargement of the cardiac silhouette");
    with ``share``, finally the left attribute of a previous anatomy phrase joined by "and"
    ("normal heart size and mediastinal contours").
    """
    m0, m1 = rep.phrases[k][0], rep.phrases[k][1]
    lo = max(sentence[0], rep.phrases[k - 1][1] if k else 0)
    hi = min(sentence[1], m1 + 60)
    for nxt in range(k + 1, len(rep.phrases)):
        if rep.phrases[nxt][0] >= hi:
            break
        if _MENTION_META[rep.phrases[nxt][2]][1] == _FINDING:
            hi = rep.phrases[nxt][0]
            break
    events, starts = rep.events, rep.event_starts
    i = bisect_left(starts, m0) - 1
    k2 = i
    while k2 >= 0 and events[k2].start >= lo and m0 - events[k2].end <= 12:
        ev = events[k2]
        if _is_attribute(ev) and _MODIFIER_GAP_RE.fullmatch(rep.low, ev.end, m0):
            return ev
        if ev.kind in ("term", "comma"):
            break
        k2 -= 1
    j = bisect_left(starts, m1)
    while j < len(events) and events[j].start < hi:
        ev = events[j]
        if ev.kind == "term":
            break
        if _is_attribute(ev):
            # "silhouette with borderline cardiomegaly": the word belongs to the next phrase
            nxt = bisect_left(rep.phrase_starts, ev.end)
            gap_end = rep.phrase_starts[nxt] if nxt < len(rep.phrase_starts) else -1
            if not (
                0 <= gap_end - ev.end <= 12 and _MODIFIER_GAP_RE.fullmatch(rep.low, ev.end, gap_end)
            ):
                return ev
        j += 1
    while i >= 0 and events[i].start >= max(lo, m0 - 45):
        ev = events[i]
        if ev.kind in ("term", "comma"):
            break
        if ev.kind in _ATTR_STATUS:
            return ev
        i -= 1
    # "normal heart size and mediastinal contours": share the previous phrase's left attribute
    if share and k and _MENTION_META[rep.phrases[k - 1][2]][1] == _ANATOMY:
        prev0, prev1 = rep.phrases[k - 1][0], rep.phrases[k - 1][1]
        if _AND_GAP_RE.fullmatch(rep.low, prev1, m0):
            shared = _find_attribute(rep, k - 1, sentence, share=False)
            if shared is not None and shared.end <= prev0:
                return shared
    return None


def _is_attribute(ev: _Event) -> bool:
    return ev.kind in _ATTR_STATUS or ev.kind == "border" or ev.kind == "sev_end"


def _attribute_status(ev: _Event) -> float:
    if ev.kind == "border":
        return UNCERTAIN
    if ev.kind == "sev_end":
        return POSITIVE
    return _ATTR_STATUS[ev.kind]


def _nearby(
    rep: _Report, span: tuple[int, int], bounds: tuple[int, int], kinds: frozenset[str]
) -> tuple[list[_Event], list[_Event]]:
    """Events of ``kinds`` in the same clause (no comma or terminator in between) before
    ``span`` (not before ``bounds[0]``) and after it (before ``bounds[1]``), nearest first."""
    events, starts = rep.events, rep.event_starts
    before, after = [], []
    i = bisect_left(starts, span[0]) - 1
    while i >= 0 and events[i].end > bounds[0]:
        ev = events[i]
        i -= 1
        if ev.end > span[0]:
            continue
        if ev.kind == "comma" or ev.kind == "term":
            break
        if ev.kind in kinds:
            before.append(ev)
    j = bisect_left(starts, span[1])
    while j < len(events) and events[j].start < bounds[1]:
        ev = events[j]
        j += 1
        if ev.kind == "comma" or ev.kind == "term":
            break
        if ev.kind in kinds:
            after.append(ev)
    return before, after


def _laterality(rep: _Report, span: tuple[int, int], bounds: tuple[int, int]) -> str | None:
    """Side from the words before the phrase ("left pleural effusion"), else after it
    ("effusion on the right"); left and right together, or "bibasilar"/"both", = bilateral."""
    before, after = _nearby(rep, span, bounds, _LAT_KINDS)
    return _side(before) or _side(after)


def _side(evs: list[_Event]) -> str | None:
    kinds = {e.kind for e in evs}
    if "lat_b" in kinds or {"lat_l", "lat_r"} <= kinds:
        return "bilateral"
    if "lat_l" in kinds:
        return "left"
    if "lat_r" in kinds:
        return "right"
    return None


def _severity(
    rep: _Report,
    span: tuple[int, int],
    bounds: tuple[int, int],
    attr: _Event | None,
    label: str,
) -> str | None:
    """Severity word inside the phrase ("heart is mildly enlarged"), before it ("small left
    effusion", up to 30 characters) or after a copula ("the effusion is small")."""
    events, starts = rep.events, rep.event_starts
    inside = [
        e
        for e in events[bisect_left(starts, span[0]) : bisect_left(starts, span[1])]
        if e.kind in _SEV_KINDS and e is not attr
    ]
    before, after = _nearby(rep, span, (max(bounds[0], span[0] - 30), bounds[1]), _SEV_KINDS)
    before = [e for e in before if e is not attr]
    if not _COPULA_RE.match(rep.low, span[1]):
        after = []
    after = [e for e in after if e is not attr and e.start - span[1] <= 30]
    pick = (inside or before or after or [None])[0]
    if pick is None:
        return None
    level = max(_SEV_LEVEL[w.split()[0].split("-")[0]] for w in _SEV_WORD_RE.findall(pick.text))
    return _SEV_NAMES[label in _SIZE_LABELS][level - 1]


def _in_header(rep: _Report, m0: int, m1: int) -> bool:
    """Whether [m0, m1) lies inside a section header ("Lines/tubes:" at a line start)."""
    if not rep.headers:
        return False
    i = bisect_left(rep.headers, (m0 + 1,)) - 1
    return i >= 0 and m1 <= rep.headers[i][1]


def _resolve(rep: _Report, k: int) -> list[Mention]:
    """The mentions (one per label of the phrase) that phrase ``k`` makes, if any."""
    m0, m1, group, _ = rep.phrases[k]
    si = bisect_left(rep.sentence_starts, m0 + 1) - 1
    if si < 0 or m1 > rep.sentences[si][1]:  # a phrase across a sentence end is no mention
        return []
    sentence = rep.sentences[si]
    labels, kind, status = _MENTION_META[group]
    attr = None
    span = (m0, m1)
    anchor = span
    if _in_header(rep, m0, m1):  # "Lines/tubes: None." is no Support Devices mention
        return []
    if kind == _ANATOMY:
        attr = _find_attribute(rep, k, sentence)
        if attr is None:  # "stable cardiomediastinal silhouette" says nothing
            return []
        status = _attribute_status(attr)
        anchor = (attr.start, attr.end)
        span = (min(m0, attr.start), max(m1, attr.end))
    if status != NEGATIVE:
        cue = _cue_status(rep, anchor, sentence, k)
        status = status if cue is None else cue
    # laterality and severity words belong to this phrase's clause: not past its neighbours
    lo = max(sentence[0], rep.phrases[k - 1][1] if k else 0, span[0] - 40)
    nxt = rep.phrases[k + 1][0] if k + 1 < len(rep.phrases) else sentence[1]
    hi = min(sentence[1], nxt if nxt >= span[1] else sentence[1], span[1] + 40)
    s0, s1 = sentence
    out = []
    for label in labels:
        side = None if label in _NO_LATERALITY else _laterality(rep, span, (lo, hi))
        severity = None if label == _SD else _severity(rep, span, (lo, hi), attr, label)
        out.append(
            Mention(
                label=label,
                status=status,
                sentence_index=si,
                sentence=rep.sentence_texts[si],
                start=span[0] - s0,
                end=span[1] - s0,
                text=rep.text[span[0] : span[1]],
                laterality=side,
                severity=severity,
            )
        )
    return out


def _mentions(text: str) -> list[Mention]:
    rep = _prepare(text)
    if rep is None:
        return []
    return [m for k in range(len(rep.phrases)) for m in _resolve(rep, k)]


def _aggregate(mentions: Iterable[Mention], empty: bool) -> dict[str, float | None]:
    """Official CheXpert aggregation: positive > uncertain > negative > None per label."""
    seen: dict[str, set[float]] = {}
    for mention in mentions:
        seen.setdefault(mention.label, set()).add(mention.status)
    values: dict[str, float | None] = {}
    for label in CHEXPERT_LABELS[1:]:
        statuses = seen.get(label)
        if not statuses:
            values[label] = None
        elif POSITIVE in statuses:
            values[label] = POSITIVE
        elif UNCERTAIN in statuses:
            values[label] = UNCERTAIN
        else:
            values[label] = NEGATIVE
    abnormal = any(values[lab] in (POSITIVE, UNCERTAIN) for lab in _PATHOLOGIES)
    values = {"No Finding": None if (empty or abnormal) else POSITIVE, **values}
    return values


def label_report(text: str) -> ReportLabels:
    """Label one report (any free text: findings, impression or both).

    Args:
        text: the report. A report with no sentence (empty, whitespace, list markers or
            punctuation only) gets every label None, "No Finding" included.

    Returns:
        :class:`ReportLabels` with the 14 aggregated values and the mentions behind them.

    Raises:
        TypeError: ``text`` is not a string.

    Example:
        >>> label_report("No pneumothorax or pleural effusion. Mild cardiomegaly.").values[
        ...     "Cardiomegaly"]
        1.0
    """
    if not isinstance(text, str):
        raise TypeError(f"label_report expects a report string, got {type(text).__name__}")
    mentions = tuple(_mentions(text))
    empty = not _sentence_spans(text) if not mentions else False
    return ReportLabels(values=_aggregate(mentions, empty=empty), mentions=mentions)


def label_reports(texts: Iterable[str | None], progress: bool = False) -> pd.DataFrame:
    """Label many reports.

    Args:
        texts: reports; ``None`` (or NaN / ``pd.NA``, as pandas stores a missing cell) is a
            missing report and gets an all-NaN row, like an empty one.
        progress: show a tqdm progress bar.

    Returns:
        DataFrame with one row per report (index 0..N-1) and the ``CHEXPERT_LABELS`` columns,
        float values 1.0 / 0.0 / -1.0 / NaN.

    Raises:
        TypeError: an item is neither a string nor missing (names its index).
    """
    rows = []
    for i, text in enumerate(tqdm(texts, desc="labeling reports", disable=not progress)):
        if text is None or text is pd.NA or (isinstance(text, float) and math.isnan(text)):
            text = ""
        if not isinstance(text, str):
            raise TypeError(f"label_reports: report {i} is {type(text).__name__}, not a string")
        rows.append(label_report(text).as_array())
    data = np.vstack(rows) if rows else np.zeros((0, len(CHEXPERT_LABELS)))
    return pd.DataFrame(data, columns=list(CHEXPERT_LABELS), dtype=float)


# ---------------------------------------------------------------------------------- CSV
def _read_report_csv(path: Path) -> list[str]:
    """Reports from a headerless one-column CSV; blank lines are skipped (as pandas does)."""
    reports: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)  # bad quoting is an error, not a guess
            for row in reader:
                if not row:
                    continue
                if len(row) != 1:
                    raise ValueError(
                        f"{path}: row {len(reports) + 1} (line {reader.line_num}) has "
                        f"{len(row)} columns; expected a headerless one-column CSV of reports "
                        "(quote reports that contain commas)"
                    )
                if "\x00" in row[0]:
                    raise ValueError(
                        f"{path}: row {len(reports) + 1} (line {reader.line_num}) contains a NUL "
                        "byte; expected a text CSV of reports"
                    )
                reports.append(row[0])
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not a UTF-8 text CSV (undecodable bytes after row {len(reports)}: {exc})"
        ) from exc
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV at row {len(reports) + 1} ({exc})") from exc
    if not reports:
        raise ValueError(f"{path}: no reports (the CSV is empty)")
    return reports


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def label_csv(in_path: PathLike, out_path: PathLike, progress: bool = False) -> int:
    """Drop-in for the Stanford chexpert-labeler CLI (``label.py --reports_path IN
    --output_path OUT``).

    Args:
        in_path: headerless one-column CSV, one report per row (multi-line reports quoted).
            An empty report (``""``) gets an all-blank row; fully blank lines are skipped.
        out_path: CSV written with header ``Reports,No Finding,...,Support Devices`` and cells
            ``1.0`` / ``0.0`` / ``-1.0`` / empty.
        progress: show a tqdm progress bar.

    Returns:
        Number of reports labeled.

    Raises:
        FileNotFoundError: ``in_path`` does not exist.
        ValueError: malformed CSV (a row with more than one column, undecodable bytes or NUL
            bytes, bad quoting) or an empty file; the message names the file and the row.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"reports CSV not found: {in_path}")
    reports = _read_report_csv(in_path)
    frame = label_reports(reports, progress=progress)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for report, values in zip(reports, frame.to_numpy(), strict=True):
            writer.writerow([report, *(_cell(v) for v in values)])
    return len(reports)
