"""The hub's registry: each site's results are kept once, a closed study's late results are not
counted, and a study is closed together with its pooling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mercia.errors import ConfigError
from mercia.federation.hub.pool import pool_results
from mercia.federation.hub.registry import HubStore, NotFoundError

H = "c" * 64


def _model(site: str, coef: float, se: float, age: float | None = None) -> dict[str, Any]:
    # age suppressed (None) unless given: a term some sites released and others did not
    return {"tables": [{"name": "cox", "kind": "model", "status": "released", "columns": ["term", "coef", "se"],
                        "rows": [["treatment", coef, se], ["age", age, None if age is None else 0.01]]}],
            "site": site}


def _store(tmp_path: Path) -> HubStore:
    store = HubStore(tmp_path / "hub.sqlite")
    for name in ("a", "b", "c"):
        store.add_node(name, f"http://127.0.0.1:1/{name}", "mct_t")
    store.add_project("p", ["a", "b", "c"])
    assert store.add_study(H, name="s", project="p", submitted_by="r", package={}, signature="sig",
                           sites=["a", "b", "c"])
    return store


def test_results_are_kept_once_and_late_ones_are_not_counted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.store_results(H, "a", _model("a", 0.1, 0.2, age=0.05)) is True
    assert store.store_results(H, "a", _model("a", 9.9, 0.2)) is False  # a repeated collection
    assert store.store_results(H, "b", _model("b", 0.3, 0.1)) is True
    excluded, pooled = store.close(H, pool_results)
    assert excluded == ["c"] and pooled["excluded"] == ["c"] and pooled["sites"] == ["a", "b"]
    assert store.study(H)["status"] == "closed"
    assert store.results(H)["a"]["tables"][0]["rows"][0][1] == 0.1
    assert store.store_results(H, "c", _model("c", 5.0, 0.1)) is False  # too late: the study is closed
    store.update_run(H, "c", status="finished")
    assert {r.site: r.status for r in store.site_runs(H)} == {"a": "collected", "b": "collected", "c": "excluded"}
    meta = pooled["tables"]["cox"]["treatment"]
    assert meta["sites"] == ["a", "b"] and meta["estimates"] == [0.1, 0.3]
    assert pooled["tables"]["cox"]["age"]["sites"] == ["a"]
    assert any("age" in n and "not released by b" in n for n in pooled["notes"])
    # closing again changes nothing
    assert store.close(H, pool_results) == ([], pooled)


def test_resubmitting_a_hash_is_the_same_study(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert not store.add_study(H, name="s", project="p", submitted_by="other", package={}, signature="x",
                               sites=["a"])
    assert len(store.site_runs(H)) == 3


def test_registry_errors(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(ConfigError, match="not registered"):
        store.add_project("q", ["a", "zed"])
    with pytest.raises(ConfigError, match="http"):
        store.add_node("d", "127.0.0.1:80", "t")
    with pytest.raises(NotFoundError):
        store.study("d" * 64)
    with pytest.raises(NotFoundError):
        store.project_sites("nope")
    assert (tmp_path / "hub.sqlite").stat().st_mode & 0o777 == 0o600  # it holds the node tokens
