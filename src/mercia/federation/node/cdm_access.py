"""The node's handles on its CDM: one writable handle for the study worker, and readers for the
questions answered while a study runs (feasibility counts, regression rounds).

DuckDB lets one process hold a database file writable, and no other process may open it then, not
even read-only. So the node opens the file once and gives each reader its own connection to the same
database (`cursor()`): DuckDB runs them concurrently (MVCC), and counts answer while a study writes.
On PostgreSQL each reader is simply a new connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mercia.cdm import Cdm
from mercia.cdm.engines import DuckDBEngine
from mercia.federation.node.config import NodeConfig


class _DuckDBCursorEngine(DuckDBEngine):
    """A DuckDB engine on a second connection to an already open database."""

    def __init__(self, con: Any) -> None:  # deliberately not DuckDBEngine's: no new connect
        self.path = None
        self.con = con
        self.con.execute("SET enable_progress_bar = false")
        self._n = 0


class CdmAccess:
    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        self._main: Cdm | None = None
        self._lock = threading.Lock()

    def _schemas(self) -> dict[str, str | None]:
        c = self._config
        return {"cdm_schema": c.cdm_schema, "vocab_schema": c.vocab_schema, "results_schema": c.results_schema}

    def writer(self) -> Cdm:
        """The writable handle (the worker's; studies write their cohorts)."""
        with self._lock:
            if self._main is None:
                self._main = Cdm.open(self._config.cdm, create=False, **self._schemas())
            return self._main

    @property
    def is_duckdb(self) -> bool:
        return "://" not in self._config.cdm

    @contextmanager
    def reader(self) -> Iterator[Cdm]:
        if not self.is_duckdb:
            cdm = Cdm.open(self._config.cdm, create=False, **self._schemas())
            try:
                yield cdm
            finally:
                cdm.close()
            return
        main = self.writer()
        engine = _DuckDBCursorEngine(main.engine.con.cursor())  # type: ignore[attr-defined]
        cdm = Cdm(engine, cdm_schema=main.cdm_schema, vocab_schema=main.vocab_schema,
                  results_schema=main.results_schema, version=main.version, target=main.target)
        try:
            yield cdm
        finally:
            engine.close()

    def close(self) -> None:
        with self._lock:
            if self._main is not None:
                self._main.close()
                self._main = None
