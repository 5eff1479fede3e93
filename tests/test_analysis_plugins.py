"""Analyses as plug-ins: each analysis type is one module registered in `mercia.study.kinds`, and the
package schema, the runner, the report, the node's regression rounds and the package reference find
it there. An analysis type written in this test module is registered, run through a whole study and
shown in its report, without any other file knowing it, then removed again."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pandas as pd
import pytest
from pydantic import Field
from sqlglot import exp

from mercia.analyses import AnalysisResult
from mercia.analyses.notes import Note, NoteCode
from mercia.cdm import Cdm
from mercia.disclosure import ResultTable
from mercia.errors import StudyError
from mercia.report.html import ReportGroup, Section, esc, table_html
from mercia.study import StudyPackage, kinds, run_study
from mercia.study.kinds.base import AnalysisKind, Key
from mercia.synth import DEFAULT_SITES, generate_site

if TYPE_CHECKING:
    from mercia.report.study import StudyReport

SRC = Path(__file__).resolve().parents[1] / "src" / "mercia"
BUILTIN = ("characterization", "compare_cohorts", "cohort_entries", "incidence", "prevalence", "kaplan_meier",
           "cox", "prediction", "cohort_method")

SIZES = ReportGroup(id="cohort-sizes", title="Cohort sizes", nav="Sizes", order=70)


class CohortSizes(AnalysisKind):
    """Distinct persons in each cohort (an analysis type of this test module)."""

    report_groups: ClassVar[tuple[ReportGroup, ...]] = (SIZES,)

    type: Literal["cohort_sizes"]
    cohorts: list[Key] = Field(min_length=1, description="keys of the cohorts to count")
    optional: list[Key] = Field(default_factory=list, description="keys of cohorts counted if not below threshold")

    def cohorts_used(self) -> list[str]:
        return [*self.cohorts, *self.optional]

    def without_small(self, small: set[str]) -> tuple[CohortSizes, list[Note]]:
        dropped = [k for k in self.optional if k in small]
        kept = self.model_copy(update={"optional": [k for k in self.optional if k not in small]})
        return kept, [Note(NoteCode.BELOW_THRESHOLD, cohort=k) for k in dropped]

    def run(self, cdm: Cdm, ids: dict[str, int], *, name: str) -> AnalysisResult:
        wanted = [ids[k] for k in [*self.cohorts, *self.optional]]
        q = (
            exp.select(exp.column("cohort_definition_id").as_("cohort_id"),
                       exp.Count(this=exp.Distinct(expressions=[exp.column("subject_id")])).as_("persons"))
            .from_(cdm.table("cohort"))
            .where(exp.column("cohort_definition_id").isin(*[exp.Placeholder(this=f"c{i}") for i in range(len(wanted))]))
            .group_by(exp.column("cohort_definition_id"))
            .order_by(exp.column("cohort_definition_id"))
        )
        rows = cdm.fetch_all(q, {f"c{i}": v for i, v in enumerate(wanted)})
        df = pd.DataFrame(rows, columns=["cohort_id", "persons"]).astype("int64")
        table = ResultTable(name=name, kind="counts", data=df, dimensions=["cohort_id"], count_columns=["persons"])
        return AnalysisResult("cohort_sizes", {name: table})

    def report(self, r: StudyReport) -> list[Section]:
        p = self.table_prefix()
        return [Section(SIZES, f"\n<h3>{esc(p)}</h3>\n{table_html(r.with_cohort_names(r.data(p)))}\n")]


def cond(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "concepts": {"c": {"name": name, "conditions": [key]}},
            "entry": [{"condition": "c", "first": True}]}


NOBODY = {**cond("Infants with prostate cancer", "prostate_cancer"),
          "entry": [{"condition": "c", "first": True, "age": {"max": 0}}]}
PACKAGE: dict[str, Any] = {
    "name": "sizes",
    "cohorts": {"htn": {"definition": cond("Hypertension", "hypertension")},
                "t2d": {"definition": cond("Type 2 diabetes", "type2_diabetes")},
                "nobody": {"definition": NOBODY}},
    "analyses": [{"type": "cohort_sizes", "name": "sizes", "cohorts": ["htn", "t2d"], "optional": ["nobody"]},
                 {"type": "cohort_entries", "cohorts": ["htn"]}],
    "disclosure": "opensafely",
}


@pytest.fixture
def registered() -> Iterator[type[CohortSizes]]:
    kinds.register(CohortSizes)
    try:
        yield CohortSizes
    finally:
        kinds.unregister("cohort_sizes")


@pytest.fixture(scope="module")
def site() -> Iterator[Cdm]:
    cdm = Cdm.open(None)
    generate_site(cdm, persons=2000, seed=5, profile=DEFAULT_SITES[0])
    yield cdm
    cdm.close()


def test_a_type_registered_from_outside_runs_through_the_runner_and_the_report(
    registered: type[CohortSizes], site: Cdm, tmp_path: Path
) -> None:
    pkg = StudyPackage.from_dict(PACKAGE)
    assert isinstance(pkg.analyses[0], CohortSizes)
    run = run_study(pkg, site, tmp_path / "out", site="northgate")
    # Released like every table; the persons per cohort are those of the study's own cohort counts
    # (the same persons, through the same policy).
    sizes = run.tables["sizes"].data.set_index("cohort_id")["persons"]
    counts = run.tables["cohort_counts"].data.set_index("cohort_id")["persons"]
    ids = pkg.cohort_ids
    assert sorted(sizes.index) == sorted([ids["htn"], ids["t2d"]])
    assert sizes.to_dict() == counts.drop(ids["nobody"]).to_dict()
    # The cohort below the threshold was left out before the run, as the type said, with its note.
    assert [n.to_dict()["code"] for n in run.notes["sizes"]] == ["below_threshold"]
    assert json.loads((tmp_path / "out" / "results" / "sizes.json").read_text())["name"] == "sizes"
    meta = {a["name"]: a for a in run.manifest["analyses"]}
    assert meta["sizes"]["type"] == "cohort_sizes" and meta["sizes"]["status"] == "done"
    html = (tmp_path / "out" / "report.html").read_text()
    assert '<a href="#cohort-sizes">Sizes</a>' in html
    section = html.split('<h2 id="cohort-sizes">Cohort sizes</h2>', 1)[1].split("<h2", 1)[0]
    assert "<h3>sizes</h3>" in section and "htn (Hypertension)" in section and "t2d (Type 2 diabetes)" in section
    assert "nobody" not in section
    # Its group comes after the built-in ones, before the disclosure log.
    assert html.index('id="incidence"') < html.index('id="cohort-sizes"') < html.index('id="disclosure"')


def test_the_package_reference_lists_a_registered_type(registered: type[CohortSizes]) -> None:
    from mercia.study.package_doc import study_package_markdown

    text = study_package_markdown()
    assert "### `cohort_sizes`" in text and "| `cohorts` | list of text" in text.split("### `cohort_sizes`")[1]


def test_an_unregistered_type_is_refused_again(site: Cdm) -> None:
    kinds.register(CohortSizes)
    StudyPackage.from_dict(PACKAGE)
    kinds.unregister("cohort_sizes")
    with pytest.raises(StudyError, match=r"analyses\[0\]: unknown analysis type 'cohort_sizes'; use one of "
                                         r"characterization, compare_cohorts, .*cohort_method$"):
        StudyPackage.from_dict(PACKAGE)
    assert "cohort_sizes" not in kinds.types()
    assert "cohort-sizes" not in [g.id for g in kinds.report_groups()]


def test_registering_refuses_a_taken_type_and_a_model_without_one() -> None:
    class OtherCox(AnalysisKind):
        type: Literal["cox"]

    with pytest.raises(ValueError, match="analysis type 'cox' is registered already"):
        kinds.register(OtherCox)

    class NoType(AnalysisKind):
        size: int = 1

    with pytest.raises(TypeError, match=r"needs a field `type: Literal\['<its name>'\]`"):
        kinds.register(NoType)
    assert kinds.types() == BUILTIN


def test_each_builtin_type_is_one_module_of_the_registry() -> None:
    from mercia.study import package

    assert kinds.types() == BUILTIN == package.ANALYSIS_TYPES
    for tag in BUILTIN:
        kind = kinds.get(tag)
        assert kind.__module__ == f"mercia.study.kinds.{tag}"
        assert kind.report_groups, tag  # every type shows itself in the report
    assert [k.type_name() for k in kinds.all_kinds() if k.federated] == ["cox"]
    groups = [g.id for g in kinds.report_groups()]
    assert groups == ["table1", "incidence", "survival", "cox", "prediction", "cohort-method"]


# What only a type's own module may write: a branch on an analysis's type.
TYPE_BRANCH = re.compile(r"\.type\s*(==|!=|in\b|not\s+in\b)|\.type_name\(\)\s*(==|!=)")
READERS = ["study/runner.py", "study/package.py", "study/package_doc.py", "report/study.py",
           "federation/node/rounds.py", "federation/hub/federated.py", "federation/node/worker.py"]


def test_the_runner_report_schema_and_federation_do_not_branch_on_a_type() -> None:
    found = [f"{rel}:{n}: {line.strip()}" for rel in READERS
             for n, line in enumerate((SRC / rel).read_text().splitlines(), start=1) if TYPE_BRANCH.search(line)]
    assert found == []
    assert TYPE_BRANCH.search('if a.type == "cohort_method":') and TYPE_BRANCH.search("x.type in ('a',)")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each import in a file (names empty for `import x`)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_dependencies_point_one_way() -> None:
    """analyses never import the report, the study or the federation, nor draw (plotly, jinja2: the
    figures are the report's); report/html.py imports nothing of Mercia (any layer may use it); nothing
    imports a private name of the report."""
    for path in (SRC / "analyses").rglob("*.py"):
        bad = [m for m, _ in _imports(path)
               if m.startswith(("mercia.report", "mercia.study", "mercia.federation", "plotly", "jinja2"))]
        assert bad == [], path
    assert [m for m, _ in _imports(SRC / "report" / "html.py") if m.startswith("mercia")] == []
    for path in SRC.rglob("*.py"):
        private = [(m, n) for m, names in _imports(path) if m.startswith("mercia.report")
                   for n in names if n.startswith("_")]
        assert private == [], path


def test_the_cohort_method_does_without_negative_controls_below_threshold() -> None:
    """Its type decides, before the run, which small cohorts it can do without: negative controls (an
    outcome that is also listed as a control stays, and any other small cohort stops the run)."""
    from mercia.study.kinds.cohort_method import CohortMethodAnalysis

    a = CohortMethodAnalysis(type="cohort_method", target="t", comparator="c", outcomes=["o", "nc2"],
                             negative_controls=["nc1", "nc2", "nc3"])
    kept, notes = a.without_small({"nc1", "nc2", "o"})
    assert kept.negative_controls == ["nc2", "nc3"] and kept.outcomes == ["o", "nc2"]
    assert [(n.code, n.params) for n in notes] == [(NoteCode.NEGATIVE_CONTROL_BELOW_THRESHOLD, {"cohort": "nc1"})]
    assert "o" in kept.cohorts_used()  # the runner stops it on the small outcome
    same, none = a.without_small(set())
    assert same is a and none == []
