"""What every analysis returns: named, un-released result tables plus a flag for empty input."""

from __future__ import annotations

from dataclasses import dataclass, field

from mercia.disclosure import ResultTable


@dataclass
class AnalysisResult:
    """Result tables of one analysis run at one site, still inside the site.

    Every table must pass `mercia.disclosure.release()` before it leaves. `empty` says the input
    cohort(s) had nobody to analyse; the tables then have zero rows (never a crash), and `notes` says
    why in words.
    """

    analysis: str
    tables: dict[str, ResultTable]
    empty: bool = False
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> ResultTable:
        return self.tables[name]
