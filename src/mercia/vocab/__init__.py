"""Concepts, concept sets and vocabularies: the bundled subset, Athena loading, Circe-exact concept-set resolution."""
