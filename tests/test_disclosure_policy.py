"""Policy semantics: strictness ordering, built-ins, and the site minimum that cannot be weakened."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mercia.disclosure import OPENSAFELY, SACRO, DisclosurePolicy, effective_policy, strictest
from mercia.errors import DisclosureError


def test_builtins_match_their_documented_rules() -> None:
    assert (OPENSAFELY.threshold, OPENSAFELY.rounding_base, OPENSAFELY.zeros_disclosive) == (7, 5, False)
    # ACRO's safe_threshold 10 fails counts below 10: 1..9 suppressed, 10 released.
    assert (SACRO.threshold, SACRO.zeros_disclosive, SACRO.p_percent) == (9, True, 0.10)
    assert (SACRO.nk_n, SACRO.nk_k, SACRO.min_model_dof) == (2, 0.90, 10)
    assert SACRO.risk_set_minimum == 10


def test_neither_builtin_dominates_the_other() -> None:
    # OpenSAFELY rounds, SACRO suppresses more: each is weaker than the other somewhere.
    assert not OPENSAFELY.at_least_as_strict_as(SACRO)
    assert not SACRO.at_least_as_strict_as(OPENSAFELY)
    both = strictest(OPENSAFELY, SACRO)
    assert both.at_least_as_strict_as(OPENSAFELY) and both.at_least_as_strict_as(SACRO)
    assert (both.threshold, both.rounding_base, both.zeros_disclosive) == (9, 5, True)


def test_rounding_bases_compare_by_divisibility() -> None:
    p5 = DisclosurePolicy(name="a", threshold=7, rounding_base=5)
    p10 = p5.model_copy(update={"rounding_base": 10})
    p7 = p5.model_copy(update={"rounding_base": 7})
    assert p10.at_least_as_strict_as(p5) and not p5.at_least_as_strict_as(p10)
    assert not p7.at_least_as_strict_as(p5)
    assert strictest(p5, p7).rounding_base == 35


def test_nk_needs_both_parts() -> None:
    with pytest.raises(DisclosureError, match="nk_n and nk_k"):
        DisclosurePolicy(name="x", threshold=5, nk_n=2)


def test_site_minimum_cannot_be_weakened_in_strict_mode() -> None:
    weak = DisclosurePolicy(name="package", threshold=3, rounding_base=1)
    with pytest.raises(
        DisclosureError, match=r"weaker than this site's minimum 'opensafely'.*threshold 3 < 7"
    ):
        effective_policy(OPENSAFELY, weak)


def test_lenient_mode_takes_the_stricter_of_each_setting() -> None:
    weak = DisclosurePolicy(name="package", threshold=3, rounding_base=1, p_percent=0.2)
    eff = effective_policy(OPENSAFELY, weak, strict=False)
    assert eff.at_least_as_strict_as(OPENSAFELY) and eff.at_least_as_strict_as(weak)
    assert (eff.threshold, eff.rounding_base, eff.p_percent) == (7, 5, 0.2)


def test_a_stricter_request_is_used_as_is() -> None:
    strict = OPENSAFELY.model_copy(update={"name": "stricter", "threshold": 10, "rounding_base": 10})
    assert effective_policy(OPENSAFELY, strict) == strict
    assert effective_policy(OPENSAFELY, None) == OPENSAFELY


policies = st.builds(
    DisclosurePolicy,
    name=st.just("p"),
    threshold=st.integers(0, 15),
    zeros_disclosive=st.booleans(),
    rounding_base=st.sampled_from([1, 2, 3, 5, 10]),
    secondary_suppression=st.booleans(),
    p_percent=st.one_of(st.none(), st.sampled_from([0.05, 0.1, 0.2])),
    min_model_dof=st.integers(0, 20),
    min_risk_set=st.one_of(st.none(), st.integers(1, 20)),
    survival_time_unit=st.one_of(st.none(), st.sampled_from([7, 14, 30])),
)


@given(policies, policies)
def test_strictness_is_a_preorder_and_strictest_is_an_upper_bound(
    a: DisclosurePolicy, b: DisclosurePolicy
) -> None:
    assert a.at_least_as_strict_as(a)
    s = strictest(a, b)
    assert s.at_least_as_strict_as(a) and s.at_least_as_strict_as(b)
    if a.at_least_as_strict_as(b) and b.at_least_as_strict_as(a):
        assert a.threshold == b.threshold


@given(policies, policies)
def test_effective_policy_never_weaker_than_site(site: DisclosurePolicy, req: DisclosurePolicy) -> None:
    try:
        eff = effective_policy(site, req)
    except DisclosureError:
        assert not req.at_least_as_strict_as(site)
        eff = effective_policy(site, req, strict=False)
    assert eff.at_least_as_strict_as(site)
    assert eff.at_least_as_strict_as(req)


def test_threshold_rises_so_no_count_rounds_into_the_small_range() -> None:
    assert OPENSAFELY.suppress_up_to == 7  # 8 rounds to 10 already
    assert DisclosurePolicy(name="x", threshold=5, rounding_base=5).suppress_up_to == 7  # 6 and 7 show as 5
    assert DisclosurePolicy(name="x", threshold=0, rounding_base=5).suppress_up_to == 2  # 1 and 2 show as 0
    assert SACRO.suppress_up_to == 9


def test_person_time_rounding_is_a_policy_setting() -> None:
    # By default person-time follows the count rounding base: 5 person-years for OpenSAFELY, whole
    # units for SACRO (which does not round counts).
    assert OPENSAFELY.exposure_base == 5 and SACRO.exposure_base == 1
    coarse = OPENSAFELY.model_copy(update={"name": "coarse", "exposure_rounding": 10})
    fine = OPENSAFELY.model_copy(update={"name": "fine", "exposure_rounding": 1})
    assert coarse.at_least_as_strict_as(OPENSAFELY)
    assert any("person-time" in w for w in fine.weaker_settings_than(OPENSAFELY))
    with pytest.raises(DisclosureError, match="person-time rounding 1 is not a multiple of 5"):
        effective_policy(OPENSAFELY, fine)
    assert strictest(SACRO, coarse).exposure_base == 10
    assert "person-time to 5" in OPENSAFELY.rule_summary()
