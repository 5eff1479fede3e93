"""schemathesis against the node's and the hub's /openapi.json over real HTTP, authenticated: for
generated requests (valid and invalid by the schema) no answer is a 5xx, every status code is one the
operation documents, and every body matches its documented schema and content type.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cohort_strategies import hostile_definitions
from federation_support import PROJECT, Federation, make_site

pytestmark = pytest.mark.slow  # a hub and a node, a few hundred generated requests each

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 25
API = "/api/v1"


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("fuzz")
    site = make_site(root / "a.duckdb", persons=3000, seed=21)
    # Generous count limits: the fuzzer is one principal asking many different counts.
    with Federation(root, {"a": site}, node_config={"count_limits": {"per_window": 10_000}}) as federation:
        yield federation


@pytest.fixture(scope="module")
def node_api(fed: Federation) -> Any:
    return schemathesis.openapi.from_url(fed.nodes["a"].url + "/openapi.json")


@pytest.fixture(scope="module")
def hub_api(fed: Federation) -> Any:
    return schemathesis.openapi.from_url(fed.hub.url + "/openapi.json")


def fuzz(schema: Any, headers_for: Any, examples: int) -> tuple[int, list[str]]:
    """Run every operation of `schema` with generated cases, valid and invalid by the schema, and
    return (operations tried, failures). schemathesis' pytest plugin does not run under pytest 9, so
    the strategies are driven with hypothesis here."""
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                      database=None, phases=[Phase.explicit, Phase.generate])
            def run(case: Any) -> None:
                case.call_and_validate(headers=headers_for(case), checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing in this operation can be made invalid (e.g. GET /health, no inputs)
            except (Exception, BaseExceptionGroup) as e:  # schemathesis' FailureGroup is a BaseExceptionGroup
                # A check failed: keep going, report every operation that failed.
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {str(e)[:1500]}")
    return operations, failures


def test_node_api_conforms_and_never_fails(node_api, fed):
    node = fed.nodes["a"]

    def headers(case: Any) -> dict[str, str]:
        # Each operation with a principal allowed to call it, so the fuzzer reaches the handlers.
        who = "custodian" if case.path.endswith(("/approve", "/reject")) else "hub"
        return {"Authorization": f"Bearer {node.tokens[who]}"}

    operations, failures = fuzz(node_api, headers, EXAMPLES)
    assert operations >= 8
    assert not failures, "\n\n".join(failures)


def test_hub_api_conforms_and_never_fails(hub_api, fed):
    operations, failures = fuzz(hub_api, lambda case: {"Authorization": f"Bearer {fed.hub.admin_token}"},
                                EXAMPLES)
    assert operations >= 12
    assert not failures, "\n\n".join(failures)


def test_hostile_cohort_definitions_never_fail_the_node_or_the_hub(node_api, hub_api, fed):
    """The cohort definition is free-form in the schema, so generation from it never reaches the cohort
    code: here the body is a valid ATLAS definition with hostile values put in (2**31 days, 10**12, 2**64,
    lone surrogates, wrong types), sent to the node's and the hub's feasibility counts, and schemathesis'
    checks hold (no 5xx; documented codes and bodies)."""
    node = fed.nodes["a"]
    targets = [(node_api[f"{API}/feasibility"]["POST"], {"Authorization": f"Bearer {node.tokens['hub']}"}),
               (hub_api[f"{API}/feasibility"]["POST"], {"Authorization": f"Bearer {fed.hub.admin_token}"})]
    calls: list[int] = []

    @given(definition=hostile_definitions())
    @settings(max_examples=2 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              phases=[Phase.explicit, Phase.generate])
    def run(definition: dict[str, Any]) -> None:
        # NaN and infinity are not JSON for the HTTP client; test_attack_limits sends them as raw text.
        assume(_finite(definition))
        for operation, headers in targets:
            case = operation.Case(body={"definition": definition, "project": PROJECT}, media_type="application/json")
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            calls.append(response.status_code)

    run()
    assert len(calls) >= EXAMPLES, calls  # the requests were made
    assert 200 in calls and any(400 <= c < 500 for c in calls), sorted(set(calls))  # both kinds of answer


def _finite(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    return True


def test_node_and_hub_without_a_token_conform(node_api, hub_api):
    """Unauthenticated requests get documented answers (401, or 422 for a malformed request)."""
    for schema in (node_api, hub_api):
        _, failures = fuzz(schema, lambda case: {}, 5)
        assert not failures, "\n\n".join(failures)
