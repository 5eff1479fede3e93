"""docs/reference/http-api.md is what the node's and the hub's OpenAPI documents say today."""

from __future__ import annotations

from pathlib import Path

from mercia.federation.apidoc import http_api_markdown, hub_spec, node_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference" / "http-api.md"


def test_http_api_reference_is_up_to_date() -> None:
    assert DOC.read_text() == http_api_markdown(), (
        "docs/reference/http-api.md is stale: regenerate it with "
        "`.venv/bin/python -m mercia.federation.apidoc > docs/reference/http-api.md`")


def test_every_operation_is_documented_with_its_roles() -> None:
    for spec in (node_spec(), hub_spec()):
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                assert op.get("description"), f"{method} {path} has no docstring"
                if path != "/health":
                    assert "Role" in op["description"], f"{method} {path} does not say who may call it"
