"""Statistical disclosure control: the single door through which every result leaves a site.

released = release(ResultTable(...), effective_policy(site_min, requested), site="leeds", log=log)
"""

from mercia.disclosure.log import DisclosureLog, LogEntry
from mercia.disclosure.policy import (
    BUILTIN_POLICIES,
    OPENSAFELY,
    SACRO,
    DisclosurePolicy,
    effective_policy,
    round_count,
    strictest,
)
from mercia.disclosure.release import ReleasedTable, release
from mercia.disclosure.tables import ModelInfo, RateSpec, ResultTable

__all__ = [
    "BUILTIN_POLICIES",
    "OPENSAFELY",
    "SACRO",
    "DisclosureLog",
    "DisclosurePolicy",
    "LogEntry",
    "ModelInfo",
    "RateSpec",
    "ReleasedTable",
    "ResultTable",
    "effective_policy",
    "release",
    "round_count",
    "strictest",
]
