"""Large-scale covariates (OHDSI FeatureExtraction style), built in the database, sparse in memory.

- `CovariateSettings`: analyses (demographics, conditions, drug ingredients, procedures, measurement
  values, Charlson, CHA2DS2-VASc), windows, roll-up, rare-covariate filter, excluded concepts
- `build_covariates(cdm, cohort_ids, settings)` -> `CovariateData` (rows, sparse X, covariate ref)

Covariate ids are `concept_id * 1000 + analysis_id`, stable across sites. `CovariateData` is
row-level data: it stays at the site.
"""

from mercia.features.build import build_covariates
from mercia.features.data import CovariateData
from mercia.features.settings import DEFAULT_WINDOWS, CovariateSettings, Window

__all__ = ["DEFAULT_WINDOWS", "CovariateData", "CovariateSettings", "Window", "build_covariates"]
