"""What every analysis returns: named, un-released result tables plus a flag for empty input."""

from __future__ import annotations

from dataclasses import dataclass, field

from mercia.analyses.notes import Notes
from mercia.disclosure import BUILTIN_POLICIES, DisclosureLog, DisclosurePolicy, ReleasedTable, ResultTable
from mercia.disclosure import release as release_table
from mercia.errors import DisclosureError


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

    def release(
        self, policy: DisclosurePolicy | str, *, site: str | None = None, log: DisclosureLog | None = None
    ) -> dict[str, ReleasedTable]:
        """Every table passed through `mercia.disclosure.release()` under `policy` (a policy, or the
        name of a built-in one: 'opensafely', 'sacro'): what may leave the site, by table name.

        Each decision (rounded, suppressed, withheld) is recorded in `log` when one is given. A
        released table's `.data` is a pandas DataFrame and `.to_arrow()` a pyarrow Table.
        """
        if isinstance(policy, str):
            if policy.lower() not in BUILTIN_POLICIES:
                raise DisclosureError(
                    f"unknown disclosure policy {policy!r}; use one of {', '.join(sorted(BUILTIN_POLICIES))} "
                    "or a DisclosurePolicy"
                )
            policy = BUILTIN_POLICIES[policy.lower()]
        log = log if log is not None else DisclosureLog()
        return {name: release_table(t, policy, site=site, log=log) for name, t in self.tables.items()}
