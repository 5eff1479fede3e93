"""Attacks on what a node sends besides its released tables: the manifest, the notes, failed runs'
status messages and the report (issue 12, item 3, and 'a cohort below the threshold releases only
below threshold').

Over real HTTP on 127.0.0.1: one site where the study's target cohort is one person, and the same site
with that person's entry event deleted (so the cohort is empty). Everything a node sends about the
study apart from the released tables must be the same at both: the researcher learns nothing from
the manifest about whether she exists. A third site holds, in its own cohort_definition table, a
definition whose name only the site knows; a study that trips over it must fail with a catalogued
message, not that name.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from federation_support import STUDY_COHORT, HubKey, NodeServer, make_site, submit_body
from mercia.analyses import AnalysisResult
from mercia.analyses.notes import CATALOGUE, Note, NoteCode, Notes
from mercia.cdm import Cdm
from mercia.cohorts import registry
from mercia.disclosure.model_support import MODEL_REFUSED
from mercia.errors import StudyError
from mercia.federation.node.worker import FAILURES
from mercia.study import StudyPackage

SECRET = "Dr Okonkwo's private list 4711"  # only the third site's CDM holds this text


def _one_person_event(db: Path) -> tuple[int, str, int, int]:
    """A condition event that is the only one of its concept on its day, inside its person's
    observation: (concept, day, person, condition_occurrence_id)."""
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            """
            SELECT co.condition_concept_id, co.condition_start_date, co.person_id, co.condition_occurrence_id
            FROM condition_occurrence co
            JOIN observation_period op ON op.person_id = co.person_id
             AND co.condition_start_date BETWEEN op.observation_period_start_date
                                             AND op.observation_period_end_date
            WHERE (co.condition_concept_id, co.condition_start_date) IN (
                SELECT condition_concept_id, condition_start_date FROM condition_occurrence
                GROUP BY 1, 2 HAVING COUNT(*) = 1)
            ORDER BY co.condition_concept_id, co.condition_start_date
            LIMIT 1
            """
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1].isoformat(), int(row[2]), int(row[3])


def _study(concept: int, day: str) -> StudyPackage:
    target = {
        "name": "Target",
        "concepts": {"c": {"name": "the condition", "include": [concept]}},
        "entry": [{"condition": "c", "filters": {"occurrence_start_date": {"value": day, "op": "eq"}}}],
    }
    htn = {"name": "Hypertension", "concepts": {"h": {"name": "hypertension", "conditions": ["hypertension"]}},
           "entry": [{"condition": "h", "first": True}]}
    # GI bleed: ten persons at this site, one of them in the hypertension cohort's first year, so the
    # prediction model cannot be fitted; the old note said so with the count ("1 outcomes in all").
    gib = {"name": "GI bleed", "concepts": {"g": {"name": "gi bleed", "conditions": ["gi_bleeding"]}},
           "entry": [{"condition": "g", "first": True}]}
    return StudyPackage.from_dict({
        "name": "one person",
        "cohorts": {"target": {"definition": target}, "htn": {"definition": htn}, "gib": {"definition": gib}},
        "analyses": [
            {"type": "characterization", "name": "chr1", "cohorts": ["target"], "settings": {"domains": ["condition"]}},
            {"type": "cohort_entries", "name": "entries", "cohorts": ["htn", "target"], "interval": "month"},
            {"type": "kaplan_meier", "name": "km", "targets": ["target"], "outcome": "htn"},
            {"type": "cohort_entries", "name": "htn_entries", "cohorts": ["htn"]},
            {"type": "prediction", "name": "pred", "target": "htn", "outcome": "gib"},
            {"type": "cox", "name": "cox1", "target": "target", "comparator": "gib", "outcome": "htn",
             "settings": {"ph_test": False}},
        ],
        "disclosure": "opensafely",
    })


def _run(node: NodeServer, pkg: StudyPackage, key: HubKey) -> tuple[dict[str, Any], dict[str, Any]]:
    with node.client("hub") as c:
        r = c.post("/api/v1/studies", json=submit_body(pkg, key))
        assert r.status_code == 202, r.text
    node.approve(pkg.content_hash)
    status = node.wait_status(pkg.content_hash, {"finished", "failed"}, timeout=300)
    results: dict[str, Any] = {}
    if status["status"] == "finished":
        with node.client("hub") as c:
            r = c.get(f"/api/v1/studies/{pkg.content_hash}/results")
            assert r.status_code == 200, r.text
            results = r.json()
            # A federated round on the Cox model of her cohort, at the hub's first coefficients (the
            # number of terms from the node's own answer to a wrong guess).
            url, beta = f"/api/v1/studies/{pkg.content_hash}/rounds", [0.0]
            r = c.post(url, json={"analysis": "cox1", "model": "cox", "beta": beta})
            wanted = re.search(r"give (\d+) finite numbers", r.text)
            if r.status_code == 400 and wanted:
                r = c.post(url, json={"analysis": "cox1", "model": "cox", "beta": [0.0] * int(wanted.group(1))})
            results["round"] = {"status": r.status_code, "body": r.json()}
    return status, results


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("attack_outputs")
    with_her = make_site(root / "with_her.duckdb", persons=3000, seed=1)
    concept, day, person, occurrence = _one_person_event(with_her)
    pkg = _study(concept, day)
    without_her = root / "without_her.duckdb"
    shutil.copyfile(with_her, without_her)
    with duckdb.connect(str(without_her)) as con:
        con.execute("DELETE FROM condition_occurrence WHERE condition_occurrence_id = ?", [occurrence])
    # A site where the ids recorded for this study's cohorts are taken, in cohort_definition, by a list of
    # the site's own (someone wrote it there by hand): generating the study's cohorts fails.
    clash = root / "clash.duckdb"
    shutil.copyfile(with_her, clash)
    with Cdm.open(clash) as cdm:
        ids = registry.study_ids(cdm, pkg)
        registry.record(cdm, pkg, ids)
        cdm.insert_arrow("cohort_definition", pa.table({
            "cohort_definition_id": [ids[pkg.cohort_ids["target"]]], "cohort_definition_name": [SECRET],
            "definition_type_concept_id": [0], "subject_concept_id": [0], "cohort_definition_syntax": ["site-local"]}))
    key = HubKey(root / "hubkey")
    out: dict[str, Any] = {"pkg": pkg, "person": person, "sites": {}}
    # Both sites under the same name, so the manifests can be compared byte for byte.
    for name, db in (("with_her", with_her), ("without_her", without_her), ("clash", clash)):
        with NodeServer(root / f"node_{name}", cdm=db, hub_key=key, site="leeds") as node:
            status, results = _run(node, pkg, key)
            out["sites"][name] = {
                "status": status, "results": results, "db": db, "folder": node.folder, "log": node.log_text(),
                "report": (node.state_dir / "results" / pkg.content_hash / "report.html").read_text()
                if status["status"] == "finished" else "",
                "audit": (node.state_dir / "audit.jsonl").read_text(),
            }
    # The premise: at the first site the target cohort is exactly one person, at the second nobody.
    for name, persons in (("with_her", 1), ("without_her", 0)):
        with duckdb.connect(str(out["sites"][name]["db"]), read_only=True) as con:
            n = con.execute(f"SELECT COUNT(DISTINCT subject_id) FROM {STUDY_COHORT} cohort WHERE cohort_definition_id = ?",
                            [pkg.cohort_ids["target"]]).fetchone()[0]
        assert n == persons, (name, n)
    return out


def test_manifest_is_the_same_with_and_without_the_person(attack: dict[str, Any]) -> None:
    a = attack["sites"]["with_her"]["results"]["manifest"]
    b = attack["sites"]["without_her"]["results"]["manifest"]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # What it holds: the package hash, versions, the policy, a released site summary, codes.
    assert set(a) == {"study", "package_hash", "site", "policy", "policy_summary", "site_summary", "cohorts",
                      "analyses", "tables", "notes", "versions"}
    assert a["site_summary"] == {"persons": 3000, "observation_years": a["site_summary"]["observation_years"]}
    assert isinstance(a["site_summary"]["observation_years"], int)


def test_manifest_has_no_paths_row_counts_or_dates(attack: dict[str, Any]) -> None:
    for name in ("with_her", "without_her"):
        site = attack["sites"][name]
        text = json.dumps(site["results"]["manifest"])
        assert str(site["db"]) not in text and str(site["folder"]) not in text and ".duckdb" not in text
        assert "cdm" not in site["results"]["manifest"]
        assert not _keys(site["results"]["manifest"]) & {"rows", "observation_start", "observation_end",
                                                          "timings_seconds", "started", "cdm_source_name"}
        assert not re.search(r"\d{4}-\d{2}-\d{2}", text), name  # no observation dates, no run times
        assert "timings" not in text and "started" not in text


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_analyses_on_a_cohort_below_the_threshold_release_only_the_marker(attack: dict[str, Any]) -> None:
    pkg = attack["pkg"]
    below = Note(NoteCode.BELOW_THRESHOLD, cohort="target").to_dict()
    for name in ("with_her", "without_her"):
        res = attack["sites"][name]["results"]
        m = res["manifest"]
        by_name = {a["name"]: a for a in m["analyses"]}
        for analysis in ("chr1", "entries", "km", "cox1"):
            assert by_name[analysis]["status"] == "below_threshold", (name, analysis)
            assert by_name[analysis]["tables"] == [] and by_name[analysis]["notes"] == [below]
            assert m["notes"][analysis] == [below]
        assert by_name["htn_entries"]["status"] == "done"
        tables = {t["name"] for t in res["tables"]}
        # No table of an analysis that uses her cohort leaves, not even with every cell suppressed.
        assert not tables & {"chr1_covariates", "chr1_demographics", "chr1_age", "entries", "km", "km_summary",
                              "cox1", "cox1_ph_test"}
        assert "htn_entries" in tables and m["tables"] == sorted(tables)
        assert m["notes"]["cohorts"] == [below]
    assert pkg.cohort_ids["target"] not in {None}


def test_federated_rounds_on_her_cohort_say_the_same_at_one_person_and_none(attack: dict[str, Any]) -> None:
    a = attack["sites"]["with_her"]["results"]["round"]
    b = attack["sites"]["without_her"]["results"]["round"]
    # The one answer of every refused or non-converging model (test_attack_models).
    assert a == b and a["status"] == 422 and a["body"]["detail"] == MODEL_REFUSED


def test_notes_are_catalogued_codes_without_numbers(attack: dict[str, Any]) -> None:
    ids = {str(i) for i in attack["pkg"].cohort_ids.values()}
    for name in ("with_her", "without_her"):
        m = attack["sites"][name]["results"]["manifest"]
        assert "outcomes in all" not in json.dumps(m)  # the old note: "... (1 outcomes in all) ..."
        notes = [n for items in m["notes"].values() for n in items]
        notes += [n for a in m["analyses"] for n in a["notes"]]
        assert notes
        for n in notes:
            assert n["code"] in {c.value for c in CATALOGUE}
            assert n["text"] == Note(NoteCode(n["code"]), **n["params"]).text  # the template, nothing else
            assert set(re.findall(r"\d+", n["text"])) <= ids
            assert "no entries" not in n["text"] and "outcomes in all" not in n["text"]
        # The prediction failed on a count read from the rows: the note is the code, the count stays home.
        pred = next(a for a in m["analyses"] if a["name"] == "pred")
        assert pred["status"] == "not_run" and pred["notes"] == [Note(NoteCode.NOT_RUN).to_dict()]


def test_report_holds_no_unreleased_number(attack: dict[str, Any]) -> None:
    site = attack["sites"]["with_her"]
    # plotly.js (the library) is not data; the page and the figures' own data stay.
    html = re.sub(r"<script[^>]*>\s*/\*\*\s*\* plotly\.js v.*?</script>", "", site["report"], count=1, flags=re.S)
    assert "Cohorts and attrition" in html
    pkg = attack["pkg"]
    with duckdb.connect(str(site["db"]), read_only=True) as con:
        start, end = con.execute("SELECT MIN(observation_period_start_date), MAX(observation_period_end_date) "
                                 "FROM observation_period").fetchone()
        cohort_rows = con.execute("SELECT COUNT(*) FROM results.cohort").fetchone()[0]
        htn = con.execute(f"SELECT COUNT(DISTINCT subject_id) FROM {STUDY_COHORT} cohort WHERE cohort_definition_id = ?",
                          [pkg.cohort_ids["htn"]]).fetchone()[0]
    for secret in (start.isoformat(), end.isoformat(), str(site["db"])):
        assert secret not in html, secret
    # Exact counts the policy rounds (to 5) never appear as a number of their own.
    for n in {cohort_rows, htn} - {round(htn / 5) * 5}:
        if n % 5:
            assert not re.search(rf"(?<![\d.]){n:,}(?![\d.])".replace(",", ",?"), html), n
    assert "has no entries" not in html
    # The site line is the released summary.
    assert "3,000 persons (released)" in html


def test_a_failed_run_says_a_code_not_the_sites_data(attack: dict[str, Any]) -> None:
    site = attack["sites"]["clash"]
    status = site["status"]
    assert status["status"] == "failed"
    assert status["error"] == f"cohort_definition: {FAILURES['cohort_definition']}"
    assert "4711" not in json.dumps(status) and "Okonkwo" not in json.dumps(status)
    # The custodian still has the detail, in the node's own audit log.
    assert "Okonkwo" in site["audit"]


def test_a_manifest_left_by_an_older_version_leaves_filtered() -> None:
    """The node's results route passes every manifest through public_manifest: one written before this
    version (paths, row counts, dates, timings, free-text notes) leaves with its released fields only."""
    from mercia.study.runner import public_manifest

    old = {
        "study": "s", "package_hash": "ab" * 32, "site": "leeds", "policy": {"name": "opensafely"},
        "policy_summary": "opensafely: ...", "versions": {"mercia": "0.1.0"}, "tables": ["cohort_counts"],
        "cohorts": {"empty": {"id": 1, "name": "Empty"}}, "started": "2026-01-02T03:04:05+00:00",
        "timings_seconds": {"total": 1.5},
        "cdm": {"target": "/srv/cdm/site.duckdb", "rows": {"cohort": 2751}, "observation_start": "2005-01-01"},
        "notes": {"cohorts": ["cohort 'empty' (Empty) has no entries"],
                  "pred": ["not run: only 2 training persons have the outcome",
                           {"code": "not_run", "params": {}, "text": "forged 17"}]},
        "analyses": [{"name": "pred", "type": "prediction", "status": "failed", "tables": [],
                      "notes": ["not run: only 2 training persons have the outcome"], "extra": 3}],
    }
    m = public_manifest(old)
    text = json.dumps(m)
    for leak in ("/srv", "2751", "2005-01-01", "2026-01-02", "timings", "has no entries", "training persons",
                 "forged"):
        assert leak not in text, leak
    assert m["notes"] == {"cohorts": [], "pred": [Note(NoteCode.NOT_RUN).to_dict()]}
    assert m["analyses"] == [{"name": "pred", "type": "prediction", "status": "not_run", "tables": [],
                              "notes": []}]


# ---- by construction: no free-text note can be made --------------------------------------------------
def test_notes_accept_catalogued_notes_only() -> None:
    with pytest.raises(StudyError, match="catalogued"):
        AnalysisResult("x", {}, notes=["only 2 training persons have the outcome"])  # type: ignore[list-item]
    notes = Notes()
    with pytest.raises(StudyError):
        notes.append("1 outcomes in all")  # type: ignore[arg-type]
    with pytest.raises(StudyError):
        notes.extend(["cohort 'empty' has no entries"])  # type: ignore[list-item]
    with pytest.raises(StudyError):
        notes += ["x"]  # type: ignore[list-item]
    with pytest.raises(StudyError):
        Note(NoteCode.BELOW_THRESHOLD)  # its parameter is missing
    with pytest.raises(StudyError):
        Note(NoteCode.MODEL_WITHHELD, n_events=1)  # counts are not parameters
    with pytest.raises(StudyError):
        Note(NoteCode.BELOW_THRESHOLD, cohort=2.5)
    with pytest.raises(StudyError):
        Note("below_threshold", cohort="x")  # type: ignore[arg-type]


def _sources() -> list[Path]:
    import mercia.analyses
    import mercia.study.runner

    return [*sorted(Path(mercia.analyses.__file__).parent.rglob("*.py")), Path(mercia.study.runner.__file__)]


def _is_note(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Note"


def _only_notes(node: ast.AST | None) -> bool:
    """An expression whose items can only be Note(...) calls (a name or attribute is a notes container
    made elsewhere, whose own assignments this scan checks)."""
    if node is None or isinstance(node, ast.Name | ast.Attribute) or _is_note(node):
        return True
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return all(_is_note(e) or isinstance(e, ast.Starred) for e in node.elts)
    if isinstance(node, ast.ListComp | ast.GeneratorExp):
        return _is_note(node.elt)
    if isinstance(node, ast.IfExp):
        return _only_notes(node.body) and _only_notes(node.orelse)
    if isinstance(node, ast.BinOp):
        return _only_notes(node.left) and _only_notes(node.right)
    if isinstance(node, ast.Dict):
        return all(_only_notes(v) for v in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Notes", "list"):
        return all(_only_notes(a) for a in node.args)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "field":
        return all(isinstance(k.value, ast.Name) and k.value.id in ("Notes", "dict") for k in node.keywords)
    return False


def _named_notes(node: ast.AST | None) -> bool:
    return (isinstance(node, ast.Name) and node.id == "notes") or (
        isinstance(node, ast.Attribute) and node.attr == "notes")


def _free_text(node: ast.AST) -> bool:
    """True when `node` puts something other than a Note(...) into notes."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _named_notes(node.func.value):
        if node.func.attr in ("append", "insert"):
            return not _is_note(node.args[-1])
        return node.func.attr == "extend" and not _only_notes(node.args[0])
    if isinstance(node, ast.keyword):
        return node.arg == "notes" and not _only_notes(node.value)
    targets = node.targets if isinstance(node, ast.Assign) else (
        [node.target] if isinstance(node, ast.AnnAssign | ast.AugAssign) else [])
    return any(_named_notes(t) for t in targets) and not _only_notes(getattr(node, "value", None))


def test_no_analysis_writes_a_note_as_text() -> None:
    """Every note an analysis (or the runner) makes is a `Note(NoteCode...)`: whatever goes into a
    `notes` list, keyword or attribute is a Note call, never a string, f-string or other value."""
    found = [f"{path.name}:{getattr(node, 'lineno', '?')}"
             for path in _sources() if path.name != "notes.py"
             for node in ast.walk(ast.parse(path.read_text())) if _free_text(node)]
    assert not found, f"free-text notes at {found}"
    # The scan sees the real call sites (it is not vacuous).
    sources = "".join(p.read_text() for p in _sources())
    assert sources.count("Note(NoteCode.") >= 15


def test_the_scan_catches_free_text() -> None:
    """The scan above, on code as it was before the catalogue: it flags every one of these."""
    for bad in ('notes.append(f"only {n} training persons have the outcome")',
                'notes = ["1 outcomes in all"]',
                'AnalysisResult("x", {}, notes=[f"cohort {i} has no entries" for i in missing])',
                'notes.extend([msg + "; taken as absent"])',
                'self.notes.append("not run: " + str(e))',
                'notes: list[str] = [str(e)]'):
        assert any(_free_text(n) for n in ast.walk(ast.parse(bad))), bad
