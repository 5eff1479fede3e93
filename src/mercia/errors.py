"""Errors a user can cause. Each says what was wrong and how to fix it.

The CLI prints them as one line without a traceback; HTTP services return them as 4xx.
"""

from __future__ import annotations


class MerciaError(Exception):
    """Base class for every error a user can cause (bad input, bad configuration)."""


class ConfigError(MerciaError):
    """A target, option or configuration value is invalid."""


class CdmError(MerciaError):
    """A CDM cannot be opened, or does not have the shape expected."""


class LoadError(CdmError):
    """A file could not be loaded into a CDM; the message names file, line and column."""


class VocabularyError(MerciaError):
    """A vocabulary file or concept reference is invalid."""


class CohortDefinitionError(MerciaError):
    """A cohort definition is invalid; the message names the element and its path."""


class StudyError(MerciaError):
    """A study package is invalid or cannot run."""


class DisclosureError(MerciaError):
    """A disclosure policy is invalid or weaker than the site minimum."""
