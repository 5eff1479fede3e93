"""Write synthetic sites into CDM handles: chunks of persons -> Arrow tables -> ``Cdm.insert_arrow``."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mercia.errors import ConfigError, MerciaError
from mercia.synth.concepts import concept_tables
from mercia.synth.eras import condition_eras, drug_eras
from mercia.synth.faults import FaultInjector
from mercia.synth.negative_controls import NC_CONCEPTS, NC_ID_BASE
from mercia.synth.nhs import MAX_PERSON_ID, nhs_numbers
from mercia.synth.population import ChunkResult, simulate_chunk
from mercia.synth.profiles import SiteProfile, federation_profiles, with_settings
from mercia.synth.truth import build_truth

# Persons per chunk. Part of the data's definition: chunk i draws from its own seeded stream, so the
# same (seed, site, persons) gives the same rows whatever the machine.
CHUNK = 50_000
# The database engine's own cache while a site is written (DuckDB's buffer pool: blocks already written
# to the file are evicted, not kept): without it memory grows with the site (about 0.65 GiB per million
# persons), with it the peak is a few chunks in flight plus this, whatever the number of persons.
DB_MEMORY = 1 << 30
CARE_SITE_ID = 1
TABLES = ("person", "observation_period", "visit_occurrence", "condition_occurrence", "drug_exposure",
          "measurement", "death", "drug_era", "condition_era", "care_site")
Progress = Callable[[str, int, int], None]


def _date(x: np.ndarray) -> pa.Array:
    return pa.array(x.astype(np.int32), type=pa.date32())


def _i64(x: np.ndarray) -> pa.Array:
    return pa.array(x.astype(np.int64))


def _i32(x: np.ndarray) -> pa.Array:
    return pa.array(x.astype(np.int32))


def _fk(x: np.ndarray, base: int) -> pa.Array:
    """Local index -> id, null where the index is -1."""
    return pa.array(x + base, type=pa.int64(), mask=x < 0)


def _lookup(codes: np.ndarray, values: list[str]) -> pa.Array:
    # Left dictionary-encoded: the CDM handle casts it to text in the writer thread, off the
    # simulation's critical path.
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(values))


class _Ids:
    def __init__(self, first_person_id: int) -> None:
        self.person = first_person_id
        self.observation_period = 1
        self.visit_occurrence = 1
        self.condition_occurrence = 1
        self.drug_exposure = 1
        self.measurement = 1
        self.drug_era = 1
        self.condition_era = 1
        # Negative-control records (opt-in) are numbered apart, so they never shift another row's id.
        self.nc_condition = NC_ID_BASE
        self.nc_condition_era = NC_ID_BASE


def _arrow_tables(res: ChunkResult, ids: _Ids) -> dict[str, pa.Table]:
    ct = concept_tables()
    t = res.tables
    out: dict[str, pa.Table] = {}
    per = t["person"]
    n = len(per["birth"])
    pid0 = ids.person
    pid = np.arange(pid0, pid0 + n, dtype=np.int64)
    bd = per["birth"].astype("datetime64[D]")
    y = bd.astype("datetime64[Y]")
    mth = bd.astype("datetime64[M]")
    out["person"] = pa.table({
        "person_id": _i64(pid),
        "gender_concept_id": _i64(np.where(per["male"], ct.gender["male"], ct.gender["female"])),
        "year_of_birth": _i32(y.astype(np.int64) + 1970),
        "month_of_birth": _i32((mth - y).astype(np.int64) + 1),
        "day_of_birth": _i32((bd - mth).astype(np.int64) + 1),
        "race_concept_id": _i64(np.asarray(ct.race)[per["race"]]),
        "ethnicity_concept_id": _i64(np.full(n, ct.not_hispanic)),
        "care_site_id": _i64(np.full(n, CARE_SITE_ID)),
        "person_source_value": pa.array(nhs_numbers(pid)).cast(pa.string()),
        "gender_source_value": _lookup(per["male"].astype(np.int32), ["F", "M"]),
        "race_source_value": _lookup(per["race"], ct.race_source),
    })

    o = t["observation_period"]
    k = len(o["p"])
    out["observation_period"] = pa.table({
        "observation_period_id": _i64(np.arange(ids.observation_period, ids.observation_period + k)),
        "person_id": _i64(o["p"] + pid0),
        "observation_period_start_date": _date(o["start"]),
        "observation_period_end_date": _date(o["end"]),
        "period_type_concept_id": _i64(np.full(k, ct.type_registration)),
    })

    v = t["visit_occurrence"]
    k = len(v["p"])
    vbase = ids.visit_occurrence
    out["visit_occurrence"] = pa.table({
        "visit_occurrence_id": _i64(np.arange(vbase, vbase + k)),
        "person_id": _i64(v["p"] + pid0),
        "visit_concept_id": _i64(ct.visit[v["kind"]]),
        "visit_start_date": _date(v["start"]),
        "visit_end_date": _date(v["end"]),
        "visit_type_concept_id": _i64(np.full(k, ct.type_ehr)),
    })

    c = t["condition_occurrence"]
    k = len(c["p"])
    out["condition_occurrence"] = pa.table({
        "condition_occurrence_id": _i64(np.arange(ids.condition_occurrence, ids.condition_occurrence + k)),
        "person_id": _i64(c["p"] + pid0),
        "condition_concept_id": _i64(ct.condition[c["code"]]),
        "condition_start_date": _date(c["day"]),
        "condition_type_concept_id": _i64(np.full(k, ct.type_ehr)),
        "visit_occurrence_id": _fk(c["visit"], vbase),
        "condition_source_value": _lookup(c["code"], ct.condition_source),
        "condition_source_concept_id": _i64(ct.condition_source_concept[c["code"]]),
    })

    d = t["drug_exposure"]
    k = len(d["p"])
    out["drug_exposure"] = pa.table({
        "drug_exposure_id": _i64(np.arange(ids.drug_exposure, ids.drug_exposure + k)),
        "person_id": _i64(d["p"] + pid0),
        "drug_concept_id": _i64(ct.drug[d["drug"]]),
        "drug_exposure_start_date": _date(d["start"]),
        "drug_exposure_end_date": _date(d["end"]),
        "drug_type_concept_id": _i64(np.full(k, ct.type_prescription)),
        "quantity": pa.array(d["supply"].astype(np.float64)),
        "days_supply": _i32(d["supply"]),
        "visit_occurrence_id": _fk(d["visit"], vbase),
        "drug_source_value": _lookup(d["drug"], ct.drug_source),
        "drug_source_concept_id": _i64(ct.drug_source_concept[d["drug"]]),
    })

    m = t["measurement"]
    k = len(m["p"])
    out["measurement"] = pa.table({
        "measurement_id": _i64(np.arange(ids.measurement, ids.measurement + k)),
        "person_id": _i64(m["p"] + pid0),
        "measurement_concept_id": _i64(ct.measurement[m["key"]]),
        "measurement_date": _date(m["day"]),
        "measurement_type_concept_id": _i64(np.full(k, ct.type_lab)),
        "value_as_number": pa.array(m["value"].astype(np.float64)),
        "unit_concept_id": _i64(ct.unit[m["key"]]),
        "visit_occurrence_id": _fk(m["visit"], vbase),
        "measurement_source_value": _lookup(m["key"], ct.measurement_source),
    })

    de = t["death"]
    k = len(de["p"])
    cause = de["cause"]
    out["death"] = pa.table({
        "person_id": _i64(de["p"] + pid0),
        "death_date": _date(de["day"]),
        "death_type_concept_id": _i64(np.full(k, ct.type_ehr)),
        "cause_concept_id": pa.array(ct.condition[np.maximum(cause, 0)].astype(np.int32), mask=cause < 0),
        "cause_source_value": pa.array(np.asarray(ct.condition_source, dtype=object)[np.maximum(cause, 0)],
                                       type=pa.string(), mask=cause < 0),
    })

    # Eras per chunk: a person's rows never span chunks, and chunks run in person order, so era ids
    # follow (person, concept, start) across the whole site as OHDSI's numbering does.
    er = drug_eras(d["p"], ct.drug_ingredient[d["drug"]], d["start"], d["end"])
    k = len(er["person"])
    out["drug_era"] = pa.table({
        "drug_era_id": _i64(np.arange(ids.drug_era, ids.drug_era + k)),
        "person_id": _i64(er["person"] + pid0),
        "drug_concept_id": _i64(er["concept"]),
        "drug_era_start_date": _date(er["start"]),
        "drug_era_end_date": _date(er["end"]),
        "drug_exposure_count": _i32(er["count"]),
        "gap_days": _i32(er["gap_days"]),
    })
    ids.drug_era += k
    er = condition_eras(c["p"], ct.condition[c["code"]], c["day"])
    k = len(er["person"])
    out["condition_era"] = pa.table({
        "condition_era_id": _i64(np.arange(ids.condition_era, ids.condition_era + k)),
        "person_id": _i64(er["person"] + pid0),
        "condition_concept_id": _i64(er["concept"]),
        "condition_era_start_date": _date(er["start"]),
        "condition_era_end_date": _date(er["end"]),
        "condition_occurrence_count": _i32(er["count"]),
    })
    ids.condition_era += k
    if "negative_control_condition" in t:
        _negative_control_rows(t["negative_control_condition"], out, ids, pid0)

    ids.person += n
    ids.observation_period += len(o["p"])
    ids.visit_occurrence += len(v["p"])
    ids.condition_occurrence += len(c["p"])
    ids.drug_exposure += len(d["p"])
    ids.measurement += len(m["p"])
    return out


def _negative_control_rows(nc: dict[str, np.ndarray], out: dict[str, pa.Table], ids: _Ids, pid0: int) -> None:
    """Append a chunk's negative-control records (and their eras) to its condition tables, with ids
    of their own and no visit (mercia.synth.negative_controls)."""
    ct = concept_tables()
    concept = np.array([c for c, _ in NC_CONCEPTS], dtype=np.int64)[nc["code"]]
    k = len(nc["p"])
    rows = pa.table({
        "condition_occurrence_id": _i64(np.arange(ids.nc_condition, ids.nc_condition + k)),
        "person_id": _i64(nc["p"] + pid0),
        "condition_concept_id": _i64(concept),
        "condition_start_date": _date(nc["day"]),
        "condition_type_concept_id": _i64(np.full(k, ct.type_ehr)),
        "visit_occurrence_id": pa.nulls(k, pa.int64()),
        "condition_source_value": pa.nulls(k, pa.string()),
        "condition_source_concept_id": _i64(np.zeros(k)),
    })
    ids.nc_condition += k
    base = out["condition_occurrence"]
    out["condition_occurrence"] = pa.concat_tables([base, rows.cast(base.schema)])
    er = condition_eras(nc["p"], concept, nc["day"])
    k = len(er["person"])
    eras = pa.table({
        "condition_era_id": _i64(np.arange(ids.nc_condition_era, ids.nc_condition_era + k)),
        "person_id": _i64(er["person"] + pid0),
        "condition_concept_id": _i64(er["concept"]),
        "condition_era_start_date": _date(er["start"]),
        "condition_era_end_date": _date(er["end"]),
        "condition_occurrence_count": _i32(er["count"]),
    })
    ids.nc_condition_era += k
    out["condition_era"] = pa.concat_tables([out["condition_era"], eras])


def chunk_rng(seed: int, profile: SiteProfile, chunk: int) -> np.random.Generator:
    site_key = zlib.crc32(profile.name.encode())
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, site_key, chunk]))


# The spawn key of the negative-control outcomes' streams: a stream apart from chunk_rng's, so turning
# them on leaves every other draw as it was.
NC_STREAM = 0x4E43


def nc_rng(seed: int, profile: SiteProfile, chunk: int) -> np.random.Generator:
    site_key = zlib.crc32(profile.name.encode())
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, site_key, chunk],
                                                        spawn_key=(NC_STREAM,)))


def generate_site(cdm: Any, *, persons: int, seed: int, profile: SiteProfile, first_person_id: int = 1,
                  progress: Progress | None = None, faults: dict[str, float] | None = None) -> dict[str, Any]:
    """Write one synthetic site into ``cdm`` (tables created when missing); return its truth dict.

    Persons are simulated in chunks of 50,000; while one chunk is written the next is simulated. Memory
    is bounded: at most three chunks are held at once (being simulated, queued, being written), and the
    database's cache is held to ``DB_MEMORY``: memory stops growing once that cache is full (peak RSS
    2.0 GiB at 1,000,000 persons, 2.7 GiB at 10,000,000).

    ``faults`` ({name: rate}, `mercia.synth.faults`) plants data-quality faults; truth["planted_faults"]
    says exactly what was planted.
    """
    if persons < 1:
        raise ConfigError(f"persons must be at least 1, got {persons}")
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    if first_person_id < 1 or first_person_id + persons > MAX_PERSON_ID:
        raise ConfigError(f"person_ids {first_person_id}..{first_person_id + persons - 1} out of range: "
                          f"synthetic sites hold person_ids 1..{MAX_PERSON_ID - 1} (NHS number scheme)")
    for name in TABLES:
        if cdm.table_exists(name) and cdm.row_count(name) > 0:
            raise MerciaError(f"table {name} already has rows; write a synthetic site into an empty CDM")
    with cdm.bounded_bulk_write(DB_MEMORY):
        return _write_site(cdm, persons=persons, seed=seed, profile=profile, first_person_id=first_person_id,
                           progress=progress, faults=faults or {})


def _write_site(cdm: Any, *, persons: int, seed: int, profile: SiteProfile, first_person_id: int,
                progress: Progress | None, faults: dict[str, float]) -> dict[str, Any]:
    cdm.create_tables()
    injector = (FaultInjector(faults, seed=seed, site=profile.name, first_person_id=first_person_id, persons=persons)
                if faults else None)
    if injector is not None:
        injector.prepare(cdm)
    _load_vocabulary(cdm)
    if profile.negative_control_outcomes:
        _add_negative_control_concepts(cdm, profile.negative_control_outcomes)
    # The site is one GP practice: every person is registered there.
    cdm.insert_arrow("care_site", pa.table({
        "care_site_id": pa.array([CARE_SITE_ID], pa.int64()),
        "care_site_name": pa.array([profile.description or profile.name]),
        "care_site_source_value": pa.array([profile.name]),
    }))
    ids = _Ids(first_person_id)
    stats: dict[str, float] = {}
    rows = dict.fromkeys(TABLES, 0)
    rows["care_site"] = 1
    nchunks = (persons + CHUNK - 1) // CHUNK
    step = f"{profile.name}: persons"

    # One writer thread: DuckDB releases the GIL while it inserts, so simulation and writing overlap.
    # The queue holds one chunk, which bounds memory to about three chunks.
    q: queue.Queue[dict[str, pa.Table] | None] = queue.Queue(maxsize=1)
    errors: list[BaseException] = []

    def writer() -> None:
        while (item := q.get()) is not None:
            if errors:
                continue
            try:
                for name, table in item.items():
                    cdm.insert_arrow(name, table)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

    th = threading.Thread(target=writer, name="mercia-synth-writer", daemon=True)
    th.start()
    done = 0
    try:
        if progress:
            progress(step, 0, persons)
        for i in range(nchunks):
            n = min(CHUNK, persons - i * CHUNK)
            res = simulate_chunk(n, chunk_rng(seed, profile, i), profile,
                                 nc_rng(seed, profile, i) if profile.negative_control_outcomes else None)
            tables = _arrow_tables(res, ids)
            if injector is not None:
                tables = injector.apply(tables, i)
            for k2, v2 in res.stats.items():
                stats[k2] = stats.get(k2, 0.0) + v2
            for name, table in tables.items():
                rows[name] += table.num_rows
            if errors:
                break
            q.put(tables)
            done += n
            if progress:
                progress(step, done, persons)
    finally:
        q.put(None)
        th.join()
    if errors:
        raise errors[0]
    truth = build_truth(profile=profile, seed=seed, persons=persons, first_person_id=first_person_id,
                        stats=stats, rows=rows)
    if profile.negative_control_outcomes:
        from mercia.synth.negative_controls import nc_truth

        truth["negative_control_outcomes"] = nc_truth(profile.negative_control_outcomes, stats,
                                                      truth["planted_effects"])
    if injector is not None:
        truth["planted_faults"] = injector.truth()
    return truth


def _add_negative_control_concepts(cdm: Any, n: int) -> None:
    """The negative-control concepts a vocabulary lacks (the bundled subset holds some), with their
    self-row in concept_ancestor, so concept sets (with descendants or not) find them. Their
    concept_code (the SNOMED code) is not held here and left empty."""
    from mercia.vocab.concept_sets import unknown_concept_ids

    names = dict(NC_CONCEPTS[:n])
    missing = unknown_concept_ids(cdm, list(names))
    if not missing:
        return
    k = len(missing)
    valid = (np.datetime64("1970-01-01", "D"), np.datetime64("2099-12-31", "D"))
    cdm.insert_arrow("concept", pa.table({
        "concept_id": pa.array(missing, pa.int64()),
        "concept_name": pa.array([names[c] for c in missing]),
        "domain_id": pa.array(["Condition"] * k),
        "vocabulary_id": pa.array(["SNOMED"] * k),
        "concept_class_id": pa.array(["Clinical Finding"] * k),
        "standard_concept": pa.array(["S"] * k),
        "concept_code": pa.array([""] * k),
        "valid_start_date": pa.array(np.full(k, valid[0])),
        "valid_end_date": pa.array(np.full(k, valid[1])),
        "invalid_reason": pa.nulls(k, pa.string()),
    }))
    if cdm.table_exists("concept_ancestor"):
        cdm.insert_arrow("concept_ancestor", pa.table({
            "ancestor_concept_id": pa.array(missing, pa.int64()),
            "descendant_concept_id": pa.array(missing, pa.int64()),
            "min_levels_of_separation": pa.array([0] * k, pa.int32()),
            "max_levels_of_separation": pa.array([0] * k, pa.int32()),
        }))


def _load_vocabulary(cdm: Any) -> None:
    """The bundled vocabulary subset, unless the CDM already has a vocabulary (kept as it is)."""
    if cdm.table_exists("concept") and cdm.row_count("concept") > 0:
        return
    from mercia.vocab import load_bundled_vocabulary

    load_bundled_vocabulary(cdm)


def generate_federation(out_dir: str | Path, *, persons: int, sites: int, seed: int,
                        progress: Progress | None = None, faults: dict[str, float] | None = None,
                        acute_rate_multiplier: float = 1.0, negative_control_outcomes: int = 0) -> list[Path]:
    """Write ``sites`` synthetic sites as ``out_dir/<site>.duckdb`` with ``out_dir/<site>.truth.json``.

    Persons are split as evenly as possible; person_ids are unique across the federation. Existing
    files are never overwritten. Returns the database paths. ``acute_rate_multiplier`` and
    ``negative_control_outcomes`` set those SiteProfile fields at every site.
    """
    from mercia.cdm import Cdm

    if persons < sites:
        raise ConfigError(f"need at least one person per site: {persons} persons for {sites} sites")
    profiles = [with_settings(p, acute_rate_multiplier=acute_rate_multiplier,
                              negative_control_outcomes=negative_control_outcomes)
                for p in federation_profiles(sites)]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    targets = [(p, out / f"{p.name}.duckdb", out / f"{p.name}.truth.json") for p in profiles]
    clash = [str(x) for _, db, tr in targets for x in (db, tr, db.with_name(db.name + ".partial")) if x.exists()]
    if clash:
        raise MerciaError(f"refusing to overwrite existing file(s): {', '.join(clash)}; "
                          "choose another --out folder or delete them")
    out.mkdir(parents=True, exist_ok=True)
    shares = [persons // sites + (1 if i < persons % sites else 0) for i in range(sites)]
    first = 1
    paths: list[Path] = []
    for (profile, db, tr), n in zip(targets, shares, strict=True):
        partial = db.with_name(db.name + ".partial")
        # Everything from creating the half-written file to renaming it is inside the try: Ctrl-C while
        # DuckDB is still opening the new file (it exists by then) or closing it leaves nothing behind.
        cdm = None
        try:
            cdm = Cdm.open(partial)
            truth = generate_site(cdm, persons=n, seed=seed, profile=profile, first_person_id=first,
                                  progress=progress, faults=faults)
            cdm.close()
            cdm = None
            partial.rename(db)
        except BaseException:
            if cdm is not None:
                with contextlib.suppress(Exception):
                    cdm.close()
            partial.unlink(missing_ok=True)
            Path(str(partial) + ".wal").unlink(missing_ok=True)
            raise
        tr.write_text(json.dumps(truth, indent=2, sort_keys=False) + "\n")
        paths.append(db)
        first += n
    return paths
