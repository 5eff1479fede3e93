"""Federation: node service, hub, study packages, audit trail, and pooling of site results.

Pooling is pure maths (no HTTP): `meta_analyse` combines per-site estimates; `federated_glm` and
`federated_cox` fit one model across sites from per-round site summaries (exact, DataSHIELD-style).
"""

from mercia.federation.glm import (
    ConvergenceError,
    FederatedFit,
    SiteRefusedError,
    SiteSummary,
    cox_summary,
    federated_cox,
    federated_glm,
    glm_site_summary,
    in_process,
    summary_from_released,
    summary_table,
)
from mercia.federation.pooling import (
    MetaAnalysis,
    PooledEstimate,
    PoolingError,
    meta_analyse,
    site_estimates_from_ci,
)

__all__ = [
    "ConvergenceError",
    "FederatedFit",
    "MetaAnalysis",
    "PooledEstimate",
    "PoolingError",
    "SiteRefusedError",
    "SiteSummary",
    "cox_summary",
    "federated_cox",
    "federated_glm",
    "glm_site_summary",
    "in_process",
    "meta_analyse",
    "site_estimates_from_ci",
    "summary_from_released",
    "summary_table",
]
