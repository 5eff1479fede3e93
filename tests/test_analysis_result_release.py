"""AnalysisResult.release(): every table of an analysis through the one disclosure door."""

from __future__ import annotations

import pandas as pd
import pytest

from mercia.analyses import AnalysisResult
from mercia.disclosure import SACRO, DisclosureLog, ReleasedTable, ResultTable, release
from mercia.errors import DisclosureError


def _result() -> AnalysisResult:
    counts = ResultTable(
        name="by_sex", kind="counts",
        data=pd.DataFrame({"sex": ["Female", "Male", "Unknown"], "n": [123, 48, 3]}),
        dimensions=["sex"], count_columns=["n"],
    )
    other = ResultTable(
        name="by_year", kind="counts",
        data=pd.DataFrame({"year": ["2020", "2021"], "n": [9, 61]}),
        dimensions=["year"], count_columns=["n"],
    )
    return AnalysisResult("example", {"by_sex": counts, "by_year": other})


def test_release_by_policy_name_is_release_of_each_table() -> None:
    result = _result()
    log = DisclosureLog()
    got = result.release("opensafely", site="northgate", log=log)
    assert list(got) == ["by_sex", "by_year"]
    assert all(isinstance(t, ReleasedTable) for t in got.values())
    assert got["by_sex"].data["n"].tolist()[:2] == [125, 50] and pd.isna(got["by_sex"].data["n"][2])
    assert got["by_year"].data["n"].tolist()[1] == 60
    assert {e.table for e in log.entries} == {"by_sex", "by_year"}
    # The same as release() table by table, under the same policy.
    from mercia.disclosure import OPENSAFELY

    for name, table in result.tables.items():
        direct = release(table, OPENSAFELY, site="northgate", log=DisclosureLog())
        pd.testing.assert_frame_equal(got[name].data, direct.data)
        assert got[name].site == "northgate"


def test_release_takes_a_policy_object_and_keeps_the_tables_unreleased() -> None:
    result = _result()
    got = result.release(SACRO)
    assert got["by_sex"].policy == SACRO
    assert pd.isna(got["by_year"].data["n"][0])  # 9 is at most SACRO's threshold
    assert result.tables["by_sex"].data["n"].tolist() == [123, 48, 3]  # the local table is untouched


def test_an_unknown_policy_name_is_one_clear_error() -> None:
    with pytest.raises(DisclosureError, match=r"unknown disclosure policy 'safe'; use one of opensafely, sacro"):
        _result().release("safe")
