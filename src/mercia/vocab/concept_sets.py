"""OHDSI concept set expressions, resolved in SQL with exactly the semantics of OHDSI Circe.

Circe (circe-be, ConceptSetExpressionQueryBuilder) resolves an expression like this, and so do we:

- The included items split into: all of them (``C``), those with descendants (``D``), those with
  mapped (``M``) and those with both (``MD``). The include query is the UNION of
    1. concepts whose id is in ``C`` - taken from CONCEPT whatever their invalid_reason;
    2. descendants (via CONCEPT_ANCESTOR, which includes each concept itself) of ``D`` whose
       CONCEPT row is valid (``invalid_reason IS NULL``);
    3. if ``M`` or ``MD`` is non-empty: the source concepts (``concept_id_1``) of valid 'Maps to'
       rows pointing at the result of steps 1-2 applied to ``M`` and ``MD``.
  With no included items the include query is empty.
- The excluded items build an exclude query the same way (their own descendant / mapped flags);
  the result is the include query minus the exclude query (a LEFT JOIN ... IS NULL anti-join).

Ids that are not in CONCEPT drop out of steps 1-2 (Circe selects from CONCEPT); mapped source ids
need not be in CONCEPT. The tree is dialect-neutral sqlglot; concept ids are embedded as integer
literals (validated ints, never text), so the query can be nested in any other tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field
from sqlglot import exp

from mercia.cdm import Cdm
from mercia.errors import VocabularyError


class ConceptSetItem(BaseModel):
    """One concept in a concept set expression, with Circe's three flags."""

    concept_id: int
    is_excluded: bool = False
    include_descendants: bool = False
    include_mapped: bool = False


class ConceptSet(BaseModel):
    """An OHDSI concept set expression: items combined as Circe combines them."""

    id: int
    name: str = ""
    items: list[ConceptSetItem] = Field(default_factory=list)

    @classmethod
    def from_atlas(cls, obj: dict[str, Any]) -> ConceptSet:
        """Build from an ATLAS / Circe JSON concept set (``{"id", "name", "expression": {"items": [...]}}``)."""
        try:
            raw_items = (obj.get("expression") or {}).get("items", [])
            items = [
                ConceptSetItem(
                    concept_id=int(it["concept"]["CONCEPT_ID"]),
                    is_excluded=bool(it.get("isExcluded", False)),
                    include_descendants=bool(it.get("includeDescendants", False)),
                    include_mapped=bool(it.get("includeMapped", False)),
                )
                for it in raw_items
            ]
            return cls(id=int(obj["id"]), name=str(obj.get("name", "")), items=items)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VocabularyError(
                f"concept set {obj.get('name', '?') if isinstance(obj, dict) else '?'!r} is not an ATLAS concept "
                f"set expression ({e!r}); each item needs concept.CONCEPT_ID"
            ) from e


def _ids(ids: Iterable[int]) -> list[exp.Expression]:
    return [exp.Literal.number(int(i)) for i in ids]


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table)


def _direct(cdm: Cdm, ids: Sequence[int]) -> exp.Select:
    # Circe: select concept_id from CONCEPT where concept_id in (...)  -- no validity filter here.
    return (
        exp.select(_col("concept_id"))
        .from_(cdm.table("concept"), copy=False)
        .where(exp.In(this=_col("concept_id"), expressions=_ids(ids)), copy=False)
    )


def _descendants(cdm: Cdm, ids: Sequence[int]) -> exp.Select:
    # Circe: descendants whose own CONCEPT row is valid.
    return (
        exp.select(_col("concept_id", "c"))
        .from_(cdm.table("concept", alias="c"), copy=False)
        .join(
            cdm.table("concept_ancestor", alias="ca"),
            on=exp.EQ(this=_col("concept_id", "c"), expression=_col("descendant_concept_id", "ca")),
            copy=False,
        )
        .where(
            exp.and_(
                exp.Is(this=_col("invalid_reason", "c"), expression=exp.Null()),
                exp.In(this=_col("ancestor_concept_id", "ca"), expressions=_ids(ids)),
                copy=False,
            ),
            copy=False,
        )
    )


def _union(queries: list[exp.Query]) -> exp.Query:
    out = queries[0]
    for q in queries[1:]:
        out = exp.union(out, q, distinct=True, copy=False)
    return out


def _sub_query(cdm: Cdm, concepts: Sequence[int], descendants: Sequence[int]) -> exp.Query:
    parts: list[exp.Query] = []
    if concepts:
        parts.append(_direct(cdm, concepts))
    if descendants:
        parts.append(_descendants(cdm, descendants))
    return _union(parts)


def _mapped(cdm: Cdm, concepts: Sequence[int], descendants: Sequence[int]) -> exp.Select:
    standard = _sub_query(cdm, concepts, descendants).subquery("c_std", copy=False)
    return (
        exp.select(exp.alias_(_col("concept_id_1", "cr"), "concept_id", copy=False))
        .distinct(copy=False)
        .from_(standard, copy=False)
        .join(
            cdm.table("concept_relationship", alias="cr"),
            on=exp.and_(
                exp.EQ(this=_col("concept_id", "c_std"), expression=_col("concept_id_2", "cr")),
                exp.EQ(this=_col("relationship_id", "cr"), expression=exp.Literal.string("Maps to")),
                exp.Is(this=_col("invalid_reason", "cr"), expression=exp.Null()),
                copy=False,
            ),
            copy=False,
        )
    )


def _part_query(
    cdm: Cdm,
    concepts: list[int],
    descendants: list[int],
    mapped: list[int],
    mapped_descendants: list[int],
) -> exp.Query:
    if not concepts:
        return exp.select(_col("concept_id")).from_(cdm.table("concept"), copy=False).where(exp.false(), copy=False)
    parts = [_sub_query(cdm, concepts, descendants)]
    if mapped or mapped_descendants:
        parts.append(_mapped(cdm, mapped, mapped_descendants))
    return _union(parts)


def _split(items: Iterable[ConceptSetItem]) -> tuple[list[int], list[int], list[int], list[int]]:
    concepts, descendants, mapped, mapped_desc = [], [], [], []
    for it in items:
        concepts.append(it.concept_id)
        if it.include_descendants:
            descendants.append(it.concept_id)
        if it.include_mapped:
            mapped.append(it.concept_id)
            if it.include_descendants:
                mapped_desc.append(it.concept_id)
    return concepts, descendants, mapped, mapped_desc


def concept_set_query(cdm: Cdm, concept_set: ConceptSet) -> exp.Select:
    """``SELECT DISTINCT concept_id FROM ...``: the concepts the expression resolves to, as Circe resolves them.

    The result column is named ``concept_id``. Embed it with ``.subquery(alias)``.
    """
    include = _part_query(cdm, *_split(it for it in concept_set.items if not it.is_excluded)).subquery(
        "i_set", copy=False
    )
    query = exp.select(_col("concept_id", "i_set")).distinct(copy=False).from_(include, copy=False)
    excluded = [it for it in concept_set.items if it.is_excluded]
    if excluded:
        exclude = _part_query(cdm, *_split(excluded)).subquery("e_set", copy=False)
        # A Join node built directly: join_type="left" would be parsed from text on every call.
        query = query.join(
            exp.Join(this=exclude, side="LEFT",
                     on=exp.EQ(this=_col("concept_id", "i_set"), expression=_col("concept_id", "e_set"))),
            copy=False,
        ).where(exp.Is(this=_col("concept_id", "e_set"), expression=exp.Null()), copy=False)
    return query


def resolve_concept_set(cdm: Cdm, concept_set: ConceptSet) -> list[int]:
    """The concept ids the expression resolves to on this CDM's vocabulary, ascending."""
    return sorted(int(r[0]) for r in cdm.fetch_all(concept_set_query(cdm, concept_set)))


def unknown_concept_ids(cdm: Cdm, ids: Iterable[int]) -> list[int]:
    """Those of `ids` that have no row in the CONCEPT table, in the order given, each once."""
    wanted = list(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        return []
    query = (
        exp.select(_col("concept_id"))
        .from_(cdm.table("concept"))
        .where(exp.In(this=_col("concept_id"), expressions=_ids(wanted)))
    )
    known = {int(r[0]) for r in cdm.fetch_all(query)}
    return [i for i in wanted if i not in known]


def codesets_query(cdm: Cdm, concept_sets: Sequence[ConceptSet]) -> exp.Query:
    """``(codeset_id, concept_id)`` rows for several concept sets, as Circe fills its #Codesets table.

    With no concept sets the query is empty (but still has both columns).
    """
    parts: list[exp.Query] = [
        exp.select(
            exp.alias_(exp.Literal.number(int(cs.id)), "codeset_id"), _col("concept_id", "cs_q")
        ).from_(concept_set_query(cdm, cs).subquery("cs_q"))
        for cs in concept_sets
    ]
    if not parts:
        return (
            exp.select(exp.alias_(exp.Literal.number(0), "codeset_id"), _col("concept_id"))
            .from_(cdm.table("concept"))
            .where(exp.false())
        )
    out = parts[0]
    for q in parts[1:]:
        out = exp.union(out, q, distinct=False)
    return out
