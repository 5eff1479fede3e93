"""A node's stored data-quality summary (node/quality.py), in process: it is answered only under the policy
it was released under, so making node.yaml's policy stricter withholds the old summary until a new run."""

from __future__ import annotations

from pathlib import Path

from federation_support import make_site
from mercia.cdm import Cdm
from mercia.disclosure import BUILTIN_POLICIES
from mercia.federation.node.quality import QualityStore, released_quality


def test_a_summary_is_answered_only_under_the_policy_it_was_released_under(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site.duckdb", persons=1500, seed=41)
    store = QualityStore(tmp_path / "state")
    done: list[object] = []

    def compute() -> dict:
        with Cdm.open(site, read_only=True) as cdm:
            return released_quality(cdm, BUILTIN_POLICIES["opensafely"], site="s")

    assert store.start(compute, lambda summary, error: done.append(error))
    store.wait(120)
    assert done == [None]
    summary = store.summary(BUILTIN_POLICIES["opensafely"])
    assert summary is not None and "policy_key" not in summary and summary["policy"].startswith("opensafely")
    assert store.summary(BUILTIN_POLICIES["sacro"]) is None  # released under another policy
