"""Planted data-quality faults: known errors at known rates, each written into truth.json exactly.

`mercia synth --faults events_after_death=0.02,end_before_start=0.01` corrupts each candidate row of a
fault's table independently with the given probability, while the site is written (chunk by chunk, from a
random stream of its own, so the clean data are those of the same seed without faults). truth.json then
holds, per fault, the table and field corrupted, the data-quality check that must find it
(`mercia.dq`, DataQualityDashboard's check names), the number of rows corrupted, and the other checks whose
numerators the corruption moves, with by how much (`side_effects`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mercia.errors import ConfigError


@dataclass(frozen=True)
class Fault:
    name: str
    table: str
    field: str
    check: str  # the DQD check that finds it
    level: str  # FIELD | CONCEPT
    description: str
    check_field: str | None = None  # the field the check is keyed on, when not `field`


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("events_after_death", "condition_occurrence", "condition_start_date", "plausibleDuringLife", "FIELD",
          "condition records of persons who died moved to 61-360 days after the death"),
    Fault("end_before_start", "drug_exposure", "drug_exposure_end_date", "plausibleStartBeforeEnd", "FIELD",
          "drug exposures ending 1-30 days before they start (only those starting a month or more after birth)",
          check_field="drug_exposure_start_date"),
    Fault("unmapped_source_codes", "condition_occurrence", "condition_concept_id",
          "standardConceptRecordCompleteness", "FIELD",
          "condition records whose source code is left unmapped (condition_concept_id 0)"),
    Fault("values_out_of_range", "measurement", "value_as_number", "plausibleValueHigh", "CONCEPT",
          "measurements with a range (mercia.dq.catalogue.CONCEPT_RANGES) given 1.1-2.1 times their upper limit"),
    Fault("wrong_domain_concepts", "drug_exposure", "drug_concept_id", "fkDomain", "FIELD",
          "drug exposures whose drug_concept_id is a condition concept"),
    Fault("orphan_foreign_keys", "measurement", "person_id", "isForeignKey", "FIELD",
          "measurements whose person_id is no person of the site"),
    Fault("missing_required_fields", "drug_exposure", "drug_type_concept_id", "isRequired", "FIELD",
          "drug exposures without their required drug_type_concept_id (NULL)"),
)}


def parse_faults(spec: str | None) -> dict[str, float]:
    """`name=rate[,name=rate...]` -> {name: rate}; an unknown name or a rate outside (0, 1] is refused."""
    if spec is None or not spec.strip():
        return {}
    known = ", ".join(FAULTS)
    out: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        if name not in FAULTS:
            raise ConfigError(f"unknown fault {name!r} in --faults; known faults: {known}")
        if not sep:
            raise ConfigError(f"fault {name}: give a rate, as {name}=0.01 (a fraction of the candidate rows)")
        try:
            rate = float(value)
        except ValueError:
            raise ConfigError(f"fault {name}: rate {value.strip()!r} is not a number; give a fraction in (0, 1]") from None
        if not 0 < rate <= 1:
            raise ConfigError(f"fault {name}: rate {rate:g} is outside (0, 1]; give a fraction of the candidate rows")
        if name in out:
            raise ConfigError(f"fault {name} is given twice in --faults")
        out[name] = rate
    return out


def _dates(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(col, pa.int32()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _ints(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _set(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


class FaultInjector:
    """Applies the faults to each chunk's Arrow tables and counts what it did."""

    def __init__(self, rates: dict[str, float], *, seed: int, site: str, first_person_id: int, persons: int) -> None:
        self.rates = dict(rates)
        self.seed = seed
        self.site_key = zlib.crc32(site.encode())
        self.next_orphan = first_person_id + persons + 1  # person ids no person of the site has
        self.counts: dict[str, dict[str, Any]] = {
            name: {"candidates": 0, "rows": 0, "by_concept": {}, "side_effects": {}} for name in self.rates}
        self.unmapped_sources: set[str] = set()

    def prepare(self, cdm: Any) -> None:
        """Before any row is written: let the fields that will hold NULLs hold them."""
        if "missing_required_fields" in self.rates:
            f = FAULTS["missing_required_fields"]
            cdm.allow_nulls(f.table, f.field)

    def _rng(self, chunk: int, name: str) -> np.random.Generator:
        key = zlib.crc32(name.encode())
        return np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.seed >> 32, self.site_key,
                                                             chunk, key, 0xFA17]))

    def _pick(self, name: str, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sel = candidates & (rng.random(len(candidates)) < self.rates[name])
        self.counts[name]["candidates"] += int(candidates.sum())
        self.counts[name]["rows"] += int(sel.sum())
        return sel

    def _side(self, name: str, check: str, table: str, field: str, n: int) -> None:
        key = (check, table, field)
        se = self.counts[name]["side_effects"]
        se[key] = se.get(key, 0) + n

    def apply(self, tables: dict[str, pa.Table], chunk: int) -> dict[str, pa.Table]:
        from mercia.synth.concepts import concept_tables

        out = dict(tables)
        person = out["person"]
        pid = _ints(person["person_id"])
        birth = (np.array([f"{y:04d}-{m:02d}-{d:02d}" for y, m, d in zip(
            _ints(person["year_of_birth"]), _ints(person["month_of_birth"]), _ints(person["day_of_birth"]),
            strict=True)], dtype="datetime64[D]").astype(np.int64))
        birth_of = dict(zip(pid.tolist(), birth.tolist(), strict=True))
        death = out["death"]
        death_of = dict(zip(_ints(death["person_id"]).tolist(), _dates(death["death_date"]).tolist(), strict=True))

        if "events_after_death" in self.rates:
            rng = self._rng(chunk, "events_after_death")
            co = out["condition_occurrence"]
            p = _ints(co["person_id"])
            cand = np.isin(p, np.fromiter(death_of, dtype=np.int64, count=len(death_of)))
            sel = self._pick("events_after_death", cand, rng)
            day = _dates(co["condition_start_date"])
            shift = rng.integers(61, 361, len(day))
            died = np.array([death_of.get(x, 0) for x in p.tolist()], dtype=np.int64)
            day = np.where(sel, died + shift, day)
            out["condition_occurrence"] = co = _set(co, "condition_start_date",
                                                    pa.array(day.astype(np.int32), type=pa.date32()))
            with_visit = sel & ~np.asarray(co["visit_occurrence_id"].is_null().to_numpy(zero_copy_only=False))
            self._side("events_after_death", "withinVisitDates", "condition_occurrence", "condition_start_date",
                       int(with_visit.sum()))

        if "unmapped_source_codes" in self.rates:
            rng = self._rng(chunk, "unmapped_source_codes")
            co = out["condition_occurrence"]
            concept = _ints(co["condition_concept_id"])
            sel = self._pick("unmapped_source_codes", np.ones(len(concept), dtype=bool), rng)
            sources = co["condition_source_value"].to_pylist()
            self.unmapped_sources.update(s for s, hit in zip(sources, sel.tolist(), strict=True) if hit and s)
            out["condition_occurrence"] = _set(co, "condition_concept_id", pa.array(np.where(sel, 0, concept)))

        if "end_before_start" in self.rates:
            rng = self._rng(chunk, "end_before_start")
            de = out["drug_exposure"]
            start = _dates(de["drug_exposure_start_date"])
            born = np.array([birth_of[x] for x in _ints(de["person_id"]).tolist()], dtype=np.int64)
            sel = self._pick("end_before_start", start >= born + 31, rng)
            end = np.where(sel, start - rng.integers(1, 31, len(start)), _dates(de["drug_exposure_end_date"]))
            out["drug_exposure"] = _set(de, "drug_exposure_end_date", pa.array(end.astype(np.int32), type=pa.date32()))

        if "wrong_domain_concepts" in self.rates:
            rng = self._rng(chunk, "wrong_domain_concepts")
            de = out["drug_exposure"]
            concept = _ints(de["drug_concept_id"])
            sel = self._pick("wrong_domain_concepts", np.ones(len(concept), dtype=bool), rng)
            condition = int(concept_tables().condition[0])
            out["drug_exposure"] = _set(de, "drug_concept_id", pa.array(np.where(sel, condition, concept)))

        if "missing_required_fields" in self.rates:
            rng = self._rng(chunk, "missing_required_fields")
            de = out["drug_exposure"]
            col = de["drug_type_concept_id"]
            sel = self._pick("missing_required_fields", np.ones(len(col), dtype=bool), rng)
            out["drug_exposure"] = _set(de, "drug_type_concept_id",
                                        pa.array(_ints(col), type=pa.int64(), mask=sel))
            self._side("missing_required_fields", "measureValueCompleteness", "drug_exposure",
                       "drug_type_concept_id", int(sel.sum()))

        if "values_out_of_range" in self.rates:
            from mercia.dq.catalogue import CONCEPT_RANGES

            rng = self._rng(chunk, "values_out_of_range")
            m = out["measurement"]
            concept = _ints(m["measurement_concept_id"])
            unit = _ints(m["unit_concept_id"])
            high = np.array([CONCEPT_RANGES.get((c, u), ("", 0, np.nan))[2]
                             for c, u in zip(concept.tolist(), unit.tolist(), strict=True)], dtype=np.float64)
            value = m["value_as_number"].to_numpy(zero_copy_only=False).astype(np.float64)
            sel = self._pick("values_out_of_range", ~np.isnan(high) & ~np.isnan(value), rng)
            new = np.where(sel, np.round(high * (1.1 + rng.random(len(value))), 1), value)
            out["measurement"] = _set(m, "value_as_number", pa.array(new, mask=np.isnan(new)))
            by = self.counts["values_out_of_range"]["by_concept"]
            for c, u in zip(concept[sel].tolist(), unit[sel].tolist(), strict=True):
                by[(c, u)] = by.get((c, u), 0) + 1

        if "orphan_foreign_keys" in self.rates:
            rng = self._rng(chunk, "orphan_foreign_keys")
            m = out["measurement"]
            p = _ints(m["person_id"])
            sel = self._pick("orphan_foreign_keys", np.ones(len(p), dtype=bool), rng)
            k = int(sel.sum())
            new = p.copy()
            new[sel] = np.arange(self.next_orphan, self.next_orphan + k)
            self.next_orphan += k
            out["measurement"] = _set(m, "person_id", pa.array(new))
            # Persons whose every measurement became an orphan now have none (measurePersonCompleteness).
            lost = len(np.setdiff1d(np.unique(p), np.unique(p[~sel])))
            self._side("orphan_foreign_keys", "measurePersonCompleteness", "measurement", "", lost)
        return out

    def truth(self) -> list[dict[str, Any]]:
        out = []
        for name, rate in self.rates.items():
            f = FAULTS[name]
            c = self.counts[name]
            entry: dict[str, Any] = {
                "fault": name, "description": f.description, "rate": rate, "table": f.table, "field": f.field,
                "check": {"name": f.check, "level": f.level, "table": f.table, "field": f.check_field or f.field},
                "candidates": c["candidates"], "rows": c["rows"],
                "side_effects": [{"check": k[0], "table": k[1], "field": k[2] or None, "rows": n}
                                 for k, n in sorted(c["side_effects"].items())],
            }
            if name == "values_out_of_range":
                entry["by_concept"] = [{"concept_id": cu[0], "unit_concept_id": cu[1], "rows": n}
                                       for cu, n in sorted(c["by_concept"].items())]
            if name == "unmapped_source_codes":
                entry["side_effects"].append({"check": "sourceValueCompleteness", "table": "condition_occurrence",
                                              "field": "condition_source_value",
                                              "distinct_source_values": len(self.unmapped_sources)})
            out.append(entry)
        return out
