"""A trial's candidates inside a site (issue 15, item 5): who fails no criterion, what each meets and what
data is missing, against an independent pandas oracle on a small random CDM; the local commands and
their bad input.

The oracle computes each criterion per person in three values straight from the tables: met, not met,
or missing (no record of what the criterion reads in its window: no HbA1c measured, no drug recorded),
and a group of criteria by Kleene's logic. Mercia computes it in SQL from the inclusion-rule masks of
one derived cohort definition (mercia.trials.candidates).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.trials.candidates import UnknownPersonError, find_candidates, match_person
from mercia.trials.source import load_trial

T2D, HF, OTHER_COND, METFORMIN, OTHER_DRUG, HBA1C, EGFR = 1001, 1002, 1003, 2001, 2002, 3001, 3002
CONCEPTS = {T2D: "T2D", HF: "HF", OTHER_COND: "other condition", METFORMIN: "metformin", OTHER_DRUG: "other drug",
            HBA1C: "HbA1c", EGFR: "eGFR", 8507: "MALE", 8532: "FEMALE"}
DOMAIN = {T2D: "Condition", HF: "Condition", OTHER_COND: "Condition", METFORMIN: "Drug", OTHER_DRUG: "Drug",
          HBA1C: "Measurement", EGFR: "Measurement", 8507: "Gender", 8532: "Gender"}

TRIAL = {
    "name": "test trial",
    "concepts": {"t2d": {"include": [T2D]}, "hf": {"include": [HF]}, "hba1c": {"include": [HBA1C]},
                 "egfr": {"include": [EGFR]}, "metformin": {"include": [METFORMIN]}},
    "entry": [{"condition": "t2d"}],
    "inclusion_rules": [
        {"name": "aged 40 to 80", "require": {"age": {"min": 40, "max": 80}}},
        {"name": "HbA1c 53 to 91 in the prior year",
         "require": {"measurement": "hba1c", "value": {"min": 53, "max": 91}, "between": ["365 days before", "0 days after"]}},
        {"name": "eGFR 30 or more in the prior year",
         "require": {"measurement": "egfr", "value": {"min": 30}, "between": ["365 days before", "0 days after"]}},
        {"name": "no heart failure before index",
         "exclude": {"condition": "hf", "between": ["all days before", "0 days after"]}},
        {"name": "metformin in the prior 90 days",
         "require": {"drug": "metformin", "between": ["90 days before", "0 days after"]}},
        {"name": "eGFR 60 or more, or metformin",
         "require": {"any": [
             {"measurement": "egfr", "value": {"min": 60}, "between": ["365 days before", "0 days after"]},
             {"drug": "metformin", "between": ["90 days before", "0 days after"]}]}},
        {"name": "not both eGFR below 45 and HbA1c above 75",
         "require": {"at_most": 1, "of": [
             {"measurement": "egfr", "value": {"below": 45}, "between": ["365 days before", "0 days after"]},
             {"measurement": "hba1c", "value": {"above": 75}, "between": ["365 days before", "0 days after"]}]}},
        {"name": "no eGFR below 15 in the prior year",
         "exclude": {"measurement": "egfr", "value": {"below": 15}, "between": ["365 days before", "0 days after"]}},
    ],
}
RULES = [r["name"] for r in TRIAL["inclusion_rules"]]


# ---- a small random CDM ---------------------------------------------------------------------------------
def random_tables(n: int = 400, seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    base = dt.date(2010, 1, 1)

    def day(k: int) -> dt.date:
        return base + dt.timedelta(days=int(k))

    persons = pd.DataFrame({"person_id": np.arange(1, n + 1),
                            "gender_concept_id": rng.choice([8507, 8532], n),
                            "year_of_birth": rng.integers(1925, 1995, n),
                            "race_concept_id": 0, "ethnicity_concept_id": 0})
    persons["person_source_value"] = [f"MRN{p:05d}" for p in persons.person_id]
    op_start = rng.integers(0, 1500, n)
    op_end = op_start + rng.integers(200, 3000, n)
    ops = pd.DataFrame({"observation_period_id": persons.person_id, "person_id": persons.person_id,
                        "observation_period_start_date": [day(k) for k in op_start],
                        "observation_period_end_date": [day(k) for k in op_end], "period_type_concept_id": 0})
    cond, drug, meas = [], [], []
    for i, pid in enumerate(persons.person_id):
        lo, hi = int(op_start[i]) - 200, int(op_end[i]) + 100  # some records outside observation
        for concept, p, most in ((T2D, 0.85, 3), (HF, 0.25, 2), (OTHER_COND, 0.5, 3)):
            if rng.random() < p:
                cond += [(int(pid), concept, day(rng.integers(lo, hi))) for _ in range(rng.integers(1, most + 1))]
        for concept, p, most in ((METFORMIN, 0.55, 4), (OTHER_DRUG, 0.35, 3)):
            if rng.random() < p:
                drug += [(int(pid), concept, day(rng.integers(lo, hi))) for _ in range(rng.integers(1, most + 1))]
        for concept, p, low, high in ((HBA1C, 0.7, 30, 110), (EGFR, 0.6, 10, 110)):
            if rng.random() < p:
                for _ in range(rng.integers(1, 4)):
                    value = None if rng.random() < 0.1 else float(round(rng.uniform(low, high), 1))
                    meas.append((int(pid), concept, day(rng.integers(lo, hi)), value))
    conditions = pd.DataFrame(cond, columns=["person_id", "condition_concept_id", "condition_start_date"])
    conditions.insert(0, "condition_occurrence_id", np.arange(1, len(conditions) + 1))
    conditions["condition_type_concept_id"] = 0
    drugs = pd.DataFrame(drug, columns=["person_id", "drug_concept_id", "drug_exposure_start_date"])
    drugs.insert(0, "drug_exposure_id", np.arange(1, len(drugs) + 1))
    drugs["drug_exposure_end_date"] = drugs.drug_exposure_start_date
    drugs["drug_type_concept_id"] = 0
    measurements = pd.DataFrame(meas, columns=["person_id", "measurement_concept_id", "measurement_date",
                                               "value_as_number"])
    measurements.insert(0, "measurement_id", np.arange(1, len(measurements) + 1))
    measurements["measurement_type_concept_id"] = 0
    return {"person": persons, "observation_period": ops, "condition_occurrence": conditions,
            "drug_exposure": drugs, "measurement": measurements}


def load_tables(cdm: Cdm, tables: dict[str, pd.DataFrame]) -> Cdm:
    cdm.create_tables([*tables, "concept", "concept_ancestor", "concept_relationship", "cohort",
                       "cohort_definition", "death", "visit_occurrence"])
    for name, df in tables.items():
        cdm.insert_arrow(name, pa.Table.from_pandas(df, preserve_index=False))
    ids = list(CONCEPTS)
    cdm.insert_arrow("concept", pa.table({
        "concept_id": ids, "concept_name": list(CONCEPTS.values()), "domain_id": [DOMAIN[c] for c in ids],
        "vocabulary_id": ["x"] * len(ids), "concept_class_id": ["x"] * len(ids),
        "concept_code": [str(c) for c in ids], "valid_start_date": [dt.date(1970, 1, 1)] * len(ids),
        "valid_end_date": [dt.date(2099, 12, 31)] * len(ids)}))
    cdm.insert_arrow("concept_ancestor", pa.table({
        "ancestor_concept_id": ids, "descendant_concept_id": ids, "min_levels_of_separation": [0] * len(ids),
        "max_levels_of_separation": [0] * len(ids)}))
    return cdm


# ---- the oracle -------------------------------------------------------------------------------------------
def oracle(t: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Each person's candidacy from the tables, written from the criteria's plain meaning."""
    op = t["observation_period"].set_index("person_id")
    person = t["person"].set_index("person_id")
    cond, drug, meas = t["condition_occurrence"], t["drug_exposure"], t["measurement"]
    out = []
    for pid in person.index:
        o = op.loc[pid]
        s, e = o.observation_period_start_date, o.observation_period_end_date
        t2d = cond[(cond.person_id == pid) & (cond.condition_concept_id == T2D)]
        t2d = t2d[(t2d.condition_start_date >= s) & (t2d.condition_start_date <= e)]
        if t2d.empty:
            continue
        index = t2d.condition_start_date.min()

        def within(dates: pd.Series, days_before: int | None, index: dt.date = index,
                   s: dt.date = s, e: dt.date = e) -> pd.Series:
            lo = s if days_before is None else max(s, index - dt.timedelta(days=days_before))
            return (dates >= lo) & (dates <= min(index, e))

        def lab(concept: int, ok: Any, pid: int = pid, within: Any = within) -> str:
            rows = meas[(meas.person_id == pid) & (meas.measurement_concept_id == concept)]
            rows = rows[within(rows.measurement_date, 365)]
            if rows.empty:
                return "missing"
            return "met" if any(v is not None and not pd.isna(v) and ok(v) for v in rows.value_as_number) else "fail"

        mine = drug[(drug.person_id == pid)]
        drugs90 = mine[within(mine.drug_exposure_start_date, 90)]
        metformin = ("met" if (drugs90.drug_concept_id == METFORMIN).any() else
                     "missing" if drugs90.empty else "fail")
        hf = cond[(cond.person_id == pid) & within(cond.condition_start_date, None)]
        hf_status = "fail" if (hf.condition_concept_id == HF).any() else "met"  # the index record is there
        age = index.year - int(person.loc[pid].year_of_birth)
        egfr60 = lab(EGFR, lambda v: v >= 60)
        either = ("met" if "met" in (egfr60, metformin) else
                  "fail" if (egfr60, metformin) == ("fail", "fail") else "missing")
        # At most one of two: met if at most one could be true, failed if both are, else missing.
        pair = (lab(EGFR, lambda v: v < 45), lab(HBA1C, lambda v: v > 75))
        at_most_one = ("met" if sum(v != "fail" for v in pair) <= 1 else
                       "fail" if pair == ("met", "met") else "missing")
        status = ["met" if 40 <= age <= 80 else "fail", lab(HBA1C, lambda v: 53 <= v <= 91),
                  lab(EGFR, lambda v: v >= 30), hf_status, metformin, either, at_most_one,
                  {"met": "fail", "fail": "met", "missing": "missing"}[lab(EGFR, lambda v: v < 15)]]
        if "fail" in status:
            continue
        out.append({"person_source_value": person.loc[pid].person_source_value, "person_id": int(pid), "age": age,
                    "index_date": index.isoformat(),
                    "meets": [n for n, st in zip(RULES, status, strict=True) if st == "met"],
                    "missing": [n for n, st in zip(RULES, status, strict=True) if st == "missing"]})
    return sorted(out, key=lambda c: (len(c["missing"]), c["person_source_value"]))


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return random_tables()


@pytest.fixture
def trial_file(tmp_path: Path) -> Path:
    p = tmp_path / "trials" / "t2d_test.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(TRIAL, sort_keys=False))
    return p


def test_candidates_match_the_oracle(cdm_factory: Any, tables: dict[str, pd.DataFrame], trial_file: Path) -> None:
    cdm = load_tables(cdm_factory(), tables)
    expected = oracle(tables)
    got = [c.to_dict() for c in find_candidates(cdm, load_trial(trial_file)).candidates]
    # The oracle lists persons of every kind: fully eligible, and each criterion missing for some.
    assert any(not c["missing"] for c in expected) and len(expected) > 20
    for name in RULES[1:3] + RULES[4:]:
        assert any(name in c["missing"] for c in expected), name
    assert got == expected


def test_person_match_is_the_candidate_row(duck_cdm: Cdm, tables: dict[str, pd.DataFrame], trial_file: Path) -> None:
    cdm = load_tables(duck_cdm, tables)
    trial = load_trial(trial_file)
    expected = {c["person_source_value"]: c for c in oracle(tables)}
    listed = next(iter(expected))
    matches = match_person(cdm, listed, [trial])
    assert [m.to_dict()["person_id"] for m in matches] == [expected[listed]["person_id"]]
    assert matches[0].candidate.to_dict() == expected[listed]
    not_listed = next(p for p in tables["person"].person_source_value if p not in expected)
    assert match_person(cdm, not_listed, [trial]) == []
    with pytest.raises(UnknownPersonError, match="no person with this person_source_value"):
        match_person(cdm, "MRN-nobody", [trial])


def test_without_data_that_can_be_missing_the_candidates_are_the_cohort(
        duck_cdm: Cdm, tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    """Criteria that are never missing data (age, an exclusion whose window holds the index record):
    the candidates are exactly the persons of the generated cohort."""
    from mercia.cohorts.generate import generate_cohorts

    cdm = load_tables(duck_cdm, tables)
    spec = {**TRIAL, "inclusion_rules": [TRIAL["inclusion_rules"][0], TRIAL["inclusion_rules"][3]]}
    p = tmp_path / "two.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    trial = load_trial(p)
    found = find_candidates(cdm, trial)
    generate_cohorts(cdm, [(7, trial.cohort)])
    cohort = sorted(r[0] for r in cdm.fetch_all(
        "SELECT subject_id FROM results.cohort WHERE cohort_definition_id = 7"))
    assert sorted(c.person_id for c in found.candidates) == cohort and cohort
    assert all(not c.missing for c in found.candidates)


# ---- the local commands ---------------------------------------------------------------------------------
runner = CliRunner()


@pytest.fixture
def node_yaml(tmp_path: Path, tables: dict[str, pd.DataFrame], trial_file: Path) -> Path:
    with Cdm.open(tmp_path / "site.duckdb") as cdm:
        load_tables(cdm, tables)
    (tmp_path / "node.yaml").write_text(yaml.safe_dump({
        "site": "alpha", "cdm": "site.duckdb", "state_dir": "state", "hub_public_key": "hub.pem",
        "tokens": "tokens.json", "trials": "trials"}))
    return tmp_path / "node.yaml"


def _audit(node_yaml: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (node_yaml.parent / "state" / "audit.jsonl").read_text().splitlines()]


def test_cli_candidates_json_csv_and_audit(node_yaml: Path, tables: dict[str, pd.DataFrame]) -> None:
    expected = oracle(tables)
    r = runner.invoke(app, ["trial", "candidates", "t2d_test", "--config", str(node_yaml), "--format", "json"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)
    assert answer["candidates"] == expected and answer["persons"] == len(expected)
    assert [c["name"] for c in answer["criteria"]] == RULES
    assert "measurement 'hba1c'" in answer["criteria"][1]["missing_means"] and answer["criteria"][0]["missing_means"] == ""
    r = runner.invoke(app, ["trial", "candidates", str(node_yaml.parent / "trials" / "t2d_test.yaml"),
                            "--config", str(node_yaml), "--format", "csv"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "person_source_value,person_id,age,index_date,meets,missing" and len(lines) == len(expected) + 1
    assert lines[1].startswith(f"{expected[0]['person_source_value']},{expected[0]['person_id']},")
    r = runner.invoke(app, ["trial", "candidates", "t2d_test", "--config", str(node_yaml)], env={"COLUMNS": "150"})
    assert r.exit_code == 0, r.output
    assert f"{len(expected)} candidate(s) for t2d_test" in r.stdout
    assert "3. eGFR 30 or more in the prior year (missing data: no measurement 'egfr' in its window)" in r.stdout
    assert "\n1. aged 40 to 80\n" in r.stdout and expected[-1]["person_source_value"] in r.stdout
    records = [a for a in _audit(node_yaml) if a["event"] == "trial.candidates"]
    assert [a["details"] for a in records] == [{"trial": "t2d_test", "persons": len(expected), "via": "cli"}] * 3
    text = (node_yaml.parent / "state" / "audit.jsonl").read_text()
    assert not any(c["person_source_value"] in text for c in expected)  # counts, never persons


def test_cli_match_lists_the_trials_and_audits_without_the_person(node_yaml: Path,
                                                                  tables: dict[str, pd.DataFrame]) -> None:
    first = oracle(tables)[0]
    r = runner.invoke(app, ["trial", "match", first["person_source_value"], "--config", str(node_yaml),
                            "--format", "json"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)
    assert answer["trials_searched"] == 1
    assert answer["matches"] == [{"trial": "t2d_test", "trial_name": "t2d_test", **first, "not_applied": []}]
    rec = _audit(node_yaml)[-1]
    assert rec["event"] == "trial.match" and rec["details"] == {
        "trials_searched": 1, "trials_listed": 1, "person_found": True, "via": "cli"}
    assert first["person_source_value"] not in json.dumps(_audit(node_yaml))


@pytest.mark.parametrize(("args", "config", "message"), [
    (["match", "MRN-nobody"], {}, "error: person: no person with this person_source_value in the site's CDM"),
    (["candidates", "no_such_trial"], {}, "error: trial: no trial named 'no_such_trial' in the site's trials "
                                          "folder; trials there: t2d_test"),
    (["match", "MRN00001"], {"trials": None}, "error: trials: node.yaml names no trials folder; add `trials: DIR`"),
    (["candidates", "t2d_test"], {"trials": None}, "error: trial: 't2d_test' is not a file, and node.yaml names "
                                                   "no trials folder"),
    (["candidates", "t2d_test", "--format", "xml"], {}, "error: --format: 'xml' is not one of table, json, csv"),
])
def test_bad_input_is_one_line(node_yaml: Path, args: list[str], config: dict[str, Any], message: str) -> None:
    if config:
        data = yaml.safe_load(node_yaml.read_text())
        data.update(config)
        node_yaml.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    r = runner.invoke(app, ["trial", *args, "--config", str(node_yaml)])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.output


# ---- where a look-up may come from ----------------------------------------------------------------------
def test_peer_addresses_are_checked_against_the_networks() -> None:
    from mercia.federation.node.trial_lookup import peer_allowed, proxied

    local = ["127.0.0.1/32", "::1/128"]
    assert peer_allowed("127.0.0.1", local) and peer_allowed("::1", local)
    assert peer_allowed("::ffff:127.0.0.1", local)  # IPv4 mapped into IPv6 is the IPv4 address
    assert not peer_allowed("127.0.0.2", local) and not peer_allowed("10.1.2.3", local)
    assert peer_allowed("10.1.2.3", ["10.0.0.0/8"]) and not peer_allowed("11.1.2.3", ["10.0.0.0/8"])
    for nothing in (None, "", "testclient", "localhost"):  # not an address: not the site's network
        assert not peer_allowed(nothing, local)
    assert proxied(["host", "X-Forwarded-For"]) and not proxied(["host", "authorization"])


def test_a_bad_network_in_node_yaml_is_one_line(node_yaml: Path) -> None:
    data = yaml.safe_load(node_yaml.read_text())
    node_yaml.write_text(yaml.safe_dump({**data, "clinician_networks": ["10.0.0.0/8", "the ward"]}))
    r = runner.invoke(app, ["trial", "candidates", "t2d_test", "--config", str(node_yaml)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "clinician_networks: 'the ward' is not a network: write an address or CIDR block" in r.output, r.output



def test_an_engine_without_temporary_tables_runs_one_query(duck_cdm: Cdm, tables: dict[str, pd.DataFrame],
                                                           trial_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path Spark takes (no temporary tables: one query over the pipeline's CTEs) gives the oracle's list."""
    cdm = load_tables(duck_cdm, tables)
    monkeypatch.setattr(type(cdm.engine), "supports_temp_tables", False)
    assert [c.to_dict() for c in find_candidates(cdm, load_trial(trial_file)).candidates] == oracle(tables)


DISPLAY_TRIAL = {"name": "T2D, aged 40 to 80 (display name)", "concepts": {"t2d": {"include": [T2D]}},
                 "index": {"entry": [{"condition": "t2d"}]},
                 "criteria": [{"name": "aged 40 to 80", "type": "inclusion", "rule": {"age": {"min": 40, "max": 80}}}]}


def test_a_trial_is_reported_by_the_file_name_that_addresses_it(node_yaml: Path) -> None:
    """A trial.yaml's name is a display name; `trial match` and `trial candidates` report the file name
    (what `trial candidates TRIAL` and GET /trials/{trial}/candidates take) with the display name beside it."""
    from mercia.federation.node import load_node_config
    from mercia.federation.node.trial_lookup import trial_by_name

    (node_yaml.parent / "trials" / "t2d_display.yaml").write_text(yaml.safe_dump(DISPLAY_TRIAL, sort_keys=False))
    r = runner.invoke(app, ["trial", "candidates", "t2d_display", "--config", str(node_yaml), "--format", "json"])
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)
    assert (answer["trial"], answer["trial_name"]) == ("t2d_display", DISPLAY_TRIAL["name"]) and answer["candidates"]
    person = answer["candidates"][0]["person_source_value"]
    r = runner.invoke(app, ["trial", "match", person, "--config", str(node_yaml), "--format", "json"])
    assert r.exit_code == 0, r.output
    found = {m["trial"]: m["trial_name"] for m in json.loads(r.stdout)["matches"]}
    assert found["t2d_display"] == DISPLAY_TRIAL["name"]
    config = load_node_config(node_yaml)
    for ref, name in found.items():  # each reported trial is the one its identifier addresses
        assert trial_by_name(config, ref).name == name
    r = runner.invoke(app, ["trial", "match", person, "--config", str(node_yaml), "--format", "csv"])
    assert r.stdout.splitlines()[0].startswith("trial,trial_name,person_source_value,")
    assert f"t2d_display,{DISPLAY_TRIAL['name']!r}".replace("'", '"') in r.stdout
