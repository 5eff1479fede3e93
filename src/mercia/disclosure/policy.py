"""Disclosure policies as data, the built-in policies, and how a site's minimum combines with a request.

A policy says what may leave a site. Each setting has a direction of strictness, so two policies can be
compared setting by setting and combined into one that is at least as strict as both. The site's
minimum can never be weakened by a study package: `effective_policy` takes the stricter of each setting.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mercia import limits
from mercia.errors import DisclosureError
from mercia.model_doc import field_docs


@field_docs
class DisclosurePolicy(BaseModel):
    """Statistical disclosure control settings applied by `release()`.

    Counts: a count `c` with `1 <= c <= threshold` is suppressed (and `c == 0` too when
    `zeros_disclosive`); every released count is rounded to a multiple of `rounding_base`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=limits.MAX_NAME, description="the policy's name, shown in outputs")
    threshold: int = Field(ge=0, le=limits.MAX_INT32, description="counts 1..threshold are suppressed")
    zeros_disclosive: bool = Field(
        default=False, description="suppress zero counts too (a zero says 'nobody in this group has X')"
    )
    rounding_base: int = Field(
        default=1, ge=1, le=limits.MAX_INT32, description="released counts are multiples of this; 1 = exact"
    )
    rounding_mode: Literal["nearest"] = Field("nearest", description="how counts are rounded: to the nearest multiple")
    secondary_suppression: bool = Field(
        default=False, description="suppress complementary cells so no suppressed cell follows from totals"
    )
    p_percent: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="p% rule (0 to 1): a magnitude cell is unsafe if the total minus its two largest "
        "contributions is below p x the largest; None: off",
    )
    nk_n: int | None = Field(
        default=None, ge=1, le=limits.MAX_INT32, description="N-k dominance rule, with nk_k: a magnitude cell is unsafe when its nk_n largest "
        "contributions make up nk_k of its total or more; None (both): off"
    )
    nk_k: float | None = Field(default=None, gt=0, le=1, description="N-k dominance rule: the share of the cell total (0 to 1) the nk_n largest must stay below")
    min_model_dof: int = Field(
        default=0, ge=0, le=limits.MAX_INT32, description="models with fewer residual dof are blocked"
    )
    min_risk_set: int | None = Field(
        default=None,
        ge=1,
        le=limits.MAX_INT32,
        description="survival rows with fewer at risk are not released; None = threshold+1",
    )
    survival_min_events: int | None = Field(
        default=None,
        ge=1,
        le=limits.MAX_INT32,
        description="a released KM step pools at least this many events; None = threshold+1",
    )
    survival_time_unit: int | None = Field(
        default=None, ge=1, le=limits.MAX_INT32,
        description="survival times are coarsened up to multiples of this many days",
    )
    exposure_rounding: int | None = Field(
        default=None,
        ge=1,
        le=limits.MAX_INT32,
        description="person-time is released rounded to multiples of this (in the column's unit, e.g. "
        "person-years); None = the count rounding_base, so at least whole units",
    )
    magnitude_min_interval: float = Field(
        default=5.0,
        ge=0,
        le=limits.MAX_RANGE_VALUE,
        allow_inf_nan=False,
        description="W: released means and SDs are rounded coarsely enough that differencing two releases "
        "whose cohorts differ by one person leaves that person's value anywhere in an interval at least "
        "this wide (in the column's own unit: years for age); 0 = exact magnitudes",
    )

    @model_validator(mode="after")
    def _nk_complete(self) -> DisclosurePolicy:
        if (self.nk_n is None) != (self.nk_k is None):
            raise DisclosureError(
                f"policy {self.name!r}: N-k dominance needs both nk_n and nk_k (got nk_n={self.nk_n}, "
                f"nk_k={self.nk_k}); set both, e.g. nk_n=2, nk_k=0.9, or neither to turn the rule off"
            )
        return self

    @property
    def suppress_up_to(self) -> int:
        """Counts up to this are suppressed: the threshold, raised where needed so that no released
        count rounds into 1..threshold (threshold 5 with base 5 would show a 6 as 5)."""
        # In closed form, not by counting up: a package may ask for a rounding base up to 2**31 - 1, and
        # counting up to half of it took minutes on every release. The first count that rounds above the
        # threshold rounds to k * base, the least multiple of the base above it: it is k * base - base // 2
        # (halves round up), and every count below it is suppressed.
        base, t = self.rounding_base, self.threshold
        if base == 1:
            return t
        first_released = (t // base + 1) * base - base // 2
        return max(t, first_released - 1)

    # Derived settings: survival defaults follow the count threshold, so a policy that only sets
    # `threshold` still protects KM curves with the same number.
    @property
    def risk_set_minimum(self) -> int:
        return self.min_risk_set if self.min_risk_set is not None else self.threshold + 1

    @property
    def step_min_events(self) -> int:
        return self.survival_min_events if self.survival_min_events is not None else self.threshold + 1

    @property
    def exposure_base(self) -> int:
        """Person-time is released as a multiple of this: it is a sum of per-person follow-up, and an
        exact sum lets two overlapping releases (or a margin minus its released cells) give one
        person's follow-up to the day."""
        return self.exposure_rounding if self.exposure_rounding is not None else self.rounding_base

    def rule_summary(self) -> str:
        """One line for logs and reports."""
        parts = [f"suppress counts 1..{self.threshold}" + (" and zeros" if self.zeros_disclosive else "")]
        if self.rounding_base > 1:
            parts.append(f"round to {self.rounding_base}")
        if self.secondary_suppression:
            parts.append("secondary suppression")
        if self.p_percent is not None:
            parts.append(f"p={self.p_percent:.0%}")
        if self.nk_n is not None:
            parts.append(f"N-k {self.nk_n}/{self.nk_k:.0%}")
        if self.min_model_dof:
            parts.append(f"model dof >= {self.min_model_dof}")
        parts.append(f"person-time to {self.exposure_base}")
        if self.magnitude_min_interval > 0:
            parts.append(f"magnitudes blur one person over {self.magnitude_min_interval:g}")
        return f"{self.name}: " + ", ".join(parts)

    def weaker_settings_than(self, other: DisclosurePolicy) -> list[str]:
        """The settings in which this policy is weaker than `other` (empty when at least as strict)."""
        weaker: list[str] = []
        if self.threshold < other.threshold:
            weaker.append(f"threshold {self.threshold} < {other.threshold}")
        if other.zeros_disclosive and not self.zeros_disclosive:
            weaker.append("zeros released where the site treats them as disclosive")
        # A coarser base protects more only if every released value is still a multiple of the
        # site's base; 10 is stricter than 5, but 7 is not comparable with 5.
        if self.rounding_base % other.rounding_base != 0:
            weaker.append(f"rounding base {self.rounding_base} is not a multiple of {other.rounding_base}")
        if other.secondary_suppression and not self.secondary_suppression:
            weaker.append("secondary suppression off")
        if other.p_percent is not None and (self.p_percent is None or self.p_percent < other.p_percent):
            weaker.append(f"p% rule {self.p_percent} weaker than {other.p_percent}")
        if other.nk_n is not None:
            assert other.nk_k is not None
            # More contributors summed or a lower share flags more cells: (n, k) is at least as strict
            # as (n', k') when n >= n' and k <= k'.
            if self.nk_n is None or self.nk_k is None or self.nk_n < other.nk_n or self.nk_k > other.nk_k:
                weaker.append(f"N-k rule ({self.nk_n}, {self.nk_k}) weaker than ({other.nk_n}, {other.nk_k})")
        if self.exposure_base % other.exposure_base != 0:
            weaker.append(
                f"person-time rounding {self.exposure_base} is not a multiple of {other.exposure_base}"
            )
        if self.magnitude_min_interval < other.magnitude_min_interval:
            weaker.append(
                f"magnitude_min_interval {self.magnitude_min_interval:g} < {other.magnitude_min_interval:g}"
            )
        if self.min_model_dof < other.min_model_dof:
            weaker.append(f"min_model_dof {self.min_model_dof} < {other.min_model_dof}")
        if self.risk_set_minimum < other.risk_set_minimum:
            weaker.append(f"min_risk_set {self.risk_set_minimum} < {other.risk_set_minimum}")
        if self.step_min_events < other.step_min_events:
            weaker.append(f"survival_min_events {self.step_min_events} < {other.step_min_events}")
        if other.survival_time_unit is not None and (
            self.survival_time_unit is None or self.survival_time_unit % other.survival_time_unit != 0
        ):
            weaker.append(
                f"survival_time_unit {self.survival_time_unit} is not a multiple of {other.survival_time_unit}"
            )
        return weaker

    def at_least_as_strict_as(self, other: DisclosurePolicy) -> bool:
        """True when every setting of this policy protects at least as much as `other`'s."""
        return not self.weaker_settings_than(other)


def round_count(value: int, base: int) -> int:
    """Round to the nearest multiple of `base`, halves up (integers only, so no float error)."""
    if base == 1:
        return int(value)
    return ((2 * int(value) + base) // (2 * base)) * base


def _lcm_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return math.lcm(a, b)


def _max_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def strictest(a: DisclosurePolicy, b: DisclosurePolicy, *, name: str | None = None) -> DisclosurePolicy:
    """A policy at least as strict as both `a` and `b` (the stricter of each setting)."""
    nk_n: int | None
    nk_k: float | None
    if a.nk_n is None or b.nk_n is None:
        nk_n, nk_k = (a.nk_n, a.nk_k) if b.nk_n is None else (b.nk_n, b.nk_k)
    else:
        assert a.nk_k is not None and b.nk_k is not None
        nk_n, nk_k = max(a.nk_n, b.nk_n), min(a.nk_k, b.nk_k)
    return DisclosurePolicy(
        name=name or (a.name if a.name == b.name else f"{a.name}+{b.name}"),
        threshold=max(a.threshold, b.threshold),
        zeros_disclosive=a.zeros_disclosive or b.zeros_disclosive,
        # lcm keeps every released value a multiple of both bases.
        rounding_base=math.lcm(a.rounding_base, b.rounding_base),
        rounding_mode="nearest",
        secondary_suppression=a.secondary_suppression or b.secondary_suppression,
        p_percent=_max_opt(a.p_percent, b.p_percent),
        nk_n=nk_n,
        nk_k=nk_k,
        min_model_dof=max(a.min_model_dof, b.min_model_dof),
        min_risk_set=max(a.risk_set_minimum, b.risk_set_minimum),
        survival_min_events=max(a.step_min_events, b.step_min_events),
        survival_time_unit=_lcm_opt(a.survival_time_unit, b.survival_time_unit),
        exposure_rounding=math.lcm(a.exposure_base, b.exposure_base),
        magnitude_min_interval=max(a.magnitude_min_interval, b.magnitude_min_interval),
    )


def effective_policy(
    site_min: DisclosurePolicy, requested: DisclosurePolicy | None = None, *, strict: bool = True
) -> DisclosurePolicy:
    """The policy a site applies: the stricter of each setting of its minimum and the package's request.

    With `strict` (the default) a request that is weaker than the site minimum in any setting is refused
    rather than silently tightened, so the study author learns their outputs will differ from what they
    asked for. Either way the site minimum is never weakened.
    """
    if requested is None:
        return site_min
    weaker = requested.weaker_settings_than(site_min)
    if weaker and strict:
        raise DisclosureError(
            f"the study asks for disclosure policy {requested.name!r}, which is weaker than this site's "
            f"minimum {site_min.name!r}: {'; '.join(weaker)}. Make the package's policy at least as strict "
            "as the site's (or omit it to use the site's policy)."
        )
    if not weaker:
        return requested
    return strictest(site_min, requested, name=f"{site_min.name}+{requested.name}")


# OpenSAFELY's documented rule: counts of 7 or fewer are redacted, all other counts rounded to the
# nearest 5, and totals are recomputed after redaction. OpenSAFELY relies on rounding (not secondary
# suppression) against differencing. Their guidance does not call zeros disclosive, and ehrQL's
# measures write redacted cells as 0, so a zero there is indistinguishable from a redaction; we release
# true zeros as 0.
OPENSAFELY = DisclosurePolicy(
    name="opensafely",
    threshold=7,
    zeros_disclosive=False,
    rounding_base=5,
    secondary_suppression=False,
    # One person's age cannot be placed within 5 years (the width of the released age bands) by
    # differencing two released means; see _release_magnitudes.
    magnitude_min_interval=5.0,
)

# SACRO/ACRO defaults (acro's default.yaml): safe_threshold 10 fails counts *below* 10, so counts
# 1..9 are suppressed and 10 is safe; zeros are disclosive; p-ratio 10%; N-k 2/90%; residual dof 10;
# survival threshold 10. ACRO suppresses rather than rounds by default and does no secondary
# suppression; we add secondary suppression, which is what an ACRO output checker does by hand.
SACRO = DisclosurePolicy(
    name="sacro",
    threshold=9,
    zeros_disclosive=True,
    rounding_base=1,
    secondary_suppression=True,
    p_percent=0.10,
    nk_n=2,
    nk_k=0.90,
    min_model_dof=10,
    min_risk_set=10,
    survival_min_events=10,
    magnitude_min_interval=5.0,
)

BUILTIN_POLICIES: dict[str, DisclosurePolicy] = {p.name: p for p in (OPENSAFELY, SACRO)}
