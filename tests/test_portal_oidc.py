"""OpenID Connect sign-in to the portal, and the per-address limit on failed sign-ins (issue 17, item 1).

A hub (a process) whose hub.yaml configures `portal: oidc:` against a small provider started here on
127.0.0.1 (tests/oidc_provider.py: discovery, authorize, token, JWKS). The honest flow signs an existing
portal user in; each attack (a wrong or another browser's state, a replayed callback or code, a wrong
nonce, a token signed by another key or with a shared secret, another audience or issuer, an expired
token, a user the portal does not know) is refused with a page naming the reason, and no session is
made. Password spraying: failed sign-ins from one address across many names block that address.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import yaml
from joserfc.jwk import RSAKey

from federation_support import HubServer
from oidc_provider import Provider
from test_portal import PASSWORD, T, Visitor, add_user, audit_events, start_hub

SECRET = "s3cret-of-the-hub-client-0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with Provider("mercia-hub", SECRET) as p:
        yield p


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("oidc")
    server = start_hub(root, max_client_failures=6)
    (server.folder / "oidc_secret.txt").write_text(SECRET + "\n")
    callback = f"{server.url}/portal/sign-in/oidc/callback"
    provider.redirect_uris.add(callback)
    provider.post_logout_uris.add(f"{server.url}/portal/sign-in")
    data = yaml.safe_load(server.config_path.read_text())
    data["portal"]["oidc"] = {"issuer": provider.issuer, "client_id": "mercia-hub",
                              "client_secret_file": "oidc_secret.txt", "redirect_uri": callback,
                              "label": "Sign in with Partnership ID"}
    server.config_path.write_text(yaml.safe_dump(data))
    with server:
        add_user(server, "rita", "researcher", ["proj"])
        add_user(server, "dora", "researcher", ["proj"])
        yield server


@pytest.fixture
def visitor(hub: HubServer) -> Iterator[Any]:
    made: list[Visitor] = []

    def make() -> Visitor:
        v = Visitor(hub.url)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


def sessions(hub: HubServer) -> int:
    con = sqlite3.connect(hub.state_dir / "hub.sqlite")
    try:
        return con.execute("SELECT count(*) FROM portal_sessions").fetchone()[0]
    finally:
        con.close()


def authorize(v: Visitor, user: str, nxt: str = "") -> tuple[dict[str, str], str]:
    """Start at the hub, sign in at the provider as `user`: (the authorize query, the callback URL)."""
    r = v.get("/portal/sign-in/oidc" + (f"?next={nxt}" if nxt else ""))
    assert r.status_code == 303, T(r)
    where = r.headers["location"]
    query = {k: x[0] for k, x in parse_qs(urlsplit(where).query).items()}
    a = httpx.get(where + "&" + urlencode({"login_as": user}), follow_redirects=False, timeout=30)
    assert a.status_code == 302, a.text
    return query, a.headers["location"]


def with_query(url: str, **changes: str) -> str:
    u = urlsplit(url)
    q = {k: x[0] for k, x in parse_qs(u.query).items()}
    q.update(changes)
    return u._replace(query=urlencode(q)).geturl()


def refused(hub: HubServer, v: Visitor, r: httpx.Response, before: int, words: str, status: int = 401) -> None:
    assert r.status_code == status, T(r)[:3000]
    assert "Single sign-on refused" in T(r) and words in T(r), T(r)[:3000]
    assert "mercia_session" not in v.jar
    assert sessions(hub) == before
    assert "mercia_oidc_state" not in v.jar  # the flow's cookie is cleared


# ---- the honest flow ----------------------------------------------------------------------------------
def test_the_sign_in_page_offers_the_provider(visitor: Any) -> None:
    r = visitor().get("/portal/sign-in?next=/portal/concepts")
    assert r.status_code == 200
    assert 'href="/portal/sign-in/oidc?next=/portal/concepts"' in r.text
    assert "Sign in with Partnership ID" in r.text


def test_an_existing_user_signs_in_with_pkce_state_and_nonce(visitor: Any, hub: HubServer,
                                                             provider: Provider) -> None:
    v = visitor()
    query, callback = authorize(v, "rita", nxt="/portal/concepts")
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43 and query["state"] != query["nonce"]
    assert query["redirect_uri"] == f"{hub.url}/portal/sign-in/oidc/callback"
    assert set(query["scope"].split()) >= {"openid"}
    assert v.jar.get("mercia_oidc_state") == query["state"]
    r = v.get(callback)
    assert r.status_code == 303, T(r)[:2000]
    assert r.headers["location"] == "/portal/concepts"
    assert "mercia_session" in v.jar and "mercia_oidc_state" not in v.jar
    home = v.get("/portal/")
    assert home.status_code == 200 and "rita" in T(home)
    # the verifier went to the token endpoint (and matched the challenge: the provider checks it)
    sent = provider.token_requests[-1]
    assert sent["code_verifier"] and sent["code_verifier"] not in (query["state"], query["nonce"])
    assert any(e["event"] == "portal.signed_in" and e["actor"] == "rita" and e["details"].get("method") == "oidc"
               for e in audit_events(hub))
    # the client secret travels only to the provider: not in hub.yaml, the audit log or the server log
    for path in (hub.config_path, hub.state_dir / "audit.jsonl", hub.folder / "server.log"):
        assert SECRET not in path.read_text()


def test_a_next_outside_the_portal_goes_home(visitor: Any) -> None:
    v = visitor()
    _, callback = authorize(v, "rita", nxt="https://evil.example/")
    r = v.get(callback)
    assert r.status_code == 303 and r.headers["location"] == "/portal/"


@pytest.mark.browser
def test_single_sign_on_in_the_browser(hub: HubServer, provider: Provider, chromium: Any, artifacts_dir: Any) -> None:
    """In Chromium, by keyboard: the sign-in page's single sign-on button, the provider (signed in there
    as rita), back to the page asked for, signed in; the sign-in page passes axe-core."""
    from test_portal_browser import check_a11y

    ctx = chromium.new_context(viewport={"width": 1280, "height": 900}, base_url=hub.url, bypass_csp=True)
    provider.default_user = "rita"
    try:
        page = ctx.new_page()
        page.goto("/portal/concepts")
        page.wait_for_url("**/portal/sign-in?next=*")
        page.screenshot(path=str(artifacts_dir / "portal-sign-in-oidc.png"), full_page=True)
        check_a11y(page, "sign-in with single sign-on")
        page.focus("#oidc-sign-in")
        page.keyboard.press("Enter")
        page.wait_for_url("**/portal/concepts")
        assert "Signed in as" in page.inner_text("header") and "rita" in page.inner_text("header")
        cookies = {c["name"]: c for c in ctx.cookies()}
        assert cookies["mercia_session"]["httpOnly"] and "mercia_oidc_state" not in cookies
        # signing out goes through the provider's sign-out and back to the sign-in page
        done = len(provider.logouts)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{hub.url}/portal/sign-in")
        assert len(provider.logouts) == done + 1
        assert "mercia_session" not in {c["name"] for c in ctx.cookies()}
        page.screenshot(path=str(artifacts_dir / "portal-signed-out-oidc.png"), full_page=True)
        check_a11y(page, "signed out at the provider")
    finally:
        provider.default_user = None
        ctx.close()


# ---- signing out at the provider ------------------------------------------------------------------------
def oidc_tokens(hub: HubServer) -> int:
    con = sqlite3.connect(hub.state_dir / "hub.sqlite")
    try:
        return con.execute("SELECT count(*) FROM portal_oidc_sessions").fetchone()[0]
    finally:
        con.close()


def test_signing_out_also_signs_out_at_the_provider(visitor: Any, hub: HubServer, provider: Provider) -> None:
    """RP-initiated logout: the session ends here, then the browser goes to the provider's
    end_session_endpoint with the session's ID token as id_token_hint and the sign-in page to come back to."""
    v = visitor()
    _, callback = authorize(v, "rita")
    assert v.get(callback).status_code == 303
    issued = provider.issued[-1]
    before = sessions(hub)
    assert oidc_tokens(hub) >= 1
    r = v.post("/portal/sign-out")
    assert r.status_code == 303, T(r)[:2000]
    where = urlsplit(r.headers["location"])
    assert f"{where.scheme}://{where.netloc}{where.path}" == f"{provider.issuer}/logout"
    q = {k: x[0] for k, x in parse_qs(where.query).items()}
    assert q == {"id_token_hint": issued, "post_logout_redirect_uri": f"{hub.url}/portal/sign-in",
                 "client_id": "mercia-hub"}
    assert "mercia_session" not in v.jar and sessions(hub) == before - 1  # ended here first
    assert v.get("/portal/").status_code == 303
    back = httpx.get(r.headers["location"], follow_redirects=False, timeout=30)  # the provider's sign-out
    assert back.status_code == 302 and back.headers["location"] == f"{hub.url}/portal/sign-in"
    assert provider.logouts[-1]["id_token_hint"] == issued
    assert v.get("/portal/sign-in").status_code == 200
    # the ID token is kept no longer than its session
    assert not any(issued in line for line in (hub.state_dir / "audit.jsonl").read_text().splitlines())
    con = sqlite3.connect(hub.state_dir / "hub.sqlite")
    try:
        assert con.execute("SELECT count(*) FROM portal_oidc_sessions WHERE id_token = ?", (issued,)).fetchone()[0] == 0
    finally:
        con.close()
    assert any(e["event"] == "portal.signed_out" and e["actor"] == "rita" and e["details"] == {"at_provider": True}
               for e in audit_events(hub))


def test_a_password_session_signs_out_here_only(visitor: Any, hub: HubServer, provider: Provider) -> None:
    v = visitor()
    assert v.sign_in("dora").status_code == 303
    done = len(provider.logouts)
    r = v.post("/portal/sign-out")
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in"
    assert "mercia_session" not in v.jar and len(provider.logouts) == done
    # a sign-out without its CSRF token is refused and signs out nowhere
    w = visitor()
    _, callback = authorize(w, "rita")
    assert w.get(callback).status_code == 303
    r = w.post("/portal/sign-out", csrf=False)
    assert r.status_code == 403 and "mercia_session" in w.jar and w.get("/portal/").status_code == 200


def test_without_an_end_session_endpoint_the_sign_out_is_local(tmp_path: Path) -> None:
    with Provider("mercia-hub", SECRET, end_session=False) as plain:
        server = start_hub(tmp_path)
        (server.folder / "oidc_secret.txt").write_text(SECRET)
        callback = f"{server.url}/portal/sign-in/oidc/callback"
        plain.redirect_uris.add(callback)
        data = yaml.safe_load(server.config_path.read_text())
        data["portal"]["oidc"] = {"issuer": plain.issuer, "client_id": "mercia-hub",
                                  "client_secret_file": "oidc_secret.txt", "redirect_uri": callback}
        server.config_path.write_text(yaml.safe_dump(data))
        with server:
            add_user(server, "rita", "researcher", ["proj"])
            v = Visitor(server.url)
            try:
                _, back = authorize(v, "rita")
                assert v.get(back).status_code == 303 and v.get("/portal/").status_code == 200
                r = v.post("/portal/sign-out")
                assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in"
                assert "mercia_session" not in v.jar and v.get("/portal/").status_code == 303
                assert oidc_tokens(server) == 0 and plain.logouts == []
            finally:
                v.close()


def test_the_post_logout_uri_is_the_sign_in_page_beside_the_callback() -> None:
    from mercia.federation.hub.config import Oidc
    from mercia.portal.oidc import post_logout_uri

    base = {"issuer": "https://id.example", "client_id": "c"}
    assert post_logout_uri(Oidc(**base, redirect_uri="https://hub.example/mercia/portal/sign-in/oidc/callback"),
                           "/portal") == "https://hub.example/mercia/portal/sign-in"
    assert post_logout_uri(Oidc(**base, redirect_uri="https://hub.example/cb"), "/portal") == \
        "https://hub.example/portal/sign-in"
    given = Oidc(**base, redirect_uri="https://hub.example/cb", post_logout_redirect_uri="https://hub.example/bye")
    assert post_logout_uri(given, "/portal") == "https://hub.example/bye"
    with pytest.raises(ValueError, match="use an https:// URL"):
        Oidc(**base, redirect_uri="https://hub.example/cb", post_logout_redirect_uri="http://hub.example/bye")


# ---- the attacks ----------------------------------------------------------------------------------------
def test_a_wrong_state_is_refused(visitor: Any, hub: HubServer) -> None:
    v = visitor()
    _, callback = authorize(v, "rita")
    before = sessions(hub)
    refused(hub, v, v.get(with_query(callback, state="forged-state")), before, "state does not match")


def test_another_browsers_callback_is_refused(visitor: Any, hub: HubServer) -> None:
    """Login CSRF: the attacker's own callback (state and code) pushed into the victim's browser."""
    attacker, victim = visitor(), visitor()
    _, callback = authorize(attacker, "dora")
    before = sessions(hub)
    refused(hub, victim, victim.get(callback), before, "state does not match")


def test_a_replayed_callback_is_refused(visitor: Any, hub: HubServer) -> None:
    v = visitor()
    query, callback = authorize(v, "rita")
    assert v.get(callback).status_code == 303
    # the same callback again, with the state cookie put back: the state is spent
    replay = visitor()
    replay.jar["mercia_oidc_state"] = query["state"]
    before = sessions(hub)
    refused(hub, replay, replay.get(callback), before, "already used")


def test_a_replayed_code_is_refused(visitor: Any, hub: HubServer) -> None:
    v = visitor()
    _, first = authorize(v, "rita")
    assert v.get(first).status_code == 303
    old_code = parse_qs(urlsplit(first).query)["code"][0]
    w = visitor()
    _, second = authorize(w, "dora")
    before = sessions(hub)
    r = w.get(with_query(second, code=old_code))  # a fresh state, an old code
    refused(hub, w, r, before, "refused the authorization code")


@pytest.mark.parametrize(("change", "words"), [
    ({"claims": {"nonce": "not-the-flows-nonce"}}, "nonce is not this sign-in's"),
    ({"claims": {"nonce": None}}, "nonce is not this sign-in's"),
    ({"claims": {"aud": "another-client"}}, "not issued to this hub"),
    ({"claims": {"aud": ["mercia-hub", "another-client"], "azp": "another-client"}}, "another authorized party"),
    ({"claims": {"iss": "https://evil.example"}}, "issuer is not the configured one"),
    ({"claims": {"exp": 1_000_000_000}}, "expired"),
    ({"claims": {"exp": None}}, "lacks a claim"),
    ({"key": RSAKey.generate_key(2048, parameters={"kid": "k1"})}, "signature is not the sign-in provider's"),
    ({"key": RSAKey.generate_key(2048, parameters={"kid": "rogue"}), "header": {"kid": "rogue"}},
     "a key the sign-in provider does not publish"),
    ({"header": {"alg": "HS256"}}, "signature is not the sign-in provider's"),
], ids=["wrong-nonce", "no-nonce", "wrong-audience", "other-azp", "wrong-issuer", "expired", "no-expiry",
        "another-key", "unknown-key-id", "hmac-with-client-secret"])
def test_a_bad_id_token_is_refused(visitor: Any, hub: HubServer, provider: Provider, change: dict[str, Any],
                                   words: str) -> None:
    v = visitor()
    _, callback = authorize(v, "rita")
    provider.next_token = change
    before = sessions(hub)
    refused(hub, v, v.get(callback), before, words)
    assert any(e["event"] == "portal.oidc_refused" and words.split("'")[0] in e["details"]["reason"]
               for e in audit_events(hub))


def test_an_unknown_or_disabled_user_is_refused_and_no_account_is_made(visitor: Any, hub: HubServer) -> None:
    from test_portal import accounts

    v = visitor()
    _, callback = authorize(v, "mallory")
    before = sessions(hub)
    refused(hub, v, v.get(callback), before, "mallory has no enabled account on this portal")
    assert accounts(hub).user("mallory") is None
    add_user(hub, "dina", "researcher", ["proj"])
    accounts(hub).update_user("dina", role="researcher", projects=["proj"], disabled=True)
    w = visitor()
    _, callback = authorize(w, "dina")
    refused(hub, w, w.get(callback), before, "dina has no enabled account")


def test_a_provider_error_or_a_missing_code_is_refused(visitor: Any, hub: HubServer) -> None:
    v = visitor()
    before = sessions(hub)
    r = v.get("/portal/sign-in/oidc/callback?error=access_denied&state=x")
    refused(hub, v, r, before, "answered 'access_denied'")
    r = v.get("/portal/sign-in/oidc/callback?state=x")
    refused(hub, v, r, before, "lacks its code or state")


# ---- configuration -------------------------------------------------------------------------------------
def _config(tmp_path: Path, oidc: dict[str, Any]) -> Path:
    p = tmp_path / "hub.yaml"
    p.write_text(yaml.safe_dump({"state_dir": "s", "tokens": "t.json", "signing_key": "k.pem",
                                 "portal": {"oidc": oidc}}))
    return p


GOOD = {"issuer": "https://login.example.org/realms/p", "client_id": "hub",
        "redirect_uri": "https://hub.example.org/portal/sign-in/oidc/callback"}


@pytest.mark.parametrize(("oidc", "words"), [
    ({**GOOD, "client_secret": "in-clear"}, "client_secret"),
    ({**GOOD, "issuer": "http://login.example.org"}, "use an https:// URL"),
    ({**GOOD, "redirect_uri": "ftp://hub.example.org/cb"}, "use an https:// URL"),
    ({**GOOD, "client_secret_env": "A", "client_secret_file": "f"}, "not both"),
    ({**GOOD, "scopes": ["profile"]}, "include openid"),
    ({k: v for k, v in GOOD.items() if k != "client_id"}, "client_id"),
])
def test_bad_oidc_settings_are_refused_naming_the_field(tmp_path: Path, oidc: dict[str, Any], words: str) -> None:
    from mercia.errors import ConfigError
    from mercia.federation.hub import load_hub_config

    with pytest.raises(ConfigError) as e:
        load_hub_config(_config(tmp_path, oidc))
    assert words in str(e.value) and "oidc" in str(e.value)


def test_the_secret_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mercia.errors import ConfigError
    from mercia.federation.hub import load_hub_config
    from mercia.portal.oidc import OidcClient

    cfg = load_hub_config(_config(tmp_path, {**GOOD, "client_secret_env": "MERCIA_TEST_OIDC_SECRET"}))
    monkeypatch.delenv("MERCIA_TEST_OIDC_SECRET", raising=False)
    with pytest.raises(ConfigError, match="MERCIA_TEST_OIDC_SECRET is not set"):
        OidcClient(cfg.portal.oidc).client_secret()
    monkeypatch.setenv("MERCIA_TEST_OIDC_SECRET", "from-env")
    assert OidcClient(cfg.portal.oidc).client_secret() == "from-env"
    (tmp_path / "secret.txt").write_text("from-file\n")
    cfg = load_hub_config(_config(tmp_path, {**GOOD, "client_secret_file": "secret.txt"}))
    assert OidcClient(cfg.portal.oidc).client_secret() == "from-file"  # relative to hub.yaml
    assert OidcClient(load_hub_config(_config(tmp_path, GOOD)).portal.oidc).client_secret() is None


def test_a_provider_that_does_not_answer_is_a_clear_page(tmp_path: Path) -> None:
    """The provider down: 502 with one line, before the browser is sent anywhere."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mercia.federation.hub import load_hub_config
    from mercia.federation.hub.app import HubServices
    from mercia.federation.hub.config import init_hub
    from mercia.portal import create_portal

    path, _, _ = init_hub(tmp_path / "hub")
    data = yaml.safe_load(path.read_text())
    data["portal"] = {"oidc": {**GOOD, "issuer": "http://127.0.0.1:9", "timeout_seconds": 2}}
    path.write_text(yaml.safe_dump(data))
    services = HubServices(load_hub_config(path), start_dispatcher=False)
    app = FastAPI()
    app.mount("/portal", create_portal(services))
    r = TestClient(app).get("/portal/sign-in/oidc", follow_redirects=False)
    assert r.status_code == 502 and "discovery document could not be read" in r.text
    assert "Traceback" not in r.text


# ---- password spraying (the hub above allows 6 failures per address) ---------------------------------------
def test_password_spraying_from_one_address_is_blocked(visitor: Any, hub: HubServer) -> None:
    """One guess at each of many names stays under every name's lockout (5), but the address is blocked
    after 6 failures, whatever the names: even a right password from it is refused, then."""
    add_user(hub, "sam", "researcher", ["proj"])
    v = visitor()
    for i in range(6):
        r = v.sign_in(f"user{i}", "Spring2026!spray")
        assert r.status_code == 401, T(r)
    r = v.sign_in("sam", PASSWORD)
    assert r.status_code == 429 and "too many failed sign-ins from your address" in T(r)
    assert "mercia_session" not in v.jar
    assert any(e["event"] == "portal.sign_in_locked" and e["actor"] == "sam" for e in audit_events(hub))
    # the name itself is not locked: from another address sam signs in (the accounts' own check)
    from test_portal import accounts

    session_id, _ = accounts(hub).sign_in("sam", PASSWORD, "10.0.0.2")
    assert session_id


def test_the_address_limit_counts_failures_in_the_window_only(tmp_path: Path) -> None:
    from mercia.portal.accounts import Accounts, LockedOut, SignInRefused

    a = Accounts(tmp_path / "s.sqlite", max_failures=5, max_client_failures=3, lockout_minutes=15)
    a.add_user("ann", "researcher", ["p"], PASSWORD)
    for name in ("x1", "x2"):
        with pytest.raises(SignInRefused):
            a.sign_in(name, "wrong-password!!", "10.0.0.1")
    a.sign_in("ann", PASSWORD, "10.0.0.1")  # a success does not clear the address's count
    with pytest.raises(SignInRefused):
        a.sign_in("x3", "wrong-password!!", "10.0.0.1")
    with pytest.raises(LockedOut, match="from your address"):
        a.sign_in("ann", PASSWORD, "10.0.0.1")
    a.sign_in("ann", PASSWORD, "10.0.0.9")  # another address is not blocked
    assert 0 < a.client_locked_for("10.0.0.1") <= 15 * 60
    import time

    assert a.client_locked_for("10.0.0.1", now=time.time() + 15 * 60 + 1) == 0
