"""Run a study package on one CDM: generate its cohorts, run its analyses, release, write.

The only way a number reaches the output folder is `write_released()`, which accepts a
`ReleasedTable` and nothing else; a `ReleasedTable` is made only by `mercia.disclosure.release()`.
The manifest holds the package's hash, versions, the policy and a site summary that passed
`release()` too (persons, the observation span in whole years); notes are catalogued codes
(`mercia.analyses.notes`). A cohort whose released count is below the threshold makes every analysis
that uses it release nothing but a 'below threshold' note, decided before the analysis runs.
The folder is written under a temporary sibling name and renamed at the end, so a failed run leaves
nothing half-written, and an existing folder with content is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mercia.analyses import AnalysisResult
from mercia.analyses.notes import Note, NoteCode, Notes, check_names
from mercia.cdm import Cdm
from mercia.cohorts.stats import remaining_after_rules
from mercia.disclosure import DisclosureLog, DisclosurePolicy, ReleasedTable, ResultTable, release
from mercia.errors import MerciaError, StudyError
from mercia.study.package import StudyPackage, load_package

Progress = Callable[[str, int, int], None]
RESULTS = "results"
logger = logging.getLogger("mercia.study")

# What a manifest may hold: nothing else is written, nor served by a node (see `public_manifest`).
MANIFEST_KEYS = ("study", "package_hash", "site", "policy", "policy_summary", "site_summary", "cohorts",
                 "analyses", "tables", "notes", "versions")
ANALYSIS_STATUSES = ("done", "not_run", "below_threshold")
_OLD_STATUS = {"failed": "not_run"}  # an older version's word; its 'empty' told a count, and becomes 'done'


class CohortGenerationError(StudyError):
    """The study's cohorts could not be generated at this site (a node reports it by this type alone)."""


@dataclass
class StudyRun:
    """What a run wrote and released (every table here passed `release()`)."""

    out_dir: Path
    package_hash: str
    policy: DisclosurePolicy
    tables: dict[str, ReleasedTable]
    log: DisclosureLog
    manifest: dict[str, Any]
    notes: dict[str, Notes] = field(default_factory=dict)
    # Local to the site, never written to the results folder: why an analysis did not run, and timings.
    local_messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Local too: cohort key -> the id its rows are stored under in this CDM's results schema.
    stored_cohorts: dict[str, int] = field(default_factory=dict)

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.html"


def write_released(table: ReleasedTable, results_dir: Path) -> list[Path]:
    """Write one released table as Parquet and JSON. The only writer of result numbers."""
    if not isinstance(table, ReleasedTable):
        raise StudyError(
            f"only released tables can be written, not {type(table).__name__}; pass it through "
            "mercia.disclosure.release() first"
        )
    data = table.data
    for c in data.columns:
        # Margins put a 'Total' label among integer levels; Parquet wants one type per column.
        if data[c].dtype == object and data[c].map(type).nunique() > 1:
            data[c] = data[c].map(lambda v: None if v is None or v is pd.NA else str(v))
    parquet = results_dir / f"{table.name}.parquet"
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), parquet)
    js = results_dir / f"{table.name}.json"
    js.write_text(json.dumps(table.to_dict(), indent=1, default=str) + "\n")
    return [parquet, js]


def _check_out_dir(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise StudyError(f"output {str(out)!r} exists and is not a folder; choose a new folder")
        if any(out.iterdir()):
            raise StudyError(
                f"output folder {str(out)!r} is not empty; choose a new folder (results are never overwritten)"
            )


def _attrition_table(key: str, result: Any) -> ResultTable:
    """Persons and entries after each step: initial events, each inclusion rule in turn, final cohort."""
    rows: list[tuple[str, int, int]] = []
    base = {s.mode_id: s.base_count for s in result.summary}
    if base:
        rows.append(("initial events", base.get(1, 0), base.get(0, 0)))
        rules = sorted((s for s in result.attrition if s.mode_id == 1), key=lambda s: s.rule_sequence)
        persons, entries = (remaining_after_rules(result.mask_counts, mode, len(rules)) for mode in (1, 0))
        for s in rules:
            rows.append((f"{s.rule_sequence + 1}. {s.name}", persons[s.rule_sequence], entries[s.rule_sequence]))
    final = ("final cohort", int(result.persons), int(result.entries))
    # Era collapsing can merge entries, so the final row might not be a subset in both columns:
    # keep the table a valid attrition sequence (release() checks it) by dropping the last rule row then.
    if rows and (final[1] > rows[-1][1] or final[2] > rows[-1][2]):
        rows = []
    rows.append(final)
    df = pd.DataFrame(rows, columns=["step", "persons", "entries"])
    df[["persons", "entries"]] = df[["persons", "entries"]].astype("int64")
    return ResultTable(
        name=f"attrition_{key}",
        kind="counts",
        data=df,
        dimensions=["step"],
        count_columns=["persons", "entries"],
        sequential=True,
    )


def _site_persons(cdm: Cdm, site: str | None) -> ResultTable:
    """Persons at the site, as a table for `release()` (suppressed, rounded as the policy says); read
    from the person table only, so nothing in it changes with the study."""
    persons = cdm.row_count("person") if cdm.table_exists("person") else 0
    return ResultTable(
        name="site_persons",
        kind="counts",
        data=pd.DataFrame({"site": [site or "site"], "persons": [int(persons)]}).astype({"persons": "int64"}),
        dimensions=["site"],
        count_columns=["persons"],
    )


def _site_summary(cdm: Cdm, persons: ReleasedTable) -> dict[str, Any]:
    """The released persons count and the observation span in whole years (the earliest start to the
    latest end: whole years only, so the two persons at the ends are not dated)."""
    from sqlglot import exp

    released = persons.data
    value = released["persons"].iloc[0] if len(released) else None
    years = None
    if cdm.table_exists("observation_period"):
        start, end = cdm.fetch_all(
            exp.select(
                exp.Min(this=exp.column("observation_period_start_date")),
                exp.Max(this=exp.column("observation_period_end_date")),
            ).from_(cdm.table("observation_period"))
        )[0]
        if start is not None and end is not None:
            years = math.floor((pd.Timestamp(end) - pd.Timestamp(start)).days / 365.25)
    return {
        "persons": None if value is None or pd.isna(value) else int(value),
        "observation_years": years,
    }


def _released_persons(table: ReleasedTable) -> dict[int, int | None]:
    """Persons per cohort id as released (None where suppressed or left out)."""
    out: dict[int, int | None] = {}
    for r in table.data.itertuples(index=False):
        v = r.persons
        out[int(r.cohort_id)] = None if v is None or pd.isna(v) else int(v)
    return out


def below_threshold(released: int | None, policy: DisclosurePolicy) -> bool:
    """A cohort is below the threshold when its released persons count is suppressed, absent or no
    more than the threshold (an empty cohort too): decided from the released value only."""
    return released is None or released <= policy.threshold


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as it may leave: only `MANIFEST_KEYS`, notes rebuilt from the catalogue (anything
    that is not a catalogued code is dropped), analyses with their listed fields. A node serves this, so
    a manifest written by an older version (with file paths, row counts or free-text notes) never
    leaves as it was."""

    def notes(items: Any) -> list[dict[str, Any]]:
        out = []
        for n in items if isinstance(items, list) else []:
            try:
                out.append(Note(NoteCode(n["code"]), **n.get("params", {})).to_dict())
            except (MerciaError, KeyError, TypeError, ValueError):
                continue
        return out

    m = {k: manifest[k] for k in MANIFEST_KEYS if k in manifest}
    if isinstance(m.get("notes"), dict):
        m["notes"] = {str(k): notes(v) for k, v in m["notes"].items()}
    if isinstance(m.get("analyses"), list):
        m["analyses"] = [
            {"name": a.get("name"), "type": a.get("type"),
             "status": a.get("status") if a.get("status") in ANALYSIS_STATUSES else _OLD_STATUS.get(a.get("status"), "done"),
             "tables": list(a.get("tables", [])), "notes": notes(a.get("notes"))}
            for a in m["analyses"] if isinstance(a, dict)
        ]
    summary = m.get("site_summary")
    if isinstance(summary, dict):
        m["site_summary"] = {k: summary.get(k) for k in ("persons", "observation_years")}
    return m


def _versions(cdm: Cdm) -> dict[str, str | None]:
    import sqlglot

    from mercia import __version__
    from mercia.cdm.engines import library_versions
    from mercia.cdm.info import _vocabulary_version

    vocab = None
    if cdm.table_exists("vocabulary"):
        vocab = _vocabulary_version(cdm, {"vocabulary": 1}, {})
    return {
        "mercia": __version__,
        "cdm": cdm.version,
        "vocabulary": vocab,
        "python": platform.python_version(),
        **library_versions(),
        "sqlglot": sqlglot.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
    }


def run_study(
    package: StudyPackage | str | Path,
    cdm: Cdm,
    out_dir: str | Path,
    *,
    site_policy: DisclosurePolicy | str | None = None,
    site: str | None = None,
    progress: Progress | None = None,
) -> StudyRun:
    """Run `package` on `cdm` and write DIR/results/, disclosure.json, report.html, manifest.json.

    `site_policy` is the site's minimum disclosure policy (a policy or 'opensafely'/'sacro'); a
    package asking for a weaker one is refused before anything runs. `site` names the site in the
    results and the manifest. The CDM must be writable: cohorts are generated into its cohort table.
    """
    from mercia.cohorts import registry
    from mercia.cohorts.generate import generate_cohorts
    from mercia.report.study import render_report

    pkg = package if isinstance(package, StudyPackage) else load_package(package)
    policy = pkg.effective_policy(site_policy)
    out = Path(out_dir)
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    steps = 3 + len(pkg.analyses)
    done = 0
    label = f"study {pkg.name}"

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(label, done, steps)

    if progress:
        progress(label, 0, steps)
    timings: dict[str, float] = {}
    local: list[str] = []
    t_all = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    # mkdtemp makes the folder private (0700); the results folder gets the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        results_dir = staging / RESULTS
        results_dir.mkdir()
        log = DisclosureLog()
        released: dict[str, ReleasedTable] = {}
        notes: dict[str, Notes] = {}

        def out_table(table: ResultTable) -> None:
            if table.name in released:
                raise StudyError(f"two analyses produce a table named {table.name!r}; rename one of them")
            r = release(table, policy, site=site, log=log)
            write_released(r, results_dir)
            released[r.name] = r

        out_table(_site_persons(cdm, site))
        site_summary = _site_summary(cdm, released["site_persons"])

        # 1. cohorts
        t0 = time.perf_counter()
        try:
            # Stored under ids of the study's own in the results schema (never another study's), read
            # back under the package's ids (registry.study_cohorts), which results and manifests use.
            stored = registry.study_ids(cdm, pkg)
            own = {v: k for k, v in stored.items()}
            defs = [(stored[pkg.cohort_ids[k]], pkg.definitions[k])
                    for k in sorted(pkg.cohort_ids, key=pkg.cohort_ids.get)]  # type: ignore[arg-type]
            with warnings.catch_warnings(record=True) as caught:  # given again below, under the package's ids
                warnings.simplefilter("always")
                made = generate_cohorts(cdm, defs)
            generated = [g.model_copy(update={"cohort_id": own[g.cohort_id]}) for g in made]
            registry.record(cdm, pkg, stored)
        except MerciaError as e:
            raise CohortGenerationError(f"generating the study's cohorts failed: {e}") from None
        except Exception as e:
            if "read-only" in str(e).lower() or "read only" in str(e).lower():
                raise StudyError(
                    "the CDM is open read-only, but a study writes its cohorts into the results schema's cohort "
                    "table; "
                    "open it writable (Cdm.open(target) without read_only=True)"
                ) from None
            raise
        for w in caught:  # "cohort <stored id> (name): ..." -> "cohort <package id> (name): ..."
            text = str(w.message)
            stored_id, _, rest = text.removeprefix("cohort ").partition(" ")
            if text.startswith("cohort ") and stored_id.isdigit() and int(stored_id) in own:
                text = f"cohort {own[int(stored_id)]} {rest}"
            warnings.warn(text, w.category, stacklevel=2)
        by_id = {g.cohort_id: g for g in generated}
        keys = {v: k for k, v in pkg.cohort_ids.items()}
        counts = pd.DataFrame(
            {
                "cohort_id": [g.cohort_id for g in generated],
                "cohort": [keys[g.cohort_id] for g in generated],
                "cohort_name": [g.name for g in generated],
                "persons": [g.persons for g in generated],
                "entries": [g.entries for g in generated],
            }
        ).astype({"cohort_id": "int64", "persons": "int64", "entries": "int64"})
        out_table(
            ResultTable(
                name="cohort_counts",
                kind="counts",
                data=counts,
                dimensions=["cohort_id", "cohort", "cohort_name"],
                count_columns=["persons", "entries"],
            )
        )
        persons = _released_persons(released["cohort_counts"])
        small = {k for k, cid in pkg.cohort_ids.items() if below_threshold(persons.get(cid), policy)}
        for cid, g in sorted(by_id.items()):
            out_table(_attrition_table(keys[cid], g))
            if keys[cid] in small:
                notes.setdefault("cohorts", Notes()).append(Note(NoteCode.BELOW_THRESHOLD, cohort=keys[cid]))
        timings["cohorts"] = round(time.perf_counter() - t0, 3)
        tick()

        # 2. analyses
        analyses_meta = []
        for a in pkg.analyses:
            t0 = time.perf_counter()
            # Cohorts below the threshold that the analysis can do without are left out (a note each);
            # decided from released counts only.
            a, dropped = a.without_small(small)
            pre = Notes(dropped)
            blocking = [k for k in a.cohorts_used() if k in small]
            if blocking:
                # Nothing runs: no table with suppressed cells, no note but the code, whatever the data.
                res = AnalysisResult(a.type, {}, empty=True, notes=[Note(NoteCode.BELOW_THRESHOLD, cohort=k)
                                                                     for k in sorted(set(blocking))])
                status = "below_threshold"
            else:
                try:
                    with registry.study_cohorts(cdm, pkg):
                        res = a.run(cdm, pkg.cohort_ids, name=a.table_prefix())
                    status = "done"
                except MerciaError as e:
                    # The data defeated this analysis (e.g. a covariate constant in this site's cohort):
                    # go on, as a site with an empty cohort does. Its message can quote counts read from
                    # the rows, so it stays here (the site's log); what leaves is the code.
                    logger.warning("analysis %s not run: %s", a.table_prefix(), e)
                    local.append(f"{a.table_prefix()}: not run: {e}")
                    res = AnalysisResult(a.type, {}, empty=True, notes=[Note(NoteCode.NOT_RUN)])
                    status = "not_run"
            for table in res.tables.values():
                out_table(table)
            res_notes = Notes([*pre, *res.notes])
            check_names(res_notes, pkg.cohort_ids)
            if res_notes:
                notes[a.table_prefix()] = res_notes
            timings[a.table_prefix()] = round(time.perf_counter() - t0, 3)
            analyses_meta.append(
                {
                    "name": a.table_prefix(),
                    "type": a.type,
                    "status": status,
                    "tables": sorted(res.tables),
                    "notes": res_notes.to_list(),
                }
            )
            tick()

        # 3. disclosure log, report, manifest
        (staging / "disclosure.json").write_text(log.to_json(public=True) + "\n")
        # Only what is named in MANIFEST_KEYS: no file path, no row count, no date, no timing (how long
        # an analysis took grows with its rows); those stay in the StudyRun, at the site.
        manifest: dict[str, Any] = public_manifest({
            "study": pkg.name,
            "package_hash": pkg.content_hash,
            "site": site,
            "policy": policy.model_dump(mode="json"),
            "policy_summary": policy.rule_summary(),
            "site_summary": site_summary,
            "cohorts": {k: {"id": pkg.cohort_ids[k], "name": pkg.cohort_name(k)} for k in sorted(pkg.cohort_ids)},
            "analyses": analyses_meta,
            "tables": sorted(released),
            "notes": {k: v.to_list() for k, v in notes.items()},
            "versions": _versions(cdm),
        })
        (staging / "package.json").write_text(
            json.dumps(pkg.canonical(), indent=1, sort_keys=True) + "\n"
        )
        tick()
        t0 = time.perf_counter()
        html = render_report(pkg, released, log, policy, manifest)
        (staging / "report.html").write_text(html, encoding="utf-8")
        timings["report"] = round(time.perf_counter() - t0, 3)
        timings["total"] = round(time.perf_counter() - t_all, 3)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tick()
        if out.exists():
            _check_out_dir(out)  # still empty: someone may have written into it meanwhile
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StudyRun(
        out_dir=out,
        package_hash=pkg.content_hash,
        policy=policy,
        tables=released,
        log=log,
        manifest=manifest,
        notes=notes,
        local_messages=local,
        timings=timings,
        stored_cohorts={k: stored[pkg.cohort_ids[k]] for k in sorted(pkg.cohort_ids, key=pkg.cohort_ids.get)},  # type: ignore[arg-type]
    )
