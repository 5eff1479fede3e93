"""docs/reference/http-api.md, written from the node's and the hub's OpenAPI documents.

    .venv/bin/python -m mercia.federation.apidoc > docs/reference/http-api.md

The apps are built on throw-away configuration (no server starts, no CDM is opened); the text holds
each operation, who may call it, its request fields and its answers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

HEADER = """# HTTP API reference

Generated from the services' OpenAPI documents by `python -m mercia.federation.apidoc`; a test keeps
it in step with the code. A running node or hub serves the same document at `/openapi.json`.

Every route except `/health` needs `Authorization: Bearer <token>`; without a valid token the answer
is 401 (with `WWW-Authenticate: Bearer`), with a token of the wrong role or project 403; a study of
a project the token is not scoped to answers 404, exactly as a study that does not exist. Errors are
JSON `{"detail": "what is wrong and how to fix it"}`. Request bodies reject unknown fields (422), and
values past Mercia's limits (`mercia.limits`) with 422 or 400 naming the field: nesting deeper than 128,
text that is not valid UTF-8 (lone surrogates), NaN or infinity, integers past 64 bits, and in cohort
definitions days past ±99,999, range bounds past ±1e9, groups nested more than 20 deep. A body over
16 MiB is refused with 413 before it is read.

The hub also serves web pages under `/portal/` (the portal, [how-to](../how-to/use-the-portal.md)): they
are not part of this API, sign in with a password and a session cookie instead of a token, and call
the same permission checks and code as the routes below.
"""


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    t = schema.get("type", "any")
    if t == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if t == "object":
        return "object"
    return str(t)


def _fields(schema: dict[str, Any], components: dict[str, Any]) -> list[str]:
    refs = [s for s in schema.get("anyOf", []) if "$ref" in s]  # an optional body: Model or null
    if refs:
        schema = refs[0]
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    props = schema.get("properties", {})
    if not props:
        return []
    required = set(schema.get("required", []))
    lines = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, p in props.items():
        desc = (p.get("description") or "").replace("|", "\\|").replace("\n", " ")
        extra = f" (pattern `{p['pattern']}`)" if "pattern" in p else ""
        lines.append(f"| `{name}` | {_type(p)}{extra} | {'yes' if name in required else 'no'} | {desc} |")
    return lines


def render(title: str, spec: dict[str, Any]) -> str:
    components = spec.get("components", {}).get("schemas", {})
    out = [f"## {title}", "", spec["info"].get("description", ""), ""]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f"### `{method.upper()} {path}`")
            out.append("")
            doc = (op.get("description") or op.get("summary") or "").strip()
            if doc:
                out += [doc, ""]
            params = [p for p in op.get("parameters", []) if p.get("in") in ("path", "query")]
            for p in params:
                desc = p.get("description") or p["schema"].get("description") or ""
                out.append(f"- {p['in']} parameter `{p['name']}` ({_type(p['schema'])}): {desc}".rstrip(": "))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                out += ["", "Request body:", "", *_fields(body, components)]
            codes = ", ".join(sorted(op.get("responses", {})))
            out += ["", f"Answers: {codes}.", ""]
    return "\n".join(out)


def node_spec() -> dict[str, Any]:
    from mercia.federation.auth import generate_signing_key
    from mercia.federation.node.app import create_app
    from mercia.federation.node.config import NodeConfig

    with tempfile.TemporaryDirectory() as d:
        key = Path(d) / "hub.pem"
        (Path(d) / "hub.pub").write_text(generate_signing_key(key))
        cfg = NodeConfig(site="site", cdm=str(Path(d) / "cdm.duckdb"), state_dir=Path(d) / "state",
                         hub_public_key=Path(d) / "hub.pub", tokens=Path(d) / "tokens.json")
        spec = create_app(cfg, start_worker=False).openapi()
    spec["info"]["title"] = "Mercia node"
    return spec


def hub_spec() -> dict[str, Any]:
    from mercia.federation.hub.app import create_app
    from mercia.federation.hub.config import HubConfig

    with tempfile.TemporaryDirectory() as d:
        cfg = HubConfig(state_dir=Path(d) / "state", tokens=Path(d) / "tokens.json",
                        signing_key=Path(d) / "hub.pem")
        return create_app(cfg, start_dispatcher=False).openapi()


def http_api_markdown() -> str:
    return "\n".join([HEADER, render("Node", node_spec()), render("Hub", hub_spec())]).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(http_api_markdown())
