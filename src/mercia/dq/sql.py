"""Each check as sqlglot trees: its numerator (violated rows) and its denominator.

A part is either an aggregate over the check's own table (alias `t`), which the runner computes together
with every other aggregate of that table in one scan, or a scalar query of its own (joins to another table).
Values come from the catalogue and are bound as parameters; identifiers come from the CDM specification.
Semantics follow OHDSI DataQualityDashboard's SQL for each check (cited per builder).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from mercia.cdm import Cdm
from mercia.dq.catalogue import GENDER_CONCEPT, Check

T = "t"  # the checked table's alias


@dataclass
class Agg:
    """An aggregate expression over the checked table `t` (one scan per table computes all of them)."""
    expr: exp.Expression
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scalar:
    """A query of its own giving one number."""
    select: exp.Select
    params: dict[str, Any] = field(default_factory=dict)


Part = Agg | Scalar


class Binder:
    """Names bound parameters uniquely within one run, so aggregates of a table can share a statement."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, value: Any, params: dict[str, Any]) -> exp.Placeholder:
        self.n += 1
        name = f"dq{self.n}"
        params[name] = value
        return exp.Placeholder(this=name)


def _col(name: str, table: str = T) -> exp.Column:
    return exp.column(name, table=table)


def _date(e: exp.Expression) -> exp.Expression:
    return exp.Cast(this=e, to=exp.DataType.build("DATE"))


def _plus_days(e: exp.Expression, days: int) -> exp.Expression:
    return exp.DateAdd(this=e, expression=exp.Literal.number(days), unit=exp.var("DAY"))


def count_if(cond: exp.Expression) -> exp.Expression:
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=cond, true=exp.Literal.number(1))], default=exp.Literal.number(0)))


def _count_star() -> exp.Expression:
    return exp.Count(this=exp.Star())


def _scalar_count(cdm: Cdm, table: str, where: exp.Expression | None = None,
                  joins: list[tuple[exp.Table, exp.Expression]] = ()) -> exp.Select:
    q = exp.select(_count_star()).from_(cdm.table(table, alias=T))
    for tbl, on in joins:
        q = q.join(tbl, on=on)
    return q.where(where) if where is not None else q


def _rows() -> Agg:
    return Agg(_count_star())


def _not_null(f: str) -> Agg:
    return Agg(count_if(_col(f).is_(exp.null()).not_()))


def parts(check: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    """(numerator, denominator) of one check; cdmTable and cdmField need no SQL (the runner answers them)."""
    builder = BUILDERS.get((check.name, check.level))
    if builder is None:
        raise KeyError(f"no SQL for check {check.name} at level {check.level}")
    return builder(check, cdm, bind, today)


Builder = Callable[[Check, Cdm, Binder, dt.date], tuple[Part, Part]]
BUILDERS: dict[tuple[str, str], Builder] = {}


def _builder(name: str, level: str = "FIELD") -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        BUILDERS[(name, level)] = fn
        return fn
    return register


@_builder("measurePersonCompleteness", "TABLE")
def _person_completeness(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD table_person_completeness.sql: persons with no row in the table / persons.
    has_row = exp.select(exp.Literal.number(1)).from_(cdm.table(c.table, alias="r")).where(
        _col("person_id", "r").eq(_col("person_id", "p")))
    num = exp.select(_count_star()).from_(cdm.table("person", alias="p")).where(
        exp.Exists(this=has_row).not_())
    den = exp.select(_count_star()).from_(cdm.table("person", alias="p"))
    return Scalar(num), Scalar(den)


@_builder("isRequired")
def _is_required(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_is_not_nullable.sql: NULLs / all rows.
    return Agg(count_if(_col(c.field).is_(exp.null()))), _rows()


@_builder("measureValueCompleteness")
def _value_completeness(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_measure_value_completeness.sql: NULLs / all rows.
    return Agg(count_if(_col(c.field).is_(exp.null()))), _rows()


@_builder("cdmDatatype")
def _datatype(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_cdm_datatype.sql: values of an integer field that are not whole numbers / all rows.
    as_double = exp.Cast(this=_col(c.field), to=exp.DataType.build("DOUBLE"))
    bad = exp.and_(_col(c.field).is_(exp.null()).not_(), as_double.neq(exp.Floor(this=as_double.copy())))
    return Agg(count_if(bad)), _rows()


@_builder("isPrimaryKey")
def _primary_key(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_is_primary_key.sql: rows whose key value occurs more than once / all rows.
    groups = (exp.select(_count_star().as_("n")).from_(cdm.table(c.table, alias=T)).group_by(_col(c.field))
              .having(exp.GT(this=_count_star(), expression=exp.Literal.number(1))))
    num = exp.select(exp.Coalesce(this=exp.Sum(this=exp.column("n")), expressions=[exp.Literal.number(0)])) \
        .from_(groups.subquery("d"))
    return Scalar(num), _rows()


@_builder("isForeignKey")
def _foreign_key(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD is_foreign_key.sql: non-NULL values with no match in the referenced table / all rows.
    fk_table, fk_field = c.param("fk_table"), c.param("fk_field")
    match = exp.select(exp.Literal.number(1)).from_(cdm.table(fk_table, alias="fk")).where(
        _col(fk_field, "fk").eq(_col(c.field)))
    where = exp.and_(_col(c.field).is_(exp.null()).not_(), exp.Exists(this=match).not_())
    return Scalar(_scalar_count(cdm, c.table, where)), _rows()


def _concept_join(cdm: Cdm, c: Check) -> list[tuple[exp.Table, exp.Expression]]:
    return [(cdm.table("concept", alias="co"), _col("concept_id", "co").eq(_col(c.field)))]


@_builder("fkDomain")
def _fk_domain(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_fk_domain.sql: concepts (0 excepted) outside the field's domain / all rows.
    params: dict[str, Any] = {}
    where = exp.and_(_col("concept_id", "co").neq(exp.Literal.number(0)),
                     _col("domain_id", "co").neq(bind(c.param("fk_domain"), params)))
    return Scalar(_scalar_count(cdm, c.table, where, _concept_join(cdm, c)), params), _rows()


@_builder("fkClass")
def _fk_class(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_fk_class.sql: concepts (0 excepted) outside the field's concept class / all rows.
    params: dict[str, Any] = {}
    where = exp.and_(_col("concept_id", "co").neq(exp.Literal.number(0)),
                     _col("concept_class_id", "co").neq(bind(c.param("fk_class"), params)))
    return Scalar(_scalar_count(cdm, c.table, where, _concept_join(cdm, c)), params), _rows()


@_builder("isStandardValidConcept")
def _standard_valid(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_is_standard_valid_concept.sql: concepts (0 excepted) not standard or not valid / non-NULL rows.
    params: dict[str, Any] = {}
    standard = _col("standard_concept", "co")
    where = exp.and_(_col("concept_id", "co").neq(exp.Literal.number(0)),
                     exp.or_(standard.is_(exp.null()), standard.neq(bind("S", params)),
                             _col("invalid_reason", "co").is_(exp.null()).not_()))
    return Scalar(_scalar_count(cdm, c.table, where, _concept_join(cdm, c)), params), _not_null(c.field)


def _source_value_field(c: Check, cdm: Cdm) -> str | None:
    """The source value a NULL concept field should have been mapped from (DQD's rule for optional
    concept fields: NULL with a source value counts as unmapped)."""
    spec = cdm.spec.table(c.table)
    if spec.field(c.field).required:
        return None
    stem = c.field.removesuffix("_concept_id").removesuffix("_source")
    name = f"{stem}_source_value"
    return name if name in spec.column_names else None


def _record_completeness(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_concept_record_completeness.sql: rows mapped to 0 (or NULL with a source value) / all rows.
    bad: exp.Expression = _col(c.field).eq(exp.Literal.number(0))
    source = _source_value_field(c, cdm)
    if source is not None:
        bad = exp.or_(bad, exp.and_(_col(c.field).is_(exp.null()), _col(source).is_(exp.null()).not_()))
    return Agg(count_if(bad)), _rows()


BUILDERS[("standardConceptRecordCompleteness", "FIELD")] = _record_completeness
BUILDERS[("sourceConceptRecordCompleteness", "FIELD")] = _record_completeness


@_builder("sourceValueCompleteness")
def _source_value_completeness(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_source_value_completeness.sql: distinct source values mapped to 0 / distinct source values.
    concept = c.param("concept_field")
    num = exp.select(exp.Count(this=exp.Distinct(expressions=[_col(c.field)]))).from_(
        cdm.table(c.table, alias=T)).where(_col(concept).eq(exp.Literal.number(0)))
    return Scalar(num), Agg(exp.Count(this=exp.Distinct(expressions=[_col(c.field)])))


def _bound_value(c: Check, key: str, today: dt.date) -> Any:
    v = c.param(key)
    if v == "today+1":
        return today + dt.timedelta(days=1)
    if v == "this_year+1":
        return today.year + 1
    if isinstance(v, str):
        return dt.date.fromisoformat(v)
    return v


def _field_value(c: Check, cdm: Cdm) -> exp.Expression:
    kind = cdm.spec.table(c.table).field(c.field).type
    return _date(_col(c.field)) if kind in ("date", "datetime") else _col(c.field)


@_builder("plausibleValueLow")
def _value_low(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_plausible_value_low.sql: values below the bound / non-NULL rows.
    params: dict[str, Any] = {}
    bad = exp.LT(this=_field_value(c, cdm), expression=bind(_bound_value(c, "low", today), params))
    return Agg(count_if(bad), params), _not_null(c.field)


@_builder("plausibleValueHigh")
def _value_high(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_plausible_value_high.sql: values above the bound / non-NULL rows.
    params: dict[str, Any] = {}
    bad = exp.GT(this=_field_value(c, cdm), expression=bind(_bound_value(c, "high", today), params))
    return Agg(count_if(bad), params), _not_null(c.field)


@_builder("plausibleDuringLife")
def _during_life(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_plausible_during_life.sql: dates more than 60 days after death / rows of persons who died.
    death = cdm.table("death", alias="de")
    bad = exp.GT(this=_date(_col(c.field)), expression=_plus_days(_date(_col("death_date", "de")), 60))
    num = _scalar_count(cdm, c.table, bad, [(death, _col("person_id", "de").eq(_col("person_id")))])
    died = exp.select(_col("person_id", "d")).from_(cdm.table("death", alias="d"))
    den = _scalar_count(cdm, c.table, _col("person_id").isin(query=died))
    return Scalar(num), Scalar(den)


def _birth_date() -> exp.Expression:
    def part(name: str) -> exp.Expression:
        return exp.Coalesce(this=_col(name, "p"), expressions=[exp.Literal.number(1)])

    parts_ = exp.Anonymous(this="make_date", expressions=[_col("year_of_birth", "p"), part("month_of_birth"),
                                                          part("day_of_birth")])
    return exp.Coalesce(this=_date(_col("birth_datetime", "p")), expressions=[parts_])


@_builder("plausibleAfterBirth")
def _after_birth(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_plausible_after_birth.sql: dates before the person's birth / non-NULL rows.
    person = cdm.table("person", alias="p")
    bad = exp.and_(_col(c.field).is_(exp.null()).not_(), exp.LT(this=_date(_col(c.field)), expression=_birth_date()))
    num = _scalar_count(cdm, c.table, bad, [(person, _col("person_id", "p").eq(_col("person_id")))])
    return Scalar(num), _not_null(c.field)


@_builder("plausibleStartBeforeEnd")
def _start_before_end(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_plausible_start_before_end.sql: start after end / rows with both.
    end = c.param("end_field")
    both = exp.and_(_col(c.field).is_(exp.null()).not_(), _col(end).is_(exp.null()).not_())
    bad = exp.and_(both.copy(), exp.GT(this=_date(_col(c.field)), expression=_date(_col(end))))
    return Agg(count_if(bad)), Agg(count_if(both))


@_builder("withinVisitDates")
def _within_visit(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD field_within_visit_dates.sql: dates more than 7 days outside their visit / rows with a visit.
    visit = [(cdm.table("visit_occurrence", alias="vo"),
              _col("visit_occurrence_id", "vo").eq(_col("visit_occurrence_id")))]
    value = _date(_col(c.field))
    bad = exp.or_(exp.LT(this=value, expression=_plus_days(_col("visit_start_date", "vo"), -7)),
                  exp.GT(this=value.copy(), expression=_plus_days(_col("visit_end_date", "vo"), 7)))
    return Scalar(_scalar_count(cdm, c.table, bad, visit)), Scalar(_scalar_count(cdm, c.table, None, visit))


def _is_concept(c: Check, params: dict[str, Any], bind: Binder, field_: str | None = None) -> exp.Expression:
    return _col(field_ or c.field).eq(bind(c.concept_id, params))


def _concept_value(c: Check, bind: Binder, key: str, op: type[exp.Binary]) -> tuple[Part, Part]:
    # DQD concept_plausible_value_low/high.sql: rows of (concept, unit) with a value beyond the bound /
    # rows of (concept, unit) with a value.
    pn: dict[str, Any] = {}
    pd_: dict[str, Any] = {}

    def of(params: dict[str, Any]) -> exp.Expression:
        return exp.and_(_is_concept(c, params, bind, "measurement_concept_id"),
                        _col("unit_concept_id").eq(bind(c.unit_concept_id, params)),
                        _col("value_as_number").is_(exp.null()).not_())

    bad = exp.and_(of(pn), op(this=_col("value_as_number"), expression=bind(c.param(key), pn)))
    return Agg(count_if(bad), pn), Agg(count_if(of(pd_)), pd_)


@_builder("plausibleValueLow", "CONCEPT")
def _concept_low(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    return _concept_value(c, bind, "low", exp.LT)


@_builder("plausibleValueHigh", "CONCEPT")
def _concept_high(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    return _concept_value(c, bind, "high", exp.GT)


@_builder("plausibleGender", "CONCEPT")
def _gender(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD concept_plausible_gender.sql: rows of the concept for persons of another gender / rows of it.
    pn: dict[str, Any] = {}
    pd_: dict[str, Any] = {}
    person = cdm.table("person", alias="p")
    bad = exp.and_(_is_concept(c, pn, bind),
                   _col("gender_concept_id", "p").neq(bind(GENDER_CONCEPT[c.param("gender")], pn)))
    num = _scalar_count(cdm, c.table, bad, [(person, _col("person_id", "p").eq(_col("person_id")))])
    return Scalar(num, pn), Agg(count_if(_is_concept(c, pd_, bind)), pd_)


@_builder("plausibleUnitConceptIds", "CONCEPT")
def _units(c: Check, cdm: Cdm, bind: Binder, today: dt.date) -> tuple[Part, Part]:
    # DQD concept_plausible_unit_concept_ids.sql: rows of the concept with a unit (0 excepted) not in the
    # list / rows of the concept whose unit is not 0.
    pn: dict[str, Any] = {}
    pd_: dict[str, Any] = {}
    unit = _col("unit_concept_id")
    allowed = [bind(u, pn) for u in (*c.param("units"), 0)]
    bad = exp.and_(_is_concept(c, pn, bind), unit.is_(exp.null()).not_(), exp.In(this=unit, expressions=allowed).not_())
    den = exp.and_(_is_concept(c, pd_, bind), exp.or_(unit.copy().neq(exp.Literal.number(0)),
                                                        unit.copy().is_(exp.null())))
    return Agg(count_if(bad), pn), Agg(count_if(den), pd_)
