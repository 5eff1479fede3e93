"""The portal's sign-in, sessions, CSRF, lockout and permissions, over real HTTP on 127.0.0.1 (issue 17).

A hub (`mercia hub serve`, a process) with a vocabulary, its portal under /portal, and portal users
made in its state file as `mercia hub portal-user-add` makes them. Each route is asked by every kind of
visitor: not signed in (redirected to the sign-in page), a researcher, an admin of one project, an admin
of every project; refusals are pages with the status the API would give (403 for a role or a project
the user lacks, 404 for another project's user). Sessions: the cookie's flags, expiry, sign-out, a
disabled user; CSRF: every POST without its token, or with another session's, is 403 and changes
nothing; lockout after five failed sign-ins, whatever the name.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from federation_support import HubServer, make_site

PASSWORD = "correct horse battery staple"
T2D = 201826  # type 2 diabetes mellitus, in the bundled vocabulary


class Visitor:
    """A browser stand-in: keeps the cookies the portal sets (httpx would not send Secure cookies over
    plain HTTP, so they are kept and sent here), follows nothing by itself."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=60)
        self.jar: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        self.http.cookies.clear()
        r = self.http.request(method, path, headers=headers, **kw)
        for raw in r.headers.get_list("set-cookie"):
            self.set_cookies.append(raw)
            name, _, rest = raw.partition("=")
            value = rest.split(";")[0].strip('"')
            if "max-age=0" in raw.lower() or not value:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        return r

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True, **kw: Any) -> httpx.Response:
        data = dict(data or {})
        if csrf and "csrf" not in data:
            data["csrf"] = self.csrf
        return self.request("POST", path, data=data, **kw)

    @property
    def csrf(self) -> str:
        """The session's CSRF token, as the pages carry it."""
        return csrf_of(self.get("/portal/").text)

    def sign_in(self, name: str, password: str = PASSWORD) -> httpx.Response:
        page = self.get("/portal/sign-in")
        return self.post("/portal/sign-in", {"csrf": csrf_of(page.text), "name": name, "password": password})

    def close(self) -> None:
        self.http.close()


def T(r: httpx.Response) -> str:
    """The page's text as a reader sees it (entities such as &#39; decoded)."""
    return html.unescape(r.text)


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:2000]
    return m.group(1)


def start_hub(root: Path, **portal: Any) -> HubServer:
    """A hub with a vocabulary (a synthetic site's), its portal settings, node 'east' and project 'proj'."""
    hub = HubServer(root / "hub")
    data = yaml.safe_load(hub.config_path.read_text())
    data["portal"] = {"vocabulary": str(make_site(root / "vocabulary.duckdb", persons=1500, seed=31)), **portal}
    hub.config_path.write_text(yaml.safe_dump(data))
    return hub


def accounts(hub: HubServer) -> Any:
    from mercia.federation.hub import load_hub_config
    from mercia.portal.accounts import accounts_for

    cfg = load_hub_config(hub.config_path)
    return accounts_for(cfg.state_dir / "hub.sqlite", cfg.portal)


def add_user(hub: HubServer, name: str, role: str, projects: list[str]) -> None:
    """As `mercia hub portal-user-add` does (the CLI is tested on its own below)."""
    accounts(hub).add_user(name, role, projects, PASSWORD)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    root = tmp_path_factory.mktemp("portal")
    server = start_hub(root)
    with server:
        with server.client(server.admin_token) as admin:
            admin.add_node("east", "http://127.0.0.1:9", "t-east")
            admin.add_node("west", "http://127.0.0.1:9", "t-west")
            admin.add_project("proj", ["east"])
            admin.add_project("other", ["west"])
        for name, role, projects in (("root", "admin", ["*"]), ("pa", "admin", ["proj"]),
                                     ("rita", "researcher", ["proj"]), ("oscar", "researcher", ["other"])):
            add_user(server, name, role, projects)
        yield server


@pytest.fixture
def visitor(hub: HubServer) -> Iterator[Any]:
    made: list[Visitor] = []

    def make(name: str | None = None) -> Visitor:
        v = Visitor(hub.url)
        made.append(v)
        if name is not None:
            r = v.sign_in(name)
            assert r.status_code == 303, r.text
        return v

    yield make
    for v in made:
        v.close()


def audit_events(hub: HubServer) -> list[dict[str, Any]]:
    import json

    return [json.loads(x) for x in (hub.state_dir / "audit.jsonl").read_text().splitlines()]


# ---- routes x visitors -------------------------------------------------------------------------------
GETS = ["/portal/", "/portal/concepts", "/portal/concepts?text=diabetes", f"/portal/concepts/{T2D}", "/portal/cohorts",
        "/portal/admin/users", "/portal/admin/users/rita", "/portal/admin/projects", "/portal/admin/tokens"]
POSTS = [(f"/portal/concepts/{T2D}/counts", {"project": "proj", "descendants": "1"}),
         ("/portal/cohorts", {"definition": "name: x\n", "action": "count", "project": "proj"}),
         ("/portal/cohorts/build", {"b_entry_concepts": str(T2D), "action": "count", "project": "proj"}),
         ("/portal/admin/users", {"name": "newbie", "role": "researcher", "projects": "proj", "password": PASSWORD}),
         ("/portal/admin/users/rita", {"role": "researcher", "projects": "proj"}),
         ("/portal/admin/users/rita/password", {"password": PASSWORD}),
         ("/portal/admin/projects", {"name": "proj", "sites": "east"}),
         ("/portal/admin/tokens", {"name": "tok1", "role": "researcher", "projects": "proj"}),
         ("/portal/admin/tokens/nobody/revoke", {}),
         ("/portal/sign-out", {})]
ADMIN_ONLY = ("/portal/admin/",)


@pytest.mark.parametrize("path", GETS)
def test_not_signed_in_goes_to_the_sign_in_page(visitor: Any, path: str) -> None:
    r = visitor().get(path)
    assert r.status_code == 303
    where = r.headers["location"]
    assert where.startswith("/portal/sign-in")
    if path != "/portal/":  # and comes back afterwards
        assert "next=" in where


@pytest.mark.parametrize("path,data", POSTS)
def test_not_signed_in_posts_go_to_the_sign_in_page(visitor: Any, path: str, data: dict[str, str]) -> None:
    r = visitor().post(path, data, csrf=False)
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in"


@pytest.mark.parametrize("who", ["rita", "pa", "root"])
@pytest.mark.parametrize("path", GETS)
def test_each_page_for_each_role(visitor: Any, who: str, path: str) -> None:
    r = visitor(who).get(path)
    admin_page = path.startswith(ADMIN_ONLY)
    if who == "rita" and admin_page:
        assert r.status_code == 403, r.text
        assert "has role 'researcher'; this needs role 'admin'" in T(r)  # the API's own message
        assert "<main" in T(r) and 'class="skip-link"' in T(r)  # a page of the portal, not JSON
    else:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
    # every page: the policy that keeps scripts and styles local, and no caching of what a user sees
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path,data", [p for p in POSTS if p[0].startswith(ADMIN_ONLY)])
def test_a_researcher_cannot_post_to_admin_pages(visitor: Any, hub: HubServer, path: str,
                                                 data: dict[str, str]) -> None:
    before = accounts(hub).users()
    r = visitor("rita").post(path, data)
    assert r.status_code == 403 and "needs role 'admin'" in T(r)
    assert accounts(hub).users() == before


def test_another_projects_user_is_not_found_for_a_project_admin(visitor: Any, hub: HubServer) -> None:
    pa = visitor("pa")
    assert pa.get("/portal/admin/users/oscar").status_code == 404
    assert pa.post("/portal/admin/users/oscar", {"role": "admin", "projects": "other"}).status_code == 404
    assert pa.post("/portal/admin/users/oscar/password", {"password": "x" * 20}).status_code == 404
    listed = T(pa.get("/portal/admin/users"))
    assert ">rita<" in listed and ">oscar<" not in listed and ">root<" not in listed
    # nor may they give a project they do not administer, or every project
    for projects in ("other", "*"):
        r = pa.post("/portal/admin/users", {"name": "eve", "role": "admin", "projects": projects, "password": PASSWORD})
        assert r.status_code == 403 and "does not administer projects" in T(r)
    assert accounts(hub).user("eve") is None
    assert accounts(hub).user("oscar").role == "researcher"
    # a project of another admin
    r = pa.post("/portal/admin/projects", {"name": "other", "sites": "west"})
    assert r.status_code == 403 and "not a member of project 'other'" in T(r)


def test_a_researcher_asks_counts_only_in_their_projects(visitor: Any) -> None:
    r = visitor("oscar").post(f"/portal/concepts/{T2D}/counts", {"project": "proj", "descendants": "1"})
    assert r.status_code == 403 and "not a member of project 'proj'" in T(r)
    r = visitor("rita").post(f"/portal/concepts/{T2D}/counts", {"project": "nope", "descendants": "1"})
    assert r.status_code == 403


# ---- sign-in, sessions ------------------------------------------------------------------------------------
def test_the_session_cookie_and_sign_out(visitor: Any, hub: HubServer) -> None:
    v = visitor("rita")
    cookie = next(c for c in v.set_cookies if c.startswith("mercia_session="))
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=lax", "path=/"} <= flags
    session_id = v.jar["mercia_session"]
    assert len(session_id) >= 43  # 32 random bytes
    # the store keeps only its hash
    raw = (hub.state_dir / "hub.sqlite").read_bytes()
    assert session_id.encode() not in raw
    assert v.get("/portal/").status_code == 200
    held = dict(v.jar)
    r = v.post("/portal/sign-out", {})
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in"
    v.jar = held  # the old cookie, replayed, is dead
    assert v.get("/portal/").status_code == 303
    assert any(e["event"] == "portal.signed_out" and e["actor"] == "rita" for e in audit_events(hub))


def test_an_expired_session_signs_in_again(visitor: Any, hub: HubServer) -> None:
    v = visitor("rita")
    assert v.get("/portal/concepts").status_code == 200
    accounts(hub).expire_sessions_of("rita")
    r = v.get("/portal/concepts")
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in?next=%2Fportal%2Fconcepts&ended=1"
    assert "Your session has ended" in T(v.get(r.headers["location"]))
    assert "mercia_session" not in v.jar  # the dead cookie is cleared
    v.jar["mercia_session"] = "stale"
    r = v.post(f"/portal/concepts/{T2D}/counts", {"csrf": "x", "project": "proj"})
    assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in?ended=1"


def test_sign_in_goes_back_to_the_page_asked_for_and_never_elsewhere(visitor: Any) -> None:
    v = visitor()
    page = v.get("/portal/sign-in", params={"next": "/portal/concepts?text=asthma"})
    r = v.post("/portal/sign-in", {"csrf": csrf_of(page.text), "name": "rita", "password": PASSWORD,
                                   "next": "/portal/concepts?text=asthma"})
    assert r.status_code == 303 and r.headers["location"] == "/portal/concepts?text=asthma"
    for evil in ("https://evil.example/", "//evil.example/portal/", "/elsewhere"):
        w = visitor()
        page = w.get("/portal/sign-in")
        r = w.post("/portal/sign-in", {"csrf": csrf_of(page.text), "name": "rita", "password": PASSWORD, "next": evil})
        assert r.status_code == 303 and r.headers["location"] == "/portal/"


def test_a_disabled_user_is_signed_out_and_cannot_sign_in(visitor: Any, hub: HubServer) -> None:
    add_user(hub, "dora", "researcher", ["proj"])
    dora = visitor("dora")
    root = visitor("root")
    r = root.post("/portal/admin/users/dora", {"role": "researcher", "projects": "proj", "disabled": "1"})
    assert r.status_code == 200 and "Saved" in T(r)
    assert dora.get("/portal/").status_code == 303
    r = visitor().sign_in("dora")
    assert r.status_code == 401 and "the name or the password is wrong" in T(r)
    ev = [e for e in audit_events(hub) if e["event"] == "portal.user_changed" and e["details"]["user"] == "dora"]
    assert ev and ev[-1]["actor"] == "root" and ev[-1]["details"]["disabled"] is True


def test_lockout_after_five_failures_whatever_the_name(visitor: Any, hub: HubServer) -> None:
    add_user(hub, "lucy", "researcher", ["proj"])
    for name in ("lucy", "nosuchuser"):
        v = visitor()
        for _ in range(5):
            r = v.sign_in(name, "wrong password!!")
            assert r.status_code == 401 and "the name or the password is wrong" in T(r)
        r = v.sign_in(name, PASSWORD)  # the right password, too late
        assert r.status_code == 429 and "too many failed sign-ins" in T(r)
        assert "mercia_session" not in v.jar
    assert any(e["event"] == "portal.sign_in_locked" and e["actor"] == "lucy" for e in audit_events(hub))
    # another account is not locked; an admin's password reset unlocks
    assert visitor().sign_in("rita").status_code == 303
    r = visitor("root").post("/portal/admin/users/lucy/password", {"password": ""})
    assert r.status_code == 200
    new = re.search(r'id="new-password-value">([^<]+)<', r.text).group(1)
    assert visitor().sign_in("lucy", new).status_code == 303
    assert visitor().sign_in("lucy", PASSWORD).status_code == 401  # the old password is gone


def test_passwords_are_argon2id_hashes(hub: HubServer) -> None:
    import sqlite3

    con = sqlite3.connect(hub.state_dir / "hub.sqlite")
    try:
        hashes = [r[0] for r in con.execute("SELECT password_hash FROM portal_users")]
    finally:
        con.close()
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(PASSWORD in h for h in hashes)


# ---- CSRF -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,data", POSTS)
def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(visitor: Any, hub: HubServer, path: str,
                                                             data: dict[str, str]) -> None:
    root = visitor("root")
    other = visitor("root")  # another session's token is a wrong one
    before = (accounts(hub).users(), [p.name for p in hub_tokens(hub)])
    for token in (None, "", other.csrf, root.csrf[:-2] + "xx"):
        body = dict(data)
        if token is not None:
            body["csrf"] = token
        r = root.post(path, body, csrf=False)
        assert r.status_code == 403, (path, token, r.text)
        assert "security token is missing or wrong" in T(r)
    assert (accounts(hub).users(), [p.name for p in hub_tokens(hub)]) == before
    assert root.get("/portal/").status_code == 200  # still signed in (sign-out refused too)


def test_sign_in_needs_its_form_token(visitor: Any) -> None:
    v = visitor()
    page = v.get("/portal/sign-in")
    token = csrf_of(page.text)
    r = v.post("/portal/sign-in", {"name": "rita", "password": PASSWORD}, csrf=False)
    assert r.status_code == 403
    v.jar.pop("mercia_signin_csrf")  # a forged cross-site form has the field but not the cookie
    r = v.post("/portal/sign-in", {"csrf": token, "name": "rita", "password": PASSWORD})
    assert r.status_code == 403 and "mercia_session" not in v.jar


def hub_tokens(hub: HubServer) -> list[Any]:
    from mercia.federation.auth import TokenStore

    return TokenStore(hub.folder / "tokens.json").principals()


# ---- admin actions, audited like the API's --------------------------------------------------------------------
def test_admin_manages_users_projects_and_tokens(visitor: Any, hub: HubServer) -> None:
    root = visitor("root")
    r = root.post("/portal/admin/users", {"name": "nina", "role": "researcher", "projects": "proj",
                                          "password": PASSWORD})
    assert r.status_code == 200 and "Added nina" in T(r)
    assert accounts(hub).user("nina").projects == ("proj",)
    r = root.post("/portal/admin/users", {"name": "nina", "role": "researcher", "password": PASSWORD})
    assert r.status_code == 400 and "exists" in T(r)
    r = root.post("/portal/admin/users", {"name": "bad name", "role": "researcher", "password": PASSWORD})
    assert r.status_code == 400 and "name 'bad name' is invalid" in T(r)
    r = root.post("/portal/admin/users", {"name": "shorty", "role": "researcher", "password": "short"})
    assert r.status_code == 400 and "password: use 12 to 1024 characters" in T(r)
    r = root.post("/portal/admin/users", {"name": "x1", "role": "custodian", "password": PASSWORD})
    assert r.status_code == 400 and "role 'custodian' is not one of researcher, admin" in T(r)
    # nina signs in and acts with exactly her projects
    nina = visitor("nina")
    assert nina.get("/portal/admin/users").status_code == 403
    r = root.post("/portal/admin/users/nina", {"role": "admin", "projects": "proj"})
    assert r.status_code == 200
    assert nina.get("/portal/").status_code == 303  # a change of role ends her sessions
    assert visitor("nina").get("/portal/admin/users").status_code == 200
    # an admin cannot lock themselves out
    r = root.post("/portal/admin/users/root", {"role": "researcher", "projects": "*"})
    assert r.status_code == 400 and accounts(hub).user("root").role == "admin"
    # projects
    r = root.post("/portal/admin/projects", {"name": "third", "sites": ["east", "west"]})
    assert r.status_code == 200 and "Saved project third: east, west" in T(r)
    r = root.post("/portal/admin/projects", {"name": "fourth", "sites": "north"})
    assert r.status_code == 400 and "not registered nodes" in T(r)
    # tokens: shown once, usable on the API, then revoked
    r = root.post("/portal/admin/tokens", {"name": "apiuser", "role": "researcher", "projects": "proj"})
    token = re.search(r'id="new-token-value">(mct_[^<]+)<', r.text).group(1)
    assert httpx.get(f"{hub.url}/api/v1/projects", headers={"Authorization": f"Bearer {token}"}).json() == [
        {"name": "proj", "sites": ["east"]}]
    assert token not in root.get("/portal/admin/tokens").text  # once
    r = root.post("/portal/admin/tokens/apiuser/revoke", {})
    assert r.status_code == 200 and "Revoked the token of apiuser" in T(r)
    assert httpx.get(f"{hub.url}/api/v1/projects", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # a project admin cannot revoke the hub's admin token (every project)
    assert visitor("pa").post("/portal/admin/tokens/admin/revoke", {}).status_code == 403
    events = [(e["event"], e["actor"]) for e in audit_events(hub)]
    for wanted in (("portal.user_added", "root"), ("portal.user_changed", "root"), ("project.saved", "root"),
                   ("user.token_issued", "root"), ("user.token_revoked", "root")):
        assert wanted in events, wanted


def test_the_cli_adds_the_first_admin(hub: HubServer) -> None:
    import subprocess

    from federation_support import MERCIA

    r = subprocess.run([MERCIA, "hub", "portal-user-add", "first", "--config", str(hub.config_path),
                        "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "portal user first (admin; projects *)" in r.stdout
    v = Visitor(hub.url)
    try:
        assert v.sign_in("first").status_code == 303
        assert v.get("/portal/admin/users").status_code == 200
    finally:
        v.close()
    r = subprocess.run([MERCIA, "hub", "portal-user-add", "first", "--config", str(hub.config_path),
                        "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "a user named 'first' exists" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


# ---- concepts ------------------------------------------------------------------------------------------------
def test_concept_search_and_page_match_the_api(visitor: Any, hub: HubServer) -> None:
    rita = visitor("rita")
    r = rita.get("/portal/concepts", params={"text": "diabetes", "domain": "Condition", "standard": "1"})
    assert r.status_code == 200
    ids = [int(x) for x in re.findall(r'href="/portal/concepts/(\d+)"', r.text)]
    with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.admin_token}"}) as api:
        hits = api.get("/api/v1/concepts", params={"text": "diabetes", "domain": "Condition", "standard": True,
                                                   "limit": 100}).json()
        assert ids == [h["concept_id"] for h in hits] and T2D in ids
        assert all(h["domain_id"] == "Condition" and h["standard_concept"] == "S" for h in hits)
        details = api.get(f"/api/v1/concepts/{T2D}").json()
    page = T(rita.get(f"/portal/concepts/{T2D}"))
    assert details["concept"]["concept_name"] in page
    for section in ("maps_to", "mapped_from", "ancestors", "descendants"):
        for c in details[section]:
            assert f'href="/portal/concepts/{c["concept_id"]}"' in page, (section, c)
    assert "Descendants" in page and "Ancestors" in page
    # a code finds its concept exactly; bad input is one line
    r = rita.get("/portal/concepts", params={"text": details["concept"]["concept_code"]})
    assert f'href="/portal/concepts/{T2D}"' in T(r)
    r = rita.get("/portal/concepts/99999999")
    assert r.status_code == 400 and "is not in this CDM's CONCEPT table" in T(r)
    assert rita.get("/portal/concepts/abc").status_code == 422


def test_the_api_search_needs_a_role_and_a_vocabulary(hub: HubServer, tmp_path: Path) -> None:
    assert httpx.get(f"{hub.url}/api/v1/concepts", params={"text": "asthma"}).status_code == 401
    from mercia.federation.hub import load_hub_config
    from mercia.federation.hub.app import HubServices

    cfg = load_hub_config(hub.config_path).model_copy(update={"state_dir": tmp_path})
    cfg.portal.vocabulary = None
    services = HubServices(cfg, start_dispatcher=False)
    from mercia.federation.hub.vocabulary import NoVocabulary

    with pytest.raises(NoVocabulary, match="portal: vocabulary:"):
        services.vocabulary.search("asthma")


def test_static_files_are_served_locally(hub: HubServer) -> None:
    for name, kind in (("portal.css", "text/css"), ("portal.js", "javascript")):
        r = httpx.get(f"{hub.url}/portal/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]


# ---- the accounts store on its own ------------------------------------------------------------------------------
def test_sessions_end_by_age_and_by_idleness(tmp_path: Path) -> None:
    import time

    from mercia.portal.accounts import Accounts

    aged = Accounts(tmp_path / "a.sqlite", session_minutes=0.02, idle_minutes=60)  # 1.2 s
    aged.add_user("u", "researcher", ["p"], PASSWORD)
    sid, _ = aged.sign_in("u", PASSWORD)
    assert aged.session(sid) is not None
    time.sleep(1.5)
    assert aged.session(sid) is None
    idle = Accounts(tmp_path / "b.sqlite", session_minutes=60, idle_minutes=0.02)
    idle.add_user("u", "researcher", ["p"], PASSWORD)
    sid, _ = idle.sign_in("u", PASSWORD)
    assert idle.session(sid).user.principal().projects == frozenset({"p"})
    time.sleep(1.5)
    assert idle.session(sid) is None
    assert idle.session("not-a-session") is None and idle.session("") is None and idle.session("x" * 500) is None


def test_a_user_acts_as_a_token_of_the_same_role_and_projects(tmp_path: Path) -> None:
    from mercia.federation.auth import Principal
    from mercia.portal.accounts import AccountError, Accounts

    acc = Accounts(tmp_path / "a.sqlite")
    user = acc.add_user("u", "researcher", ["p2", "p1", "p1"], PASSWORD)
    assert user.principal() == Principal("u", "researcher", frozenset({"p1", "p2"}))
    for bad, field in ((dict(role="custodian"), "role 'custodian' is not one of researcher, admin"),
                       (dict(projects=["a b"]), "project name 'a b' is invalid")):
        kw: dict[str, Any] = {"role": "researcher", "projects": ["p"], **bad}
        with pytest.raises(AccountError, match=field):
            acc.add_user("v", kw["role"], kw["projects"], PASSWORD)
