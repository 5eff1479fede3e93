"""Authentication and authorisation: tokens stored only as hashes, constant-time lookup, revocation and
rotation; 401/403 over real HTTP; Ed25519 package signatures; the SHRINE-style count-query guard."""

# No `from __future__ import annotations`: FastAPI must resolve the Annotated dependencies of the
# endpoints in tiny_app, which close over a local authenticator.

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from mercia.errors import ConfigError, MerciaError
from mercia.federation import auth as auth_module
from mercia.federation.auth import (
    HUB_ROLES,
    NODE_ROLES,
    ROLES,
    CountQueryGuard,
    Principal,
    RateLimitedError,
    SignatureRefused,
    TokenStore,
    authenticator,
    generate_signing_key,
    hash_token,
    new_token,
    public_key_pem,
    query_key,
    read_signature,
    require_project,
    require_role,
    sign_package,
    verify_package,
)


# ---- tokens ---------------------------------------------------------------------------------------
def test_new_tokens_are_prefixed_random_and_hashed_by_sha256():
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(t.startswith("mct_") and len(t) >= 40 for t in tokens)
    t = next(iter(tokens))
    assert hash_token(t) == hash_token(t) and len(hash_token(t)) == 64 and hash_token(t) != t


def test_the_token_file_never_holds_a_token(tmp_path):
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    issued = [store.issue(f"user{i}", role, ["p1"]) for i, role in enumerate(ROLES)]
    text = path.read_text()
    for token in issued:
        assert token not in text
        assert token[len("mct_"):] not in text
        assert hash_token(token) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temp file behind


def test_lookup_issue_rotate_revoke(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    alice = store.issue("alice", "researcher", ["p1", "p2"])
    bob = store.issue("bob", "custodian", "*")
    assert store.lookup(alice) == Principal("alice", "researcher", frozenset({"p1", "p2"}))
    assert store.lookup(bob) == Principal("bob", "custodian", frozenset({"*"}))
    assert store.lookup(bob).in_project("anything")
    assert store.lookup("mct_" + "x" * 43) is None
    assert store.lookup("") is None
    rotated = store.issue("alice", "researcher", ["p1"])
    assert store.lookup(alice) is None and store.lookup(rotated).projects == frozenset({"p1"})
    store.revoke("bob")
    assert store.lookup(bob) is None
    with pytest.raises(ConfigError, match="no token is issued to 'bob'"):
        store.revoke("bob")
    assert [p.name for p in store.principals()] == ["alice"]


def test_a_running_service_sees_tokens_issued_elsewhere(tmp_path):
    server_view = TokenStore(tmp_path / "tokens.json")
    cli_view = TokenStore(tmp_path / "tokens.json")  # e.g. `mercia token issue` in another process
    assert server_view.lookup("mct_nothing") is None
    token = cli_view.issue("carol", "admin", ["*"])
    assert server_view.lookup(token).role == "admin"
    cli_view.revoke("carol")
    assert server_view.lookup(token) is None


@pytest.mark.parametrize(("name", "role", "projects", "message"), [
    ("", "researcher", [], "principal name"),
    ("a b", "researcher", [], "principal name"),
    ("x" * 200, "researcher", [], "principal name"),
    ("alice", "superuser", [], "unknown role 'superuser'"),
    ("alice", "researcher", ["bad project"], "project name"),
])
def test_bad_issue_input(tmp_path, name, role, projects, message):
    with pytest.raises(ConfigError, match=message):
        TokenStore(tmp_path / "tokens.json").issue(name, role, projects)


def test_each_service_issues_only_the_roles_its_routes_accept(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    for role in ("node", "hub", "custodian"):
        with pytest.raises(ConfigError, match=f"no route here accepts the role '{role}': use one of researcher, admin"):
            store.issue("x", role, ["p"], roles=HUB_ROLES)
    with pytest.raises(ConfigError, match="no route here accepts the role 'node': use one of hub, custodian"):
        store.issue("x", "node", ["p"], roles=NODE_ROLES)
    assert not store.principals()
    assert store.issue("x", "admin", ["p"], roles=HUB_ROLES).startswith("mct_")


def test_a_malformed_token_file_is_a_config_error(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"name": "x", "role": "god", "projects": [], "token_hash": "0" * 64}]}))
    with pytest.raises(ConfigError, match="not a Mercia token file"):
        TokenStore(path).lookup("mct_abc")
    path.write_text("not json")
    with pytest.raises(ConfigError):
        TokenStore(path).lookup("mct_abc")


def test_lookup_compares_every_entry_in_constant_time(tmp_path, monkeypatch):
    store = TokenStore(tmp_path / "tokens.json")
    first = store.issue("first", "researcher", ["p"])
    for i in range(9):
        store.issue(f"other{i}", "researcher", ["p"])
    calls = []
    real = auth_module.hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", counting)
    assert store.lookup(first).name == "first"  # a match at the first entry ...
    assert len(calls) == 10  # ... still compares with all ten: no early exit
    calls.clear()
    assert store.lookup("mct_wrong") is None
    assert len(calls) == 10
    assert all(b == hash_token("mct_wrong") for _, b in calls)  # hashes are compared, never raw tokens


# ---- 401 / 403 over real HTTP ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_app(store: TokenStore) -> FastAPI:
    app = FastAPI()
    auth = authenticator(store)
    app.state.authenticator = auth

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/whoami")
    def whoami(p: Annotated[Principal, Depends(auth)]) -> dict[str, str]:
        return {"name": p.name, "role": p.role}

    @app.post("/approve")
    def approve(p: Annotated[Principal, Depends(auth.require_role("custodian", "admin"))]) -> dict[str, str]:
        return {"approved_by": p.name}

    @app.get("/hub-only")
    def hub_only(p: Annotated[Principal, Depends(require_role("hub"))]) -> dict[str, str]:
        return {"name": p.name}

    @app.get("/projects/{project}")
    def project(project: str, p: Annotated[Principal, Depends(require_role("researcher", "admin"))]) -> dict:
        require_project(p, project)
        return {"project": project}

    return app


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, TokenStore]]:
    store = TokenStore(tmp_path_factory.mktemp("auth") / "tokens.json")
    with serve(tiny_app(store)) as url:
        yield url, store


def test_unauthenticated_requests_get_401_with_bearer_challenge(served):
    url, _ = served
    with httpx.Client(base_url=url) as c:
        assert c.get("/health").json() == {"status": "ok"}
        for path in ("/whoami", "/hub-only", "/projects/p1"):
            r = c.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in r.json()["detail"]
        assert c.post("/approve").status_code == 401
        assert c.get("/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
        bad = c.get("/whoami", headers={"Authorization": "Bearer mct_forged"})
        assert bad.status_code == 401 and "not valid" in bad.json()["detail"]


def test_roles_and_projects_give_403(served):
    url, store = served
    researcher = store.issue("rita", "researcher", ["p1"])
    custodian = store.issue("cora", "custodian", ["*"])
    hub = store.issue("the-hub", "hub", ["*"])
    admin = store.issue("ada", "admin", ["*"])
    with httpx.Client(base_url=url) as c:
        def call(method: str, path: str, token: str) -> httpx.Response:
            return c.request(method, path, headers={"Authorization": f"Bearer {token}"})

        assert call("GET", "/whoami", researcher).json() == {"name": "rita", "role": "researcher"}
        denied = call("POST", "/approve", researcher)
        assert denied.status_code == 403 and "needs role 'custodian' or 'admin'" in denied.json()["detail"]
        assert call("POST", "/approve", custodian).json() == {"approved_by": "cora"}
        assert call("POST", "/approve", admin).status_code == 200
        assert call("GET", "/hub-only", custodian).status_code == 403
        assert call("GET", "/hub-only", hub).status_code == 200
        assert call("GET", "/projects/p1", researcher).status_code == 200
        other = call("GET", "/projects/p2", researcher)
        assert other.status_code == 403 and "not a member of project 'p2'" in other.json()["detail"]
        assert call("GET", "/projects/p2", admin).status_code == 200  # "*"
        store.revoke("rita")
        assert call("GET", "/whoami", researcher).status_code == 401  # revocation takes effect at once


def test_a_broken_token_file_is_503_and_says_nothing_about_it(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("alice", "researcher", ["p1"])
    with serve(tiny_app(store)) as url:
        assert httpx.get(url + "/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        (tmp_path / "tokens.json").write_text("{ not json")
        r = httpx.get(url + "/whoami", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503
    assert "tokens.json" not in r.text and str(tmp_path) not in r.text


def test_openapi_declares_the_bearer_scheme(served):
    url, _ = served
    schema = httpx.get(url + "/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_require_role_rejects_unknown_roles():
    with pytest.raises(ValueError):
        require_role("root")
    with pytest.raises(ValueError):
        require_role()


# ---- signatures ---------------------------------------------------------------------------------
HASH = "ab" * 32


def _sign(key, content_hash=HASH, **kw):
    return sign_package(key, content_hash, **{"project": "p1", "sites": ["leeds", "york"],
                                              "requested_by": "alice", **kw})


def _verify(public, sig, **kw):
    return verify_package(public, sig, **{"content_hash": HASH, "project": "p1", "site": "leeds",
                                          "requested_by": "alice", **kw})


def test_signatures_valid_invalid_and_wrong_key(tmp_path):
    import base64

    key = tmp_path / "hub.pem"
    public = generate_signing_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert public == public_key_pem(key) and "BEGIN PUBLIC KEY" in public
    sig = _sign(key)
    claims = _verify(public, sig)
    assert (claims.hash, claims.project, claims.sites, claims.requested_by) == (HASH, "p1", ("leeds", "york"), "alice")
    assert _verify(public, sig, site="york").sites == ("leeds", "york")
    other_public = generate_signing_key(tmp_path / "other.pem")
    fmt, body, raw = sig.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(raw + "=="))
    flipped[0] ^= 1
    # Claims rewritten by someone without the key: another site added, the signature kept.
    forged_claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged_claims["sites"].append("zeta")
    forged = base64.urlsafe_b64encode(json.dumps(forged_claims, sort_keys=True, separators=(",", ":")).encode()
                                      ).decode().rstrip("=")
    for bad in (f"{fmt}.{body}.{base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip('=')}",
                f"{fmt}.{forged}.{raw}", f"mcs0.{body}.{raw}", "", "not base64!!", sig[:-8], "AAAA",
                base64.b64encode(b"x" * 64).decode()):
        with pytest.raises(SignatureRefused) as e:
            _verify(public, bad)
        assert e.value.reason == "bad signature" and e.value.status_code == 403
    with pytest.raises(SignatureRefused) as e:
        _verify(other_public, sig)  # a hub the node does not trust
    assert e.value.reason == "bad signature"
    for wrong, reason in ((dict(content_hash="cd" * 32), "another package"), (dict(project="p2"), "another project"),
                          (dict(site="zeta"), "another site"), (dict(requested_by="mallory"), "another requester")):
        with pytest.raises(SignatureRefused) as e:
            _verify(public, sig, **wrong)
        assert e.value.reason == reason, (wrong, e.value.reason)
    with pytest.raises(ValueError, match="64 lower-case hex"):
        _sign(key, "nothex")
    for bad_args in (dict(sites=[]), dict(sites=[""]), dict(project="a b"), dict(valid_days=0)):
        with pytest.raises(ValueError):
            _sign(key, **bad_args)


def test_signatures_expire(tmp_path):
    from datetime import UTC, datetime, timedelta

    key = tmp_path / "hub.pem"
    public = generate_signing_key(key)
    signed_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    sig = _sign(key, valid_days=7, now=signed_at)
    assert read_signature(public, sig).expires_at == "2026-01-08T12:00:00Z"
    assert _verify(public, sig, now=signed_at + timedelta(days=6, hours=23)).hash == HASH
    for late in (timedelta(days=7), timedelta(days=30)):
        with pytest.raises(SignatureRefused, match="expired at 2026-01-08T12:00:00Z") as e:
            _verify(public, sig, now=signed_at + late)
        assert e.value.reason == "expired"
    assert _verify(public, _sign(key)).hash == HASH  # signed now with the default: valid now


def test_signing_keys_are_never_overwritten_and_bad_keys_are_config_errors(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "hub.pem"
    generate_signing_key(key)
    before = key.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_signing_key(key)
    assert key.read_bytes() == before
    with pytest.raises(ConfigError, match="not a PEM public key"):
        _verify("garbage", "AAAA")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_public = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(ConfigError, match="not an Ed25519"):
        _verify(ec_public, "AAAA")
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="not an Ed25519"):
        _sign(ec_path)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match="not an unencrypted PEM"):
        _sign(tmp_path / "junk.pem")


# ---- count-query guard --------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_with_retry_after_and_sliding_window():
    clock = FakeClock()
    guard = CountQueryGuard(max_queries=3, window_seconds=10, max_repeats=100, clock=clock)
    alice = Principal("alice", "researcher", frozenset({"p"}))
    for i in range(3):
        guard.check(alice, f"q{i}")
        clock.now += 1
    with pytest.raises(RateLimitedError) as e:
        guard.check(alice, "q3")
    assert e.value.status_code == 429 and isinstance(e.value, MerciaError)
    assert e.value.retry_after == pytest.approx(7.0)  # the first query leaves the window at t0 + 10
    assert e.value.headers() == {"Retry-After": "7"}
    guard.check("bob", "q3")  # other principals are not affected
    clock.now += 7
    guard.check(alice, "q3")  # the oldest left the window


def test_lockout_after_near_identical_repeats():
    clock = FakeClock()
    guard = CountQueryGuard(max_queries=1000, window_seconds=1, max_repeats=3, lockout_seconds=3600, clock=clock)
    base = {"name": "diabetics", "concepts": {"t2d": [201826]}, "entry": {"condition": "t2d"}}
    renamed = {**base, "name": "diabetics again", "description": "just checking"}
    assert query_key(base) == query_key(renamed)  # renaming does not make a new query
    assert query_key(base) != query_key({**base, "concepts": {"t2d": [201826, 443238]}})
    for _ in range(3):
        guard.check("mallory", query_key(renamed))
        clock.now += 5
    with pytest.raises(RateLimitedError, match="locked out") as e:
        guard.check("mallory", query_key(base))
    assert e.value.retry_after == 3600
    assert guard.locked("mallory")
    with pytest.raises(RateLimitedError, match="locked out"):
        guard.check("mallory", query_key({"entirely": "different"}))  # locked out of all count queries
    clock.now += 3600
    assert not guard.locked("mallory")
    guard.check("mallory", "another")
    for _ in range(3):
        guard.check("eve", "k")
    with pytest.raises(RateLimitedError):
        guard.check("eve", "k")
    guard.unlock("eve")
    guard.check("eve", "k")


def test_guard_rejects_bad_limits():
    with pytest.raises(ConfigError):
        CountQueryGuard(max_queries=0)
    with pytest.raises(ConfigError):
        CountQueryGuard(window_seconds=0)


@settings(max_examples=150, deadline=None)
@given(
    max_queries=st.integers(1, 5),
    max_repeats=st.integers(1, 4),
    ops=st.lists(st.tuples(st.floats(0, 30), st.sampled_from(["alice", "bob"]), st.sampled_from("abc")),
                 max_size=60),
)
def test_guard_rules_hold_for_every_sequence(max_queries, max_repeats, ops):
    """Whatever the sequence: within any window no principal gets more than max_queries accepted; no
    key is accepted more than max_repeats times per repeat window; nothing is accepted while locked out;
    and a refusal always names a rule that the accepted history makes binding."""
    clock = FakeClock()
    window, repeat_window, lockout = 10.0, 50.0, 40.0
    guard = CountQueryGuard(max_queries, window, max_repeats, repeat_window, lockout, clock=clock)
    accepted: list[tuple[float, str, str]] = []
    locked_until: dict[str, float] = {}
    for dt, who, key in ops:
        clock.now += dt
        now = clock.now
        try:
            guard.check(who, key)
        except RateLimitedError as e:
            assert e.retry_after > 0
            in_window = [t for t, w, _ in accepted if w == who and t > now - window]
            repeats = [t for t, w, k in accepted if w == who and k == key and t > now - repeat_window]
            locked = locked_until.get(who, -1.0) > now
            assert locked or len(in_window) >= max_queries or len(repeats) >= max_repeats
            if not locked and len(in_window) < max_queries:
                locked_until[who] = now + lockout  # this refusal was the lockout itself
            continue
        assert locked_until.get(who, -1.0) <= now, "accepted while locked out"
        accepted.append((now, who, key))
        in_window = [t for t, w, _ in accepted if w == who and t > now - window]
        assert len(in_window) <= max_queries
        repeats = [t for t, w, k in accepted if w == who and k == key and t > now - repeat_window]
        assert len(repeats) <= max_repeats


def test_guard_is_safe_across_threads():
    guard = CountQueryGuard(max_queries=50, window_seconds=3600, max_repeats=10_000)
    ok = []
    refused = []

    def hammer() -> None:
        for i in range(40):
            try:
                guard.check("alice", f"q{i}")
                ok.append(1)
            except RateLimitedError:
                refused.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 50 and len(refused) == 8 * 40 - 50


def test_no_token_leaks_into_error_messages(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    token = store.issue("alice", "researcher", ["p"])
    with pytest.raises(ConfigError) as e:
        store.revoke("nobody")
    assert token not in str(e.value)
    assert os.path.exists(Path(tmp_path / "tokens.json"))
