"""The study report: one self-contained HTML file built only from released tables.

Every number shown comes from a `ReleasedTable` (or is recomputed from released numbers with the
analyses' own helpers: rates and their CIs, Kaplan-Meier curves, SMDs). plotly.js is embedded once
in the file, so the report opens offline and loads nothing from the network.

The page's frame is here: the study, the site, the cohorts and their attrition, the notes, the
disclosure log. Each analysis's part comes from its type (`AnalysisKind.report`, `mercia.study.kinds`),
as sections under the report groups the registered types declare, in the groups' order.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd

from mercia.disclosure import DisclosureLog, DisclosurePolicy, ReleasedTable
from mercia.report.html import Plots, ReportGroup, Section, esc, fmt, num, table_html

if TYPE_CHECKING:
    from mercia.study.package import StudyPackage


class StudyReport:
    """What an analysis type's report section reads: the package, the released tables by name, the
    figures of the page (plotly.js goes into the first), and the page's helpers."""

    def __init__(
        self,
        pkg: StudyPackage,
        tables: dict[str, ReleasedTable],
        log: DisclosureLog,
        policy: DisclosurePolicy,
        manifest: dict[str, Any],
    ) -> None:
        self.pkg = pkg
        self.ids = pkg.cohort_ids
        self.tables = tables
        self.log = log
        self.policy = policy
        self.manifest = manifest
        self.plots = Plots()
        key_of = {v: k for k, v in pkg.cohort_ids.items()}
        self.cohort_label = {cid: f"{key} ({pkg.cohort_name(key)})" for cid, key in key_of.items()}

    def data(self, name: str) -> pd.DataFrame | None:
        t = self.tables.get(name)
        return None if t is None else t.data

    def label(self, cid: Any) -> str:
        try:
            return self.cohort_label.get(int(cid), str(cid))
        except (TypeError, ValueError):
            return str(cid)

    def with_cohort_names(self, df: pd.DataFrame | None) -> pd.DataFrame:
        """`df` with its cohort_id column replaced by the cohorts' keys and names."""
        if df is None:
            return pd.DataFrame()
        if "cohort_id" not in df.columns:
            return df
        out = df.drop(columns=["cohort_id"])
        out.insert(0, "cohort", [self.label(c) for c in df["cohort_id"]])
        return out

    # ---- cohorts -------------------------------------------------------------------------------------
    def cohorts(self) -> dict[str, Any]:
        counts = self.data("cohort_counts")
        attrition = []
        for key in sorted(self.ids, key=self.ids.get):  # type: ignore[arg-type]
            df = self.data(f"attrition_{key}")
            if df is not None:
                attrition.append(
                    {
                        "title": self.label(self.ids[key]),
                        "html": table_html(df),
                        "plot": self._attrition_plot(df, self.label(self.ids[key])),
                    }
                )
        return {
            "counts": table_html(counts.drop(columns=["cohort"], errors="ignore")) if counts is not None else "",
            "attrition": attrition,
        }

    def _attrition_plot(self, df: pd.DataFrame, title: str) -> str:
        """Persons left after each step as bars, from the released counts; a suppressed step has no
        bar and says so."""
        import plotly.graph_objects as go

        if df.empty or "persons" not in df.columns:
            return ""
        persons = num(df["persons"])
        steps = [str(x) for x in df["step"]]
        text = ["suppressed" if np.isnan(v) else f"{int(v):,}" for v in persons]
        fig = go.Figure(
            go.Bar(
                x=np.nan_to_num(persons),
                y=steps,
                orientation="h",
                text=text,
                textposition="auto",
                hovertemplate="%{y}: %{text}<extra></extra>",
            )
        )
        fig.update_layout(
            xaxis_title="persons",
            yaxis={"autorange": "reversed"},
            height=90 + 34 * len(steps),
            margin={"l": 20, "r": 20, "t": 20},
            yaxis_automargin=True,
        )
        return self.plots.html(fig, f"Attrition of {title}: persons left after each step")

    # ---- Table 1 -------------------------------------------------------------------------------------
    # ---- population ----------------------------------------------------------------------------------
    def population(self, prefix: str) -> str:
        """One line per count column of the analysis's released attrition table(s) (`{prefix}_attrition`,
        or one per outcome, `{prefix}_attrition_{outcome}`): each rule that shaped the population and
        the persons left after it; suppressed counts show as an em dash."""
        own = f"{prefix}_attrition"
        lines = []
        for name in sorted(n for n in self.tables if n == own or n.startswith(own + "_")):
            df = self.data(name)
            if df is None or "step" not in df.columns or df.empty:
                continue
            outcome = name[len(own) + 1:]
            for col in [c for c in df.columns if c != "step"]:
                who = {"persons": "", "n_target": "target", "n_comparator": "comparator"}.get(
                    col, self.label(col.removeprefix("cohort_")))
                where = ", ".join(x for x in (f"outcome {outcome}" if outcome else "", who) if x)
                chain = " → ".join(
                    f"{html.escape(str(step).split('. ', 1)[-1])} <b>{html.escape(fmt(v))}</b>"
                    for step, v in zip(df["step"], df[col], strict=True)
                )
                lines.append(f'<p class="population">Population{" (" + html.escape(where) + ")" if where else ""}: '
                             f"{chain}</p>")
        return "".join(lines)

    # ---- disclosure ----------------------------------------------------------------------------------
    def disclosure(self) -> str:
        summ = self.log.summary(public=True)  # private entries (dropped rows) are not counted either
        outcomes = sorted({o for c in summ.values() for o in c})
        rows = [{"table": t, **{o: c.get(o, 0) for o in outcomes}} for t, c in sorted(summ.items())]
        # The log by rule, in its public form (as disclosure.json): primary and secondary suppressions
        # are merged, so the report does not say which suppressed cells were the small ones.
        entries = json.loads(self.log.to_json(public=True, indent=None))["entries"]
        by_rule = pd.DataFrame(entries, columns=["table", "rule", "outcome", "reason"])
        if len(by_rule):
            by_rule = (
                by_rule.groupby(["table", "rule", "outcome", "reason"], sort=True)
                .size()
                .rename("cells")
                .reset_index()
            )
        detail = (
            "<details><summary>The log by table, rule and reason</summary>"
            + table_html(by_rule)
            + "</details>"
        )
        return table_html(pd.DataFrame(rows)) + detail


def _groups_html(groups: list[ReportGroup], sections: list[Section]) -> tuple[str, str]:
    """The menu's links and the groups' blocks: each group with a section gets its heading and its
    slots' sections (each slot's in the package's order); every group is a block, empty or not."""
    nav, blocks = [], []
    for g in groups:
        mine = [s for s in sections if s.group.id == g.id]
        if mine:
            slots = ["".join(s.html for s in mine if s.slot == slot) for slot in g.slots]
            blocks.append(f'\n<h2 id="{esc(g.id)}">{esc(g.title)}</h2>\n' + "\n".join(slots) + "\n")
            nav.append(f'<a href="#{esc(g.id)}">{esc(g.nav)}</a>')
        else:
            blocks.append("")
        if g.nav_break:
            nav.append("\n")
    return "".join(nav), "\n" + "\n\n".join(blocks) + "\n"


def render_report(
    pkg: StudyPackage,
    tables: dict[str, ReleasedTable],
    log: DisclosureLog,
    policy: DisclosurePolicy,
    manifest: dict[str, Any],
) -> str:
    """The report's HTML. `tables` must all be released tables (checked)."""
    from mercia.study import kinds

    bad = [n for n, t in tables.items() if not isinstance(t, ReleasedTable)]
    if bad:
        from mercia.errors import StudyError

        raise StudyError(f"the report is built from released tables only; {bad} were not released")
    r = StudyReport(pkg, tables, log, policy, manifest)
    # Built first: the first figure made carries plotly.js, and the attrition plots come first on the page.
    cohort_section = r.cohorts()
    groups = kinds.report_groups()
    sections: list[Section] = []
    for a in pkg.analyses:
        for s in a.report(r):
            if s.group not in groups or s.slot not in s.group.slots:
                raise ValueError(f"analysis type {a.type!r}: section for group {s.group.id!r}, slot {s.slot!r}, "
                                 "which its type does not declare")
            sections.append(s)
    nav, analyses = _groups_html(groups, sections)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mercia.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    # The site line comes from the manifest's released summary only (persons through release(), the
    # observation span in whole years): no path, no row count, no date.
    summary = manifest.get("site_summary") or {}
    versions = manifest.get("versions", {})
    persons = summary.get("persons")
    years = summary.get("observation_years")
    return env.get_template("report.html.j2").render(
        study=pkg.name,
        description=pkg.spec.description,
        package_hash=pkg.content_hash,
        site=manifest.get("site"),
        policy=policy.rule_summary(),
        cdm={
            "cdm_version": versions.get("cdm") or "—",
            "persons": fmt(persons) if persons is not None else "— (suppressed)",
            "observation": f"{years} years" if years is not None else "—",
        },
        cohorts=cohort_section,
        notes={where: [n["text"] for n in items] for where, items in manifest.get("notes", {}).items()},
        nav=nav,
        analyses=analyses,
        disclosure=r.disclosure(),
        versions=manifest.get("versions", {}),
    )
