"""Finding concepts in a CDM's vocabulary: search by text, one concept's details, record and person counts.

Search is a case-insensitive substring match on concept names and synonyms (CONCEPT_SYNONYM) and an
exact, case-insensitive match on concept_code, optionally filtered by domain, vocabulary and standard
concepts. Results are ordered by how well they match (an exact name, synonym or code first, then a
name or synonym starting with the text, then one containing it), then by how many records in the
CDM's clinical tables carry the concept, then by concept_id.

Every query is a sqlglot tree; the search text, domain and vocabulary are bound parameters, never
SQL text. The counts here are exact: they are for the user's own CDM (`mercia concept search/show
--cdm`). A node releases a person count, and a record count capped per person, only through
`federation/node/concept_count.py`, with noise and disclosure control.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from mercia.cdm import Cdm
from mercia.errors import VocabularyError

# Clinical tables whose rows carry a concept: (table, standard concept column, source concept column).
DOMAIN_TABLES: tuple[tuple[str, str, str | None], ...] = (
    ("condition_occurrence", "condition_concept_id", "condition_source_concept_id"),
    ("drug_exposure", "drug_concept_id", "drug_source_concept_id"),
    ("procedure_occurrence", "procedure_concept_id", "procedure_source_concept_id"),
    ("measurement", "measurement_concept_id", "measurement_source_concept_id"),
    ("observation", "observation_concept_id", "observation_source_concept_id"),
    ("device_exposure", "device_concept_id", "device_source_concept_id"),
    ("visit_occurrence", "visit_concept_id", "visit_source_concept_id"),
    ("specimen", "specimen_concept_id", None),
    ("death", "cause_concept_id", "cause_source_concept_id"),
)

MAX_LIMIT = 1000


@dataclass(frozen=True)
class SearchHit:
    concept_id: int
    concept_name: str
    domain_id: str
    vocabulary_id: str
    concept_class_id: str
    standard_concept: str | None
    concept_code: str
    invalid_reason: str | None
    match: str  # "exact", "prefix" or "substring"
    record_count: int  # records in this CDM's clinical tables with it as their concept (exact, local)


@dataclass
class ConceptDetails:
    concept: dict[str, Any]
    synonyms: list[str] = field(default_factory=list)
    maps_to: list[dict[str, Any]] = field(default_factory=list)
    mapped_from: list[dict[str, Any]] = field(default_factory=list)
    ancestors: list[dict[str, Any]] = field(default_factory=list)  # with min/max levels of separation
    descendants: list[dict[str, Any]] = field(default_factory=list)
    descendants_total: int = 0
    record_counts: list[dict[str, Any]] = field(default_factory=list)  # per table: as concept, as source


MATCH_NAMES = {0: "exact", 1: "prefix", 2: "substring"}
_FACETS = ("domain_id", "vocabulary_id", "standard_concept")  # a SearchIndex's copy of the filters' columns
_CONCEPT_FIELDS = ("concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_class_id",
                   "standard_concept", "concept_code", "invalid_reason")


def _c(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table)


def _p(name: str) -> exp.Placeholder:
    return exp.Placeholder(this=name)


def _n(value: int) -> exp.Literal:
    return exp.Literal.number(int(value))


def domain_tables(cdm: Cdm) -> list[tuple[str, str, str | None]]:
    """The clinical tables of DOMAIN_TABLES that this CDM has (with the source column if it has it)."""
    out = []
    for table, col, source in DOMAIN_TABLES:
        cols = cdm.columns(table)
        if not cols or col not in cols:
            continue
        out.append((table, col, source if source and source in cols else None))
    return out


def _record_counts_query(cdm: Cdm, ids: exp.Query) -> exp.Query | None:
    """(concept_id, n): records per concept in the clinical tables, for the concepts `ids` selects."""
    parts: list[exp.Query] = []
    for table, col, _ in domain_tables(cdm):
        parts.append(
            exp.select(exp.alias_(_c(col), "concept_id"), exp.alias_(exp.Count(this=exp.Star()), "n"))
            .from_(cdm.table(table))
            .where(exp.In(this=_c(col), query=exp.Subquery(this=ids.copy())))
            .group_by(_c(col))
        )
    if not parts:
        return None
    union = parts[0]
    for q in parts[1:]:
        union = exp.union(union, q, distinct=False)
    return (
        exp.select(_c("concept_id"), exp.alias_(exp.Sum(this=_c("n")), "n"))
        .from_(union.subquery("rc_all"))
        .group_by(_c("concept_id"))
    )


@dataclass(frozen=True)
class SearchIndex:
    """A vocabulary's search text lowered once (`prepare_search_index`), for a process that searches the
    same vocabulary many times (the hub): lowering millions of names, synonyms and codes is most of a
    search's time on a full Athena vocabulary. `texts` holds (concept_id, t = lower(name)) for every
    CONCEPT row and (concept_id, t = lower(synonym)) for every CONCEPT_SYNONYM row, sorted by t (so the
    exact and prefix matches, which a search asks for first, skip most of it); `codes` holds
    (t = lower(concept_code), concept_id), sorted by t (so an equality skips most of it). A search through
    it gives exactly the rows and order of a search without it (tests/test_vocab_search_index.py)."""

    texts: exp.Table
    codes: exp.Table


def prepare_search_index(cdm: Cdm, *, prefix: str = "mercia_search") -> SearchIndex | None:
    """Build the SearchIndex of `cdm`'s vocabulary as temporary tables of its connection (a read-only
    DuckDB file still takes them; None on an engine without connection-local temporary tables, which
    searches directly). The tables last as long as the connection and reflect the vocabulary as it was
    when built."""
    if not cdm.engine.supports_temp_tables:
        return None
    texts, codes = exp.to_table(f"{prefix}_text"), exp.to_table(f"{prefix}_code")
    facets = [_c(f, "c") for f in _FACETS]
    src: exp.Query = exp.select(_c("concept_id", "c"), exp.alias_(exp.Lower(this=_c("concept_name", "c")), "t"),
                                *facets).from_(cdm.table("concept", alias="c"))
    if "concept_synonym_name" in (cdm.columns("concept_synonym") or []):
        # a synonym of a concept missing from CONCEPT is never found (the search joins CONCEPT): left out here
        src = exp.union(src, exp.select(
            _c("concept_id", "c"), exp.alias_(exp.Lower(this=_c("concept_synonym_name", "s")), "t"),
            *[f.copy() for f in facets]).from_(cdm.table("concept_synonym", alias="s")).join(
            cdm.table("concept", alias="c"), on=exp.EQ(this=_c("concept_id", "c"), expression=_c("concept_id", "s"))),
            distinct=False)
    # sorted by t: the concepts whose text equals or starts with the search text are a narrow run of rows
    # that a scan finds from the zone maps (min/max per block) without reading the rest
    src = exp.select(exp.Star()).from_(src.subquery("st")).order_by(_c("t"), _c("concept_id"))
    code = (exp.select(exp.alias_(exp.Lower(this=_c("concept_code")), "t"), _c("concept_id"), *[_c(f) for f in _FACETS])
            .from_(cdm.table("concept")).order_by(_c("t")))
    for table, query in ((texts, src), (codes, code)):
        # drop, then create: PostgreSQL has no CREATE OR REPLACE TABLE
        cdm.execute(exp.Drop(tables=[table.copy()], kind="TABLE", exists=True))
        cdm.execute(exp.Create(this=table.copy(), kind="TABLE", expression=query,
                               properties=exp.Properties(expressions=[exp.TemporaryProperty()])))
    return SearchIndex(texts=texts, codes=codes)


def search_query(cdm: Cdm, text: str, *, domain: str | None = None, vocabulary: str | None = None,
                 standard: bool = False, limit: int = 50, counts: bool = True,
                 index: SearchIndex | None = None, near_only: bool = False) -> tuple[exp.Select, dict[str, Any]]:
    """The search as one tree and its bound parameters (without `counts`, no record counts: 0 for each,
    and the clinical tables are not read; with `index`, the names, synonyms and codes are read from it,
    already lowered). With `near_only` (an `index` and no `counts` only), only the concepts with an exact
    or a prefix match: the first `limit` of them, if there are that many, are the first `limit` of the
    whole search (a substring match ranks after every one of them)."""
    text = text.strip()
    if not text:
        raise VocabularyError("search text: give some text to look for (a word, a phrase or a concept code)")
    if not 1 <= int(limit) <= MAX_LIMIT:
        raise VocabularyError(f"limit: must be between 1 and {MAX_LIMIT}, not {limit}")
    params: dict[str, Any] = {"q": text.lower()}
    q = _p("q")

    def low(col: exp.Expression) -> exp.Expression:
        return col if index is not None else exp.Lower(this=col)  # the index's text is lowered already

    if near_only and (index is None or counts):
        raise ValueError("near_only: only for a search through an index without counts")

    def starts(col: exp.Expression) -> exp.Expression:
        if index is not None:  # STARTS_WITH: cheaper than a position, and the sorted index's zone maps serve it
            return exp.StartsWith(this=low(col), expression=q.copy())
        return exp.EQ(this=exp.StrPosition(this=low(col), substr=q.copy()), expression=_n(1))

    def rank(col: exp.Expression) -> exp.Expression:
        return exp.Case(ifs=[
            exp.If(this=exp.EQ(this=low(col.copy()), expression=q.copy()), true=_n(0)),
            exp.If(this=starts(col.copy()), true=_n(1)),
        ], default=_n(2 if not near_only else 1))

    def contains(col: exp.Expression) -> exp.Expression:
        if near_only:
            return starts(col)
        return exp.GT(this=exp.StrPosition(this=low(col), substr=q.copy()), expression=_n(0))

    name_col, name_table = (_c("t"), index.texts.copy()) if index is not None else (
        _c("concept_name"), cdm.table("concept"))
    code_col, code_table = (_c("t"), index.codes.copy()) if index is not None else (
        _c("concept_code"), cdm.table("concept"))
    by_name = (exp.select(_c("concept_id"), exp.alias_(rank(name_col), "rnk"))
               .from_(name_table).where(contains(name_col.copy())))
    by_code = (exp.select(_c("concept_id"), exp.alias_(_n(0), "rnk")).from_(code_table)
               .where(exp.EQ(this=low(code_col), expression=q.copy())))
    def filters(alias: str | None) -> list[exp.Expression]:
        conds: list[exp.Expression] = []
        if domain:
            params["domain"] = domain.lower()
            conds.append(exp.EQ(this=exp.Lower(this=_c("domain_id", alias)), expression=_p("domain")))
        if vocabulary:
            params["vocabulary"] = vocabulary.lower()
            conds.append(exp.EQ(this=exp.Lower(this=_c("vocabulary_id", alias)), expression=_p("vocabulary")))
        if standard:
            conds.append(exp.EQ(this=_c("standard_concept", alias), expression=exp.Literal.string("S")))
        return conds

    on_index = index is not None and not counts
    if on_index:  # filtered on the index, so that only the `limit` concepts kept are read from CONCEPT
        for part in (by_name, by_code):
            for cond in filters(None):
                part.where(cond, copy=False)
    union: exp.Query = exp.union(by_name, by_code, distinct=False)
    syn_cols = cdm.columns("concept_synonym") or []
    if "concept_synonym_name" in syn_cols and index is None:  # the index's texts hold the synonyms
        by_syn = (exp.select(_c("concept_id"), exp.alias_(rank(_c("concept_synonym_name")), "rnk"))
                  .from_(cdm.table("concept_synonym")).where(contains(_c("concept_synonym_name"))))
        union = exp.union(union, by_syn, distinct=False)
    matched = (exp.select(_c("concept_id"), exp.alias_(exp.Min(this=_c("rnk")), "rnk"))
               .from_(union.subquery("m_all")).group_by(_c("concept_id")))

    if on_index:
        # Ranked and cut on the index; the order is the plain query's: rank, then (no counts: all 0)
        # concept_id.
        top = matched.order_by(exp.Min(this=_c("rnk")), _c("concept_id")).limit(_n(limit))
        query = (exp.select(*[_c(f, "c") for f in _CONCEPT_FIELDS], _c("rnk", "m"),
                            exp.alias_(_n(0), "record_count"))
                 .from_(top.subquery("m"))
                 .join(cdm.table("concept", alias="c"),
                       on=exp.EQ(this=_c("concept_id", "c"), expression=_c("concept_id", "m")))
                 .order_by(_c("rnk", "m"), _c("concept_id", "c")))
        return query, params
    conds = filters("c")

    counts = (_record_counts_query(cdm, exp.select(_c("concept_id")).from_(matched.subquery("m_ids")))
              if counts else None)
    n_expr: exp.Expression = (exp.func("COALESCE", _c("n", "rc"), _n(0)) if counts is not None else _n(0))
    query = (
        exp.select(*[_c(f, "c") for f in _CONCEPT_FIELDS], _c("rnk", "m"), exp.alias_(n_expr, "record_count"))
        .from_(matched.subquery("m"))
        .join(cdm.table("concept", alias="c"),
              on=exp.EQ(this=_c("concept_id", "c"), expression=_c("concept_id", "m")))
    )
    if counts is not None:
        query = query.join(exp.Join(this=counts.subquery("rc"), side="LEFT",
                                    on=exp.EQ(this=_c("concept_id", "rc"), expression=_c("concept_id", "m"))))
    if conds:
        query = query.where(exp.and_(*conds))
    query = query.order_by(
        _c("rnk", "m"), exp.Ordered(this=_c("record_count"), desc=True), _c("concept_id", "c")
    ).limit(_n(limit))
    return query, params


def search_concepts(cdm: Cdm, text: str, *, domain: str | None = None, vocabulary: str | None = None,
                    standard: bool = False, limit: int = 50, counts: bool = True,
                    index: SearchIndex | None = None) -> list[SearchHit]:
    """Concepts matching `text`, best first (see the module's docstring for the order); without
    `counts`, no local record counts (the hub's search: it shows released counts only); with `index`
    (prepare_search_index), the same answer from text lowered once."""
    rows: list[tuple] = []
    near_first = index is not None and not counts
    if near_first:
        # first the exact and prefix matches alone (a narrow run of the index sorted by text): when there
        # are `limit` of them they are the answer, and the scan of every text for a substring is not needed
        query, params = search_query(cdm, text, domain=domain, vocabulary=vocabulary, standard=standard,
                                     limit=limit, counts=False, index=index, near_only=True)
        rows = cdm.fetch_all(query, params)
    if not near_first or len(rows) < limit:
        query, params = search_query(cdm, text, domain=domain, vocabulary=vocabulary, standard=standard,
                                     limit=limit, counts=counts, index=index)
        rows = cdm.fetch_all(query, params)
    return [
        SearchHit(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5] or None, str(r[6]), r[7] or None,
                  MATCH_NAMES[int(r[8])], int(r[9] or 0))
        for r in rows
    ]


def _concept_rows(cdm: Cdm, query: exp.Select) -> list[dict[str, Any]]:
    return [dict(zip(_CONCEPT_FIELDS, r[:len(_CONCEPT_FIELDS)], strict=True)) | (
        {"min_levels": int(r[-2]), "max_levels": int(r[-1])} if len(r) > len(_CONCEPT_FIELDS) else {})
        for r in cdm.fetch_all(query)]


def _concept_select(alias: str = "c") -> list[exp.Expression]:
    return [_c(f, alias) for f in _CONCEPT_FIELDS]


def _relatives(cdm: Cdm, concept_id: int, *, up: bool, limit: int | None = None) -> exp.Select:
    """Ancestors (up) or descendants of a concept via CONCEPT_ANCESTOR, itself excluded, nearest first
    (the first `limit` only, cut before CONCEPT is joined: a root of a full vocabulary has a million)."""
    mine, theirs = ("descendant_concept_id", "ancestor_concept_id") if up else (
        "ancestor_concept_id", "descendant_concept_id")
    levels = ("min_levels_of_separation", "max_levels_of_separation")
    rows = (exp.select(_c(theirs), *[_c(f) for f in levels]).from_(cdm.table("concept_ancestor"))
            .where(exp.and_(exp.EQ(this=_c(mine), expression=_n(concept_id)),
                            exp.NEQ(this=_c(theirs), expression=_n(concept_id)))))
    if limit is not None:
        rows = rows.order_by(_c(levels[0]), _c(theirs)).limit(_n(limit))
    # A LEFT JOIN: a trimmed vocabulary (Eunomia's) keeps ancestry rows whose concept it dropped;
    # they are shown by id, with no name, rather than hidden.
    return (
        exp.select(exp.alias_(_c(theirs, "ca"), "concept_id"), *_concept_select()[1:],
                   *[_c(f, "ca") for f in levels])
        .from_(rows.subquery("ca"))
        .join(exp.Join(this=cdm.table("concept", alias="c"), side="LEFT",
                       on=exp.EQ(this=_c("concept_id", "c"), expression=_c(theirs, "ca"))))
        .order_by(_c(levels[0], "ca"), _c(theirs, "ca"))
    )


def _mapping(cdm: Cdm, concept_id: int, *, forward: bool) -> exp.Select:
    """'Maps to' targets of a concept (forward) or the concepts mapped to it, valid rows only, not itself."""
    mine, theirs = ("concept_id_1", "concept_id_2") if forward else ("concept_id_2", "concept_id_1")
    return (
        exp.select(*_concept_select())
        .from_(cdm.table("concept_relationship", alias="cr"))
        .join(cdm.table("concept", alias="c"), on=exp.EQ(this=_c("concept_id", "c"), expression=_c(theirs, "cr")))
        .where(exp.and_(
            exp.EQ(this=_c(mine, "cr"), expression=_n(concept_id)),
            exp.EQ(this=_c("relationship_id", "cr"), expression=exp.Literal.string("Maps to")),
            exp.Is(this=_c("invalid_reason", "cr"), expression=exp.Null()),
            exp.NEQ(this=_c(theirs, "cr"), expression=_n(concept_id))))
        .order_by(_c("concept_id", "c"))
    )


def record_counts(cdm: Cdm, concept_id: int) -> list[dict[str, Any]]:
    """Per clinical table of this CDM: records with the concept as their concept, and as their source
    concept. Exact counts of the local CDM: not for release."""
    out = []
    for table, col, source in domain_tables(cdm):
        cols = [exp.alias_(exp.Sum(this=exp.Case(ifs=[exp.If(this=exp.EQ(this=_c(col), expression=_n(concept_id)),
                                                             true=_n(1))], default=_n(0))), "as_concept")]
        where = exp.EQ(this=_c(col), expression=_n(concept_id))
        if source:
            cols.append(exp.alias_(exp.Sum(this=exp.Case(ifs=[exp.If(
                this=exp.EQ(this=_c(source), expression=_n(concept_id)), true=_n(1))], default=_n(0))), "as_source"))
            where = exp.or_(where, exp.EQ(this=_c(source), expression=_n(concept_id)))
        row = cdm.fetch_all(exp.select(*cols).from_(cdm.table(table)).where(where))[0]
        as_concept = int(row[0] or 0)
        as_source = int(row[1] or 0) if source else 0
        if as_concept or as_source:
            out.append({"table": table, "as_concept": as_concept, "as_source": as_source})
    return out


def concept_details(cdm: Cdm, concept_id: int, *, max_descendants: int = 100, counts: bool = True) -> ConceptDetails:
    """One concept: its fields, synonyms, mappings, ancestors, descendants and (unless not `counts`) local
    record counts."""
    cid = int(concept_id)
    rows = _concept_rows(cdm, exp.select(*_concept_select()).from_(cdm.table("concept", alias="c"))
                         .where(exp.EQ(this=_c("concept_id", "c"), expression=_n(cid))))
    if not rows:
        raise VocabularyError(f"concept id: {cid} is not in this CDM's CONCEPT table; "
                              "find ids with `mercia concept search TEXT --cdm ...`")
    synonyms: list[str] = []
    if "concept_synonym_name" in (cdm.columns("concept_synonym") or []):
        synonyms = sorted({str(r[0]) for r in cdm.fetch_all(
            exp.select(_c("concept_synonym_name")).from_(cdm.table("concept_synonym"))
            .where(exp.EQ(this=_c("concept_id"), expression=_n(cid))))} - {rows[0]["concept_name"]})
    # The first `max_descendants` in SQL (LIMIT) and the total by COUNT: a concept high in a full
    # vocabulary's hierarchy has hundreds of thousands of descendants, none of which need leave the database.
    descendants = _concept_rows(cdm, _relatives(cdm, cid, up=False, limit=max(0, int(max_descendants))))
    total = int(cdm.scalar(exp.select(exp.Count(this=exp.Star())).from_(cdm.table("concept_ancestor")).where(
        exp.and_(exp.EQ(this=_c("ancestor_concept_id"), expression=_n(cid)),
                 exp.NEQ(this=_c("descendant_concept_id"), expression=_n(cid))))) or 0)
    return ConceptDetails(
        concept=rows[0],
        synonyms=synonyms,
        maps_to=_concept_rows(cdm, _mapping(cdm, cid, forward=True)),
        mapped_from=_concept_rows(cdm, _mapping(cdm, cid, forward=False)),
        ancestors=_concept_rows(cdm, _relatives(cdm, cid, up=True)),
        descendants=descendants,
        descendants_total=total,
        record_counts=record_counts(cdm, cid) if counts else [],
    )


def _concept_record_rows(cdm: Cdm, concept_id: int, *, descendants: bool) -> exp.Query | None:
    """``person_id`` of every row of a clinical table whose concept is `concept_id` (or, with
    `descendants`, it or any descendant), one row per record (UNION ALL); None if no table has one."""
    cid = int(concept_id)
    if descendants:
        ids: exp.Query = (exp.select(_c("descendant_concept_id")).from_(cdm.table("concept_ancestor"))
                          .where(exp.EQ(this=_c("ancestor_concept_id"), expression=_n(cid))))
        ids = exp.union(ids, exp.select(exp.alias_(_n(cid), "descendant_concept_id")), distinct=True)
    parts: list[exp.Query] = []
    for table, col, _ in domain_tables(cdm):
        if "person_id" not in (cdm.columns(table) or []):
            continue
        cond = (exp.In(this=_c(col), query=exp.Subquery(this=ids.copy())) if descendants
                else exp.EQ(this=_c(col), expression=_n(cid)))
        parts.append(exp.select(_c("person_id")).from_(cdm.table(table)).where(cond))
    if not parts:
        return None
    union = parts[0]
    for q in parts[1:]:
        union = exp.union(union, q, distinct=False)
    return union


def concept_persons_query(cdm: Cdm, concept_id: int, *, descendants: bool) -> exp.Select:
    """``SELECT COUNT(DISTINCT person_id)``: persons with a record of the concept (or, with
    `descendants`, of it or any descendant) as the concept of a row in any clinical table."""
    union = _concept_record_rows(cdm, concept_id, descendants=descendants)
    if union is None:
        return exp.select(exp.alias_(_n(0), "persons"))
    return exp.select(exp.alias_(exp.Count(this=exp.Distinct(expressions=[_c("person_id")])), "persons")
                      ).from_(union.subquery("cp"))


def concept_records_query(cdm: Cdm, concept_id: int, *, descendants: bool, cap: int) -> exp.Select:
    """``SELECT SUM(LEAST(records of the person, cap))``: the records of the concept (or, with
    `descendants`, of it or any descendant) in the clinical tables, at most `cap` counted per person."""
    union = _concept_record_rows(cdm, concept_id, descendants=descendants)
    if union is None:
        return exp.select(exp.alias_(_n(0), "records"))
    per_person = (exp.select(_c("person_id"), exp.alias_(exp.Count(this=exp.Star()), "n"))
                  .from_(union.subquery("cr")).group_by(_c("person_id")))
    clipped = exp.Case(ifs=[exp.If(this=exp.GT(this=_c("n"), expression=_n(int(cap))), true=_n(int(cap)))],
                       default=_c("n"))
    return exp.select(exp.alias_(exp.func("COALESCE", exp.Sum(this=clipped), _n(0)), "records")
                      ).from_(per_person.subquery("pp"))


def concept_persons(cdm: Cdm, concept_id: int, *, descendants: bool) -> int:
    """The exact number of persons with the concept (see concept_persons_query). Not for release."""
    return int(cdm.scalar(concept_persons_query(cdm, concept_id, descendants=descendants)) or 0)


def concept_records(cdm: Cdm, concept_id: int, *, descendants: bool, cap: int) -> int:
    """The exact records of the concept, at most `cap` per person (see concept_records_query). Not for
    release."""
    return int(cdm.scalar(concept_records_query(cdm, concept_id, descendants=descendants, cap=cap)) or 0)


@dataclass(frozen=True)
class PhraseHit:
    """A concept whose name or a synonym is `phrase` (match "exact") or begins with it ("prefix")."""

    phrase: str
    concept_id: int
    concept_name: str
    domain_id: str
    concept_class_id: str
    standard_concept: str | None
    match: str  # "exact" or "prefix"
    matched_text: str  # the name or synonym that matched


def match_phrases(cdm: Cdm, phrases: list[str], *, standard: bool = True, per_phrase: int = 50) -> list[PhraseHit]:
    """Concepts whose name or a synonym equals one of `phrases` or begins with it followed by a word
    boundary (case-insensitive): one query for many phrases (for text mining of criteria, where every
    word run of an item is a phrase), at most `per_phrase` hits each (the shortest names first, so an
    exact match comes before longer ones). Names are first joined to the phrases on their first three
    characters (an equality, so a hash join, not a scan per phrase of a full Athena vocabulary), then
    tested. Phrases are bound parameters; standard concepts only by default."""
    phrases = sorted({p.strip().lower() for p in phrases if len(p.strip()) >= 3})
    if not phrases:
        return []
    params = {f"p{i}": p for i, p in enumerate(phrases)}
    wanted = exp.Values(expressions=[exp.Tuple(expressions=[_p(k)]) for k in params],
                        alias=exp.TableAlias(this=exp.to_identifier("ph"), columns=[exp.to_identifier("phrase")]))

    def names(table: str, col: str) -> exp.Select:
        low = exp.Lower(this=_c(col))
        return exp.select(_c("concept_id"), exp.alias_(low, "t"),
                          exp.alias_(exp.Substring(this=low.copy(), start=_n(1), length=_n(3)), "t3")
                          ).from_(cdm.table(table))

    union: exp.Query = names("concept", "concept_name")
    if "concept_synonym_name" in (cdm.columns("concept_synonym") or []):
        union = exp.union(union, names("concept_synonym", "concept_synonym_name"), distinct=False)
    cond: exp.Expression = exp.and_(
        exp.EQ(this=_c("t3", "n"), expression=exp.Substring(this=_c("phrase", "ph"), start=_n(1), length=_n(3))),
        exp.EQ(this=exp.StrPosition(this=_c("t", "n"), substr=_c("phrase", "ph")), expression=_n(1)))
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_c("phrase", "ph")],
                      order=exp.Order(expressions=[exp.Ordered(this=exp.Length(this=_c("t", "n"))),
                                                   exp.Ordered(this=_c("concept_id", "c"))]))
    inner = (
        exp.select(_c("phrase", "ph"), _c("concept_id", "c"), _c("concept_name", "c"), _c("domain_id", "c"),
                   _c("concept_class_id", "c"), _c("standard_concept", "c"), _c("t", "n"), exp.alias_(rank, "rn"))
        .from_(union.subquery("n"))
        .join(exp.Join(this=wanted, on=cond))
        .join(cdm.table("concept", alias="c"), on=exp.EQ(this=_c("concept_id", "c"), expression=_c("concept_id", "n")))
    )
    if standard:
        inner = inner.where(exp.EQ(this=_c("standard_concept", "c"), expression=exp.Literal.string("S")))
    query = (exp.select(*[_c(f) for f in ("phrase", "concept_id", "concept_name", "domain_id", "concept_class_id",
                                          "standard_concept", "t")])
             .from_(inner.subquery("h")).where(exp.LTE(this=_c("rn"), expression=_n(per_phrase)))
             .order_by(_c("phrase"), exp.Length(this=_c("t")), _c("concept_id")))
    out: list[PhraseHit] = []
    for r in cdm.fetch_all(query, params):
        phrase, text = str(r[0]), str(r[6])
        rest = text[len(phrase):]
        if rest and rest[0].isalnum():
            continue  # "heart" is not a prefix of "heartburn"
        out.append(PhraseHit(phrase, int(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5] or None,
                             "exact" if not rest else "prefix", text))
    return out
