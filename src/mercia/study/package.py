"""Study packages: cohorts, analyses and a disclosure policy in one file, and the hash that names them.

A package is a YAML/JSON file (or a Python file setting ``STUDY`` to such a dict):

    name: NSAIDs and GI bleeding
    cohorts:                      # key -> a definition: inline cohort language, or a file
      diclofenac: {file: cohorts/diclofenac.yaml}        # .json (Circe or Mercia), .yaml, .py
      gi_bleed:   {id: 3, definition: {name: GI bleed, concepts: ..., entry: ...}}
    analyses:
      - {type: characterization, cohorts: [diclofenac, celecoxib]}
      - {type: cox, name: cox_adjusted, target: diclofenac, comparator: celecoxib, outcome: gi_bleed,
         settings: {survival: {censor_at: cohort_end}}}
    disclosure: opensafely        # or sacro, or explicit DisclosurePolicy settings

Analyses refer to cohorts by key, never by id. Cohort ids are given or assigned 1, 2, ... in the
sorted order of the keys, so reordering the file changes nothing. `StudyPackage.canonical()` is the
package with every cohort resolved and embedded (no paths) and every setting spelled out with its
default; its sha256 (`content_hash`) identifies exactly what will run.
"""

from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from mercia import limits
from mercia.cohorts.model import CohortDefinition
from mercia.disclosure import BUILTIN_POLICIES, DisclosurePolicy, effective_policy
from mercia.errors import MerciaError, StudyError
from mercia.study import kinds
from mercia.study.kinds.base import KEY as _KEY
from mercia.study.kinds.base import Key as _Key
from mercia.study.kinds.base import Strict

PACKAGE_FORMAT = "mercia-study/1"


class CohortRef(Strict):
    """One cohort of the package: exactly one of `file` (relative to the package) and `definition`."""

    id: int | None = Field(
        None, ge=1, le=limits.MAX_INT32,
        description="cohort_definition_id the cohort is generated under; default: the smallest ids not given "
        "to another cohort, 1, 2, ..., in the sorted order of the keys",
    )
    file: str | None = Field(
        None, max_length=limits.MAX_NAME,
        description="path of a definition file, relative to the package file: .json (an ATLAS/Circe "
        "export or Mercia's model form), .yaml/.yml (the cohort language) or .py (sets `COHORT`)",
    )
    definition: dict[str, Any] | None = Field(
        None,
        description="the definition written inline: the cohort language (name:, concepts:, entry:, ...; "
        "see the cohort-language reference) or Mercia's model form (a mapping with `expression`)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CohortRef:
        if (self.file is None) == (self.definition is None):
            raise ValueError("give exactly one of `file` (a path) and `definition` (inline)")
        return self


def _analysis_union() -> Any:
    """The `analyses:` item: one of the registered analysis types, chosen by its `type:`."""
    members = tuple(kinds.all_kinds())
    union = members[0] if len(members) == 1 else Union[members]  # noqa: UP007 - built at run time
    return Annotated[union, Field(discriminator="type")]


# The analysis types a package may hold: those in the registry (mercia.study.kinds), in its order.
Analysis = _analysis_union()
ANALYSIS_TYPES = kinds.types()


class StudySpec(Strict):
    """A study package as written: a name, cohorts by key, the analyses that use them, and the
    disclosure policy asked for (`load_package` and `StudyPackage.from_dict` validate one and resolve
    its cohorts)."""

    name: str = Field(min_length=1, max_length=limits.MAX_NAME, description="the study's title")
    description: str | None = Field(None, max_length=limits.MAX_TEXT, description="free text about the study")
    cohorts: dict[_Key, CohortRef] = Field(
        min_length=1, max_length=limits.MAX_LIST,
        description="cohort key -> cohort; a key is letters, digits and underscores, not starting with a "
        "digit, and analyses name cohorts by it",
    )
    analyses: list[Analysis] = Field(
        min_length=1, max_length=limits.MAX_LIST,
        description="the analyses to run, in order; each a mapping with `type:` (the types below)",
    )
    disclosure: Literal["opensafely", "sacro"] | DisclosurePolicy | None = Field(
        None,
        description="the disclosure policy the study asks for: `opensafely`, `sacro`, or a policy written "
        "out; None: the site's own. A site refuses a policy weaker than its own minimum",
    )

    @field_validator("cohorts")
    @classmethod
    def _keys(cls, v: dict[str, CohortRef]) -> dict[str, CohortRef]:
        import re

        bad = [k for k in v if not re.match(_KEY, k)]
        if bad:
            raise ValueError(f"cohort keys {bad}: use letters, digits and underscores (not starting with a digit)")
        return v

    @model_validator(mode="after")
    def _references(self) -> StudySpec:
        for a in self.analyses:
            unknown = [c for c in a.cohorts_used() if c not in self.cohorts]
            if unknown:
                raise ValueError(
                    f"analysis {a.table_prefix()!r} ({a.type}) refers to cohort(s) {unknown} that the package "  # type: ignore[attr-defined]
                    f"does not define; defined: {sorted(self.cohorts)}"
                )
        prefixes = [a.table_prefix() for a in self.analyses]
        dupes = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if dupes:
            raise ValueError(f"analyses {dupes} appear more than once; give each a distinct `name:`")
        reserved = {"cohort_counts"} | {f"attrition_{k}" for k in self.cohorts}
        clash = [p for p in prefixes if p in reserved or p.startswith("attrition_")]
        if clash:
            raise ValueError(f"analysis names {clash} are reserved for the study's own tables; rename them")
        ids = [r.id for r in self.cohorts.values() if r.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError(f"cohort ids repeat: {sorted(ids)}; give each cohort a distinct id")
        return self

    def requested_policy(self) -> DisclosurePolicy | None:
        if isinstance(self.disclosure, str):
            return BUILTIN_POLICIES[self.disclosure]
        return self.disclosure


# Tags of the discriminated unions, which pydantic puts in an error's location after the item they tag.
_UNION_TAGS = {
    "analyses": set(ANALYSIS_TYPES),
    "model": {"lasso_logistic", "gradient_boosting"},
}


def _registry_changed() -> None:
    """A type was registered or removed: the schema's `analyses:` union is made again from the registry."""
    global Analysis, ANALYSIS_TYPES
    Analysis = _analysis_union()
    ANALYSIS_TYPES = kinds.types()
    _UNION_TAGS["analyses"] = set(ANALYSIS_TYPES)
    field = StudySpec.model_fields["analyses"]
    field.annotation = list[Analysis]  # type: ignore[valid-type]
    StudySpec.model_rebuild(force=True)


kinds.on_change(_registry_changed)
# The `disclosure:` union: the name of a built-in policy, or a policy written out (validated after).
_POLICY_BRANCHES = ("literal[", "DisclosurePolicy", "function-after[")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """An error location as the package writes it: `analyses[2].settings.washout_days`, without the
    union tag pydantic inserts (`analyses.2.incidence.settings...`), which is not a key of the file."""
    out: list[str] = []
    parts = list(loc)
    for i, p in enumerate(parts):
        if isinstance(p, int):
            out.append(f"[{p}]")
            continue
        owner = parts[i - 2] if i >= 2 and isinstance(parts[i - 1], int) else parts[i - 1] if i >= 1 else None
        if isinstance(owner, str) and p in _UNION_TAGS.get(owner, ()):
            continue
        if owner == "disclosure" and p.startswith(_POLICY_BRANCHES):
            continue
        out.append(f".{p}" if out else str(p))
    return "".join(out)


def _union_branch(err: Any) -> str:
    """The union branch pydantic names after the field (`literal['opensafely','sacro']`), or ''."""
    return str(err["loc"][1]) if len(err["loc"]) > 1 else ""


def _allowed(err: Any) -> str:
    """A literal's allowed values as a plain list: `a, b, c` (pydantic writes `'a', 'b' or 'c'`)."""
    expected = str((err.get("ctx") or {}).get("expected", ""))
    return ", ".join(x.strip().strip("'") for x in expected.replace(" or ", ", ").split(",") if x.strip())


def _format_validation(e: ValidationError, where: str) -> StudyError:
    lines = []
    # A policy written out is not a policy name: that branch's error says nothing about the mapping; and
    # a name is not a policy written out: the mapping branch's error says nothing about a misspelt name.
    errors = [
        err
        for err in e.errors()
        if not (
            err["loc"][:1] == ("disclosure",)
            and (
                (_union_branch(err).startswith("literal[") and isinstance(err.get("input"), dict))
                or (not _union_branch(err).startswith("literal[") and isinstance(err.get("input"), str))
            )
        )
    ]
    for err in errors[:6]:
        loc = _field_path(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (not allowed here; check the spelling against the reference)"
        elif err["type"] == "missing":
            msg = "required, missing"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found") and err["loc"][-1] == "model":
            msg = f"give the model `type:` ({', '.join(sorted(_UNION_TAGS['model']))})"
        elif err["type"] == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag")
            msg = f"unknown analysis type {tag!r}; use one of {', '.join(ANALYSIS_TYPES)}"
        elif err["type"] == "union_tag_not_found":
            msg = f"give the analysis `type:` ({', '.join(ANALYSIS_TYPES)})"
        elif err["type"] == "literal_error" and err["loc"][:1] == ("disclosure",):
            msg = (f"unknown policy {err.get('input')!r} (allowed: {', '.join(sorted(BUILTIN_POLICIES))}, "
                   "or a policy written out as a mapping)")
        elif err["type"] == "literal_error":
            msg = f"{err.get('input')!r} is not allowed (allowed: {_allowed(err)})"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '(top level)'}: {msg}")
    if len(errors) > 6:
        lines.append(f"(and {len(errors) - 6} more)")
    return StudyError(f"{where}: " + "; ".join(lines))


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class StudyPackage:
    """A validated study package with every cohort resolved: what a site approves and runs."""

    def __init__(self, spec: StudySpec, definitions: dict[str, CohortDefinition]) -> None:
        self.spec = spec
        self.definitions = definitions
        free = iter(i for i in range(1, 10_000) if i not in {r.id for r in spec.cohorts.values()})
        # Ids by sorted key, so the order of keys in the file never changes what runs.
        self.cohort_ids: dict[str, int] = {
            k: spec.cohorts[k].id if spec.cohorts[k].id is not None else next(free)  # type: ignore[misc]
            for k in sorted(spec.cohorts)
        }

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, base_dir: str | Path | None = None, source: str = "study package") -> StudyPackage:
        """Validate a package already parsed; `file:` paths are relative to `base_dir`."""
        if not isinstance(data, dict):
            raise StudyError(f"{source}: a study package is a mapping (name:, cohorts:, analyses:, disclosure:)")
        if data.get("format") not in (None, PACKAGE_FORMAT):
            raise StudyError(f"{source}: format {data.get('format')!r} is not {PACKAGE_FORMAT!r}")
        data = {k: v for k, v in data.items() if k != "format"}
        try:
            spec = StudySpec.model_validate(data)
        except ValidationError as e:
            raise _format_validation(e, source) from None
        except MerciaError as e:  # raised inside the analyses' own settings validators
            raise StudyError(f"{source}: {e}") from None
        base = Path(base_dir) if base_dir is not None else None
        defs: dict[str, CohortDefinition] = {}
        for key, ref in spec.cohorts.items():
            try:
                defs[key] = resolve_cohort(ref, base)
            except MerciaError as e:
                raise StudyError(f"{source}: cohort {key!r}: {e}") from None
        return cls(spec, defs)

    @classmethod
    def from_canonical(cls, data: dict[str, Any]) -> StudyPackage:
        """Rebuild a package from its canonical form (what a hub sends to a site)."""
        return cls.from_dict(data, source="canonical study package")

    # ---- identity ----------------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """Every cohort embedded with its id (no paths), settings with their defaults spelled out."""
        spec = self.spec
        disclosure: Any = spec.disclosure
        if isinstance(disclosure, DisclosurePolicy):
            disclosure = disclosure.model_dump(mode="json")
        return {
            "format": PACKAGE_FORMAT,
            "name": spec.name,
            "description": spec.description,
            "cohorts": {
                k: {"id": self.cohort_ids[k], "definition": self.definitions[k].to_dict()} for k in spec.cohorts
            },
            "analyses": [a.model_dump(mode="json") for a in spec.analyses],
            "disclosure": disclosure,
        }

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace: the bytes that are hashed."""
        return _canonical_json(self.canonical())

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    # ---- use ---------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def analyses(self) -> list[Any]:
        return list(self.spec.analyses)

    def cohort_name(self, key: str) -> str:
        return self.definitions[key].name

    def effective_policy(self, site_policy: DisclosurePolicy | str | None = None) -> DisclosurePolicy:
        """The policy results pass: the site's minimum, or the package's request if at least as strict.

        A request weaker than the site minimum in any setting is refused (not silently tightened), so
        the author learns that the outputs would differ from what they asked for.
        """
        site = policy_from_name(site_policy) if isinstance(site_policy, str) else site_policy
        requested = self.spec.requested_policy()
        if site is None:
            # No site minimum given: the package's request, and never less than OpenSAFELY's rules.
            site = BUILTIN_POLICIES["opensafely"] if requested is None else requested
        try:
            return effective_policy(site, requested, strict=True)
        except MerciaError as e:
            raise StudyError(str(e)) from None


def policy_from_name(name: str) -> DisclosurePolicy:
    try:
        return BUILTIN_POLICIES[name.lower()]
    except KeyError:
        raise StudyError(
            f"unknown disclosure policy {name!r}; use one of {', '.join(sorted(BUILTIN_POLICIES))}"
        ) from None


def resolve_cohort(ref: CohortRef, base: Path | None) -> CohortDefinition:
    """The cohort definition a package's (or benchmark configuration's) `CohortRef` names: its embedded
    `definition:` (cohort language, or ATLAS JSON with `expression`) or its `file:`, relative to `base`."""
    from mercia.cohorts import dsl
    from mercia.cohorts.loader import load_definition

    if ref.definition is not None:
        if "expression" in ref.definition:
            return CohortDefinition.from_dict(ref.definition)
        return dsl.from_dict(ref.definition)
    assert ref.file is not None
    p = Path(ref.file)
    if p.is_absolute():
        raise StudyError(f"file {ref.file!r}: give a path relative to the package file, so the package travels")
    if base is None:
        raise StudyError(f"file {ref.file!r}: a package given as data has no folder; embed the definition")
    return load_definition(base / p)


def load_package(path: str | Path) -> StudyPackage:
    """A study package from a .yaml/.yml, .json or .py file (the .py sets ``STUDY`` to a dict)."""
    from mercia.cohorts import dsl

    p = Path(path)
    where = p.name
    if not p.is_file():
        raise StudyError(f"study package {str(p)!r} not found (or not a file)")
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            data = dsl.load_yaml(p.read_text(encoding="utf-8"))
        except MerciaError as e:
            raise StudyError(f"{where}: {e}") from None
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise StudyError(f"{where}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    elif suffix == ".py":
        try:
            ns = runpy.run_path(str(p), run_name="__mercia_study__")
        except Exception as e:  # the user's own code
            raise StudyError(f"{where}: running it failed: {type(e).__name__}: {e}") from None
        data = ns.get("STUDY")
        if isinstance(data, StudyPackage):
            return data
        if data is None:
            raise StudyError(f"{where}: set STUDY = {{...}} (the package as a dict) at module level")
    else:
        raise StudyError(f"{where}: a study package is a .yaml, .yml, .json or .py file")
    if data is None:
        raise StudyError(f"{where}: the file is empty")
    return StudyPackage.from_dict(data, base_dir=p.parent, source=where)


# The examples live in the source checkout (examples/studies/), beside src/.
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples" / "studies"
DEMO_STUDY = "sglt2_heart_failure"


def example_package(name: str = DEMO_STUDY) -> StudyPackage:
    """An example study from examples/studies/<name>/study.yaml; by default the demo study."""
    path = EXAMPLES_DIR / name / "study.yaml"
    if not path.is_file():
        found = sorted(p.parent.name for p in EXAMPLES_DIR.glob("*/study.yaml"))
        raise StudyError(
            f"no example study {name!r} at {path}; "
            + (f"examples: {', '.join(found)}" if found else "the examples folder ships with a source checkout")
        )
    return load_package(path)
