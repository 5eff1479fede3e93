"""Site profiles: the knobs that give each synthetic site its own case-mix.

The disease, drug and outcome mechanisms (``mercia.synth.params``) are the same at every site, so a
planted hazard ratio is the same everywhere; sites differ in who lives there (age, sex, ethnicity,
deprivation, smoking), how often people move practice, and how doctors choose between drugs
(channelling), which is what makes crude comparisons differ between sites.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mercia.errors import ConfigError
from mercia.synth.negative_controls import MAX_NEGATIVE_CONTROLS

# ONS mid-2021 estimates for England, share of the population in 5-year bands 0-4 ... 85-89, 90+
# (rounded; the shape, not the decimals, is what matters here).
ENGLAND_PYRAMID: tuple[float, ...] = (
    5.4, 5.9, 6.0, 5.6, 6.0, 6.6, 6.9, 6.7, 6.3, 6.4, 6.9, 6.7, 5.8, 5.0, 5.0, 3.6, 2.5, 1.6, 0.9,
)
BAND_WIDTH = 5
MAX_AGE = 100  # the 90+ band is spread over 90-99

RACE_KEYS = ("white", "black", "asian", "mixed", "other")


class SiteProfile(BaseModel):
    """One site's population and practice style. All fields have sensible English defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$", description="file-safe site name")
    description: str = ""
    # Age structure: the ONS pyramid tilted by exp(age_tilt * (age - 40) / 10), with the 20-39 bands
    # multiplied by young_adult_boost (university towns and cities).
    age_tilt: float = Field(0.0, ge=-1.0, le=1.0)
    young_adult_boost: float = Field(1.0, gt=0.0, le=5.0)
    # Shares of white, black, asian, mixed, other (normalised).
    race_mix: tuple[float, float, float, float, float] = (0.81, 0.04, 0.10, 0.03, 0.02)
    # Shares of IMD quintiles 1 (least deprived) .. 5 (most deprived) (normalised).
    deprivation_mix: tuple[float, float, float, float, float] = (0.2, 0.2, 0.2, 0.2, 0.2)
    ever_smoker: float = Field(0.42, ge=0.0, le=1.0, description="share of adults who ever smoked")
    # GP registration dynamics.
    move_in_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share who register during the window")
    leave_rate: float = Field(0.04, ge=0.0, le=1.0, description="yearly hazard of leaving the practice")
    return_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of leavers who come back")
    # Prescribing style (log-odds shifts; channelling differs between sites, planted effects do not).
    sglt2_uptake: float = Field(0.0, ge=-5.0, le=5.0, description="log-odds shift for SGLT2i over gliclazide")
    celecoxib_preference: float = Field(0.0, ge=-5.0, le=5.0, description="log-odds shift for celecoxib")
    # Multiplies every acute-event hazard (MI, stroke, GI bleed, hip fracture, pneumonia, UTI, HF
    # admission). 1.0 is realistic; tests raise it to get events from few persons. Hazard *ratios* do
    # not change.
    acute_rate_multiplier: float = Field(1.0, gt=0.0, le=100.0)
    # Synthetic negative-control outcomes (mercia.synth.negative_controls): 0 (off) or the first N of
    # its concept table, each an acute condition no exposure affects. Off, the data are unchanged.
    negative_control_outcomes: int = Field(0, ge=0, le=MAX_NEGATIVE_CONTROLS)

    @field_validator("race_mix", "deprivation_mix")
    @classmethod
    def _shares(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(x < 0 for x in v) or sum(v) <= 0:
            raise ValueError("shares must be non-negative with a positive sum")
        return v

    def age_weights(self) -> np.ndarray:
        """Probability of each 5-year band (0-4 ... 90-99)."""
        w = np.asarray(ENGLAND_PYRAMID, dtype=float)
        mids = np.arange(len(w)) * BAND_WIDTH + 2.5
        w = w * np.exp(self.age_tilt * (mids - 40.0) / 10.0)
        w[4:8] *= self.young_adult_boost
        return w / w.sum()


DEFAULT_SITES: list[SiteProfile] = [
    SiteProfile(
        name="northgate",
        description="Inner-city practice: young, ethnically diverse, high turnover, early SGLT2i adopters.",
        age_tilt=-0.12,
        young_adult_boost=1.6,
        race_mix=(0.55, 0.12, 0.22, 0.06, 0.05),
        deprivation_mix=(0.10, 0.15, 0.20, 0.25, 0.30),
        ever_smoker=0.38,
        move_in_fraction=0.45,
        leave_rate=0.10,
        return_fraction=0.20,
        sglt2_uptake=0.5,
        celecoxib_preference=-0.2,
    ),
    SiteProfile(
        name="fenwold",
        description="Rural market-town practice: old, white, affluent, stable list, cautious prescribing.",
        age_tilt=0.15,
        young_adult_boost=0.75,
        race_mix=(0.96, 0.005, 0.02, 0.01, 0.005),
        deprivation_mix=(0.30, 0.30, 0.20, 0.12, 0.08),
        ever_smoker=0.40,
        move_in_fraction=0.12,
        leave_rate=0.025,
        return_fraction=0.35,
        sglt2_uptake=-0.5,
        celecoxib_preference=0.5,
    ),
    SiteProfile(
        name="ashby",
        description="Former mining town: deprived, more smoking, diabetes and COPD, middle-aged.",
        age_tilt=0.05,
        young_adult_boost=0.9,
        race_mix=(0.90, 0.02, 0.05, 0.02, 0.01),
        deprivation_mix=(0.04, 0.08, 0.18, 0.30, 0.40),
        ever_smoker=0.55,
        move_in_fraction=0.22,
        leave_rate=0.05,
        return_fraction=0.30,
        sglt2_uptake=0.0,
        celecoxib_preference=0.0,
    ),
    SiteProfile(
        name="riverside",
        description="Suburban practice close to the England average.",
    ),
]


def with_settings(profile: SiteProfile, **settings: object) -> SiteProfile:
    """`profile` with some fields changed, validated (a bad value is a ConfigError naming the field)."""
    from pydantic import ValidationError

    try:
        return SiteProfile.model_validate({**profile.model_dump(), **settings})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{field}: {err['msg']} (got {err.get('input')!r})") from None


def federation_profiles(sites: int) -> list[SiteProfile]:
    """`sites` distinct profiles: the defaults first, then numbered variants of them."""
    if sites < 1:
        raise ConfigError(f"sites must be at least 1, got {sites}")
    out: list[SiteProfile] = []
    for i in range(sites):
        base = DEFAULT_SITES[i % len(DEFAULT_SITES)]
        if i < len(DEFAULT_SITES):
            out.append(base)
        else:
            out.append(base.model_copy(update={"name": f"{base.name}_{i // len(DEFAULT_SITES) + 1}"}))
    return out
