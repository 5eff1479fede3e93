"""Analyses: each a function (CDM, cohort ids, settings) -> AnalysisResult of un-released ResultTables.

Every table must pass `mercia.disclosure.release()` before it leaves the site.
"""

from mercia.analyses.result import AnalysisResult

__all__ = ["AnalysisResult"]
