"""Shared fixtures: CDMs on every engine, the real PostgreSQL server, the Eunomia test data."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mercia.cdm import Cdm
from shared_data import EUNOMIA as SHARED_EUNOMIA

EUNOMIA = Path(os.environ["MERCIA_EUNOMIA"]) if os.environ.get("MERCIA_EUNOMIA") else SHARED_EUNOMIA
PG_ENV = "MERCIA_TEST_PG_URL"


def _pg_url() -> str:
    """The test server's URL; without one, skip loudly, or fail in CI where a skip would hide a gap."""
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{PG_ENV} is not set but CI=true: PostgreSQL tests must run in CI, set the URL")
    pytest.skip(f"PostgreSQL TESTS NOT RUN: set {PG_ENV}=postgresql://user@host:port/db to run them")


@pytest.fixture(scope="session")
def pg_url() -> str:
    return _pg_url()


def require_spark() -> None:
    """Spark tests run with MERCIA_TEST_SPARK=1 (pyspark and Java 17); in CI a gap fails, never skips."""
    ci = os.environ.get("CI", "").lower() == "true"
    if os.environ.get("MERCIA_TEST_SPARK") != "1":
        if ci:
            pytest.fail("CI=true but MERCIA_TEST_SPARK is not 1: the Spark tests must run in CI")
        pytest.skip("Spark tests not run: set MERCIA_TEST_SPARK=1 (needs pyspark and Java 17)")
    try:
        import pyspark  # noqa: F401
    except ImportError:
        if ci:
            pytest.fail("MERCIA_TEST_SPARK=1 and CI=true but pyspark is not installed: install it in .ci/run")
        pytest.skip("pyspark is not installed (pip install 'pyspark==4.3.*')")


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One local Spark session per test process, shared by every Spark test module: starting one takes
    seconds and a JVM of about 1 GB. Modules keep apart by database names of their own; `spark:FOLDER`
    targets opened while it runs use it (and leave it running)."""
    require_spark()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]").appName("mercia-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def pg_cdm_factory(pg_url: str) -> Iterator[Callable[..., Cdm]]:
    """Opens CDMs on PostgreSQL, each in its own fresh schema, dropped afterwards."""
    opened: list[tuple[Cdm, str]] = []

    def make(**kwargs) -> Cdm:
        schema = "mercia_test_" + secrets.token_hex(6)
        cdm = Cdm.open(pg_url, cdm_schema=schema, vocab_schema=schema, results_schema=schema, **kwargs)
        opened.append((cdm, schema))
        return cdm

    yield make
    for cdm, schema in opened:
        with contextlib.suppress(Exception):
            cdm.engine.rollback()  # a test that failed inside a transaction leaves it open
        cdm.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        cdm.close()


@pytest.fixture
def pg_cdm(pg_cdm_factory: Callable[..., Cdm]) -> Cdm:
    return pg_cdm_factory()


@pytest.fixture
def duck_cdm() -> Iterator[Cdm]:
    cdm = Cdm.open()
    yield cdm
    cdm.close()


ENGINES = ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cdm_factory(engine: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cdm]]:
    """Opens empty CDMs on each engine in turn: a test using it runs on DuckDB and on PostgreSQL."""
    if engine == "postgres":
        yield request.getfixturevalue("pg_cdm_factory")
        return
    opened: list[Cdm] = []

    def make(**kwargs) -> Cdm:
        cdm = Cdm.open(**kwargs)
        opened.append(cdm)
        return cdm

    yield make
    for cdm in opened:
        cdm.close()


@pytest.fixture
def any_cdm(cdm_factory: Callable[..., Cdm]) -> Cdm:
    return cdm_factory()


@pytest.fixture(scope="session")
def eunomia_dir() -> Path:
    if not EUNOMIA.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Eunomia test data not found at {EUNOMIA} (set MERCIA_EUNOMIA)")
        pytest.skip(f"Eunomia test data not found at {EUNOMIA} (set MERCIA_EUNOMIA)")
    return EUNOMIA


# ---- Chromium (browser tests) ---------------------------------------------------------------------
CHROMIUM = Path(os.environ.get("MERCIA_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _no_browser(why: str) -> None:
    """Skip loudly, or fail in CI where a skip would hide a gap (as the PostgreSQL tests do)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} but CI=true: the browser tests must run in CI (.ci/run installs Chromium)")
    pytest.skip(f"BROWSER TESTS NOT RUN: {why}")


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never Playwright's own browser download). Module-scoped:
    Playwright's sync API runs an event loop while it is open, and a test after it that calls
    asyncio.run() in the same worker would find that loop running."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        _no_browser(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MERCIA_TEST_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep what a person should look at (screenshots): $MERCIA_TEST_ARTIFACTS, or
    tests/artifacts/ (git-ignored)."""
    folder = Path(os.environ.get("MERCIA_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- suite-wide switches ---------------------------------------------------------------------------
# In CI every generative test draws the same examples (a red CI must be reproducible, and a green one
# must not depend on luck); developers keep hypothesis' random exploration.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    _hypothesis_settings.load_profile("ci")

SLOW_ENV = "MERCIA_TEST_SLOW"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` (minutes: planted-effect recovery at scale, oracle sweeps, the differencing
    attack) run when MERCIA_TEST_SLOW=1, as .ci/run sets it; the default suite stays fast."""
    if os.environ.get(SLOW_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"slow test: set {SLOW_ENV}=1 to run it (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
