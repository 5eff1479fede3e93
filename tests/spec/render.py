"""Write docs/reference/analysis-spec.md from the spec cases: `python -m tests.spec.render` (from the
repository root; `--check` exits 1 when the file is stale instead of writing it).

It lives beside the cases rather than in tools/ or src/: it reads nothing but them, the cases are test
code (not part of the installed package), and tests/test_analysis_spec.py imports it to fail when the
document is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from . import OPERATIONS, modules
from .case import Case
from .tables import Table, table

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "analysis-spec.md"

HEADER = """# Analysis specification, by example

_Generated from the spec cases in `tests/spec/` by `python -m tests.spec.render`; a test fails when this
file is stale._

Each example below is a test. The input tables are written into an empty OMOP CDM (columns left out
are filled with zeros or numbered ids), the analysis runs with the settings shown, every result table
passes `mercia.disclosure.release()` under the policy shown, and the released table must be the one
shown: the columns listed, every row, numbers to the digits written; an empty cell is a suppressed
value. Each runs on DuckDB, PostgreSQL and Spark in CI, and must give the same released table on all
three. The expected numbers were worked out by hand
(the reasoning is under each example) or with an independent library (lifelines, scikit-learn), never
copied from Mercia's output.

Most examples release under the policy "exact (test)" (threshold 0, no rounding, exact means) so that
the numbers can be checked; each operation also has an example under a stricter policy.
"""


def markdown(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(c) for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in t.cells]
    return "\n".join(lines)


def _yaml(data: object, flow: bool | None = None) -> str:
    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=flow).strip() + "\n```"


def _case(c: Case) -> str:
    parts = [f"### {c.title}", f"`{c.call}`"]
    for name, t in c.input_tables().items():
        parts += [f"Input `{name}`:", markdown(t)]
    for label, value in c.arguments.items():
        parts += [f"{label}:", _yaml(value, flow=False)]
    if c.settings is not None:
        settings = c.settings.model_dump(mode="json", exclude_defaults=True)
        parts += ["Settings (those not at their defaults):", _yaml(settings, flow=False) if settings else "(all defaults)"]
    if c.policy is not None:
        parts += ["Disclosure policy:", _yaml(c.policy.model_dump(mode="json", exclude_defaults=True), flow=False)]
    for name, text in c.expected.items():
        label = f"At the site (row-level, never released) `{name}`" if name in c.site_only else f"Released `{name}`"
        if name in c.only_rows:
            label += " (the rows with " + ", ".join(f"{k} = {v}" for k, v in c.only_rows[name].items()) + ")"
        parts += [label + ":", markdown(table(text))]
    if c.why:
        parts.append(f"_Why:_ {c.why}")
    return "\n\n".join(parts)


def render() -> str:
    out = [HEADER.strip()]
    mods = modules()
    out.append("\n".join(f"- [{m.TITLE}](#{m.TITLE.lower().replace(' ', '-').replace(chr(39), '')})"
                         for m in mods))
    for name, m in zip(OPERATIONS, mods, strict=True):
        intro = (m.__doc__ or "").strip()
        out.append(f"## {m.TITLE}\n\n{intro}\n\n_Cases: `tests/spec/{name}.py`._")
        out += [_case(c) for c in m.CASES]
    return "\n\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.name} is stale: run python -m tests.spec.render", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(DOC.parents[2])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
