"""Eligibility criteria as free text (ClinicalTrials.gov's ``eligibilityCriteria``): split into items, and
read each item's negation, numeric thresholds, time windows and signs that it cannot be computed.

Rules, not a language model or an NLP library: registry eligibility text is a narrow register (bulleted
items, a dozen negation cues, thresholds written with comparison signs or a few phrases, windows as
"within the past N months"), so a short list of patterns reads it, every rule can be tested and explained,
and nothing is downloaded at run time. medspaCy's ConText (NegEx) could replace ``_NEGATION`` if wider
text ever needs it; it brings spaCy and needs a model per language, for cues this module already covers.
Concepts are found elsewhere (``mercia.trials.concept_match``), in the CDM's own vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---- splitting ---------------------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?\s*(?:key\s+|main\s+|major\s+|general\s+)?"
                     r"(inclusion|exclusion)\s+criteri(?:a|on)\b[^:\n]*:?\s*(?:\*\*)?\s*$", re.I)
_BULLET = re.compile(r"^(\s*)(?:[*\-•·▪◦+]|\(?\d{1,2}[.)]|\(?[a-z][.)]|\(?[ivx]{1,4}[.)])\s+(.*)$", re.I)


@dataclass(frozen=True)
class TextItem:
    """One criterion of the free text: its section and text (a sub-bullet's parent line before it)."""

    section: str  # "inclusion" or "exclusion"
    text: str
    parent: str | None = None

    @property
    def full_text(self) -> str:
        return f"{self.parent} {self.text}" if self.parent else self.text


def split_criteria(text: str) -> list[TextItem]:
    """Items of an eligibility text, in order. Sections start at an "Inclusion Criteria:" or "Exclusion
    Criteria:" line (text before any header is inclusion); items are bullets ("*", "-", "1.", "a)") or,
    without bullets, lines. A line that is no bullet continues the item above. Sub-bullets under an
    item that ends with ":" are items of their own, with that line as their parent; under any other item
    they continue it."""
    section = "inclusion"
    raw: list[tuple[str, int, str]] = []  # (section, indent, text); indent -1 = a line with no bullet
    for line in text.replace("\r\n", "\n").replace("\\>", ">").replace("\\<", "<").split("\n"):
        if not line.strip():
            raw.append((section, -2, ""))
            continue
        h = _HEADER.match(line)
        if h:
            section = h.group(1).lower()
            raw.append((section, -2, ""))
            continue
        b = _BULLET.match(line)
        if b:
            raw.append((section, len(b.group(1).expandtabs(4)), b.group(2).strip()))
        else:
            raw.append((section, -1, line.strip()))
    items: list[TextItem] = []
    stack: list[tuple[int, int]] = []  # (indent, index in items) of open bullet items
    prev_blank = True
    for sec, indent, t in raw:
        if indent == -2:
            prev_blank = True
            if not t:
                continue
        if indent == -1:
            if items and not prev_blank and items[-1].section == sec:
                last = items[-1]
                items[-1] = TextItem(last.section, f"{last.text} {t}", last.parent)
            else:
                items.append(TextItem(sec, t))
                stack = []
            prev_blank = False
            continue
        prev_blank = False
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack and items[stack[-1][1]].section == sec:
            parent = items[stack[-1][1]]
            if parent.text.rstrip().endswith(":"):
                items.append(TextItem(sec, t, parent.full_text.rstrip().rstrip(":")))
                stack.append((indent, len(items) - 1))
            else:
                # a sub-bullet that qualifies its item: part of it
                j = stack[-1][1]
                items[j] = TextItem(parent.section, f"{parent.text}; {t}", parent.parent)
            continue
        items.append(TextItem(sec, t))
        stack.append((indent, len(items) - 1))
    # a line ending with ":" whose sub-items were taken apart is a heading ("Any of the following:"), not a
    # criterion, unless it says more ("Age > 75 years, or prior stroke, or at least two of the following:")
    parents = {i.parent for i in items if i.parent}
    return [i for i in items if not (i.text.rstrip().endswith(":") and i.full_text.rstrip().rstrip(":") in parents
                                     and _is_heading(i.text)) and i.text.strip(" :")]


def _is_heading(text: str) -> bool:
    before = re.split(r"\b(?:of\s+)?the\s+following\b", text, maxsplit=1, flags=re.I)
    if len(before) == 2:
        return len(before[0].split()) <= 6
    return len(text.split()) <= 5


# ---- reading one item -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    """A numeric bound: op is ">=", ">", "<=", "<", "=" or "between" (value..high, inclusive)."""

    op: str
    value: float
    high: float | None = None
    unit: str | None = None  # the unit as written, normalised (e.g. "%", "mL/min/1.73m2")
    start: int = 0  # where in the text
    end: int = 0

    def as_range(self) -> dict[str, float]:
        """The cohort language's range words (min, max, above, below, equal)."""
        v = int(self.value) if float(self.value).is_integer() else self.value
        if self.op == "between":
            h = self.high if self.high is not None else self.value
            return {"min": v, "max": int(h) if float(h).is_integer() else h}
        return {{">=": "min", ">": "above", "<=": "max", "<": "below", "=": "equal"}[self.op]: v}


@dataclass(frozen=True)
class ParsedItem:
    """What the rules read in one item."""

    text: str
    negated: bool = False
    thresholds: tuple[Threshold, ...] = ()
    window_days: int | None = None  # look back this many days ("within the past 6 months": 180)
    count: int | None = None  # "at least 2 hospitalisations"
    is_age: bool = False
    not_computable: str | None = None  # the cue that makes it so
    ever: bool = False  # "history of", "prior", "previous": any time before
    current: bool = False  # "currently", "treated with", "receiving": now
    duration_days: int | None = None  # "diagnosed at least 3 months before": so long ago at least
    duration_anchored: bool = False  # the duration says "before screening" (else "for 3 months": how long)
    spans: tuple[tuple[int, int], ...] = ()  # where thresholds, windows and durations were read


_NEGATION = re.compile(
    r"^(?:patients?|subjects?|participants?|individuals?)?\s*(?:with\s+|who\s+(?:have|had)\s+)?"
    r"(?:no\s+(?:known\s+|prior\s+|previous\s+|current\s+)?(?:history\s+of\s+|evidence\s+of\s+|diagnosis\s+of\s+)?"
    r"|without\s+(?:a\s+)?(?:history\s+of\s+|evidence\s+of\s+)?|absence\s+of\s+|free\s+of\s+|never\s+|"
    r"not\s+(?:currently\s+)?(?:receiving|taking|on|treated\s+with)\s+|"
    r"(?:have|has)\s+not\s+(?:been\s+)?|(?:do|does|did)\s+not\s+have\s+)",
    re.I)

# Items no CDM can answer: intentions, consent, judgements, screening procedures of the trial itself.
_NOT_COMPUTABLE = re.compile(
    r"\b(willing|willingness|able\s+to|ability\s+to|unable\s+to|capable\s+of|informed\s+consent|(?:sign|give|provide|obtain)\w*\s+(?:\w+\s+){0,3}consent|consent\s+form|"
    r"compl(?:y|iance)|adhere|in\s+the\s+(?:opinion|judg(?:e)?ment)\s+of|investigator|"
    r"pregnan\w*|breast[- ]?feeding|lactating|nursing|child[- ]?bearing|contracepti\w*|"
    r"life\s+expectancy|participat\w*\s+in\s+(?:another|any\s+other)|investigational|enrol\w*\s+in|"
    r"study\s+(?:drug|medication|treatment|procedures?|visits?)|hypersensitivity\s+to\s+(?:the\s+)?study|"
    r"(?:eligible|candidates?|suitable)\s+for|physician(?:'s)?\s+decision|plann(?:ed|ing)\s+(?:use|to)|plans?\s+to|tumou?r\s+tissue|tissue\s+(?:samples?|blocks?)|archival|"
    r"biomarker\s+analys[ie]s|language|read\s+and\s+write|employee|legal|custody|geographic)\w*",
    re.I)

_UNITS: tuple[tuple[str, str], ...] = (
    (r"m[lL]\s*/\s*min(?:ute)?\s*(?:/|per)\s*1[.,]73\s*m(?:2|²|\^2|\s*sq)?", "mL/min/1.73m2"),
    (r"mmol\s*/\s*mol", "mmol/mol"),
    (r"mmol\s*/\s*l", "mmol/L"),
    (r"(?:µ|u|micro)mol\s*/\s*l", "umol/L"),
    (r"mg\s*/\s*dl", "mg/dL"),
    (r"mg\s*/\s*g", "mg/g"),
    (r"mm\s*hg", "mmHg"),
    (r"kg\s*/\s*m(?:2|²|\^2)", "kg/m2"),
    (r"pg\s*/\s*ml", "pg/mL"),
    (r"g\s*/\s*dl", "g/dL"),
    (r"bpm|beats?\s*(?:per|/)\s*min(?:ute)?", "bpm"),
    (r"%|percent", "%"),
    (r"/\s*mm(?:3|³)|/\s*(?:µ|u|micro)l|(?:x\s*)?10\^?9\s*/\s*l|cells\s*/\s*(?:µ|u)l", "count/volume"),
    (r"g\s*/\s*l", "g/L"), (r"mg\s*/\s*day|mg\s+daily", "mg/day"), (r"gy", "Gy"), (r"ml\s*/\s*min", "mL/min"),
    (r"years?(?:\s+(?:of\s+age|old))?|yrs?", "years"),
    (r"months?|weeks?|days?|hours?", "duration"),
)
_UNIT_RE = "|".join(f"(?:{p})" for p, _ in _UNITS)
_NUM = r"(\d{1,3}(?:[, ]\d{3})+(?![\d.])|\d+(?:[.,]\d+)?)"
_OPS = (
    (r"≥|>=|=>|greater\s+than\s+or\s+equal\s+to|more\s+than\s+or\s+equal\s+to|at\s+least|no\s+less\s+than|"
     r"not\s+less\s+than|equal\s+to\s+or\s+(?:greater|more)\s+than|minimum(?:\s+of)?", ">="),
    (r"≤|<=|=<|less\s+than\s+or\s+equal\s+to|equal\s+to\s+or\s+less\s+than|at\s+most|no\s+(?:more|greater)\s+than|"
     r"not\s+(?:more|greater)\s+than|up\s+to|maximum(?:\s+of)?", "<="),
    (r">|greater\s+than|more\s+than|above|over|higher\s+than|exceeding", ">"),
    (r"<|less\s+than|below|under|lower\s+than", "<"),
    (r"=", "="),
)
_OP_RE = "|".join(f"(?:{p})" for p, _ in _OPS)
_SUFFIX_OPS = ((r"(?:or|and)\s+(?:greater|more|higher|above|older|over)", ">="),
               (r"(?:or|and)\s+(?:less|lower|below|younger|under)", "<="))


def _unit(text: str | None) -> str | None:
    if not text:
        return None
    for pat, name in _UNITS:
        if re.fullmatch(pat, text.strip(), re.I):
            return name
    return None


def _op(text: str) -> str:
    for pat, op in _OPS:
        if re.fullmatch(pat, text.strip(), re.I):
            return op
    raise ValueError(text)


def _f(s: str) -> float:
    if re.fullmatch(r"\d{1,3}(?:[, ]\d{3})+", s):
        return float(re.sub(r"[, ]", "", s))  # 100,000 or 100 000
    return float(s.replace(",", "."))


def find_thresholds(text: str) -> list[Threshold]:
    """Numeric bounds in an item: "eGFR >= 30 mL/min/1.73m2", "HbA1c 7.0-10.5%", "between 7% and 10%",
    "LVEF of 40% or less", "aged 18 to 75 years", "at least 18 years"."""
    found: list[Threshold] = []
    taken: list[tuple[int, int]] = []

    def add(t: Threshold) -> None:
        if any(not (t.end <= a or t.start >= b) for a, b in taken):
            return
        taken.append((t.start, t.end))
        found.append(t)

    u = rf"\s*({_UNIT_RE})?"
    for m in re.finditer(rf"\bbetween\s+{_NUM}{u}\s+and\s+{_NUM}{u}", text, re.I):
        lo, hi = sorted((_f(m.group(1)), _f(m.group(3))))  # "between 10 and 7" means 7 to 10
        add(Threshold("between", lo, hi, _unit(m.group(4) or m.group(2)), m.start(), m.end()))
    for m in re.finditer(rf"(?<![\w.])(?:from\s+)?{_NUM}{u}\s*(?:-|–|—|to)\s*{_NUM}{u}", text, re.I):
        lo, hi = _f(m.group(1)), _f(m.group(3))
        if hi > lo:
            add(Threshold("between", lo, hi, _unit(m.group(4) or m.group(2)), m.start(), m.end()))
    for m in re.finditer(rf"({_OP_RE})\s*{_NUM}{u}", text, re.I):
        if re.match(r"\s*(?:x|×|times)\b", text[m.end():], re.I):
            continue  # "> 3 times the upper limit of normal": relative to each lab's range, not a value
        add(Threshold(_op(m.group(1)), _f(m.group(2)), None, _unit(m.group(3)), m.start(), m.end()))
    for pat, op in _SUFFIX_OPS:
        for m in re.finditer(rf"(?<![\w.]){_NUM}{u}\s+{pat}", text, re.I):
            add(Threshold(op, _f(m.group(1)), None, _unit(m.group(2)), m.start(), m.end()))
    found.sort(key=lambda t: t.start)
    # ">= 25 and <= 75 mL/min": one range
    for i in range(len(found) - 1):
        a, b = found[i], found[i + 1]
        if (a.op, b.op) == (">=", "<=") and a.value <= b.value and re.fullmatch(r"\s*(?:and|to|,)?\s*",
                                                                               text[a.end:b.start], re.I):
            unit = a.unit or b.unit
            found[i:i + 2] = [Threshold("between", a.value, b.value, unit, a.start, b.end)]
            break
    return found


_WORD_NUM = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
             "ten": 10, "twelve": 12, "a": 1, "an": 1}
_PERIOD_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
_WINDOW = re.compile(
    r"\b(?:within|in|during|over)\s+(?:the\s+)?(?:(?:past|last|previous|prior|preceding)\s+)?"
    r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|a|an)?\s*"
    r"(day|week|month|year)s?\b(?:\s+(?:prior\s+to|before|preceding)\s+[\w\s]{0,40}?(?=[,;.)]|$))?"
    r"|\b(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve)\s+(day|week|month|year)s?\s+"
    r"(?:prior\s+to|before|preceding)\b(?:\s+[\w\s]{0,40}?(?=[,;.)]|$))?", re.I)


def find_window(text: str) -> tuple[int, int, int] | None:
    """A look-back in days, with its span: "within the past 6 months" (180), "in the last 12 weeks" (84),
    "in the past year" (365), "within 30 days prior to screening" (30). Months are 30 days, years 365."""
    m = _WINDOW.search(text)
    if not m:
        return None
    n, unit = (m.group(1), m.group(2)) if m.group(2) else (m.group(3), m.group(4))
    if m.group(2) and not m.group(1) and not re.search(r"past|last|previous|prior|preceding", m.group(0), re.I):
        return None  # "in years" is no window
    k = 1 if n is None else (int(n) if n.isdigit() else _WORD_NUM[n.lower()])
    return days(k, unit), m.start(), m.end()


def days(n: int, unit: str) -> int:
    """N days, weeks, months or years in days: a month is 30 days, but 12 months are a year (365)."""
    unit = unit.lower().rstrip("s")
    if unit == "month" and n % 12 == 0:
        return n // 12 * 365
    return n * _PERIOD_DAYS[unit]


_COUNT = re.compile(r"\b(?:at\s+least|≥|>=|(\d+|two|three|four|five)\s+or\s+more)\s*(\d+|two|three|four|five)?\s+"
                    r"(?:separate\s+|distinct\s+|prior\s+|previous\s+)?"
                    r"(hospitali[sz]ations?|admissions?|episodes?|events?|exacerbations?|visits?|measurements?|"
                    r"occasions?|readings?|prescriptions?|attacks?)\b", re.I)
_AGE = re.compile(r"\b(?:age[ds]?|years?\s+(?:of\s+age|old)|adults?)\b", re.I)
_EVER = re.compile(r"\b(?:history\s+of|prior|previous(?:ly)?|ever|past)\b", re.I)
_CURRENT = re.compile(r"\b(?:current(?:ly)?|treated\s+with|treatment\s+with|receiving|taking|on\s+(?:a\s+)?stable|"
                      r"use\s+of|therapy\s+with|on\s+treatment)\b", re.I)


_DURATION = re.compile(r"\b(?:for\s+)?(?:at\s+least|a\s+minimum\s+of|more\s+than|over|≥|>=)\s*"
                       r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve)\s+(day|week|month|year)s?"
                       r"(?:\s+(?:before|prior\s+to|preceding)(?:\s+(?:screening|randomi[sz]ation|enrol\w*|visit\s*\d*|"
                       r"the\s+first\s+dose))?)?", re.I)


def parse_item(text: str) -> ParsedItem:
    """What the rules read in one item's text."""
    t = " ".join(text.split())
    duration = None
    anchored = False
    spans: list[tuple[int, int]] = []
    d = _DURATION.search(t)
    if d:
        anchored = bool(re.search(r"(?:before|prior\s+to|preceding)", d.group(0), re.I))
        n = d.group(1)
        duration = days(int(n) if n.isdigit() else _WORD_NUM[n.lower()], d.group(2))
        spans.append((d.start(), d.end()))
        t_w = t[:d.start()] + " " * (d.end() - d.start()) + t[d.end():]
    else:
        t_w = t
    neg = _NEGATION.match(t)
    negated = bool(neg and neg.group(0).strip())
    nc = _NOT_COMPUTABLE.search(t)
    thresholds = [x for x in find_thresholds(t_w) if x.unit != "duration"]
    w = find_window(t_w)
    count = None
    cm = _COUNT.search(t)
    if cm:
        n = cm.group(2) or cm.group(1)
        if n:
            count = int(n) if n.isdigit() else _WORD_NUM[n.lower()]
            spans.append((cm.start(), cm.end()))
            thresholds = [x for x in thresholds if not (x.start <= cm.start() < x.end or cm.start() <= x.start < cm.end())]
    is_age = bool(_AGE.search(t)) and any(x.unit in (None, "years") for x in thresholds) and (
        any(x.unit == "years" for x in thresholds) or re.search(r"\bage", t, re.I) is not None)
    spans += [(x.start, x.end) for x in thresholds] + ([(w[1], w[2])] if w else [])
    return ParsedItem(
        text=t, negated=negated, thresholds=tuple(thresholds), window_days=w[0] if w else None, count=count,
        is_age=is_age, not_computable=nc.group(0) if nc else None, ever=bool(_EVER.search(t)),
        current=bool(_CURRENT.search(t)), duration_days=duration, duration_anchored=anchored, spans=tuple(spans),
    )


def blank(text: str, spans: tuple[tuple[int, int], ...]) -> str:
    """`text` (whitespace normalised) with these spans replaced by spaces: what is left for concepts."""
    t = " ".join(text.split())
    for a, b in spans:
        t = t[:a] + " " * (b - a) + t[b:]
    return t
