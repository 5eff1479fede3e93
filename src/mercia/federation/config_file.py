"""Reading a service's YAML configuration (hub.yaml, node.yaml) into its pydantic model.

Every problem is a ConfigError naming the file and what is wrong in it: an unreadable file, YAML
that does not parse, a document that is not a mapping, and each field the model refuses (at most six).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mercia.errors import ConfigError, field_problems

Config = TypeVar("Config", bound=BaseModel)


class StrictModel(BaseModel):
    """A section of a configuration file: a key the model does not know is a mistake, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Tls(StrictModel):
    cert: Path
    key: Path


def read_config_mapping(path: Path, kind: str, *, expected_keys: str, missing_hint: str | None = None
                        ) -> dict[str, Any]:
    """The file's YAML mapping. `kind` names the file in messages ("hub config"); `expected_keys` shows
    what a mapping holds; `missing_hint` says how to make the file when it cannot be read."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        hint = f"; {missing_hint}" if missing_hint else ""
        raise ConfigError(f"cannot read {kind} {str(path)!r}: {e.strerror}{hint}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{kind} {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {str(path)!r}: expected a mapping ({expected_keys})")
    return data


def validate_config(model: type[Config], data: dict[str, Any], path: Path, kind: str) -> Config:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        found = field_problems(e)
        problems = "; ".join(found[:6]) + (f"; (and {len(found) - 6} more)" if len(found) > 6 else "")
        raise ConfigError(f"{kind} {str(path)!r}: {problems}") from None
