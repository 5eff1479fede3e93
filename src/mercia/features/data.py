"""CovariateData: a sparse person-by-covariate matrix with its rows and its covariate reference.

Row-level data: it stays at the site. What leaves is built from it (balance tables, model
coefficients) and passes disclosure control first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROW_COLUMNS = ("row_id", "person_id", "cohort_definition_id", "cohort_start_date")
REF_COLUMNS = ("covariate_id", "covariate_name", "analysis_id", "analysis_name", "concept_id", "window", "kind")


@dataclass
class CovariateData:
    """`X[i, j]` is covariate `ref.covariate_id[j]` of cohort entry `rows.row_id[i]` (= i).

    Binary covariates are 0/1; continuous ones hold their value, with 0 meaning no value (as
    FeatureExtraction's sparse output, where a missing row means zero).
    """

    rows: pd.DataFrame
    X: sp.csr_matrix
    ref: pd.DataFrame

    def __post_init__(self) -> None:
        if self.X.shape != (len(self.rows), len(self.ref)):
            raise ValueError(f"X is {self.X.shape} but there are {len(self.rows)} rows and {len(self.ref)} covariates")

    @property
    def covariate_ids(self) -> np.ndarray:
        return self.ref["covariate_id"].to_numpy(dtype=np.int64)

    def column(self, covariate_id: int) -> int:
        hit = np.flatnonzero(self.covariate_ids == covariate_id)
        if not len(hit):
            raise KeyError(f"covariate {covariate_id} is not in this covariate set")
        return int(hit[0])

    def subset_rows(self, mask_or_index: np.ndarray) -> CovariateData:
        """The given rows (boolean mask or positions), renumbered 0..n-1."""
        idx = np.flatnonzero(mask_or_index) if mask_or_index.dtype == bool else np.asarray(mask_or_index)
        rows = self.rows.iloc[idx].reset_index(drop=True)
        rows["row_id"] = np.arange(len(rows), dtype=np.int64)
        return CovariateData(rows, self.X[idx].tocsr(), self.ref)

    def subset_covariates(self, keep: np.ndarray) -> CovariateData:
        idx = np.flatnonzero(keep) if keep.dtype == bool else np.asarray(keep)
        return CovariateData(self.rows, self.X[:, idx].tocsr(), self.ref.iloc[idx].reset_index(drop=True))

    def align_to(self, covariate_ids: Sequence[int]) -> sp.csr_matrix:
        """X with columns in the order of `covariate_ids` (a model's), zero where this site lacks one:
        how a model trained at one site is applied at another."""
        want = np.asarray(covariate_ids, dtype=np.int64)
        pos = {int(c): j for j, c in enumerate(self.covariate_ids)}
        src = np.array([pos.get(int(c), -1) for c in want], dtype=np.int64)
        have = src >= 0
        coo = self.X.tocoo()
        remap = np.full(self.X.shape[1], -1, dtype=np.int64)
        remap[src[have]] = np.flatnonzero(have)
        keep = remap[coo.col] >= 0
        return sp.csr_matrix(
            (coo.data[keep], (coo.row[keep], remap[coo.col[keep]])), shape=(self.X.shape[0], len(want))
        )
