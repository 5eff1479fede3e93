"""A node's privacy budget for feasibility counts: who has spent how much epsilon, and what was released.

Every distinct question (a cohort definition's canonical form, under the site's policy) is answered
once with differentially private noise (node/feasibility.py) and the answer is kept here for good, so a
repeat, by anyone, gets the very same numbers and costs nothing: there is nothing new to average or
difference, even after the CDM changed under it. Each researcher pays `epsilon_per_query` for each
distinct question they ask, from `budget` at this site; a question beyond it is refused (429) naming
the budget. Optionally the site caps the epsilon of all its distinct releases (`site_budget`), which
bounds what researchers learn together.

The ledger is SQLite in the node's state folder, beside the study queue: a restart does not reset it.
The noise key is a random secret in the same folder (mode 0600); whoever reads it can remove the noise.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field

from mercia.disclosure.noise import attribute_accuracy_bound
from mercia.errors import MerciaError
from mercia.federation.config_file import StrictModel
from mercia.federation.sqlite_store import SqliteStore, timestamp

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    epsilon REAL NOT NULL,
    answer TEXT NOT NULL,
    released_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    epsilon REAL NOT NULL,
    charged_at TEXT NOT NULL,
    PRIMARY KEY (principal, key)
);
"""
_SLACK = 1e-9  # float sums of tenths must not refuse the last query that exactly fits


class FeasibilityPrivacy(StrictModel):
    """node.yaml `feasibility_privacy:`. The defaults give an attacker at most e/(1+e) = 0.73 accuracy on
    one binary attribute of one person from all of one researcher's counts at this site."""

    epsilon_per_query: float = Field(0.1, gt=0, le=10, description="epsilon each distinct definition costs")
    budget: float = Field(1.0, gt=0, le=100, description="epsilon each researcher may spend at this site")
    site_budget: float | None = Field(
        None, gt=0, description="epsilon of all distinct releases at this site together (None: no cap)")
    entries_cap: int = Field(3, ge=1, le=1000, description="entries counted per person in the released entries")
    concept_records_cap: int = Field(
        10, ge=1, le=1000, description="records counted per person in a concept's released record count (a "
        "person's records beyond it are not counted: the noise is scaled to it)")
    epoch: int = Field(0, ge=0, description="raise after refreshing the CDM: new answers (at a new cost)")

    @property
    def queries_per_researcher(self) -> int:
        return int(self.budget / self.epsilon_per_query + _SLACK)

    @property
    def accuracy_bound(self) -> float:
        return attribute_accuracy_bound(self.budget)


class BudgetExhaustedError(MerciaError):
    """The privacy budget does not cover one more distinct count (429; waiting does not help)."""

    status_code = 429


class PrivacyLedger(SqliteStore):
    def __init__(self, state_dir: str | Path) -> None:
        super().__init__(Path(state_dir) / "privacy_budget.sqlite", _SCHEMA)
        self._key_path = Path(state_dir) / "feasibility_noise.key"

    def noise_key(self) -> bytes:
        """The secret the noise is derived from; made on first use, never over an existing one."""
        try:
            return bytes.fromhex(self._key_path.read_text().strip())
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self._key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another thread or process made it first: use theirs
            return bytes.fromhex(self._key_path.read_text().strip())
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        return bytes.fromhex(self._key_path.read_text().strip())

    def spent(self, principal: str) -> float:
        row = self._con().execute("SELECT COALESCE(SUM(epsilon), 0) FROM charges WHERE principal = ?",
                                  (principal,)).fetchone()
        return float(row[0])

    def charge(self, principal: str, key: str, settings: FeasibilityPrivacy) -> bool:
        """Charge `principal` for question `key` (False: already paid, no charge) or raise
        BudgetExhaustedError. Checked and recorded in one transaction: concurrent questions cannot
        together overspend."""
        return self.charge_all(principal, [key], settings)[0]

    def charge_all(self, principal: str, keys: list[str], settings: FeasibilityPrivacy) -> list[bool]:
        """Charge `principal` epsilon_per_query for each of the distinct questions `keys` not paid before
        (one bool per key: True where charged now), all or none: if the budget does not cover every new
        one, nothing is charged and BudgetExhaustedError is raised. One transaction."""
        eps = settings.epsilon_per_query
        with self._tx() as con:
            paid = [bool(con.execute("SELECT 1 FROM charges WHERE principal = ? AND key = ?",
                                     (principal, key)).fetchone()) for key in keys]
            new = [k for k, p in zip(keys, paid, strict=True) if not p]
            new = list(dict.fromkeys(new))
            if not new:
                return [False] * len(keys)
            cost = eps * len(new)
            spent = float(con.execute("SELECT COALESCE(SUM(epsilon), 0) FROM charges WHERE principal = ?",
                                      (principal,)).fetchone()[0])
            if spent + cost > settings.budget + _SLACK:
                raise BudgetExhaustedError(
                    f"the privacy budget for feasibility counts is spent: {principal} has used epsilon "
                    f"{spent:g} of {settings.budget:g} at this site ({eps:g} per distinct definition"
                    + (f", {cost:g} for this question's {len(new)} new answers" if len(new) > 1 else "")
                    + "; definitions asked before are answered again at no cost). Ask the site's custodian for "
                    "more, or run an approved study")
            first_asked = [k for k in new
                           if not con.execute("SELECT 1 FROM charges WHERE key = ? LIMIT 1", (k,)).fetchone()]
            if settings.site_budget is not None and first_asked:
                site = float(con.execute("SELECT COALESCE(SUM(e), 0) FROM (SELECT MAX(epsilon) AS e FROM charges "
                                         "GROUP BY key)").fetchone()[0])
                if site + eps * len(first_asked) > settings.site_budget + _SLACK:
                    raise BudgetExhaustedError(
                        f"this site's privacy budget for feasibility counts is spent (epsilon {site:g} of "
                        f"{settings.site_budget:g} over all researchers); only definitions asked before are "
                        "answered now")
            for k in new:
                con.execute("INSERT INTO charges (principal, key, epsilon, charged_at) VALUES (?, ?, ?, ?)",
                            (principal, k, eps, timestamp()))
        charged_now = set(new)
        out = []
        for k in keys:  # a key listed twice is charged once, and said charged once
            out.append(k in charged_now)
            charged_now.discard(k)
        return out

    def refund(self, principal: str, key: str) -> None:
        """Undo a charge whose count failed (nothing was released)."""
        with self._tx() as con:
            con.execute("DELETE FROM charges WHERE principal = ? AND key = ?", (principal, key))

    def answer(self, key: str) -> dict[str, Any] | None:
        row = self._con().execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def keep(self, key: str, epsilon: float, answer: dict[str, Any]) -> dict[str, Any]:
        """Record the released answer to `key`, unless one is recorded already; give the recorded one."""
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO answers (key, epsilon, answer, released_at) VALUES (?, ?, ?, ?)",
                        (key, epsilon, json.dumps(answer), timestamp()))
            row = con.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0])
