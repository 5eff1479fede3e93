"""Synthetic sites at scale: person_ids past 10,000,000 and memory that does not grow with persons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mercia.cdm import Cdm
from mercia.errors import ConfigError
from mercia.synth import DEFAULT_SITES, generate_site
from mercia.synth import site as site_mod
from mercia.synth.nhs import MAX_PERSON_ID, check_digit, is_valid, nhs_numbers

SRC = str(Path(__file__).resolve().parents[1] / "src")


def first_valid_d9(pid: np.ndarray) -> np.ndarray:
    """The scheme for person_ids below 10**7 as it was before larger ids were allowed (an independent,
    per-number loop): scrambled id in d2..d8, d9 the first valid digit counted from pid mod 10."""
    out = []
    for p in pid.tolist():
        prefix = (9 * 10**7 + (7_654_321 * p + 3_141_592) % 10**7) * 10
        for step in range(10):
            body = prefix + (p % 10 + step) % 10
            c = int(check_digit(np.array([body]))[0])
            if c != 10:
                out.append(body * 10 + c)
                break
    return np.array(out, dtype=np.int64)


def test_nhs_numbers_below_ten_million_unchanged():
    rng = np.random.default_rng(3)
    pid = np.r_[0, 1, 2, rng.integers(0, 10**7, 2_000), 10**7 - 1]
    assert (nhs_numbers(pid) == first_valid_d9(pid)).all()


def test_nhs_numbers_past_ten_million_valid_and_unique():
    rng = np.random.default_rng(4)
    r = rng.choice(10**7, 20_000, replace=False)
    # The same scrambled digits under every q: only d9 tells these persons apart.
    pid = (np.arange(9)[:, None] * 10**7 + r[None, :]).ravel()
    pid = np.r_[pid, np.arange(10**7 - 500, 10**7 + 500), np.arange(MAX_PERSON_ID - 500, MAX_PERSON_ID)]
    pid = np.unique(pid)
    nums = nhs_numbers(pid)
    assert is_valid(nums).all()
    assert (nums // 10**9 == 9).all()
    assert len(np.unique(nums)) == len(nums)
    with pytest.raises(ConfigError, match=r"person_ids in 0\.\.89999999"):
        nhs_numbers(np.array([MAX_PERSON_ID]))


def test_site_with_person_ids_past_ten_million():
    cdm = Cdm.open(None)
    try:
        truth = generate_site(cdm, persons=400, seed=2, profile=DEFAULT_SITES[0], first_person_id=9_999_801)
        ids = cdm.fetch_all("SELECT MIN(person_id), MAX(person_id), COUNT(DISTINCT person_source_value) FROM person")[0]
        vals = np.array([int(x[0]) for x in cdm.fetch_all("SELECT person_source_value FROM person")])
    finally:
        cdm.close()
    assert ids == (9_999_801, 10_000_200, 400)
    assert truth["person_id_range"] == [9_999_801, 10_000_200]
    assert is_valid(vals).all()


def test_database_cache_held_while_a_site_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(site_mod, "DB_MEMORY", 16 << 20, raising=False)
    cdm = Cdm.open(tmp_path / "site.duckdb")
    try:
        before = cdm.fetch_all("SELECT current_setting('memory_limit')")[0][0]
        generate_site(cdm, persons=30_000, seed=3, profile=DEFAULT_SITES[0])
        held = cdm.fetch_all("SELECT SUM(memory_usage_bytes) FROM duckdb_memory()")[0][0]
        after = cdm.fetch_all("SELECT current_setting('memory_limit')")[0][0]
    finally:
        cdm.close()
    # Uncapped, DuckDB keeps every block it wrote (about 30 MiB here) in its buffer pool.
    assert held <= 16 << 20
    assert after == before


def test_database_cache_setting_restored_as_set_by_hand(tmp_path):
    cdm = Cdm.open(tmp_path / "x.duckdb")
    try:
        cdm.execute("SET memory_limit = '3GB'")
        before = cdm.fetch_all("SELECT current_setting('memory_limit')")[0][0]
        with cdm.bounded_bulk_write(1 << 30):
            inside = cdm.fetch_all("SELECT current_setting('memory_limit')")[0][0]
        after = cdm.fetch_all("SELECT current_setting('memory_limit')")[0][0]
    finally:
        cdm.close()
    assert inside == "1.0 GiB"
    assert after == before


PEAK = textwrap.dedent("""
    import json, sys, tracemalloc
    from mercia.cdm import Cdm
    from mercia.synth import DEFAULT_SITES, generate_site
    from mercia.synth import site
    site.CHUNK = 2_000
    cdm = Cdm.open(sys.argv[2])
    tracemalloc.start()
    generate_site(cdm, persons=int(sys.argv[1]), seed=5, profile=DEFAULT_SITES[0])
    print(json.dumps(tracemalloc.get_traced_memory()[1]))
    cdm.close()
""")


def traced_peak(persons: int, path: Path) -> int:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", PEAK, str(persons), str(path)], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_python_memory_bounded_by_the_chunk_not_the_site(tmp_path):
    # numpy reports its arrays to tracemalloc: if anything of length persons (or of all rows) were held,
    # six times the persons would raise the peak several times over.
    small = traced_peak(2_000, tmp_path / "a.duckdb")
    large = traced_peak(12_000, tmp_path / "b.duckdb")
    assert large < 1.5 * small, (small, large)


def test_site_past_the_last_nhs_number_is_refused_in_one_line():
    cdm = Cdm.open(None)
    try:
        with pytest.raises(ConfigError, match=r"person_ids 89999991\.\.90000000 out of range"):
            generate_site(cdm, persons=10, seed=1, profile=DEFAULT_SITES[0], first_person_id=89_999_991)
    finally:
        cdm.close()
