"""OpenCodelists codelists (CSV downloads) into OMOP concept sets, mapped through the CDM's vocabulary.

OpenCodelists (opencodelists.org) publishes each codelist version as a CSV download. The common forms:

- codelists built on the site: ``code,term`` (SNOMED CT, ICD-10, CTV3, Read v2 ...);
- dm+d codelists: ``code,term,dmd_id[,dmd_type,bnf_code]``, or the older ``dmd_type,dmd_id,dmd_name,bnf_code``;
- uploaded (older) codelists: the uploader's own column names (``CTV3ID``, ``CTV3Code``, ``Read2Code``,
  ``ICD10Code``, ``DMDCode``, ``description`` ...).

The CSV does not say which coding system it uses: the caller says (``--system``). Each code is looked
up in the OMOP vocabulary for that system (SNOMED CT -> SNOMED, ICD-10 -> ICD10 (WHO ICD-10, which UK
hospital data use), dm+d -> dm+d, Read v2 and CTV3 -> Read); a standard, valid concept is kept as it
is, any other concept is replaced by its valid 'Maps to' targets. Codes that are not in the vocabulary,
or have no 'Maps to', are listed as unmapped with their terms. The result is an ATLAS concept set
expression (what `ConceptSet.from_atlas`, ATLAS and Circe read) of the standard concepts, without
descendants: a codelist already lists every code it means.

How codes are written differently in OpenCodelists and OMOP, and what is tried:
- ICD-10: OpenCodelists writes codes without the dot (``K922``), OMOP with it (``K92.2``); both are tried,
  and a code padded with ``X`` (``I10X``) is also tried without it.
- Read v2 / CTV3: OpenCodelists writes the 5-character code (``G30..``); OMOP's Read concepts carry the
  5-character code plus a 2-digit term code (``G30..00``); both are tried. OMOP has no CTV3 vocabulary:
  CTV3 codes are looked up in Read, where only codes CTV3 shares with Read v2 are found; the rest are
  listed as unmapped (map CTV3 to SNOMED CT first, e.g. with OpenCodelists' own conversion).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlglot import exp

from mercia.cdm import Cdm
from mercia.errors import VocabularyError

# OpenCodelists' coding-system ids -> (OMOP vocabulary_id, display name)
SYSTEMS: dict[str, tuple[str, str]] = {
    "snomedct": ("SNOMED", "SNOMED CT"),
    "icd10": ("ICD10", "ICD-10"),
    "dmd": ("dm+d", "dm+d"),
    "ctv3": ("Read", "CTV3 (Read v3)"),
    "readv2": ("Read", "Read v2"),
}
CODE_COLUMNS = ("code", "dmd_id", "ctv3id", "ctv3code", "ctv3_id", "read2code", "readcode", "icd10code",
                "icd_code", "dmdcode", "snomedcode", "snomed_code", "conceptid", "id")
TERM_COLUMNS = ("term", "dmd_name", "description", "ctv3preferredtermdesc", "ctv3_description", "name",
                "preferred_term", "fully_specified_name")
MAX_CODES = 100_000
_CHUNK = 500

_CONCEPT_KEYS = ("concept_id", "concept_name", "standard_concept", "invalid_reason", "concept_code",
                 "domain_id", "vocabulary_id", "concept_class_id")


@dataclass(frozen=True)
class CodelistEntry:
    code: str
    term: str


@dataclass(frozen=True)
class MappedCode:
    code: str
    term: str
    source_concept_id: int
    concept_ids: tuple[int, ...]  # the standard concepts it maps to (itself if standard)


@dataclass(frozen=True)
class UnmappedCode:
    code: str
    term: str
    reason: str


@dataclass
class CodelistMapping:
    system: str
    vocabulary_id: str
    mapped: list[MappedCode] = field(default_factory=list)
    unmapped: list[UnmappedCode] = field(default_factory=list)
    concepts: dict[int, dict[str, Any]] = field(default_factory=dict)  # the standard concepts, by id
    vocabulary_loaded: bool = True  # False: the CDM holds no concept of this vocabulary at all

    def concept_set(self, *, name: str, id: int = 0) -> dict[str, Any]:
        """The ATLAS concept set expression (``{"id", "name", "expression": {"items": [...]}}``)."""
        items = []
        for cid in sorted(self.concepts):
            c = self.concepts[cid]
            items.append({
                "concept": {k.upper(): (c[k] if c[k] is not None else ("" if k != "concept_id" else 0))
                            for k in _CONCEPT_KEYS} | {"STANDARD_CONCEPT_CAPTION": "Standard"
                                                        if c["standard_concept"] == "S" else "Non-Standard"},
                "isExcluded": False,
                "includeDescendants": False,
                "includeMapped": False,
            })
        return {"id": int(id), "name": name, "expression": {"items": items}}


def _pick(header: list[str], wanted: tuple[str, ...], given: str | None, what: str) -> int:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        if given.strip().lower() not in lowered:
            raise VocabularyError(f"--{what}-column: {given!r} is not a column of the codelist; its columns are "
                                  f"{', '.join(header)}")
        return lowered.index(given.strip().lower())
    for name in wanted:
        if name in lowered:
            return lowered.index(name)
    if what == "term":
        return -1
    raise VocabularyError(f"codelist: no code column found (looked for {', '.join(wanted[:8])} ...); its columns "
                          f"are {', '.join(header)}; name it with --code-column")


def read_codelist(source: str | Path, *, code_column: str | None = None,
                  term_column: str | None = None) -> list[CodelistEntry]:
    """The (code, term) rows of an OpenCodelists CSV download, in file order, each code once."""
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VocabularyError(f"codelist: no file at {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyError(f"codelist: cannot read {str(path)!r} as UTF-8 CSV ({type(e).__name__})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not any(h.strip() for h in rows[0]):
        raise VocabularyError(f"codelist: {str(path)!r} is empty; expected a CSV with a header such as code,term")
    header = rows[0]
    ci = _pick(header, CODE_COLUMNS, code_column, "code")
    ti = _pick(header, TERM_COLUMNS, term_column, "term")
    out: dict[str, CodelistEntry] = {}
    for row in rows[1:]:
        if not row or ci >= len(row) or not row[ci].strip():
            continue
        code = row[ci].strip()
        term = row[ti].strip() if 0 <= ti < len(row) else ""
        out.setdefault(code, CodelistEntry(code, term))
        if len(out) > MAX_CODES:
            raise VocabularyError(f"codelist: more than {MAX_CODES} codes; split it")
    if not out:
        raise VocabularyError(f"codelist: {str(path)!r} has no codes under column {header[ci]!r}")
    return list(out.values())


def code_variants(system: str, code: str) -> list[str]:
    """The spellings of an OpenCodelists code that OMOP may use for it, the code as given first."""
    out = [code]
    if system == "icd10":
        bare = code.replace(".", "")
        if bare.endswith("X") and len(bare) == 4:
            out.append(bare[:3])
        if len(bare) > 3:
            out.append(f"{bare[:3]}.{bare[3:]}")
        out.append(bare)
    elif system in ("readv2", "ctv3") and len(code) == 5:
        out.append(code + "00")
    return list(dict.fromkeys(out))


def _check_system(system: str) -> str:
    key = system.strip().lower().replace("-", "").replace("+", "").replace(" ", "")
    aliases = {"snomed": "snomedct", "icd10": "icd10", "dmd": "dmd", "read": "readv2", "read2": "readv2",
               "ctv3": "ctv3", "readv3": "ctv3"}
    key = aliases.get(key, key)
    if key not in SYSTEMS:
        raise VocabularyError(f"--system: {system!r} is not one of {', '.join(SYSTEMS)}")
    return key


def _concept_cols(alias: str) -> list[exp.Expression]:
    return [exp.column(k, table=alias) for k in _CONCEPT_KEYS]


def map_codelist(cdm: Cdm, entries: list[CodelistEntry], system: str) -> CodelistMapping:
    """Look each code up in the vocabulary of `system` and map it to standard concepts."""
    system = _check_system(system)
    vocabulary = SYSTEMS[system][0]
    variants = {e.code: code_variants(system, e.code) for e in entries}
    spellings = sorted({v for vs in variants.values() for v in vs})

    found: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(spellings), _CHUNK):
        chunk = spellings[start:start + _CHUNK]
        params = {"vocab": vocabulary} | {f"c{i}": s for i, s in enumerate(chunk)}
        q = (exp.select(*_concept_cols("c")).from_(cdm.table("concept", alias="c"))
             .where(exp.and_(
                 exp.EQ(this=exp.column("vocabulary_id", table="c"), expression=exp.Placeholder(this="vocab")),
                 exp.In(this=exp.column("concept_code", table="c"),
                        expressions=[exp.Placeholder(this=f"c{i}") for i in range(len(chunk))]))))
        for r in cdm.fetch_all(q, params):
            row = dict(zip(_CONCEPT_KEYS, r, strict=True))
            found.setdefault(str(row["concept_code"]), []).append(row)

    sources: dict[str, list[dict[str, Any]]] = {}
    for code, vs in variants.items():
        hit = next((found[v] for v in vs if v in found), None)
        if hit:
            sources[code] = hit
    needs_map = sorted({int(c["concept_id"]) for rows in sources.values() for c in rows
                        if not (c["standard_concept"] == "S" and not c["invalid_reason"])})
    maps: dict[int, list[dict[str, Any]]] = {}
    for start in range(0, len(needs_map), _CHUNK):
        ids = needs_map[start:start + _CHUNK]
        q = (exp.select(exp.column("concept_id_1", table="cr"), *_concept_cols("c"))
             .from_(cdm.table("concept_relationship", alias="cr"))
             .join(cdm.table("concept", alias="c"),
                   on=exp.EQ(this=exp.column("concept_id", table="c"), expression=exp.column("concept_id_2", table="cr")))
             .where(exp.and_(
                 exp.In(this=exp.column("concept_id_1", table="cr"), expressions=[exp.Literal.number(i) for i in ids]),
                 exp.EQ(this=exp.column("relationship_id", table="cr"), expression=exp.Literal.string("Maps to")),
                 exp.Is(this=exp.column("invalid_reason", table="cr"), expression=exp.Null()),
                 exp.EQ(this=exp.column("standard_concept", table="c"), expression=exp.Literal.string("S")))))
        for r in cdm.fetch_all(q):
            maps.setdefault(int(r[0]), []).append(dict(zip(_CONCEPT_KEYS, r[1:], strict=True)))

    out = CodelistMapping(system=system, vocabulary_id=vocabulary)
    if not found:
        any_q = (exp.select(exp.Literal.number(1)).from_(cdm.table("concept"))
                 .where(exp.EQ(this=exp.column("vocabulary_id"), expression=exp.Placeholder(this="vocab"))).limit(1))
        out.vocabulary_loaded = bool(cdm.fetch_all(any_q, {"vocab": vocabulary}))
    for e in entries:
        rows = sources.get(e.code)
        if not rows:
            out.unmapped.append(UnmappedCode(e.code, e.term, f"not in the {vocabulary} vocabulary of this CDM"))
            continue
        targets: dict[int, dict[str, Any]] = {}
        for c in rows:
            if c["standard_concept"] == "S" and not c["invalid_reason"]:
                targets[int(c["concept_id"])] = c
            else:
                for t in maps.get(int(c["concept_id"]), []):
                    targets[int(t["concept_id"])] = t
        if not targets:
            out.unmapped.append(UnmappedCode(e.code, e.term, "no valid 'Maps to' a standard concept"))
            continue
        out.mapped.append(MappedCode(e.code, e.term, int(rows[0]["concept_id"]), tuple(sorted(targets))))
        out.concepts.update(targets)
    return out
