"""Concepts suggested for a criterion's text, from the CDM's own vocabulary (names and synonyms).

Every run of words in the item (after a small lexicon expands the abbreviations trials use: eGFR,
HbA1c, T2DM, LVEF, AF, ...) is a phrase; ``mercia.vocab.search.match_phrases`` finds in one query the
standard concepts whose name or a synonym is, or begins with, each phrase. The longest phrases win,
without overlapping; each becomes one group of concepts of one domain. What the item says that no phrase
covered is returned as ``leftover`` words, so the importer can tell a full match from a partial one.

Rules and the vocabulary, no NLP library: see ``mercia.trials.criteria_text`` for why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mercia.cdm import Cdm
from mercia.vocab.search import PhraseHit, match_phrases

# Abbreviations and spellings trials use -> words the vocabulary's names use (first that matches wins).
LEXICON: tuple[tuple[str, str], ...] = (
    (r"\bnon-?small[- ]cell\s+lung\s+(?:cancer|carcinoma)\b|\bnsclc\b", "non-small cell lung cancer"),
    (r"\begfr\b(?!\s+(?:sensiti[sz]ing|mutation|mutant|exon|positive|negative|tki|inhibitor|tyrosine))|\bestimated\s+glomerular\s+filtration\s+rate\b|\bgfr\b", "glomerular filtration rate"),
    (r"\bhba1c\b|\bhb\s*a1c\b|\ba1c\b|\bglycated\s+ha?emoglobin\b|\bglycosylated\s+ha?emoglobin\b",
     "hemoglobin a1c"),
    (r"\bt2dm?\b|\btype\s+(?:2|ii|two)\s+diabetes(?:\s+mellitus)?\b", "type 2 diabetes"),
    (r"\bt1dm?\b|\btype\s+(?:1|i|one)\s+diabetes(?:\s+mellitus)?\b", "type 1 diabetes"),
    (r"\bdiabetes\s+mellitus\b|\bdiabetes\b(?!\s+mellitus)", "diabetes mellitus"),
    (r"\bckd\b(?!-)", "chronic kidney disease"),
    (r"\ba(?:trial)?\s*fib\b|\bafib\b|\baf\b|\batrial\s+fibrillation\b", "atrial fibrillation"),
    (r"\bhfref\b|\bhfpef\b|\bchf\b|\bhf\b|\b(?:chronic|congestive)\s+heart\s+failure\b", "heart failure"),
    (r"\bmi\b|\bheart\s+attack\b", "myocardial infarction"),
    (r"\bcva\b|\bstroke\b", "stroke"),
    (r"\bsbp\b", "systolic blood pressure"), (r"\bdbp\b", "diastolic blood pressure"),
    (r"\bbmi\b", "body mass index"),
    (r"\blvef\b|\bleft\s+ventricular\s+ejection\s+fraction\b|\bejection\s+fraction\b",
     "left ventricular ejection fraction"),
    (r"\bnt-?pro-?bnp\b", "nt-probnp"),
    (r"\bcopd\b", "chronic obstructive pulmonary disease"),
    (r"\bcabg\b", "coronary artery bypass graft"), (r"\bpci\b", "percutaneous coronary intervention"),
    (r"\balt\b|\bsgpt\b", "alanine aminotransferase"), (r"\bast\b|\bsgot\b", "aspartate aminotransferase"),
    (r"\b(?:serum\s+)?potassium\b|\bk\+", "potassium"),
    (r"\buacr\b|\burine\s+albumin[- ]to[- ]creatinine\s+ratio\b", "albumin/creatinine ratio"),
    (r"\bhypertension\b", "hypertension"),
    (r"\bcardioversion\b", "direct current cardioversion"),
    (r"\b(?:catheter\s+)?ablation\b", "catheter ablation of tissue of heart"),
    (r"\bgi\s+bleed(?:ing)?\b|\bgastrointestinal\s+(?:bleed(?:ing)?|ha?emorrhage)\b", "gastrointestinal hemorrhage"),
    (r"\b(breast|lung|prostate|colon|rectal|stomach|pancrea(?:s|tic)|ovarian|bladder|kidney|liver)\s+"
     r"(?:cancer|carcinoma|malignancy|tumou?r)\b", r"malignant tumor of \1"),
    (r"\bha?emo", "hemo"), (r"\bha?em(?=at|or)", "hem"), (r"tumour", "tumor"), (r"oesophag", "esophag"),
    (r"\banaemi", "anemi"), (r"\bhaemorrhag", "hemorrhag"), (r"isation", "ization"),
)
_ORGAN = {"pancreatic": "pancreas", "ovarian": "ovary", "rectal": "rectum"}
_DOMAIN_ORDER = {"Condition": 0, "Measurement": 1, "Drug": 2, "Procedure": 3, "Observation": 4, "Device": 5}

# Drug classes trials name -> ingredients (each looked up in the vocabulary; absent ones are skipped).
DRUG_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"\bsglt-?2\s+inhibitors?\b|\bgliflozins?\b",
     ("empagliflozin", "dapagliflozin", "canagliflozin", "ertugliflozin", "sotagliflozin")),
    (r"\bglp-?1(?:\s+receptor)?\s+agonists?\b|\bglp-?1\s*ras?\b",
     ("liraglutide", "semaglutide", "dulaglutide", "exenatide", "lixisenatide")),
    (r"\bdpp-?4\s+inhibitors?\b|\bgliptins?\b", ("sitagliptin", "saxagliptin", "linagliptin", "alogliptin")),
    (r"\bsulfonylureas?\b|\bsulphonylureas?\b", ("gliclazide", "glimepiride", "glipizide", "glibenclamide")),
    (r"\b(?:oral\s+)?anticoagula(?:nts?|tion|nt\s+therapy)\b|\bdoacs?\b|\bnoacs?\b",
     ("warfarin", "apixaban", "rivaroxaban", "dabigatran", "edoxaban")),
    (r"\bstatins?\b", ("atorvastatin", "simvastatin", "rosuvastatin", "pravastatin")),
    (r"\bace\s*inhibitors?\b|\bacei\b", ("lisinopril", "ramipril", "enalapril", "perindopril")),
    (r"\bbeta[- ]?blockers?\b", ("bisoprolol", "metoprolol", "carvedilol", "nebivolol")),
    (r"\bnsaids?\b|\bnon-?steroidal\s+anti-?inflammatory\s+drugs?\b",
     ("ibuprofen", "naproxen", "diclofenac", "celecoxib")),
    (r"\barbs?\b|\bangiotensin(?:\s+ii)?\s+receptor\s+blockers?\b",
     ("losartan", "valsartan", "candesartan", "irbesartan", "telmisartan", "olmesartan")),
    (r"\barnis?\b|\bsacubitril(?:[/ -]valsartan)?\b", ("sacubitril",)),
    (r"\binsulins?\b", ("insulin glargine", "insulin lispro", "insulin aspart", "insulin detemir",
                          "insulin degludec", "insulin, regular, human")),
    (r"\bloop\s+diuretics?\b", ("furosemide", "bumetanide", "torasemide")),
    (r"\bantiplatelets?(?:\s+therapy)?\b", ("aspirin", "clopidogrel", "ticagrelor", "prasugrel")),
)

STOP = frozenset(["a", "an", "the", "of", "or", "and", "with", "without", "in", "on", "at", "to", "for", "by", "from", "as", "is", "are", "be", "been", "being", "who", "which", "that", "this", "these", "those", "any", "all", "other", "such", "than", "then", "their", "its", "it", "his", "her", "has", "have", "had", "not", "no", "nor", "per", "within", "prior", "previous", "previously", "past", "last", "current", "currently", "history", "known", "documented", "diagnosis", "diagnosed", "confirmed", "established", "evidence", "clinical", "clinically", "patients", "patient", "subjects", "subject", "participants", "participant", "individuals", "men", "women", "male", "female", "adults", "adult", "age", "aged", "years", "year", "months", "month", "weeks", "week", "days", "day", "old", "screening", "visit", "run-in", "randomization", "randomisation", "enrollment", "enrolment", "baseline", "defined", "following", "least", "more", "less", "greater", "equal", "level", "levels", "value", "values", "test", "result", "results", "measured", "measurement", "stable", "dose", "doses", "therapy", "treatment", "treated", "use", "using", "receiving", "taking", "medical", "record", "records", "time", "times", "value", "including", "include", "includes", "e", "g", "i", "e", "etc", "if", "can", "may", "must", "should", "will", "during", "over", "under", "between", "above", "below", "up", "maximum", "minimum", "have", "has", "had", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "either", "both", "each", "per", "mg", "ml", "min", "dl", "kg", "m2", "mmol", "mol", "mmhg", "l", "percent"])


# What may follow a one-word lab name for it to be that lab ("Potassium serum/plasma", "Bilirubin.total")
_LAB_REST = re.compile(r"^(?:\s*[\[/.(]|\s+(?:serum|plasma|blood|level|count|in\s+(?:serum|plasma|blood))\b)", re.I)


@dataclass(frozen=True)
class ConceptGroup:
    """Concepts found for one phrase of the item, all of one domain."""

    phrase: str  # the words of the item (after the lexicon) it matched
    domain: str
    concepts: tuple[tuple[int, str], ...]  # (concept_id, concept_name)
    match: str  # "exact", "prefix" or "class" (a drug class's ingredients)


@dataclass(frozen=True)
class Suggestion:
    groups: tuple[ConceptGroup, ...]
    leftover: tuple[str, ...]  # words no phrase covered (stop words, numbers and units aside)
    missing_classes: tuple[str, ...] = ()  # drug classes named whose ingredients the vocabulary lacks


def normalise(text: str) -> str:
    """The item's text with the lexicon applied (lower case)."""
    t = " " + text.lower().replace("’", "'") + " "
    for pat, rep in LEXICON:
        t = re.sub(pat, rep, t)
    for adj, organ in _ORGAN.items():
        t = t.replace(f"malignant tumor of {adj}", f"malignant tumor of {organ}")
    # "body mass index (BMI)" became "body mass index (body mass index)": keep one
    t = re.sub(r"\(([^()]+)\)", lambda m: " " if m.group(1).strip() in t[:m.start()] else m.group(0), t)
    return " ".join(t.split())


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:[-/.+][a-z0-9]+)*", text)


def _phrases(tokens: list[str], max_len: int = 7) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for i in range(len(tokens)):
        for n in range(1, max_len + 1):
            if i + n > len(tokens):
                break
            words = tokens[i:i + n]
            if words[0] in STOP or words[-1] in STOP:
                continue
            if n == 1 and (len(words[0]) < 3 or words[0].isdigit()):
                continue
            out.setdefault(" ".join(words), (i, i + n))
    return out


class PhraseLookup:
    """``match_phrases`` with a memory: the phrases of a whole record are looked up in one query
    (``prefetch``), and each item then reads its own from memory."""

    def __init__(self, cdm: Cdm) -> None:
        self.cdm = cdm
        self.hits: dict[str, list[PhraseHit]] = {}

    def prefetch(self, phrases: list[str]) -> None:
        new = sorted({p for p in phrases if p not in self.hits})
        if not new:
            return
        for p in new:
            self.hits[p] = []
        for h in match_phrases(self.cdm, new):
            self.hits.setdefault(h.phrase, []).append(h)

    def __call__(self, phrases: list[str]) -> list[PhraseHit]:
        self.prefetch(phrases)
        return [h for p in dict.fromkeys(phrases) for h in self.hits.get(p, [])]


def phrases_of(text: str) -> list[str]:
    """Every phrase `suggest` would look up for this text (to prefetch a record's in one query)."""
    norm = normalise(text)
    out: list[str] = []
    for pat, ingredients in DRUG_CLASSES:
        m = re.search(pat, norm)
        if m:
            out += ingredients
            norm = norm[:m.start()] + " " + norm[m.end():]
    return out + list(_phrases(_tokens(norm)))


def suggest(cdm: Cdm, text: str, *, prefer: str | None = None, lookup: PhraseLookup | None = None) -> Suggestion:
    """Concept groups for an item's text, best first; `prefer` a domain when a phrase matches several
    (e.g. "Measurement" when the item has a numeric threshold, "Drug" when it speaks of treatment)."""
    find = lookup or PhraseLookup(cdm)
    norm = normalise(text)
    groups: list[ConceptGroup] = []
    missing: list[str] = []
    # drug classes first: their words become a group of ingredients
    for pat, ingredients in DRUG_CLASSES:
        m = re.search(pat, norm)
        if not m:
            continue
        hits = [h for h in find(list(ingredients))
                if h.match == "exact" and h.domain_id == "Drug" and h.concept_class_id == "Ingredient"]
        if hits:
            seen = {h.concept_id: h.concept_name for h in hits}
            groups.append(ConceptGroup(m.group(0), "Drug", tuple(sorted(seen.items())), "class"))
        else:
            missing.append(m.group(0))  # a class none of whose ingredients this vocabulary holds
        norm = norm[:m.start()] + " " + norm[m.end():]
    tokens = _tokens(norm)
    phrases = _phrases(tokens)
    hits = find(list(phrases))
    by_phrase: dict[str, list[PhraseHit]] = {}
    for h in hits:
        if h.match == "prefix" and len(h.phrase.split()) == 1 and not (
                h.domain_id == "Measurement" and _LAB_REST.match(h.matched_text[len(h.phrase):])):
            continue  # one word is a prefix of too many names ("heart" of "heart failure"), labs aside
        by_phrase.setdefault(h.phrase, []).append(h)
    covered = [False] * len(tokens)

    def order(p: str) -> tuple[int, int, int]:
        span = phrases[p]
        exact = any(h.match == "exact" for h in by_phrase[p])
        return (-(span[1] - span[0]), 0 if exact else 1, span[0])

    for p in sorted(by_phrase, key=order):
        a, b = phrases[p]
        if any(covered[a:b]):
            continue
        for k in range(a, b):
            covered[k] = True
        hs = by_phrase[p]
        domains = sorted({h.domain_id for h in hs}, key=lambda d: (d != prefer, _DOMAIN_ORDER.get(d, 9), d))
        dom = domains[0]
        hs = [h for h in hs if h.domain_id == dom]
        if dom == "Drug":
            ing = [h for h in hs if h.concept_class_id == "Ingredient"]
            hs = ing or hs
        exact = [h for h in hs if h.match == "exact"]
        if exact:
            chosen = exact
        elif dom == "Measurement":
            chosen = hs[:20]  # the lab's variants (in blood, by HPLC, ...): all of them
        else:
            chosen = [min(hs, key=lambda h: (len(h.concept_name), h.concept_id))]  # the most general
        seen = {h.concept_id: h.concept_name for h in chosen}
        groups.append(ConceptGroup(p, dom, tuple(sorted(seen.items())), "exact" if exact else "prefix"))
    leftover = tuple(t for t, c in zip(tokens, covered, strict=True)
                     if not c and t not in STOP and not re.fullmatch(r"[\d.,/%-]+|\d+\w{0,3}", t))
    return Suggestion(tuple(groups), leftover, tuple(missing))
