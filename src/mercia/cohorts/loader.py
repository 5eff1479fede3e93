"""Load a cohort definition from a file of any of its forms.

* ``.json``: an ATLAS/Circe export (PascalCase keys), or Mercia's own JSON (``CohortDefinition.to_json``).
* ``.yaml`` / ``.yml``: the cohort language's YAML form (``mercia.cohorts.dsl``), or Mercia's model
  YAML (``CohortDefinition.to_yaml``, recognised by its top-level ``expression``).
* ``.py``: a Python file that builds the cohort with ``mercia.cohorts.dsl``. It is the user's own
  code, run in a fresh namespace; the cohort is the module-level ``COHORT`` (or ``cohort``), or else
  the one cohort object the module defines.
"""

from __future__ import annotations

import json
import re
import runpy
import traceback
from pathlib import Path
from typing import Any

from sqlglot import exp

from mercia.cohorts import dsl
from mercia.cohorts.circe import from_circe_json
from mercia.cohorts.model import CohortDefinition
from mercia.errors import CohortDefinitionError, ConfigError, MerciaError

SUFFIXES = (".json", ".yaml", ".yml", ".py")


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CohortDefinitionError(f"cohort definition {str(p)!r} not found") from None
    except IsADirectoryError:
        raise CohortDefinitionError(f"cohort definition {str(p)!r} is a folder; give a file") from None
    except UnicodeDecodeError:
        raise CohortDefinitionError(f"cohort definition {str(p)!r} is not UTF-8 text") from None
    except OSError as e:
        raise CohortDefinitionError(f"cannot read cohort definition {str(p)!r}: {e.strerror}") from None


def _from_json(text: str, p: Path) -> CohortDefinition:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CohortDefinitionError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("expression"), dict) and "primary_criteria" in data["expression"]:
        return CohortDefinition.from_dict(data)  # Mercia's own JSON
    return from_circe_json(data, name=p.stem if not (isinstance(data, dict) and data.get("name")) else None)


def _from_yaml(text: str) -> CohortDefinition:
    data = dsl.load_yaml(text)
    if data is None:
        raise CohortDefinitionError("the file is empty; write a cohort (name:, concepts:, entry: ...)")
    if isinstance(data, dict) and "expression" in data:
        return CohortDefinition.from_dict(data)  # the model's own YAML
    return dsl.from_dict(data)


def _as_definition(obj: Any) -> CohortDefinition | None:
    if isinstance(obj, dsl.Cohort):
        return obj.build()
    if isinstance(obj, CohortDefinition):
        return obj
    return None


def _from_python(p: Path) -> CohortDefinition:
    try:
        namespace = runpy.run_path(str(p), run_name="__mercia_cohort__")
    except CohortDefinitionError:
        raise
    except SyntaxError as e:
        raise CohortDefinitionError(f"Python syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:
        # The user's own code failed: name the line in their file, not Mercia's internals.
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == p.resolve()]
        line = f" at line {frames[-1].lineno}" if frames else ""
        raise CohortDefinitionError(f"running it failed{line}: {type(e).__name__}: {e}") from None
    for name in ("COHORT", "cohort"):
        if name in namespace:
            found = _as_definition(namespace[name])
            if found is not None:
                return found
            if name == "COHORT" or not callable(namespace[name]):
                raise CohortDefinitionError(
                    f"{name} is a {type(namespace[name]).__name__}, not a cohort; set it to cohort(...)...")
    cohorts = {k: v for k, v in namespace.items() if not k.startswith("_") and _as_definition(v) is not None}
    if len(cohorts) == 1:
        return _as_definition(next(iter(cohorts.values())))  # type: ignore[return-value]
    if cohorts:
        raise CohortDefinitionError(f"it defines {len(cohorts)} cohorts ({', '.join(cohorts)}); "
                                    "say which with COHORT = <one of them>")
    raise CohortDefinitionError("it defines no cohort; build one with mercia.cohorts.dsl and assign it "
                                "at module level: COHORT = cohort('...').entry(...)")


def definition_from_data(data: Any) -> CohortDefinition:
    """A definition sent as data (a request, a package): Mercia's model form (with `expression`) or the
    cohort language. Anything wrong with it is a CohortDefinitionError naming the element."""
    if not isinstance(data, dict) or not data:
        raise CohortDefinitionError("definition: give a cohort definition (a mapping in the cohort language)")
    try:
        if "expression" in data:
            return CohortDefinition.from_dict(data)
        return dsl.from_dict(data)
    except MerciaError:
        raise
    except Exception as e:  # pydantic and odd shapes the readers did not foresee: still the sender's definition
        raise CohortDefinitionError(f"definition: {e}") from None


def definition_from_text(text: str, form: str, *, name: str = "cohort") -> CohortDefinition:
    """A definition pasted or uploaded as text: `form` is "json" (ATLAS/Circe, or Mercia's JSON) or "yaml"
    (the cohort language, or Mercia's model YAML), read exactly as a .json or .yaml file is; `name` names
    a Circe export that carries none. Anything wrong is a CohortDefinitionError naming the element."""
    if form not in ("json", "yaml"):
        raise CohortDefinitionError(f"form: {form!r} is not a form of cohort definition; use json or yaml")
    if not text.strip():
        raise CohortDefinitionError("the definition is empty; paste a cohort (YAML or ATLAS JSON)")
    return _from_json(text, Path(f"{name}.json")) if form == "json" else _from_yaml(text)


def load_definition(path: str | Path) -> CohortDefinition:
    """The cohort definition in a .json (Circe or Mercia), .yaml/.yml or .py file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise CohortDefinitionError(
            f"{p.name}: unknown kind of cohort definition {suffix or '(no extension)'!r}; "
            "use .json (ATLAS/Circe), .yaml/.yml (cohort language) or .py (Python cohort language)")
    if suffix == ".py":
        if not p.is_file():
            _read(p)  # the same clear error for a missing file or a folder
        try:
            return _from_python(p)
        except CohortDefinitionError as e:
            raise CohortDefinitionError(f"{p.name}: {e}") from None
    text = _read(p)
    if not text.strip():
        raise CohortDefinitionError(f"{p.name}: the file is empty")
    try:
        return _from_json(text, p) if suffix == ".json" else _from_yaml(text)
    except CohortDefinitionError as e:
        raise CohortDefinitionError(f"{p.name}: {e}") from None


class SchemaTables:
    """CDM table names qualified by schema, without a database: what `compile_cohort` needs to print a
    definition's SQL for another site's engine (``mercia cohort sql``) or to pin it in golden files."""

    def __init__(self, cdm_schema: str = "cdm", vocab_schema: str | None = None,
                 results_schema: str | None = None, version: str | None = None) -> None:
        from mercia.cdm.spec import DEFAULT_VERSION, cdm_spec

        self.spec = cdm_spec(version or DEFAULT_VERSION)
        self.cdm_schema = _ident("CDM schema", cdm_schema)
        self.vocab_schema = _ident("vocabulary schema", vocab_schema or cdm_schema)
        self.results_schema = _ident("results schema", results_schema or "results")

    def table(self, name: str, alias: str | None = None) -> exp.Table:
        role = self.spec.table(name).schema_role if name.lower() in self.spec.tables else "CDM"
        schema = {"VOCAB": self.vocab_schema, "RESULTS": self.results_schema}.get(role, self.cdm_schema)
        t = exp.Table(this=exp.to_identifier(name.lower()), db=exp.to_identifier(schema))
        if alias:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        return t


def _ident(kind: str, name: str) -> str:
    # Schema names become identifiers in printed SQL: plain names only, as the CDM handle requires.
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise ConfigError(f"invalid {kind} {name!r}: use letters, digits and underscores only")
    return name
