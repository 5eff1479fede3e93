"""The database engines under a CDM handle: one module per engine, each a small subclass of `base.Engine`.

`open_engine(target)` alone decides from a target which engine opens it; the CLI, the node and the
loaders all go through it (by way of `Cdm.open`). Nothing above `cdm/` names an engine or asks which
one it has: it asks the engine's capabilities and calls its hooks (tests/test_engine_layer.py checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mercia.cdm.engines.base import CHECKPOINTS, EVERY_STEP, Engine, Materialise, ParamStyle
from mercia.cdm.engines.postgres import redact
from mercia.errors import ConfigError

__all__ = ["CHECKPOINTS", "EVERY_STEP", "Engine", "Materialise", "ParamStyle", "engine_class", "is_driver_error",
           "library_versions", "local_path", "open_engine", "redact", "resolve_target", "spark_engine"]

_URL_SCHEMES = ("postgresql://", "postgres://")


_SPARK_LOCAL = "spark:"  # spark:FOLDER, a local Spark session over a folder of Parquet CDM tables
_SPARK_CONNECT = "sc://"  # sc://host:port, a Spark Connect server


def _is_url(target: str) -> bool:
    return "://" in target


def local_path(target: str | Path | None) -> Path | None:
    """The file a target names (a DuckDB database), or None for memory, a server's URL or a Spark folder."""
    if target is None or str(target) == ":memory:" or _is_url(str(target)) or str(target).startswith(_SPARK_LOCAL):
        return None
    return Path(target)


def resolve_target(target: str, base: Path) -> str:
    """A target whose path is relative (a DuckDB file, a `spark:` folder) made relative to `base` (the folder
    of the config file naming it); URLs and memory as they are."""
    if target.startswith(_SPARK_LOCAL):
        folder = target.removeprefix(_SPARK_LOCAL)
        return f"{_SPARK_LOCAL}{(base / folder).resolve()}" if folder and not Path(folder).is_absolute() else target
    path = local_path(target)
    return str((base / path).resolve()) if path is not None and not path.is_absolute() else target


def open_engine(target: str | Path | None, *, create: bool = True, read_only: bool = False) -> Engine:
    """The engine for a target: None or ":memory:" an in-memory DuckDB, a `postgresql://` URL PostgreSQL,
    `spark:FOLDER` a local Spark session over a folder of Parquet CDM tables, `sc://host:port` a Spark
    Connect server, any other text a DuckDB file (`create=False`: the file or folder must exist)."""
    if target is None or str(target) == ":memory:":
        from mercia.cdm.engines.duckdb import DuckDBEngine

        return DuckDBEngine(None)
    t = str(target)
    if t.startswith(_URL_SCHEMES):
        from mercia.cdm.engines.postgres import PostgresEngine

        return PostgresEngine(t)
    if t.startswith((_SPARK_LOCAL, _SPARK_CONNECT)):
        from mercia.cdm.engines.spark import SparkEngine

        return SparkEngine.connect(t) if t.startswith(_SPARK_CONNECT) else SparkEngine.local(t, create=create)
    if _is_url(t):
        raise ConfigError(f"unsupported CDM target {t!r}: give a .duckdb path, a postgresql:// URL, "
                          "spark:FOLDER (Parquet tables) or sc://host:port (Spark Connect)")
    from mercia.cdm.engines.duckdb import DuckDBEngine

    return DuckDBEngine.open(t, create=create, read_only=read_only)


def spark_engine(session: Any) -> Engine:
    """The engine for a SparkSession (Spark is reached from a session, not a target string)."""
    from mercia.cdm.engines.spark import SparkEngine

    return SparkEngine(session)


def engine_class(dialect: str) -> type[Engine]:
    """The engine class of a dialect name (for planning statements without a connection)."""
    from mercia.cdm.engines.duckdb import DuckDBEngine
    from mercia.cdm.engines.postgres import PostgresEngine
    from mercia.cdm.engines.spark import SparkEngine

    classes: dict[str, type[Engine]] = {c.dialect: c for c in (DuckDBEngine, PostgresEngine, SparkEngine)}
    if dialect not in classes:
        raise ValueError(f"no engine for dialect {dialect!r} (engines: {', '.join(classes)})")
    return classes[dialect]


def is_driver_error(e: BaseException) -> bool:
    """An error raised by a database driver (DuckDB, psycopg, Spark), not by Mercia's own code."""
    from mercia.cdm.engines.duckdb import DuckDBEngine
    from mercia.cdm.engines.postgres import PostgresEngine
    from mercia.cdm.engines.spark import SparkEngine

    modules = {m for c in (DuckDBEngine, PostgresEngine, SparkEngine) for m in c.driver_modules}
    return type(e).__module__.split(".")[0] in modules


def library_versions() -> dict[str, str]:
    """Versions of the engine libraries always installed, for a study's record of what ran it."""
    import duckdb

    return {"duckdb": duckdb.__version__}
