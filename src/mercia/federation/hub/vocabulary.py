"""The hub's vocabulary: concept search and one concept's details, for the API and the portal.

The hub holds no patients; hub.yaml's `portal: vocabulary:` names a vocabulary (a DuckDB file or a
postgresql:// URL with CONCEPT, CONCEPT_ANCESTOR, CONCEPT_RELATIONSHIP, CONCEPT_SYNONYM) that it opens
read-only on first use. Search and details are `mercia.vocab.search`'s, without record counts: even if
the file also held clinical tables, no count of them is read or shown here. The only counts the hub
shows are the sites' released ones (`HubServices.concept_counts`).

One connection serves every request, one at a time (a DuckDB connection is not for concurrent use).
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Any

from mercia.errors import ConfigError, MerciaError


class NoVocabulary(MerciaError):
    status_code = 404


class HubVocabulary:
    def __init__(self, target: str | None, schema: str | None = None) -> None:
        self.target = target
        self.schema = schema
        self._lock = threading.Lock()
        self._cdm: Any = None
        self._facets: dict[str, list[str]] | None = None
        self._index: Any = None

    @property
    def configured(self) -> bool:
        return self.target is not None

    def _handle(self) -> Any:
        if self.target is None:
            raise NoVocabulary("this hub has no vocabulary to search: set portal: vocabulary: in hub.yaml to a "
                               "DuckDB file or postgresql:// URL holding the OMOP vocabulary tables")
        if self._cdm is None:
            from mercia.cdm import Cdm
            from mercia.cdm.check import require_cdm

            try:
                cdm = Cdm.open(self.target, cdm_schema=self.schema, vocab_schema=self.schema, create=False,
                               read_only=True)
            except MerciaError as e:
                raise ConfigError(f"hub.yaml portal: vocabulary: {e}") from None
            try:
                require_cdm(cdm, clinical=False, vocabulary=True)
            except BaseException:
                cdm.close()
                raise
            from mercia.vocab.search import prepare_search_index

            self._index = prepare_search_index(cdm)  # names, synonyms and codes lowered once
            self._cdm = cdm
        return self._cdm

    def search(self, text: str, *, domain: str | None = None, vocabulary: str | None = None,
               standard: bool = False, limit: int = 50) -> list[dict[str, Any]]:
        """Concepts matching `text`, best match first (`mercia.vocab.search.search_concepts`, no counts)."""
        from mercia.vocab.search import search_concepts

        with self._lock:
            hits = search_concepts(self._handle(), text, domain=domain or None, vocabulary=vocabulary or None,
                                   standard=standard, limit=limit, counts=False, index=self._index)
        out = []
        for h in hits:
            d = asdict(h)
            d.pop("record_count")
            out.append(d)
        return out

    def details(self, concept_id: int, *, max_descendants: int = 100) -> dict[str, Any]:
        """One concept: fields, synonyms, maps to and from, ancestors, descendants (no counts)."""
        from mercia.vocab.search import concept_details

        with self._lock:
            d = asdict(concept_details(self._handle(), concept_id, max_descendants=max_descendants, counts=False))
        d.pop("record_counts")
        return d

    def concepts(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """The CONCEPT rows of `ids` (those in the vocabulary), by id."""
        from sqlglot import exp

        from mercia.vocab.search import _CONCEPT_FIELDS

        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        with self._lock:
            cdm = self._handle()
            q = exp.select(*[exp.column(f) for f in _CONCEPT_FIELDS]).from_(cdm.table("concept")).where(
                exp.column("concept_id").isin(*[exp.Literal.number(i) for i in wanted]))
            return {int(r[0]): dict(zip(_CONCEPT_FIELDS, r, strict=True)) for r in cdm.fetch_all(q)}

    def resolve(self, items: list[dict[str, Any]], *, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
        """The concepts a concept set expression resolves to, as OHDSI Circe resolves it
        (`mercia.vocab.concept_sets`): (the first `limit` CONCEPT rows by id, how many in all)."""
        from sqlglot import exp

        from mercia.vocab.concept_sets import ConceptSet, ConceptSetItem, concept_set_query
        from mercia.vocab.search import _CONCEPT_FIELDS

        expression = ConceptSet(id=0, items=[ConceptSetItem(**i) for i in items])
        with self._lock:
            cdm = self._handle()
            ids = concept_set_query(cdm, expression).subquery("r")
            base = exp.select().from_(ids).join(cdm.table("concept", alias="c"), on=exp.EQ(
                this=exp.column("concept_id", "r"), expression=exp.column("concept_id", "c")), join_type="left")
            total = int(cdm.fetch_all(base.select(exp.Count(this=exp.Star())))[0][0])
            q = base.select(exp.column("concept_id", "r"), *[exp.column(f, "c") for f in _CONCEPT_FIELDS[1:]]
                            ).order_by(exp.column("concept_id", "r")).limit(limit)
            rows = [dict(zip(_CONCEPT_FIELDS, r, strict=True)) for r in cdm.fetch_all(q)]
        return rows, total

    def facets(self) -> dict[str, list[str]]:
        """The domains and vocabularies in the vocabulary (for the search form's choices)."""
        from sqlglot import exp

        if self._facets is not None:
            return self._facets
        with self._lock:
            cdm = self._handle()
            out = {}
            for col in ("domain_id", "vocabulary_id"):
                q = exp.select(exp.column(col)).distinct().from_(cdm.table("concept")).order_by(exp.column(col))
                out[col] = [str(r[0]) for r in cdm.fetch_all(q) if r[0] is not None]
        self._facets = out
        return out

    def close(self) -> None:
        with self._lock:
            if self._cdm is not None:
                self._cdm.close()
                self._cdm = None
                self._index = None
