"""What every analysis returns: named, un-released result tables plus a flag for empty input."""

from __future__ import annotations

from dataclasses import dataclass, field

from mercia.analyses.notes import Notes
from mercia.disclosure import ResultTable


@dataclass
class AnalysisResult:
    """Result tables of one analysis run at one site, still inside the site.

    Every table must pass `mercia.disclosure.release()` before it leaves. `empty` says the input
    cohort(s) had nobody to analyse; the tables then have zero rows (never a crash), and `notes` says
    why, as catalogued codes only (`mercia.analyses.notes`): no free text, so no exact number, leaves.
    """

    analysis: str
    tables: dict[str, ResultTable]
    empty: bool = False
    notes: Notes = field(default_factory=Notes)

    def __post_init__(self) -> None:
        self.notes = Notes(self.notes)  # checks every item is a catalogued Note

    def __getitem__(self, name: str) -> ResultTable:
        return self.tables[name]
