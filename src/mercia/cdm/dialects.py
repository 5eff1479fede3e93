"""The SQL dialects Mercia writes, and the parameter style of each one's Python driver.

The engines Mercia runs (mercia.cdm.engines) give their own style; the others are dialects a cohort's SQL
is rendered in for another site's engine (`mercia cohort sql`), generated and never executed here:

* duckdb: ``$name``, values a dict (duckdb's named parameters);
* postgres: ``%(name)s``, a dict (psycopg's ``pyformat``);
* spark: ``:name``, a dict (``spark.sql(sql, args=...)``);
* trino: ``?``, a list in the order the placeholders appear (the trino client's ``qmark``);
* bigquery: ``@name``, a dict (google-cloud-bigquery's named query parameters);
* snowflake: ``:1``, ``:2`` …, a list, value i for ``:i`` (snowflake-connector-python with
  ``paramstyle="numeric"``: bound by the server, where the default ``pyformat`` splices values into the
  text in the client);
* tsql: ``@name``, a dict (SQL Server's ``sp_executesql`` parameters).
"""

from __future__ import annotations

from mercia.cdm.engines import ParamStyle, engine_class

EXECUTED = ("duckdb", "postgres", "spark")  # dialects of the engines Mercia runs
GENERATED_ONLY: dict[str, ParamStyle] = {  # rendered for other sites' engines, not executed here
    "trino": "qmark",
    "bigquery": "at",
    "snowflake": "numeric",
    "tsql": "at",
}
PARAM_STYLES: dict[str, ParamStyle] = {**{d: engine_class(d).param_style for d in EXECUTED}, **GENERATED_ONLY}
DIALECTS: tuple[str, ...] = tuple(PARAM_STYLES)
