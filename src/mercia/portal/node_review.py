"""What the custodian's pages show about a package and the node's audit log (no HTTP here).

    package_yaml(canonical)            the package as readable YAML (cohorts in the cohort language)
    package_diff(old, new)             a unified diff of two packages' YAML, line by line with its kind
    what_it_runs(pkg)                  cohorts, analyses and their settings
    release_plan(pkg, shapes, ...)     per analysis: its tables' prefix and the columns its type's tables
                                       had when released at this node before; the policy its numbers pass
    released_shapes(tables, manifest)  from a finished study: analysis type -> [(table, columns)]
    audit_view(path, ...)              the log's verification (whole, or broken at entry N) and a page of it

Nothing here reads a CDM: a package's shapes come from earlier released tables (names and columns,
never their numbers), and the numbers the pages show are released tables as the API sends them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mercia.errors import MerciaError
from mercia.federation.audit import GENESIS_HASH, ChainCheck, check_lines

# Audit details a page does not show: a run's error text can quote values read from the rows
# (federation/node/worker.py keeps it for the node's own log); the page says where it is.
HIDDEN_DETAILS = frozenset({"error"})
AUDIT_PAGE = 100
STUDY_TABLES = ""  # released_shapes' key for the tables every study releases (not an analysis's)


# ---- the package ---------------------------------------------------------------------------------------
def _cohort_form(definition: dict[str, Any]) -> Any:
    """A cohort in the cohort language's YAML form, or in the model's form if it cannot be read."""
    from mercia.cohorts.model import CohortDefinition
    from mercia.cohorts.yaml_writer import definition_to_dict

    try:
        return definition_to_dict(CohortDefinition.model_validate(definition))
    except (MerciaError, ValueError, TypeError):
        return definition


def package_yaml(canonical: dict[str, Any]) -> str:
    """The package as a custodian reads it: name, description, disclosure, cohorts, analyses."""
    readable = {
        "name": canonical.get("name"),
        "description": canonical.get("description"),
        "disclosure": canonical.get("disclosure"),
        "cohorts": {k: {"id": c.get("id"), "definition": _cohort_form(c.get("definition") or {})}
                    for k, c in sorted((canonical.get("cohorts") or {}).items())},
        "analyses": canonical.get("analyses") or [],
    }
    return yaml.safe_dump(readable, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "same", "file"
    text: str


def package_diff(old_yaml: str, new_yaml: str, old_label: str, new_label: str) -> list[DiffLine]:
    """A unified diff (3 lines of context) of two packages' YAML; [] when they are the same."""
    out = []
    for line in difflib.unified_diff(old_yaml.splitlines(), new_yaml.splitlines(), old_label, new_label,
                                     lineterm="", n=3):
        if line.startswith(("---", "+++")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        out.append(DiffLine(kind, line))
    return out


def what_it_runs(pkg: Any) -> dict[str, Any]:
    """The cohorts (key, id, name) and each analysis (type, table prefix, cohorts, settings as YAML)."""
    cohorts = [{"key": k, "id": pkg.cohort_ids[k], "name": pkg.cohort_name(k)} for k in sorted(pkg.definitions)]
    analyses = []
    for a in pkg.analyses:
        data = a.model_dump(mode="json")
        settings = {k: v for k, v in data.items() if k not in ("type", "name")}
        analyses.append({
            "type": a.type_name(), "prefix": a.table_prefix(), "federated": bool(getattr(a, "federated", False)),
            "cohorts": [(c, pkg.cohort_name(c)) for c in a.cohorts_used() if c in pkg.definitions],
            "settings": yaml.safe_dump(settings, sort_keys=False, default_flow_style=False, width=100).strip()
            if settings else "",
        })
    return {"cohorts": cohorts, "analyses": analyses}


def released_shapes(tables: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, list[tuple[str, list[str]]]]:
    """Analysis type -> the names and columns of the tables it released (no numbers)."""
    columns = {t.get("name"): [str(c) for c in t.get("columns") or []] for t in tables}
    out: dict[str, list[tuple[str, list[str]]]] = {}
    of_analyses: set[str] = set()
    for a in manifest.get("analyses") or []:
        kind = a.get("type")
        of_analyses.update(a.get("tables") or [])
        if not kind or kind in out:
            continue
        out[kind] = [(name, columns[name]) for name in a.get("tables") or [] if name in columns]
    # the study's own tables (cohort counts, each cohort's attrition), under STUDY_TABLES
    out[STUDY_TABLES] = [(name, cols) for name, cols in columns.items() if name not in of_analyses]
    return out


def release_plan(pkg: Any, shapes: dict[str, tuple[str, list[tuple[str, list[str]]]]], site_policy: Any,
                 federated_rounds: bool) -> dict[str, Any]:
    """What the package can release: the policy its numbers pass (or why the site refuses it) and, per
    analysis, its tables' prefix and the shape of its type's tables when this node released them before
    (`shapes`: type -> (the study they came from, [(table, columns)]))."""
    try:
        policy, refused = pkg.effective_policy(site_policy).model_dump(mode="json"), None
    except MerciaError as e:
        policy, refused = None, str(e)
    per_analysis = []
    for a in pkg.analyses:
        kind = a.type_name()
        seen = shapes.get(kind)
        per_analysis.append({"prefix": a.table_prefix(), "type": kind,
                             "rounds": federated_rounds and bool(getattr(a, "federated", False)),
                             "seen_in": seen[0] if seen else None, "tables": seen[1] if seen else []})
    study = shapes.get(STUDY_TABLES)
    return {"policy": policy, "refused": refused, "analyses": per_analysis,
            "study_tables": study[1] if study else [], "study_seen_in": study[0] if study else None,
            "requested": pkg.canonical().get("disclosure")}


# ---- the audit log -----------------------------------------------------------------------------------------
class AuditChecker:
    """The node log's hash chain (mercia.federation.audit.check_lines, what `verify_log` runs), checked
    in full the first time and afterwards only past the part already checked, provided that part's bytes
    are unchanged: their sha256 is taken again on every check, so an edit anywhere means a full check
    again. One per portal: the log grows by a line per request, and a full check of a long log takes
    seconds."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._offset = 0
        self._digest = hashlib.sha256().hexdigest()
        self._state = ChainCheck()

    def check(self) -> tuple[ChainCheck, bytes, list[str]]:
        """(the chain's state after every complete line, those lines' bytes, problems of the tail)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ChainCheck(), b"", []
        end = data.rfind(b"\n") + 1  # complete lines only
        with self._lock:
            h = hashlib.sha256(data[:self._offset]) if end >= self._offset else None
            if h is not None and h.hexdigest() == self._digest:
                state = dataclasses.replace(self._state, problems=list(self._state.problems))
                check_lines(data[self._offset:end], state)
                h.update(data[self._offset:end])
            else:
                state = ChainCheck()
                check_lines(data[:end], state)
                h = hashlib.sha256(data[:end])
            self._offset, self._digest = end, h.hexdigest()
            self._state = dataclasses.replace(state, problems=list(state.problems))
        tail = ["the last line is incomplete (a cut-off write, an edit, or a write going on now)"] if end < len(data) else []
        return state, data[:end], tail


@dataclass
class AuditView:
    ok: bool
    records: int
    head: dict[str, Any]
    broken_at: int | None  # the first entry (line) a problem names
    problems: list[str]
    entries: list[dict[str, Any]] = field(default_factory=list)
    older: int | None = None  # `before=` for the next page of older entries


_LINE = re.compile(r"^line (\d+)")
_REQUEST = b'"event":"request"'  # as canonical_json writes it (sorted keys, no spaces)


def audit_view(path: Path, *, before: int | None = None, include_requests: bool = False,
               page: int = AUDIT_PAGE, checker: AuditChecker | None = None) -> AuditView:
    """The log verified (every record's hash and link, as `mercia audit verify`), and the `page` newest
    entries before entry `before` (newest first; read from the end); HTTP request lines only with
    `include_requests`."""
    state, data, tail = (checker or AuditChecker(path)).check()
    problems = tail + state.problems
    lines = [int(m.group(1)) for p in problems if (m := _LINE.match(p))]
    head = {"seq": state.count, "hash": state.prev_hash} if state.count else {"seq": 0, "hash": GENESIS_HASH}
    view = AuditView(ok=not problems, records=state.count, head=head,
                     broken_at=min(lines) if lines else (state.count + 1 if problems else None), problems=problems[:20])
    chosen: list[dict[str, Any]] = []
    for raw in _lines_backwards(data):
        if not include_requests and _REQUEST in raw:
            continue
        try:
            r = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(r, dict) or (not include_requests and r.get("event") == "request"):
            continue
        if before is not None and not (isinstance(r.get("seq"), int) and r["seq"] < before):
            continue
        chosen.append(r)
        if len(chosen) > page:
            break
    shown = chosen[:page]
    view.entries = [{"seq": r.get("seq"), "time": str(r.get("time", ""))[:19].replace("T", " "),
                     "event": r.get("event"), "actor": r.get("actor"),
                     "details": _details(r.get("details")), "hash": str(r.get("hash", ""))[:16]} for r in shown]
    if len(chosen) > page and shown:
        view.older = shown[-1]["seq"]
    return view


def _lines_backwards(data: bytes) -> Iterator[bytes]:
    """The lines of `data`, last first, without splitting all of it (a long log is read from its end)."""
    end = len(data)
    while end > 0:
        start = data.rfind(b"\n", 0, end - 1) + 1
        line = data[start:end].rstrip(b"\n")
        if line:
            yield line
        end = start


def _details(details: Any) -> str:
    if not isinstance(details, dict):
        return ""
    parts = []
    for k, v in details.items():
        if k in HIDDEN_DETAILS:
            parts.append(f"{k}: (in the node's log file)")
        elif v is not None:
            parts.append(f"{k}: {v if isinstance(v, str | int | float | bool) else yaml.safe_dump(v, default_flow_style=True, width=1000).strip()}")
    return "; ".join(parts)
