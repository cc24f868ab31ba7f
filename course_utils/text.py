"""Report text: normalisation, XXXX de-identification, sentence -> JSON findings, styles, tokenizer.

The IU X-ray reports (Open-i, shipped inside the torchxrayvision wheel) were de-identified by
replacing some words with ``XXXX``: 1,486 of the 3,955 reports have at least one in their
FINDINGS section. Most of those words are not patient data at all but ordinary anatomy words
that the de-identifier mistook for names ("bones", "hila", "arch", "nodes", "angles", "ray").
Evidence for each rule below: the imputed word never (or almost never) occurs un-redacted in
the 3,955 reports, although any chest-radiograph corpus uses it constantly, and the context
(e.g. "lymph XXXX", "aortic XXXX", "chest x-XXXX") admits one reading.

Sections of this module (one idea each, in pipeline order):

1. :func:`normalize_report_text`, :func:`count_xxxx`, :func:`impute_xxxx` (rule table
   :data:`DEFAULT_XXXX_RULES`).
2. :func:`sentence_to_json` / :func:`report_to_json` (R2Gen2's structured JSON, one object per
   sentence, built on :mod:`course_utils.labels` mentions), :func:`validate_findings_json`,
   :func:`render_sentence`, :func:`json_to_report`.
3. Report styles (:data:`STYLES`): :func:`classify_sentence`, :func:`to_style`,
   :func:`detect_style`.
4. :func:`train_word_tokenizer`: a word-level tokenizer for the ``tiny`` profile.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from course_utils.labels import NEGATIVE, POSITIVE, UNCERTAIN, label_report, split_sentences

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# ---------------------------------------------------------------------------------------------
# 1. Normalisation and XXXX de-identification
# ---------------------------------------------------------------------------------------------

#: One de-identification placeholder (case-insensitive so that it survives lower-casing).
XXXX_PATTERN = re.compile(r"XXXX", re.IGNORECASE)

_HTML_TAG = re.compile(r"<\s*/?\s*(?:br|p|div)\s*/?\s*>", re.IGNORECASE)
_MISSING_SPACE = re.compile(r"(?<=[A-Za-z]{2})\.(?=[A-Z][a-z])")  # "clear.There" -> "clear. There"
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def _require_str(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    return text


def normalize_report_text(text: str, lowercase: bool = True) -> str:
    """Clean one report before tokenising or comparing it.

    Removes ``<BR>``-style tags, applies Unicode NFKC, inserts the space missing after a
    sentence-final period ("clear.There"), collapses repeated periods and all runs of whitespace
    to one space, strips, and (by default) lower-cases. ``XXXX`` becomes ``xxxx`` and stays
    detectable by :data:`XXXX_PATTERN`.

    Raises:
        TypeError: ``text`` is not a string.
    """
    text = unicodedata.normalize("NFKC", _require_str(text))
    text = _HTML_TAG.sub(" ", text)
    text = _MISSING_SPACE.sub(". ", text)
    text = re.sub(r"\.(?:\s*\.)+", ".", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.lower() if lowercase else text


def _simple_sentences(text: str) -> list[str]:
    """Split on sentence-final punctuation followed by whitespace (no labeler needed)."""
    return [s for s in (p.strip() for p in _SENTENCE_SPLIT.split(text)) if s]


def count_xxxx(reports: Iterable[str]) -> dict[str, int]:
    """Count de-identification placeholders over a corpus.

    Returns:
        ``{"n_reports", "n_reports_with_xxxx", "n_sentences", "n_sentences_with_xxxx",
        "n_tokens_xxxx"}``; sentences are split on ``. ``/``! ``/``? `` boundaries.

    Raises:
        TypeError: a report is not a string (e.g. NaN from a CSV with a missing findings cell).
    """
    counts = dict.fromkeys(
        ("n_reports", "n_reports_with_xxxx", "n_sentences", "n_sentences_with_xxxx"), 0
    )
    counts["n_tokens_xxxx"] = 0
    for i, report in enumerate(reports):
        _require_str(report, f"report {i}")
        sentences = _simple_sentences(report)
        n_tokens = len(XXXX_PATTERN.findall(report))
        counts["n_reports"] += 1
        counts["n_reports_with_xxxx"] += n_tokens > 0
        counts["n_sentences"] += len(sentences)
        counts["n_sentences_with_xxxx"] += sum(bool(XXXX_PATTERN.search(s)) for s in sentences)
        counts["n_tokens_xxxx"] += n_tokens
    return counts


@dataclass(frozen=True)
class XxxxRule:
    """One imputation rule: a regex with the XXXX slot in context, and the word to put there.

    Attributes:
        pattern: regex (matched case-insensitively) with exactly one named group ``slot`` that
            covers the placeholder(s), e.g. ``r"\\blymph (?P<slot>XXXX)"``.
        replacement: text written in place of the ``slot`` group.
        note: why a radiologist accepts the reading (and how sure it is).
    """

    pattern: str
    replacement: str
    note: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.compile(self.pattern, re.IGNORECASE)
        if "slot" not in regex.groupindex:
            raise ValueError(f"XxxxRule pattern {self.pattern!r} has no (?P<slot>...) group")
        object.__setattr__(self, "regex", regex)

    @property
    def name(self) -> str:
        """Short label used in :attr:`ImputationResult.applied`."""
        return f"{self.pattern} -> {self.replacement}"


def _rule(context: str, replacement: str, note: str) -> XxxxRule:
    """Build a rule from a context regex in which ``{X}`` marks the single XXXX slot."""
    return XxxxRule(context.replace("{X}", "(?P<slot>XXXX)"), replacement, note)


_NEVER = "never occurs un-redacted in the 3,955 reports"

#: Ordered rule table (specific contexts before general ones). Coverage on the 3,955 IU reports
#: is measured by :func:`impute_xxxx_corpus`. Left out on purpose (ambiguous, or real PHI):
#: "XXXX opacities" (linear? hazy? both never occur), "XXXX XXXX and lateral", "cardiac XXXX
#: generator", "XXXX change", "lung volumes are XXXX", "XXXX spine" ("thoracic" occurs
#: un-redacted, so it is not the hidden word), dates/times ("comparison XXXX, XXXX").
DEFAULT_XXXX_RULES: tuple[XxxxRule, ...] = (
    _rule(r"\bx-{X}", "ray", f"chest x-ray; 'ray' {_NEVER}"),
    _rule(r"\blymph {X}", "nodes", f"lymph nodes; 'nodes' {_NEVER}"),
    _rule(r"\bhilar {X}", "nodes", "calcified hilar nodes (old granulomatous disease)"),
    _rule(r"\baortic {X}", "arch", f"aortic arch; 'arch' {_NEVER}"),
    _rule(r"\bcostophrenic {X}(?= (?:are|were|bilaterally))", "angles", f"'angles' {_NEVER}"),
    _rule(r"\bcostophrenic {X}", "angle", f"costophrenic angle (blunting); 'angle' {_NEVER}"),
    _rule(r"\bpulmonary {X}(?= and vasculature)", "hila", f"hila beside vasculature; {_NEVER}"),
    _rule(r"\bvasculature and {X}", "hila", f"vasculature and hila; 'hila' {_NEVER}"),
    _rule(r"\bmediastinum, {X}(?=, bony)", "hila", "heart, mediastinum, hila, bony structures"),
    XxxxRule(r"\bsuperior (?P<slot>XXXX XXXX)", "vena cava", f"catheter tip; 'cava' {_NEVER}"),
    _rule(
        r"\bpulmonary {X}",
        "vessels",
        "UNCERTAIN: 'vessels' or 'hila' (both never occur un-redacted); either reading is a "
        "normal-anatomy statement and changes no CheXpert label",
    ),
    _rule(r"{X}(?= sternotomy)", "median", f"median sternotomy; 'median' {_NEVER}"),
    _rule(r"\bsternotomy {X}", "wires", f"sternotomy wires; 'wires' {_NEVER}"),
    _rule(r"\bno {X}(?= of\b)", "signs", f"'no signs of' ('evidence' occurs, 'signs' {_NEVER})"),
    _rule(
        r"\bno {X}(?= (?:acute|focal|infiltrates?|consolidation|airspace|pulmonary|edema)\b)",
        "new",
        f"'no new ...'; 'new' {_NEVER}",
    ),
    XxxxRule(
        r"\bhave (?P<slot>XXXX XXXX)(?= in the interval)",
        "remained stable",
        "meaning (no interval change) is certain, the exact two words are not",
    ),
    _rule(r"\bthe {X}(?= examination consists)", "current", f"'current' {_NEVER}"),
    _rule(r"\bchest {X}(?= (?:tip|with|catheter|in)\b)", "port", f"chest port; 'port' {_NEVER}"),
    _rule(r"{X}(?= deformit)", "compression", f"compression deformity; 'compression' {_NEVER}"),
    _rule(
        r"(?:\bmost|,) {X}(?= (?:represent\w*|subsegmental|atelectasis|scarring)\b)",
        "likely",
        f"hedge before a differential; 'likely' {_NEVER}",
    ),
    _rule(r"\binspiratory {X}", "effort", "poor inspiratory effort"),
    _rule(r"\blung {X}(?= bilaterally| are\b|\.)", "fields", f"lung fields; 'fields' {_NEVER}"),
    _rule(r"(?:\bvertebral body|\bnormal in) {X}(?= and)", "height", f"'height' {_NEVER}"),
    _rule(r"\bivc {X}", "filter", f"IVC filter; 'filter' {_NEVER}"),
    _rule(r"{X}(?=-a-XXXX)", "port", "Port-A-Cath (implanted chest port)"),
    _rule(r"\bport-a-{X}", "cath", "Port-A-Cath (implanted chest port)"),
    _rule(r"\bairways are {X}", "patent", f"central airways are patent; 'patent' {_NEVER}"),
    _rule(r"\bright {X}(?= fissure)", "minor", f"right minor fissure; 'minor' {_NEVER}"),
    _rule(r"{X}(?= bronchi\b)", "mainstem", f"mainstem bronchi; 'mainstem' {_NEVER}"),
    _rule(r"\b(?:is|remains?) in {X}(?=\.)", "place", f"device in place; 'place' {_NEVER}"),
    _rule(r"\bbowel {X}", "gas", f"bowel gas pattern; 'gas' {_NEVER}"),
    _rule(r"\bplease {X}", "call", "'please call' (contact line)"),
    _rule(
        r"(?:(?<=^)|(?<=\. )|(?<=the )|(?<=visualized )){X}(?=(?: and soft tissues?)? "
        r"(?:are|appears?|is) (?:grossly |generally |diffusely )?"
        r"(?:intact|normal|unremarkable|osteopenic))",
        "bones",
        f"closing skeletal statement; 'bones' {_NEVER} ('bony' does)",
    ),
)


@dataclass(frozen=True)
class ImputationResult:
    """Outcome of :func:`impute_xxxx` on one text.

    Attributes:
        text: the text with every matched slot replaced.
        n_xxxx: placeholders before imputation.
        n_resolved: placeholders replaced (``n_xxxx`` minus those left).
        applied: :attr:`XxxxRule.name` of each replacement, in order.
    """

    text: str
    n_xxxx: int
    n_resolved: int
    applied: list[str]


def impute_xxxx(text: str, rules: Sequence[XxxxRule] = DEFAULT_XXXX_RULES) -> ImputationResult:
    """Replace each ``XXXX`` whose context matches a rule (first matching rule wins).

    The replacement is capitalised when the slot starts a sentence. Placeholders that no rule
    covers are left as they are (they are counted as unresolved).
    """
    text = _require_str(text)
    n_xxxx = len(XXXX_PATTERN.findall(text))
    applied: list[str] = []

    def fill(match: re.Match[str], rule: XxxxRule) -> str:
        start, end = match.span("slot")
        word = rule.replacement
        before = match.string[:start].rstrip()
        if not before or before.endswith((".", ":")):
            word = word[0].upper() + word[1:]  # sentence-initial slot
        applied.append(rule.name)
        offset = match.start()
        return match.group(0)[: start - offset] + word + match.group(0)[end - offset :]

    for rule in rules:
        text = rule.regex.sub(lambda m, r=rule: fill(m, r), text)
    n_left = len(XXXX_PATTERN.findall(text))
    return ImputationResult(text, n_xxxx, n_xxxx - n_left, applied)


def impute_xxxx_corpus(
    reports: Iterable[str], rules: Sequence[XxxxRule] = DEFAULT_XXXX_RULES
) -> dict[str, object]:
    """Run :func:`impute_xxxx` over a corpus and summarise.

    Returns:
        ``{"n_reports", "n_xxxx", "n_resolved", "share_resolved" (in [0, 1], 0 when there is no
        XXXX), "rule_counts" (rule name -> replacements), "texts" (imputed reports)}``.
    """
    texts: list[str] = []
    n_xxxx = n_resolved = 0
    rule_counts: dict[str, int] = {rule.name: 0 for rule in rules}
    for i, report in enumerate(reports):
        result = impute_xxxx(_require_str(report, f"report {i}"), rules)
        texts.append(result.text)
        n_xxxx += result.n_xxxx
        n_resolved += result.n_resolved
        for name in result.applied:
            rule_counts[name] += 1
    return {
        "n_reports": len(texts),
        "n_xxxx": n_xxxx,
        "n_resolved": n_resolved,
        "share_resolved": n_resolved / n_xxxx if n_xxxx else 0.0,
        "rule_counts": rule_counts,
        "texts": texts,
    }


# ---------------------------------------------------------------------------------------------
# 2. Sentence -> R2Gen2 structured JSON
# ---------------------------------------------------------------------------------------------

Existence = Literal["pos_dx", "neg_dx", "unc_dx"]
_EXISTENCE = {POSITIVE: "pos_dx", NEGATIVE: "neg_dx", UNCERTAIN: "unc_dx"}


class FindingsJSONError(ValueError):
    """A findings JSON object does not follow :data:`FINDINGS_JSON_SCHEMA`.

    Attributes:
        path: where the first problem is, e.g. ``"[2].clinical_findings[0].existence"``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path


class ClinicalFinding(BaseModel):
    """One finding of a sentence (R2Gen2's ``clinical_findings`` items; strings lower-case)."""

    model_config = ConfigDict(extra="forbid")

    clinical_finding: str = Field(min_length=1, description="the phrase, modifiers included")
    existence: Existence = Field(description="pos_dx | neg_dx | unc_dx")
    descriptive_term: str | None = Field(
        default=None, description="modifiers (severity, laterality, location), or null"
    )
    observation: str = Field(min_length=1, description="the head noun or normal/attribute word")


class SentenceFindings(BaseModel):
    """One sentence as R2Gen2 structured JSON (see the slides' retrocardiac-opacity example)."""

    model_config = ConfigDict(extra="forbid")

    anatomical_entity: str | None = Field(description="canonical anatomy word, or null")
    location_descriptor: str | None = Field(description="laterality / zone phrase, or null")
    procedure: str | None = Field(description="device or procedure phrase, or null")
    clinical_findings: list[ClinicalFinding] = Field(description="possibly empty")


_SENTENCES_ADAPTER = TypeAdapter(list[SentenceFindings])
#: JSON Schema (draft 2020-12, from pydantic) of a report: a list of :class:`SentenceFindings`.
FINDINGS_JSON_SCHEMA: dict = _SENTENCES_ADAPTER.json_schema()

#: Canonical anatomy word -> regex. The earliest match in a sentence names the entity.
ANATOMY_VOCAB: dict[str, str] = {
    "lungs": r"lungs?|pulmonary|parenchym\w*|lobes?|lingula|airspaces?|bronchovascular",
    "heart": r"heart|cardiac|cardio\w*",
    "mediastinum": r"mediastin\w*|paratracheal",
    "hila": r"hila|hilar|hilum",
    "aorta": r"aorta|aortic",
    "pleura": r"pleura|pleural|costophrenic",
    "diaphragm": r"(?:hemi)?diaphragms?|diaphragmatic",
    "spine": r"spine|spinal|vertebra\w*|t-spine|thoracolumbar",
    "ribs": r"ribs?",
    "bones": r"bones|bony|osseous|skelet\w*|clavicles?|shoulders?|humer\w*",
    "trachea": r"trachea|airways?",
    "soft tissues": r"soft tissues?",
    "abdomen": r"abdomen|abdominal|bowel|stomach",
}
_ANATOMY_RE = re.compile(
    "|".join(rf"(?P<a{i}>\b(?:{p})\b)" for i, p in enumerate(ANATOMY_VOCAB.values())),
    re.IGNORECASE,
)
_ANATOMY_NAMES = list(ANATOMY_VOCAB)

_LAT = r"right|left|bilateral|bilaterally|bibasilar|bibasal|biapical"
_ZONE = (
    r"upper|middle|lower|mid|midlung|basilar|basal|apical|apices|apex|bases?|lobes?|zones?"
    r"|lingula|lingular|retrocardiac|perihilar|infrahilar|suprahilar|hemithorax|lung|lungs"
)
#: A location phrase: laterality and/or zone words in a row ("left lower lobe", "bibasilar").
_LOCATION_RE = re.compile(rf"\b(?:(?:{_LAT}|{_ZONE})[\s-]+)*(?:{_LAT}|{_ZONE})\b", re.IGNORECASE)
_LOCATION_CORE = re.compile(
    rf"\b(?:{_LAT}|upper|middle|lower|mid|midlung|basilar|apical|lingula|lingular|retrocardiac"
    r"|perihilar)\b",
    re.IGNORECASE,
)
#: Devices and procedures (the ``procedure`` field).
_PROCEDURE_RE = re.compile(
    r"\b(?:(?:(?:median|midline|mid) )?sternotomy(?: (?:wires?|sutures?))?|cholecystectomy"
    r"(?: clips)?|(?:(?:ng|nasogastric|endotracheal|et|chest|feeding|enteric|dobhoff"
    r"|tracheostomy) )?tubes?|(?:(?:central venous|central|venous|picc|port) )?(?:catheters?"
    r"|lines?)|picc|(?:cardiac )?pacemakers?|pacers?|a?icds?|defibrillators?|port-a-cath"
    r"|mediport|(?:surgical |vascular )?clips|cabg|(?:ivc )?filters?|stents?|valve"
    r" (?:replacement|prosthesis)|(?:lob|pneumon|mastect|thoracot)om(?:y|ies)"
    r"|(?:spinal |fusion )?(?:hardware|rods?|screws?)|(?:surgical|cerclage) wires?)\b",
    re.IGNORECASE,
)
#: Words that may precede a finding noun and describe it (descriptive_term).
_MODIFIER_RE = re.compile(
    rf"(?:{_LAT}|{_ZONE}|mild|mildly|minimal|minimally|slight|slightly|small|trace|tiny|subtle"
    r"|moderate|moderately|severe|large|massive|extensive|focal|patchy|streaky|linear|hazy"
    r"|diffuse|scattered|nodular|calcified|chronic|acute|new|increased|interstitial|airspace"
    r"|alveolar|confluent|subsegmental|discoid|platelike|bandlike|residual|small-to-moderate"
    r"|moderate-sized|pleural|pulmonary|loculated|dense|ill-defined|round|rounded)",
    re.IGNORECASE,
)
#: Normal statements that carry no CheXpert mention ("lungs are clear").
_NORMAL_RE = re.compile(
    r"\b(?:within normal limits|well[- ]expanded|well[- ]inflated|unremarkable|normal|clear"
    r"|intact|negative)\b",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[A-Za-z][\w/-]*")


def _clean_phrase(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" ,;:.").lower()


def _anatomical_entity(sentence: str) -> str | None:
    match = _ANATOMY_RE.search(sentence)
    if match is None:
        return None
    return _ANATOMY_NAMES[int(match.lastgroup[1:])]


def _location(sentence: str) -> str | None:
    for match in _LOCATION_RE.finditer(sentence):
        if _LOCATION_CORE.search(match.group(0)):
            return re.sub(r"[\s-]+lungs?$", "", _clean_phrase(match.group(0)))  # "right lung"
    return None


def _modifiers_before(sentence: str, start: int) -> str:
    """Descriptive words directly before ``start`` ("small right" in "small right effusion")."""
    words = list(_WORD_RE.finditer(sentence[:start]))
    first = start
    for word in reversed(words):
        if sentence[word.end() : first].strip(" -") or not _MODIFIER_RE.fullmatch(word.group(0)):
            break
        first = word.start()
    return sentence[first:start]


_COPULA_RE = re.compile(r"\b(?:is|are|appears?|remains?|seems?)\s+(.+)$")


def _finding_from_mention(sentence: str, start: int, end: int, status: float) -> dict:
    phrase = _clean_phrase(_modifiers_before(sentence, start) + sentence[start:end])
    copula = _COPULA_RE.search(phrase)
    normal = _NORMAL_RE.search(phrase)
    if copula is not None:  # an anatomy statement: "heart size is normal"
        observation, descriptive = copula.group(1), None
    elif normal is not None:  # "normal heart size"
        observation, descriptive = normal.group(0).lower(), None
    else:  # a noun phrase: "small right pleural effusion"
        head = phrase.rsplit(" ", 1)
        observation = head[-1]
        descriptive = head[0] if len(head) == 2 else None
    return {
        "clinical_finding": phrase,
        "existence": _EXISTENCE[status],
        "descriptive_term": descriptive,
        "observation": observation,
    }


def sentence_to_json(sentence: str) -> dict:
    """Turn one sentence into R2Gen2's structured JSON, with rules on the labeler's mentions.

    * ``clinical_findings``: one item per mention span of :func:`course_utils.labels.label_report`
      (existence from its status; ``clinical_finding`` = descriptive words before it + the
      phrase; ``observation`` = its head noun, or what an anatomy statement says: "heart size
      is normal" -> "normal", "heart is not enlarged" -> "not enlarged"), then one ``neg_dx`` item per normal word ("clear", "normal",
      "unremarkable", "intact", ...) outside every mention, as in the slides' "Right Lung is
      otherwise clear" -> finding "clear", ``neg_dx``.
    * ``anatomical_entity``: the earliest anatomy word (canonical name from
      :data:`ANATOMY_VOCAB`); ``location_descriptor``: the first laterality/zone phrase, only
      when there is an entity to locate (in "Retrocardiac opacity ..." the location stays in
      the finding's ``descriptive_term``, as in the slides); ``procedure``: the device and
      procedure phrases, comma-separated ("median sternotomy, cholecystectomy"). All strings
      lower-case.

    Raises:
        TypeError: ``sentence`` is not a string.
        ValueError: ``sentence`` is empty.
    """
    sentence = _require_str(sentence, "sentence").strip()
    if not sentence:
        raise ValueError("sentence_to_json: empty sentence")
    offsets = _sentence_offsets(sentence)
    spans: list[list] = []  # [start, end, status]; overlapping mentions merge into one
    for mention in label_report(sentence).mentions:
        start = offsets[mention.sentence_index] + mention.start
        end = start + (mention.end - mention.start)
        if spans and start < spans[-1][1]:  # "heart and mediastinum normal": two labels
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end, mention.status])
    findings = [_finding_from_mention(sentence, *span) for span in spans]
    for normal in _NORMAL_RE.finditer(sentence):
        if not any(s <= normal.start() < e for s, e, _ in spans):
            word = _clean_phrase(normal.group(0))
            findings.append(
                {
                    "clinical_finding": word,
                    "existence": "neg_dx",
                    "descriptive_term": None,
                    "observation": word,
                }
            )
    procedures = dict.fromkeys(_clean_phrase(m.group(0)) for m in _PROCEDURE_RE.finditer(sentence))
    entity = _anatomical_entity(sentence)
    return {
        "anatomical_entity": entity,
        "location_descriptor": _location(sentence) if entity else None,
        "procedure": ", ".join(procedures) or None,
        "clinical_findings": findings,
    }


def _sentence_offsets(text: str) -> list[int]:
    """Start offset in ``text`` of each sentence of ``split_sentences(text)``."""
    offsets, pos = [], 0
    for sentence in split_sentences(text):
        pos = text.find(sentence, pos)
        offsets.append(pos)
        pos += len(sentence)
    return offsets


def report_to_json(report: str) -> list[dict]:
    """One :func:`sentence_to_json` object per sentence of ``split_sentences(report)``.

    Raises:
        TypeError: ``report`` is not a string.
        ValueError: the report has no sentence (empty or only punctuation/whitespace).
    """
    sentences = split_sentences(_require_str(report, "report"))
    if not sentences:
        raise ValueError("report_to_json: empty report")
    return [sentence_to_json(s) for s in sentences]


def _error_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_findings_json(obj: object) -> list[SentenceFindings]:
    """Validate findings JSON: a JSON string, one object, or a list of objects.

    Returns:
        The parsed :class:`SentenceFindings` objects (a single object becomes a 1-list).

    Raises:
        FindingsJSONError: invalid JSON text or a schema violation; ``.path`` locates the first
            problem (``"[1].clinical_findings[0].existence"``).
    """
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise FindingsJSONError(f"not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise FindingsJSONError(f"expected a list of sentence objects, got {type(obj).__name__}")
    try:
        return _SENTENCES_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FindingsJSONError(first["msg"], _error_path(first["loc"])) from exc


_PREFIX = {"pos_dx": "", "neg_dx": "no ", "unc_dx": "possible "}
_STATUS_OF = {"pos_dx": POSITIVE, "neg_dx": NEGATIVE, "unc_dx": UNCERTAIN}
_PLURAL_ENTITIES = {"lungs", "hila", "ribs", "bones", "soft tissues"}


def _says_itself(phrase: str, existence: str) -> bool:
    """True when the labeler reads ``phrase`` alone with the wanted status."""
    mentions = label_report(phrase).mentions
    return bool(mentions) and all(m.status == _STATUS_OF[existence] for m in mentions)


_ACRONYM_RE = re.compile(r"\b(?:ng|og|et|picc|icd|aicd|ivc|svc|cabg|copd|chf|ij)\b")


def _capitalise(text: str) -> str:
    text = _ACRONYM_RE.sub(lambda m: m.group(0).upper(), text)
    return text[:1].upper() + text[1:]


def render_sentence(obj: dict | SentenceFindings) -> str:
    """Render one findings object as text (one short sentence per statement).

    Normal words become "The <location> <entity> is/are <words>." ("The right lung is
    clear."); a finding phrase that already says its own status ("heart size is normal") is
    written as it is; other findings get "No " (``neg_dx``) or "Possible " (``unc_dx``); a
    procedure not already named by a finding is written alone. Returns "" when there is
    nothing to say.

    Raises:
        FindingsJSONError: ``obj`` does not follow the schema.
    """
    item = obj if isinstance(obj, SentenceFindings) else validate_findings_json(obj)[0]
    normal = [f.clinical_finding for f in item.clinical_findings if _is_normal_word(f)]
    parts: list[str] = []
    if normal:
        entity = item.anatomical_entity or ""
        if item.location_descriptor and entity in {"lungs", "hila"}:
            entity = entity.rstrip("s").replace("hila", "hilum")
        subject = " ".join(w for w in (item.location_descriptor, entity) if w)
        verb = "are" if entity in _PLURAL_ENTITIES else "is"
        words = " and ".join(dict.fromkeys(normal))
        statement = f"the {subject} {verb} {words}"
        # a subject such as "heart" could turn the words into a mention the sentence lacked
        parts.append(statement if subject and not label_report(statement).mentions else words)
    for finding in item.clinical_findings:
        if _is_normal_word(finding):
            continue
        phrase = finding.clinical_finding
        if not _says_itself(phrase, finding.existence):
            phrase = _PREFIX[finding.existence] + phrase
        parts.append(phrase)
    named = [f.clinical_finding for f in item.clinical_findings]
    for procedure in (item.procedure or "").split(", "):
        # "catheter" negated by "removal of" must not come back as "central venous catheter"
        if procedure and not any(procedure in n or n in procedure for n in named):
            parts.append(procedure)
    return " ".join(_capitalise(p) + "." for p in parts)


def _is_normal_word(finding: ClinicalFinding) -> bool:
    return (
        finding.existence == "neg_dx"
        and finding.clinical_finding == finding.observation
        and _NORMAL_RE.fullmatch(finding.clinical_finding) is not None
    )


def json_to_report(objs: Sequence[dict | SentenceFindings]) -> str:
    """Render a report's findings JSON (a list from :func:`report_to_json`) as narrative text.

    Lossy by design: a sentence with no finding, normal word or procedure ("AP and lateral
    view of the chest.") renders as nothing, so such a report comes back as "".

    Raises:
        FindingsJSONError: an object does not follow the schema (path names its index).
    """
    items = validate_findings_json(list(objs))
    return " ".join(text for text in (render_sentence(item) for item in items) if text)


# ---------------------------------------------------------------------------------------------
# 3. Report styles
# ---------------------------------------------------------------------------------------------

#: Sections of the "sectioned" style, in output order: key -> (header, default sentence).
#: The default fills a section that no sentence of the report falls into: the report did not
#: describe that structure, and a radiologist's template then reads as normal. Defaults say no
#: more than "normal"/"None." so that they create no CheXpert mention. Sentences that fit no
#: section (technique, abdomen, recommendations) go to a final "Other:" line, written only when
#: needed. Headers are template, not findings: :mod:`course_utils.labels` skips a "Header:" at
#: a line start, so a sectioned report has the labels of its narrative original.
SECTIONS: dict[str, tuple[str, str | None]] = {
    "lines_tubes": ("Lines/tubes", "None."),
    "lungs": ("Lungs", "Clear."),
    "pleura": ("Pleura", "Normal."),
    "heart_mediastinum": ("Heart and mediastinum", "Normal."),
    "bones": ("Bones", "Normal."),
    "other": ("Other", None),
}
#: Report styles a model can be asked for (``<style:NAME>`` tokens in the tokenizer).
STYLES: tuple[str, ...] = ("narrative", "sectioned")

_LABEL_SECTION = {
    "Support Devices": "lines_tubes",
    "Pneumothorax": "pleura",
    "Pleural Effusion": "pleura",
    "Pleural Other": "pleura",
    "Cardiomegaly": "heart_mediastinum",
    "Enlarged Cardiomediastinum": "heart_mediastinum",
    "Fracture": "bones",
}
_ANATOMY_SECTION = {
    "lungs": "lungs",
    "heart": "heart_mediastinum",
    "mediastinum": "heart_mediastinum",
    "hila": "heart_mediastinum",
    "aorta": "heart_mediastinum",
    "pleura": "pleura",
    "diaphragm": "lungs",
    "spine": "bones",
    "ribs": "bones",
    "bones": "bones",
    "trachea": "heart_mediastinum",
    "soft tissues": "bones",
}
_BONE_WORDS = re.compile(
    r"\b(?:bone|degenerative|spondylo\w*|osteo\w*|scoliosis|kyphosis|fractures?|arthritis"
    r"|arthropathy|sclerotic|lytic|osseous|dextroscoliosis|levoscoliosis)\b",
    re.IGNORECASE,
)
_LUNG_WORDS = re.compile(
    r"\b(?:granulomas?|emphysema\w*|copd|hyperinflat\w*|hyperexpan\w*|volumes?|inflated"
    r"|aerated|bronchiectasis|bullae|bullous|air ?space)\b",
    re.IGNORECASE,
)
_HEADER_RE = re.compile(
    r"^\s*(" + "|".join(re.escape(h) for h, _ in SECTIONS.values()) + r")\s*:\s*(.*)$",
    re.IGNORECASE | re.MULTILINE,
)


def classify_sentence(sentence: str) -> str:
    """Section of one findings sentence: a key of :data:`SECTIONS`.

    Order of evidence: the label of the first labeler mention (devices -> lines/tubes;
    pneumothorax, effusion, pleural other -> pleura; heart size, mediastinum -> heart and
    mediastinum; fracture -> bones; the six lung labels -> lungs), then bone words
    ("degenerative", "scoliosis"), then the earliest anatomy word (:data:`ANATOMY_VOCAB`), then
    lung words ("granuloma", "hyperinflated", "lung volumes"), else ``"other"``. The sentence
    is classified after :func:`impute_xxxx` ("XXXX are intact" -> bones).

    Raises:
        TypeError: ``sentence`` is not a string.
    """
    sentence = impute_xxxx(_require_str(sentence, "sentence")).text  # "XXXX are intact"
    mentions = label_report(sentence).mentions
    if mentions:
        return _LABEL_SECTION.get(mentions[0].label, "lungs")
    if _BONE_WORDS.search(sentence):
        return "bones"
    entity = _anatomical_entity(sentence)
    if entity in _ANATOMY_SECTION:
        return _ANATOMY_SECTION[entity]
    return "lungs" if _LUNG_WORDS.search(sentence) else "other"


def _parse_sectioned(text: str) -> dict[str, list[str]]:
    """Sentences under each header of a sectioned report, defaults dropped."""
    by_header = {header.lower(): key for key, (header, _) in SECTIONS.items()}
    out: dict[str, list[str]] = {key: [] for key in SECTIONS}
    for match in _HEADER_RE.finditer(text):
        key = by_header[match.group(1).lower()]
        body = match.group(2).strip()
        if body and body != SECTIONS[key][1]:
            out[key].append(body)
    return out


def detect_style(text: str) -> str:
    """Name of the style (one of :data:`STYLES`) a report is written in.

    "sectioned" when at least two lines start with a section header ("Lungs:", "Pleura:",
    ...), else "narrative".

    Raises:
        TypeError: ``text`` is not a string.
        ValueError: ``text`` is empty.
    """
    if not _require_str(text).strip():
        raise ValueError("detect_style: empty text")
    return "sectioned" if len(_HEADER_RE.findall(text)) >= 2 else "narrative"


def to_style(report: str, style: str) -> str:
    """Rewrite a report in another style without changing its sentences.

    * ``"narrative"``: sentences in one paragraph (a narrative report comes back with its
      whitespace normalised; a sectioned one loses its headers and default sentences).
    * ``"sectioned"``: one line per :data:`SECTIONS` entry, ``Header: sentence sentence.``,
      each sentence placed by :func:`classify_sentence` in reading order; an empty section gets
      its default ("Lines/tubes: None."); the "Other:" line appears only when needed.

    Sentences are kept word for word (only whitespace and a missing space after a period are
    fixed), so ``to_style(to_style(r, "sectioned"), "narrative")`` has the labels of ``r``.

    Raises:
        TypeError: ``report`` is not a string.
        ValueError: unknown ``style`` or empty report.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")
    if not _require_str(report, "report").strip():
        raise ValueError("to_style: empty report")
    if detect_style(report) == "sectioned":
        sentences = [s for body in _parse_sectioned(report).values() for s in body]
    else:
        sentences = split_sentences(normalize_report_text(report, lowercase=False))
    if style == "narrative":
        return " ".join(" ".join(s.split()) for s in sentences)
    sections: dict[str, list[str]] = {key: [] for key in SECTIONS}
    for sentence in sentences:
        sections[classify_sentence(sentence)].append(" ".join(sentence.split()))
    lines = []
    for key, (header, default) in SECTIONS.items():
        body = " ".join(sections[key]) or default
        if body:
            lines.append(f"{header}: {body}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 4. Word-level tokenizer for the tiny profile
# ---------------------------------------------------------------------------------------------

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
#: Task tokens a prompt is built from (image placeholder, output kind, report style).
TASK_TOKENS: tuple[str, ...] = (
    "<image>",
    "<findings>",
    "<json>",
    *(f"<style:{style}>" for style in STYLES),
)
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *TASK_TOKENS)


def _word_tokenizer_pipeline(model: object) -> object:
    """A ``tokenizers.Tokenizer`` around ``model`` with the course's normaliser and splitting.

    Normaliser: NFKC, whitespace runs -> one space, strip, lowercase (the same cleanup as
    :func:`normalize_report_text` minus its report-specific fixes). Pre-tokeniser: ``Metaspace``
    marks each space as ``▁`` glued to the next word, then ``Punctuation`` splits punctuation off
    into its own token; the ``Metaspace`` decoder turns ``▁`` back into spaces, so decoding
    reproduces the normalised text exactly ("x-ray" -> ``▁x``, ``-``, ``ray`` -> "x-ray").
    A word glued to punctuation ("ray") is a different vocabulary entry from the same word
    after a space ("▁ray"); rare either way, since :func:`normalize_report_text` restores the
    space missing after a period.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="always"), pre_tokenizers.Punctuation()]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    return tokenizer


def train_word_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2000,
    min_frequency: int = 2,
    add_bos_eos: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on report texts and wrap it for ``transformers``.

    Args:
        texts: training texts (normalise them first with :func:`normalize_report_text`).
        vocab_size: cap on the vocabulary, special tokens included; the most frequent words
            win, ties broken alphabetically so that the same input gives the same vocabulary.
        min_frequency: words seen fewer times map to ``<unk>``.
        add_bos_eos: when True, ``tokenizer(text)`` returns ``<bos> ... <eos>`` (pass
            ``add_special_tokens=False`` to get the bare words).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``pad/bos/eos/unk`` set and :data:`TASK_TOKENS` as
        additional special tokens; save/load it with ``save_pretrained``/``from_pretrained``.

    Raises:
        ValueError: no text, or ``vocab_size`` too small to hold the special tokens.
    """
    from tokenizers import models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [_require_str(t, f"text {i}") for i, t in enumerate(texts)]
    if not any(t.strip() for t in texts):
        raise ValueError("train_word_tokenizer: no non-empty training text")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must exceed {len(SPECIAL_TOKENS)} specials")
    tokenizer = _word_tokenizer_pipeline(models.WordLevel(unk_token=UNK_TOKEN))
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if add_bos_eos:
        bos, eos = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
            pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B {EOS_TOKEN}",
            special_tokens=[(BOS_TOKEN, bos), (EOS_TOKEN, eos)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=list(TASK_TOKENS),
    )
