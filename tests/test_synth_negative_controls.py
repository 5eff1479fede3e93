"""Synthetic negative-control outcomes (opt-in): they add rows and change no other row; their truth;
their rates follow the confounders and no exposure; the settings are validated."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mercia.cdm import Cdm
from mercia.cli import app
from mercia.errors import ConfigError
from mercia.synth import DEFAULT_SITES, SiteProfile, generate_federation, generate_site
from mercia.synth import site as site_mod
from mercia.synth.negative_controls import MAX_NEGATIVE_CONTROLS, NC_CONCEPTS, NC_ID_BASE
from mercia.synth.profiles import with_settings
from mercia.vocab import catalog as cat

TABLES = ("person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
          "measurement", "death", "drug_era", "condition_era", "care_site")
ID = {"condition_occurrence": "condition_occurrence_id", "condition_era": "condition_era_id"}


def hashes(cdm: Cdm) -> dict[str, str]:
    """Each table's rows (ids included) in sorted order, hashed; negative-control rows left out."""
    out = {}
    for t in TABLES:
        where = f" WHERE {ID[t]} < {NC_ID_BASE}" if t in ID else ""
        out[t] = cdm.fetch_all(f"SELECT md5(string_agg(r, chr(10) ORDER BY r)), count(*) FROM "
                               f"(SELECT CAST(t AS VARCHAR) AS r FROM {t} AS t{where})")[0]
    return out


@pytest.fixture(scope="module")
def pair():
    """The same seed with the option off and with 20 negative controls, in several chunks."""
    mp = pytest.MonkeyPatch()
    mp.setattr(site_mod, "CHUNK", 1_500)  # chunk boundaries exercised: ids continue across chunks
    profile = DEFAULT_SITES[2].model_copy(update={"acute_rate_multiplier": 5.0})
    off, on = Cdm.open(None), Cdm.open(None)
    t_off = generate_site(off, persons=4_000, seed=7, profile=profile)
    t_on = generate_site(on, persons=4_000, seed=7, profile=profile.model_copy(
        update={"negative_control_outcomes": 20}))
    mp.undo()
    yield off, on, t_off, t_on
    off.close()
    on.close()


def test_negative_controls_add_rows_and_change_no_other(pair):
    off, on, _, _ = pair
    h_off, h_on = hashes(off), hashes(on)
    assert h_off == h_on
    assert h_off["condition_occurrence"][1] > 0
    assert off.scalar(f"SELECT count(*) FROM condition_occurrence WHERE condition_occurrence_id >= {NC_ID_BASE}") == 0
    n = on.scalar(f"SELECT count(*) FROM condition_occurrence WHERE condition_occurrence_id >= {NC_ID_BASE}")
    assert n > 500
    ids = {c for c, _ in NC_CONCEPTS[:20]}
    got = {r[0] for r in on.fetch_all(f"SELECT DISTINCT condition_concept_id FROM condition_occurrence "
                                       f"WHERE condition_occurrence_id >= {NC_ID_BASE}")}
    assert got == ids
    # No negative-control concept is a concept the generator uses otherwise.
    assert not ids & {c.concept_id for c in cat.CONDITIONS.values()}


def test_negative_control_rows_are_inside_observation_and_before_death(pair):
    _, on, _, _ = pair
    bad = on.scalar(f"""
        SELECT count(*) FROM condition_occurrence c WHERE c.condition_occurrence_id >= {NC_ID_BASE} AND (
          NOT EXISTS (SELECT 1 FROM observation_period o WHERE o.person_id = c.person_id
                      AND c.condition_start_date BETWEEN o.observation_period_start_date AND o.observation_period_end_date)
          OR EXISTS (SELECT 1 FROM death d WHERE d.person_id = c.person_id AND c.condition_start_date > d.death_date)
          OR c.visit_occurrence_id IS NOT NULL)""")
    assert bad == 0
    # Eras of the negative controls follow OHDSI's rules as the others do (30-day persistence).
    eras = on.scalar(f"SELECT sum(condition_occurrence_count) FROM condition_era WHERE condition_era_id >= {NC_ID_BASE}")
    rows = on.scalar(f"SELECT count(*) FROM condition_occurrence WHERE condition_occurrence_id >= {NC_ID_BASE}")
    assert eras == rows
    # Their concepts are in the vocabulary (with a self-row in concept_ancestor), so cohorts find them.
    known = on.scalar(f"""SELECT count(*) FROM concept c JOIN concept_ancestor a ON a.ancestor_concept_id = c.concept_id
        AND a.descendant_concept_id = c.concept_id WHERE c.concept_id IN ({",".join(str(c) for c, _ in NC_CONCEPTS[:20])})""")
    assert known == 20


def test_truth_lists_the_negative_controls_per_exposure_pair(pair):
    _, on, t_off, t_on = pair
    assert "negative_control_outcomes" not in t_off
    nc = json.loads(json.dumps(t_on))["negative_control_outcomes"]
    assert [o["concept_id"] for o in nc["outcomes"]] == [c for c, _ in NC_CONCEPTS[:20]]
    assert {p["effect_id"] for p in nc["pairs"]} == {"nsaid_gi_bleeding", "sglt2_hf_admission"}
    assert all(p["hazard_ratio"] == 1.0 and len(p["outcome_concept_ids"]) == 20 for p in nc["pairs"])
    for o in nc["outcomes"]:
        n = on.scalar(f"SELECT count(*) FROM condition_occurrence WHERE condition_concept_id = {o['concept_id']}")
        assert o["realised_events"] == n
    # The same outcome has the same model whatever the number asked for.
    cdm = Cdm.open(None)
    small = generate_site(cdm, persons=300, seed=7, profile=DEFAULT_SITES[2].model_copy(
        update={"negative_control_outcomes": 3}))
    cdm.close()
    strip = [{k: v for k, v in o.items() if k != "realised_events"} for o in small["negative_control_outcomes"]["outcomes"]]
    assert strip == [{k: v for k, v in o.items() if k != "realised_events"} for o in nc["outcomes"][:3]]


def test_negative_control_rates_follow_the_confounders(pair):
    """Per person-year of observation, persons with recorded CKD, AF or heart failure (every coefficient
    >= 0) and the old (mostly positive age terms) have more negative-control events than the rest."""
    _, on, _, _ = pair
    conds = ",".join(str(cat.CONDITIONS[k].concept_id) for k in ("ckd", "atrial_fibrillation", "heart_failure"))
    rows = on.fetch_all(f"""
        WITH py AS (SELECT person_id, sum(observation_period_end_date - observation_period_start_date + 1) / 365.25 y
                    FROM observation_period GROUP BY 1),
        sick AS (SELECT DISTINCT person_id FROM condition_occurrence WHERE condition_concept_id IN ({conds})),
        ev AS (SELECT person_id, count(*) n FROM condition_occurrence
               WHERE condition_occurrence_id >= {NC_ID_BASE} GROUP BY 1)
        SELECT s.person_id IS NOT NULL AS sick, sum(coalesce(ev.n, 0)) / sum(py.y)
        FROM py LEFT JOIN sick s USING (person_id) LEFT JOIN ev USING (person_id) GROUP BY 1 ORDER BY 1""")
    rate = dict(rows)
    assert rate[True] > 1.3 * rate[False], rate


def test_settings_are_validated():
    with pytest.raises(ValueError):
        SiteProfile(name="x", negative_control_outcomes=MAX_NEGATIVE_CONTROLS + 1)
    with pytest.raises(ConfigError, match="negative_control_outcomes"):
        with_settings(DEFAULT_SITES[0], negative_control_outcomes=-1)
    with pytest.raises(ConfigError, match="acute_rate_multiplier"):
        with_settings(DEFAULT_SITES[0], acute_rate_multiplier=0)
    assert MAX_NEGATIVE_CONTROLS >= 100
    assert len({c for c, _ in NC_CONCEPTS}) == len(NC_CONCEPTS)


def test_federation_and_cli_options(tmp_path):
    paths = generate_federation(tmp_path / "fed", persons=1_000, sites=1, seed=3, acute_rate_multiplier=4.0,
                                negative_control_outcomes=5)
    truth = json.loads(paths[0].with_name(paths[0].stem + ".truth.json").read_text())
    assert truth["profile"]["acute_rate_multiplier"] == 4.0
    assert len(truth["negative_control_outcomes"]["outcomes"]) == 5
    runner = CliRunner()
    for args, field in ((["--negative-controls", "500"], "negative_control_outcomes"),
                        (["--acute-rate-multiplier", "0"], "acute_rate_multiplier"),
                        (["--acute-rate-multiplier", "101"], "acute_rate_multiplier")):
        r = runner.invoke(app, ["synth", "--persons", "100", "--sites", "1", "--out", str(tmp_path / "x"), *args])
        assert r.exit_code == 1, r.output
        err = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and field in err[0], r.stderr
        assert not (tmp_path / "x").exists()
