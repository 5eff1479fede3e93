"""Mercia: federated health-data research on the OMOP Common Data Model."""

__version__ = "0.1.0"
