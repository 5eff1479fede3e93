"""hub.yaml and node.yaml: every kind of bad file is a ConfigError naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercia.errors import ConfigError
from mercia.federation.hub.config import load_hub_config
from mercia.federation.node.config import load_node_config

LOADERS = [(load_hub_config, "hub config"), (load_node_config, "node config")]


@pytest.mark.parametrize(("load", "kind"), LOADERS)
def test_missing_file(tmp_path: Path, load, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"cannot read {kind} .*absent.yaml"):
        load(tmp_path / "absent.yaml")


def test_missing_hub_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="create one with mercia hub init"):
        load_hub_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(("load", "kind"), LOADERS)
def test_bad_yaml(tmp_path: Path, load, kind: str) -> None:
    (tmp_path / "c.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match=f"{kind} .* is not valid YAML"):
        load(tmp_path / "c.yaml")


@pytest.mark.parametrize(("load", "kind"), LOADERS)
def test_not_a_mapping(tmp_path: Path, load, kind: str) -> None:
    (tmp_path / "c.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=f"{kind} .*: expected a mapping"):
        load(tmp_path / "c.yaml")


@pytest.mark.parametrize(("load", "kind"), LOADERS)
def test_unknown_key_and_missing_fields_are_named(tmp_path: Path, load, kind: str) -> None:
    (tmp_path / "c.yaml").write_text("state_dir: s\ntokens: t.json\nsurprise: 1\n")
    with pytest.raises(ConfigError, match=f"{kind} .*") as e:
        load(tmp_path / "c.yaml")
    assert "surprise: unknown field (check the spelling against the reference)" in str(e.value)
    assert ": required, missing" in str(e.value)


def test_relative_paths_are_read_from_the_files_folder(tmp_path: Path) -> None:
    (tmp_path / "hub.yaml").write_text("state_dir: state\ntokens: t.json\nsigning_key: k.pem\n"
                                       "tls: {cert: c.crt, key: c.key}\n")
    cfg = load_hub_config(tmp_path / "hub.yaml")
    assert cfg.state_dir == tmp_path.resolve() / "state"
    assert cfg.tls is not None and cfg.tls.cert == tmp_path.resolve() / "c.crt"


@pytest.mark.parametrize(
    ("policy", "expected", "absent"),
    [("opensafe", "policy: 'opensafe' is not allowed (allowed: opensafely, sacro)", "DisclosurePolicy"),
     ("{threshold: x}", "policy.threshold: Input should be a valid integer", "literal[")],
    ids=["a misspelt name", "a mapping"],
)
def test_a_policy_error_names_the_branch_meant(tmp_path: Path, policy: str, expected: str, absent: str) -> None:
    (tmp_path / "node.yaml").write_text(f"site: s\ncdm: x.duckdb\nstate_dir: st\nhub_public_key: k.pem\n"
                                        f"tokens: t.json\npolicy: {policy}\n")
    with pytest.raises(ConfigError) as e:
        load_node_config(tmp_path / "node.yaml")
    assert expected in str(e.value)
    assert absent not in str(e.value) and "function-after" not in str(e.value)
