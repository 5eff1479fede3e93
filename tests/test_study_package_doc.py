"""docs/reference/study-package.md is what the package models say today, and they say enough."""

from __future__ import annotations

import pydoc
from pathlib import Path

from pydantic import BaseModel

from mercia.disclosure import DisclosurePolicy
from mercia.model_doc import own_doc
from mercia.study.package import ANALYSIS_TYPES
from mercia.study.package_doc import (
    analysis_models,
    documented_fields,
    documented_models,
    settings_model,
    study_package_markdown,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference" / "study-package.md"


def test_study_package_reference_is_up_to_date() -> None:
    assert DOC.read_text() == study_package_markdown(), (
        "docs/reference/study-package.md is stale: regenerate it with "
        "`python -m mercia.study.package_doc > docs/reference/study-package.md`")


def test_every_field_is_described() -> None:
    missing = [f"{m.__name__}.{name}" for m, name, f in documented_fields()
               if len((f.description or "").split()) < 2]
    assert not missing, f"give these fields a description= (meaning, units, allowed values): {missing}"


def test_help_shows_each_model_its_docstring_and_every_field() -> None:
    bare = [m.__name__ for m in documented_models() if not own_doc(m)]
    assert not bare, f"give these models a docstring (help() shows it): {bare}"
    for m in documented_models():
        shown = " ".join(pydoc.render_doc(m, renderer=pydoc.plaintext).replace("|", " ").split())
        assert " ".join(own_doc(m).split()) in shown, m.__name__
        for name, f in m.model_fields.items():
            entry = f"{name}, {'required' if f.is_required() else 'default'}"
            assert entry in shown, f"help({m.__name__}) does not list {name}"
            assert " ".join((f.description or "").split()) in shown, f"help({m.__name__}): {name}'s meaning"


def test_every_analysis_type_and_setting_is_in_the_reference() -> None:
    text = study_package_markdown()
    tags = [a.model_fields["type"].annotation.__args__[0] for a in analysis_models()]
    assert tags == list(ANALYSIS_TYPES)
    for tag in tags:
        assert f"### `{tag}`" in text
    for a in analysis_models():
        s = settings_model(a)
        assert s is not None or "settings" not in a.model_fields, a.__name__
        if s is None:
            continue
        model, exclude = s
        for name in model.model_fields:
            assert (f"| `settings.{name}` |" in text) != (name in exclude), (a.__name__, name)
    for name in DisclosurePolicy.model_fields:
        assert f"| `{name}` |" in text


def test_a_new_setting_appears_without_touching_the_generator(monkeypatch) -> None:
    """The generator reads the models: a field added to a settings model is listed, with its
    default and description, and no list of fields needs editing."""
    from pydantic import Field, create_model

    from mercia.analyses import IncidenceSettings
    from mercia.study.kinds.incidence import IncidenceAnalysis

    extended: type[BaseModel] = create_model(
        "IncidenceSettings", __base__=IncidenceSettings,
        tar_offset_days=(int, Field(3, ge=0, le=9, description="days added to the end of time at risk")),
    )
    monkeypatch.setattr(IncidenceAnalysis, "SETTINGS_MODEL", extended)
    text = study_package_markdown()
    assert ("| `settings.tar_offset_days` | integer (0 to 9) | `3` | days added to the end of time at risk |"
            in text)
