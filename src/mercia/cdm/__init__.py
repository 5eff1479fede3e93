"""The OMOP CDM: table specifications, the CDM handle, loading, export and derived tables."""

from mercia.cdm.handle import Cdm
from mercia.cdm.spec import SUPPORTED_VERSIONS, CdmSpec, FieldSpec, TableSpec, cdm_spec

__all__ = ["SUPPORTED_VERSIONS", "Cdm", "CdmSpec", "FieldSpec", "TableSpec", "cdm_spec"]
