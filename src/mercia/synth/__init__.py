"""A seeded, vectorised synthetic UK population written straight into OMOP CDM v5.4 tables.

``generate_site`` writes one site into a CDM handle and returns its truth (planted effects and the
exact generative model); ``generate_federation`` writes several sites with different case-mix, each
as ``<out>/<site>.duckdb`` beside ``<out>/<site>.truth.json``.
"""

from mercia.synth.profiles import DEFAULT_SITES, SiteProfile
from mercia.synth.site import generate_federation, generate_site

__all__ = ["DEFAULT_SITES", "SiteProfile", "generate_federation", "generate_site"]
