"""The node's handles on its CDM: one writable handle for the study worker, and readers for the
questions answered while a study runs (feasibility counts, regression rounds).

The CDM is opened once, through the engine layer (`Cdm.open`), and each reader is a handle on a second
connection to the same database (`Cdm.another_connection`): on DuckDB, which lets one process hold a
file writable and no other process open it, a cursor of the open database, run concurrently (MVCC) so
counts answer while a study writes; on PostgreSQL a new connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from mercia.cdm import Cdm
from mercia.federation.node.config import NodeConfig


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

    @contextmanager
    def reader(self) -> Iterator[Cdm]:
        cdm = self.writer().another_connection()
        try:
            yield cdm
        finally:
            cdm.close()

    def close(self) -> None:
        with self._lock:
            if self._main is not None:
                self._main.close()
                self._main = None
