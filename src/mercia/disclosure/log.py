"""The disclosure log: one machine-readable entry per decision `release()` takes.

An entry names the table, the cell (its key and column), the rule and the outcome, with a reason in
words. It never holds the value that was protected: the log is read by people who must not learn it.
The reasons do say whether a suppression was primary (small) or secondary (complementary), which tells
a reader that a primary cell is small; `to_json(public=True)` merges the two for logs that travel.

Entries marked `private` are about rows that were not released at all (a level read from the data
whose count was suppressed, so the row was dropped): their key names that level and their number
counts such levels, so the public form leaves them out, summary included.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["released", "rounded", "suppressed", "blocked", "coarsened", "recomputed", "dropped"]


class LogEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    table: str
    key: dict[str, str] = Field(default_factory=dict, description="the cell's row key (category labels)")
    column: str | None = None
    rule: str
    outcome: Outcome
    reason: str
    private: bool = Field(
        default=False, description="about a row that was not released: left out of the public log"
    )


class DisclosureLog(BaseModel):
    """Every decision of every `release()` call that was given this log, in order."""

    entries: list[LogEntry] = Field(default_factory=list)

    def record(
        self,
        table: str,
        *,
        rule: str,
        outcome: Outcome,
        reason: str,
        key: dict[str, object] | None = None,
        column: str | None = None,
    ) -> None:
        self.entries.append(
            LogEntry(
                table=table,
                key={str(k): str(v) for k, v in (key or {}).items()},
                column=column,
                rule=rule,
                outcome=outcome,
                reason=reason,
            )
        )

    def for_table(self, table: str) -> list[LogEntry]:
        return [e for e in self.entries if e.table == table]

    def summary(self, *, public: bool = False) -> dict[str, dict[str, int]]:
        """Counts of outcomes per table, for a checker's first glance (without private entries when
        `public`)."""
        out: dict[str, Counter[str]] = {}
        for e in self.entries:
            if public and e.private:
                continue
            out.setdefault(e.table, Counter())[e.outcome] += 1
        return {t: dict(c) for t, c in out.items()}

    def to_json(self, *, public: bool = False, indent: int | None = 2) -> str:
        """The log as JSON. With `public`, rule and reason of suppressions no longer tell primary
        (small cell) from secondary (complement) suppression."""
        entries = []
        for e in self.entries:
            if public and e.private:
                continue
            d = e.model_dump(exclude={"private"} if public else None)
            if public and e.outcome == "suppressed":
                d["rule"] = "suppression"
                d["reason"] = "suppressed by disclosure control"
            entries.append(d)
        return json.dumps({"summary": self.summary(public=public), "entries": entries}, indent=indent)
