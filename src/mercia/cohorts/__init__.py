"""Cohorts: the cohort model, the OHDSI Circe (ATLAS JSON) importer, the compiler and generation."""
