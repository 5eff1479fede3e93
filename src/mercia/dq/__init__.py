"""Data quality: DataQualityDashboard-style checks of a whole CDM (`run_checks`), written as Parquet and as
the JSON DQD's viewer reads (`write_results`)."""

from mercia.dq.catalogue import CHECK_TYPES, Check, catalogue
from mercia.dq.runner import CheckRun, run_checks

__all__ = ["CHECK_TYPES", "Check", "CheckRun", "catalogue", "run_checks"]
