"""Concepts, concept sets and vocabularies: the bundled subset, Athena loading, Circe-exact concept-set resolution."""

from mercia.vocab.athena import load_athena, load_bundled_vocabulary

__all__ = ["load_athena", "load_bundled_vocabulary"]
